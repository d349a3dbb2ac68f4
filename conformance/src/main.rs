//! `convene-conformance`: runs the spec's conformance cases against a server
//! (the runner plays the clients) or a client (the runner plays the server).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use convene_conformance::{Report, ServerTarget, run_client_cases, run_server_cases};
use convene_protocol::cases::Transport;

#[derive(Parser)]
#[command(
    name = "convene-conformance",
    version,
    about = "Checks a Convene implementation against every conformance case of the spec."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Only run cases whose id contains this.
    #[arg(long, global = true)]
    filter: Option<String>,
    /// Also write a JSON report here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Also write a JUnit XML report here.
    #[arg(long, global = true)]
    junit: Option<PathBuf>,
    /// Capabilities of the implementation under test that cases may require
    /// (moderation, waiting_room, auth, shutdown, reconnect, publishes_video, sfu, dynacast, reactions, recording).
    #[arg(long = "capability", global = true)]
    capabilities: Vec<String>,
    /// How long a waiting step waits before failing, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    step_timeout_ms: u64,
    /// The server's token secret (HS256): the runner signs a token for each
    /// client it plays; actor `m` of the moderation cases gets the moderate
    /// grant. Implies the `auth` capability, and `moderation`.
    #[arg(
        long,
        alias = "token-secret",
        global = true,
        env = "CONVENE_AUTH_SECRET",
        hide_env_values = true
    )]
    auth_secret: Option<String>,
    /// One token for every client the runner plays (when the runner cannot
    /// sign its own). Cases that need a moderator or a bad token still need
    /// --auth-secret.
    #[arg(
        long,
        global = true,
        env = "CONVENE_TOKEN",
        hide_env_values = true,
        conflicts_with = "auth_secret"
    )]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Play the client side of every server case against a running server.
    Server {
        /// The server: its WebSocket endpoint (ws://host:port/convene/ws) or its
        /// base URL (http://host:port). Give it again for more nodes of one
        /// cluster: each case's clients are then spread over the nodes in turn.
        #[arg(long, required = true)]
        url: Vec<String>,
        /// Transport to use: `ws` (WebSocket) or `wt` (WebTransport; needs an https:// URL).
        #[arg(long, default_value = "ws", value_parser = ["ws", "wt"])]
        transport: String,
        /// Trust exactly the server certificate with this SHA-256 (hex), as
        /// printed by a server started with --dev-tls, instead of the system's
        /// roots (for wss:// and for WebTransport).
        #[arg(long, env = "CONVENE_CERT_SHA256")]
        cert_sha256: Option<String>,
    },
    /// Play the server side of every client case against a client started by a command.
    Client {
        /// Address to listen on for the client under test.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The command that starts the client under test; `{url}` in it is replaced by the runner's URL.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn ws_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.contains("/convene/ws") {
        url.to_string()
    } else {
        format!(
            "{}/convene/ws",
            url.replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        )
    }
}

/// The WebTransport URL for a server URL: `https://host:port` becomes
/// `https://host:port/convene/wt`.
fn wt_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    if !url.starts_with("https://") {
        return Err(format!(
            "WebTransport needs an https:// URL (a server with TLS), not {url}"
        ));
    }
    if url.contains("/convene/wt") {
        Ok(url.to_string())
    } else {
        Ok(format!("{url}/convene/wt"))
    }
}

fn finish(cli: &Cli, report: &Report, suite: &str) -> ExitCode {
    if let Some(p) = &cli.json
        && let Err(e) = std::fs::write(p, report.to_json())
    {
        eprintln!("convene-conformance: cannot write {}: {e}", p.display());
    }
    if let Some(p) = &cli.junit
        && let Err(e) = std::fs::write(p, report.to_junit(suite))
    {
        eprintln!("convene-conformance: cannot write {}: {e}", p.display());
    }
    println!("{}", report.summary());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Server {
            url,
            transport,
            cert_sha256,
        } => {
            let wt = transport == "wt";
            let mut urls = Vec::new();
            for u in url {
                urls.push(if wt {
                    match wt_url(u) {
                        Ok(u) => u,
                        Err(e) => {
                            eprintln!("convene-conformance: {e}");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    ws_url(u)
                });
            }
            let url = urls.remove(0);
            let mut capabilities = cli.capabilities.clone();
            if cli.auth_secret.is_some() {
                for c in ["auth", "moderation"] {
                    if !capabilities.iter().any(|x| x == c) {
                        capabilities.push(c.to_string());
                    }
                }
            }
            let target = ServerTarget {
                url,
                more_urls: urls,
                filter: cli.filter.clone(),
                capabilities,
                step_timeout: std::time::Duration::from_millis(cli.step_timeout_ms),
                auth_secret: cli.auth_secret.clone(),
                token: cli.token.clone(),
                transport: if wt { Transport::Wt } else { Transport::Ws },
                cert_sha256: cert_sha256.clone(),
            };
            println!(
                "convene-conformance: server cases against {}{} over {}",
                target.url,
                target
                    .more_urls
                    .iter()
                    .map(|u| format!(" + {u}"))
                    .collect::<String>(),
                if wt { "WebTransport" } else { "WebSocket" }
            );
            let report = run_server_cases(&target, |r| println!("{}", r.line())).await;
            finish(&cli, &report, if wt { "server-wt" } else { "server-ws" })
        }
        Command::Client { listen, command } => {
            let target = ServerTarget {
                url: String::new(),
                more_urls: Vec::new(),
                filter: cli.filter.clone(),
                capabilities: cli.capabilities.clone(),
                step_timeout: std::time::Duration::from_millis(cli.step_timeout_ms),
                auth_secret: cli.auth_secret.clone(),
                token: cli.token.clone(),
                transport: Transport::Ws,
                cert_sha256: None,
            };
            println!(
                "convene-conformance: client cases against `{}` over WebSocket",
                command.join(" ")
            );
            let report =
                run_client_cases(&target, listen, command, |r| println!("{}", r.line())).await;
            finish(&cli, &report, "client-ws")
        }
    }
}
