//! `convene-h3-compare`: a convene-server whose WebTransport endpoint is
//! h3 + h3-webtransport instead of web-transport-quinn, for measuring the
//! two stacks against each other (benches/README.md, "Choosing the
//! WebTransport stack"). Measurement only: it skips the per-session stream
//! limits and checks of `server/src/wt/`.
//!
//! It starts the server as usual (`--dev-tls`, its own WebTransport on the
//! HTTPS port number), opens the h3 endpoint on another UDP port with the
//! same certificate and points the discovery document at it, so that
//! `convene load --server https://…` and the browser client go there.
//!
//! ```sh
//! cargo run --release -- 127.0.0.1:18096 ../../browser-client/dist   # prints the addresses and the hash
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use convene_protocol::StreamDecoder;
use convene_protocol::frame::{FRAME_MEDIA, length_prefix};
use convene_server::connection::{Connection, FrameSink, Incoming, drive};
use convene_server::outbox::Drained;
use convene_server::state::AppState;
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

type Session = WebTransportSession<h3_quinn::Connection, Bytes>;
type ControlWrite =
    tokio::io::WriteHalf<h3_webtransport::stream::BidiStream<h3_quinn::BidiStream<Bytes>, Bytes>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18096".into())
        .parse()?;
    let mut config = convene_server::Config {
        listen,
        dev_tls: true,
        ..convene_server::Config::default()
    };
    // The browser client to serve (browser-client/dist), for the Chromium check.
    if let Some(dir) = std::env::args().nth(2) {
        config.web_dir = dir.into();
    }
    let server = convene_server::start(config).await?;
    let identity = server
        .identity
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no TLS identity"))?;
    let mut tls = identity.server_config(&[b"h3"])?;
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut qconfig = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(1000));
    qconfig.transport_config(Arc::new(transport));
    // The h3 endpoint: the server's port number plus one, on UDP.
    let h3_addr = SocketAddr::new(server.addr.ip(), server.addr.port() + 1);
    let endpoint = quinn::Endpoint::server(qconfig, h3_addr)?;
    server.state.set_wt_addr(h3_addr);
    println!(
        "http {}  h3 webtransport https://{h3_addr}/convene/wt  sha256 {}",
        server.addr,
        identity.sha256_hex()
    );
    while let Some(incoming) = endpoint.accept().await {
        let state = server.state.clone();
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                let peer = conn.remote_address().ip();
                if let Err(e) = serve(conn, state, peer).await {
                    eprintln!("h3 session from {peer}: {e}");
                }
            }
        });
    }
    Ok(())
}

/// Completes the HTTP/3 and WebTransport handshakes and runs the Convene
/// session through the server's own connection driver.
async fn serve(conn: quinn::Connection, state: Arc<AppState>, peer: IpAddr) -> anyhow::Result<()> {
    let mut h3 = h3::server::builder()
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_webtransport_sessions(1)
        .send_grease(true)
        .build(h3_quinn::Connection::new(conn))
        .await?;
    let session = loop {
        let Some(resolver) = h3.accept().await? else {
            return Ok(());
        };
        let (req, stream) = resolver.resolve_request().await?;
        if req.method() == http::Method::CONNECT {
            break Arc::new(Session::accept(req, stream, h3).await?);
        }
    };
    state
        .acquire_connection(peer)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let max_frame = state.config.max_frame_bytes as usize;
    let (tx, mut rx) = mpsc::channel::<Incoming>(256);
    // The first bidirectional stream is the control stream.
    let control = loop {
        match session.accept_bi().await? {
            Some(AcceptedBi::BidiStream(_, s)) => break s,
            Some(AcceptedBi::Request(..)) => continue,
            None => return Ok(()),
        }
    };
    let (mut control_read, control_write) = tokio::io::split(control);
    let reader = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut decoder = StreamDecoder::new(max_frame);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match control_read.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Incoming::Closed).await;
                        return;
                    }
                    Ok(n) => decoder.push(&buf[..n]),
                }
                while let Ok(Some(f)) = decoder.next_frame() {
                    if tx.send(Incoming::Frame(f)).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    let uni = {
        let (tx, session) = (tx.clone(), session.clone());
        tokio::spawn(async move {
            while let Ok(Some((_, mut s))) = session.accept_uni().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut frame = Vec::new();
                    if s.read_to_end(&mut frame).await.is_ok() && frame.len() <= max_frame {
                        let _ = tx.send(Incoming::Frame(frame.into())).await;
                    }
                });
            }
        })
    };
    let datagrams = {
        let mut datagrams = session.datagram_reader();
        tokio::spawn(async move {
            while let Ok(d) = datagrams.read_datagram().await {
                let mut p = d.into_payload();
                let frame = p.copy_to_bytes(p.remaining());
                if tx.send(Incoming::Frame(frame)).await.is_err() {
                    return;
                }
            }
        })
    };
    let conn = Connection::new(state.clone(), "wt", peer);
    let sink = H3Sink {
        session,
        control: control_write,
        opened: 0,
    };
    let incoming = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    drive(conn, sink, incoming, state, peer).await;
    reader.abort();
    uni.abort();
    datagrams.abort();
    Ok(())
}

/// The writing side: control frames length-prefixed on the control stream,
/// audio as datagrams, video on a unidirectional stream per frame (the same
/// mapping, PROTOCOL.md §3.3, and the same task per stream as `wt.rs`).
struct H3Sink {
    session: Arc<Session>,
    control: ControlWrite,
    opened: u32,
}

impl FrameSink for H3Sink {
    async fn write_batch(&mut self, batch: &mut Vec<Bytes>, lanes: Drained) -> Result<(), ()> {
        for (i, f) in batch.drain(..).enumerate() {
            let audio = i >= lanes.control && i < lanes.control + lanes.audio;
            if f.first() != Some(&FRAME_MEDIA) {
                let mut out = Vec::with_capacity(4 + f.len());
                out.extend_from_slice(&length_prefix(f.len()));
                out.extend_from_slice(&f);
                self.control.write_all(&out).await.map_err(|_| ())?;
                continue;
            }
            if audio
                && self
                    .session
                    .datagram_sender()
                    .send_datagram(f.clone())
                    .is_ok()
            {
                continue;
            }
            self.opened = self.opened.wrapping_add(1);
            let session = self.session.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = session.open_uni(session.session_id()).await {
                    let _ = s.write_all(&f).await;
                    let _ = s.shutdown().await;
                }
            });
        }
        Ok(())
    }

    async fn close(&mut self, _reason: &convene_protocol::CloseReason) {
        let _ = self.control.shutdown().await;
    }
}
