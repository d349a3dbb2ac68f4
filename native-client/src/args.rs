//! Flags every subcommand that talks to a server shares.

use anyhow::Context;
use convene_client::{Endpoint, TransportChoice};

/// Where the server is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The server's base URL. `https://` allows WebTransport; `http://` is
    /// WebSocket only. `convene stream` takes several, separated by commas:
    /// it moves to the next when one is busy (SERVER_BUSY) or unreachable.
    #[arg(long, env = "CONVENE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// Trust exactly the certificate with this SHA-256 (hex), as printed by a
    /// server started with `--dev-tls`, instead of the system's roots.
    #[arg(long, env = "CONVENE_CERT_SHA256")]
    pub(crate) cert_sha256: Option<String>,
    /// `auto` tries WebTransport and falls back to WebSocket; `wt` or `ws` force one.
    #[arg(long, default_value = "auto")]
    pub(crate) transport: TransportChoice,
    /// Bearer token for servers that require one.
    #[arg(long, env = "CONVENE_TOKEN")]
    pub(crate) token: Option<String>,
    /// The UDP port of the server's WebTransport endpoint, when something in
    /// between (a port mapping, a UDP relay) puts it elsewhere than the
    /// server says. Without it, the port the server advertises in its
    /// `Alt-Svc` header is used (another than the URL's when the server
    /// runs with `--webtransport-listen`).
    #[arg(long, env = "CONVENE_WEBTRANSPORT_PORT", value_name = "PORT")]
    pub(crate) webtransport_port: Option<u16>,
}

/// How long asking the server for its WebTransport port may take.
const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ServerArgs {
    /// Connects to `endpoint` with `config` and joins `meeting` as `user`,
    /// subscribed to everything, within `timeout` (a waiting room counts:
    /// `who` names us in its note, "us" or "the recorder"). Refusals and
    /// closes come back as errors that say what to do.
    pub(crate) async fn join(
        &self,
        endpoint: &Endpoint,
        config: convene_protocol::ClientSessionConfig,
        meeting: &str,
        user: &str,
        who: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<(convene_client::Client, convene_protocol::v1::Joined)> {
        use convene_protocol::ClientEvent;
        let server = &self.server;
        tokio::time::timeout(timeout, async {
            let mut c = convene_client::Client::connect(endpoint, self.transport, config)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot connect: {e}; is the server running at {server}? (set it with --server)"
                    )
                })?;
            loop {
                match c.next_event().await {
                    Some(ClientEvent::Welcome(_)) => {
                        c.join(meeting, user, true)?;
                    }
                    Some(ClientEvent::Joined(j)) => return Ok((c, j)),
                    Some(ClientEvent::Waiting(_)) => {
                        eprintln!("in the waiting room until a host admits {who}");
                    }
                    Some(ClientEvent::JoinRefused(e)) | Some(ClientEvent::Error(e)) => {
                        anyhow::bail!(refusal(&e, meeting));
                    }
                    Some(_) => {}
                    None => anyhow::bail!(
                        "the server closed the session: {}",
                        c.close_reason().map_or("no reason".into(), |r| format!(
                            "{} {}",
                            r.transport_reason(),
                            r.text
                        ))
                    ),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the server at {server} did not let us join within {timeout:?}"))?
    }

    /// The endpoint these flags describe.
    pub(crate) async fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let urls = self.urls();
        if urls.len() > 1 {
            anyhow::bail!("--server: this command talks to one server; give one URL");
        }
        self.endpoint_of(urls[0]).await
    }

    /// Every server given, in order.
    pub(crate) fn urls(&self) -> Vec<&str> {
        self.server
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The endpoints of every server given, in order.
    pub(crate) async fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        let mut endpoints = Vec::new();
        for u in self.urls() {
            endpoints.push(self.endpoint_of(u).await?);
        }
        Ok(endpoints)
    }

    /// The endpoint of `url`. Its WebTransport port is `--webtransport-port`,
    /// or else the one the server advertises in its `Alt-Svc` header (another
    /// than the URL's when the server runs with `--webtransport-listen`); a
    /// server that cannot be asked is left to the connection to report.
    async fn endpoint_of(&self, url: &str) -> anyhow::Result<Endpoint> {
        let mut e = Endpoint::new(url).with_context(|| format!("--server {url}"))?;
        if let Some(h) = &self.cert_sha256 {
            e = e.with_cert_sha256_hex(h).context("--cert-sha256")?;
        }
        // Without TLS the lookup answers None at once: no WebTransport.
        e.wt_port = match self.webtransport_port {
            Some(port) => Some(port),
            None => match tokio::time::timeout(DISCOVERY_TIMEOUT, e.advertised_webtransport_port())
                .await
            {
                Ok(Ok(port)) => port,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "cannot read the server's Alt-Svc");
                    None
                }
                Err(_) => {
                    tracing::debug!("no answer for the server's Alt-Svc in time");
                    None
                }
            },
        };
        Ok(e)
    }
}

/// A server's Error as one phrase: its text and the spec's name for its code.
pub(crate) fn describe(e: &convene_protocol::v1::Error) -> String {
    let code = convene_protocol::ErrorCode::try_from(e.code)
        .map_or_else(|_| format!("code {}", e.code), |c| c.name().to_string());
    if e.text.is_empty() {
        code
    } else {
        format!("{} ({code})", e.text)
    }
}

/// What to tell the user when the server refuses the session or the join.
pub(crate) fn refusal(e: &convene_protocol::v1::Error, meeting_id: &str) -> String {
    use convene_protocol::ErrorCode as E;
    match E::try_from(e.code) {
        Ok(E::AuthRequired) => format!(
            "the server requires a token: {}; pass one with --token (or CONVENE_TOKEN)",
            describe(e)
        ),
        Ok(E::AuthInvalid | E::AuthExpired) => format!(
            "the server refused the token: {}; get a fresh one and pass it with --token",
            describe(e)
        ),
        Ok(E::PermissionDenied) => format!(
            "the token does not allow this: {}; ask for one that grants it",
            describe(e)
        ),
        _ => format!(
            "the server refused to let us join `{meeting_id}`: {}",
            describe(e)
        ),
    }
}
