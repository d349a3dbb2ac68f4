//! What the CLI's integration tests share: a server on loopback and the
//! flags that point `convene` at it.

#![allow(dead_code, unreachable_pub)]

use convene_server::config::Config;

/// A server on `127.0.0.1:port` (0: any free port), with `--dev-tls` when `tls`.
pub async fn server_on(port: u16, tls: bool) -> convene_server::Server {
    let config = Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        dev_tls: tls,
        ..Config::default()
    };
    convene_server::start(config).await.expect("server starts")
}

/// `--server` (and, with TLS, `--cert-sha256`) for `s`.
pub fn server_args(s: &convene_server::Server) -> Vec<String> {
    match &s.cert_sha256 {
        Some(h) => vec![
            "--server".into(),
            format!("https://127.0.0.1:{}", s.addr.port()),
            "--cert-sha256".into(),
            h.clone(),
        ],
        None => vec!["--server".into(), format!("http://{}", s.addr)],
    }
}
