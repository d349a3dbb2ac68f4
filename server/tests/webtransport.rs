//! WebTransport (PROTOCOL.md §3.3) with a Rust client pinning the published
//! certificate hash: a WebTransport participant and a WebSocket participant
//! in one room exchange media both ways; frames larger than the
//! subscriber's flow-control window arrive whole; stream limits hold; a
//! managed meeting's waiting room and limit hold for WebTransport participants.

mod common;

use bytes::Bytes;
use common::*;
use convene_protocol::frame::length_prefix;
use convene_protocol::v1::{
    self, ClientMessage, ServerMessage, TrackInfo, TrackKind, client_message::Msg as C,
    server_message::Msg as S,
};
use convene_protocol::{
    Frame, MediaFrame, MediaHeader, StreamDecoder, decode_frame, encode_control,
};

struct WtClient {
    session: web_transport_quinn::Session,
    send: web_transport_quinn::SendStream,
    recv: web_transport_quinn::RecvStream,
    decoder: StreamDecoder,
}

impl WtClient {
    async fn connect(server: &convene_server::Server) -> WtClient {
        let hash = hex::decode(server.cert_sha256.as_ref().unwrap()).unwrap();
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(vec![hash])
            .unwrap();
        WtClient::connect_with(server, client).await
    }

    /// Connects with a QUIC connection that lets the server send at most
    /// `window` bytes of stream data beyond what this client has read.
    async fn connect_with_receive_window(server: &convene_server::Server, window: u32) -> WtClient {
        use web_transport_quinn::quinn;
        let hash = hex::decode(server.cert_sha256.as_ref().unwrap()).unwrap();
        let mut tls = convene_client::tls::client_config(Some(hash)).unwrap();
        tls.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.receive_window(quinn::VarInt::from_u32(window));
        config.transport_config(std::sync::Arc::new(transport));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        WtClient::connect_with(server, web_transport_quinn::Client::new(endpoint, config)).await
    }

    /// Connects to a server running as its own process, at WebTransport
    /// `port`, trusting certificate `hash`.
    async fn connect_to(port: u16, hash: Vec<u8>) -> WtClient {
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(vec![hash])
            .unwrap();
        WtClient::connect_port(port, client).await
    }

    async fn connect_with(
        server: &convene_server::Server,
        client: web_transport_quinn::Client,
    ) -> WtClient {
        let port = server.wt_addr.expect("WebTransport is on with TLS").port();
        WtClient::connect_port(port, client).await
    }

    async fn connect_port(port: u16, client: web_transport_quinn::Client) -> WtClient {
        let url = url::Url::parse(&format!("https://127.0.0.1:{port}/convene/wt")).unwrap();
        let session = client.connect(url).await.expect("WebTransport session");
        let (send, recv) = session.open_bi().await.unwrap();
        WtClient {
            session,
            send,
            recv,
            decoder: StreamDecoder::new(1 << 20),
        }
    }

    async fn send(&mut self, msg: C) {
        let f = encode_control(&ClientMessage {
            request_id: 0,
            msg: Some(msg),
        });
        self.send.write_all(&length_prefix(f.len())).await.unwrap();
        self.send.write_all(&f).await.unwrap();
    }

    async fn expect(&mut self, pred: impl Fn(&S) -> bool) -> S {
        let mut buf = vec![0u8; 8192];
        loop {
            while let Some(f) = self.decoder.next_frame().unwrap() {
                if let Frame::Control(ServerMessage { msg: Some(m) }) =
                    decode_frame::<ServerMessage>(f, 1 << 20).unwrap()
                {
                    if let S::Ping(p) = &m {
                        self.send(C::Pong(v1::Pong {
                            timestamp_us: p.timestamp_us,
                        }))
                        .await;
                    }
                    if pred(&m) {
                        return m;
                    }
                }
            }
            let n = tokio::time::timeout(DEADLINE, self.recv.read(&mut buf))
                .await
                .expect("control stream timed out")
                .unwrap()
                .expect("control stream ended");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Says Hello; returns the participant id the Welcome gives.
    async fn hello(&mut self) -> u32 {
        self.send(C::Hello(v1::Hello {
            versions: vec![1],
            ..Default::default()
        }))
        .await;
        let S::Welcome(w) = self.expect(|m| matches!(m, S::Welcome(_))).await else {
            unreachable!()
        };
        w.participant_id
    }

    /// Says Hello with `token`, then Join `meeting`: the participant id and
    /// the first answer (Joined, Waiting or Error).
    async fn join_with_token(&mut self, token: &str, meeting: &str) -> (u32, S) {
        self.send(C::Hello(v1::Hello {
            versions: vec![1],
            auth_token: token.into(),
            ..Default::default()
        }))
        .await;
        let S::Welcome(w) = self.expect(|m| matches!(m, S::Welcome(_))).await else {
            unreachable!()
        };
        self.send(C::Join(v1::Join {
            meeting_id: meeting.into(),
            display_name: "wt".into(),
            subscribe_all: true,
        }))
        .await;
        let first = self
            .expect(|m| matches!(m, S::Joined(_) | S::Waiting(_) | S::Error(_)))
            .await;
        (w.participant_id, first)
    }

    /// Says Hello and joins `meeting`; returns the participant id.
    async fn join(&mut self, meeting: &str, subscribe_all: bool) -> u32 {
        let id = self.hello().await;
        self.send(C::Join(v1::Join {
            meeting_id: meeting.into(),
            display_name: "wt".into(),
            subscribe_all,
        }))
        .await;
        self.expect(|m| matches!(m, S::Joined(_))).await;
        id
    }

    async fn send_media(&self, frame: Bytes) {
        let mut s = self.session.open_uni().await.unwrap();
        s.write_all(&frame).await.unwrap();
        s.finish().unwrap();
    }

    /// The next media frame, from a unidirectional stream or a datagram
    /// (the server sends audio as datagrams when they fit).
    async fn next_media(&self) -> MediaFrame {
        let bytes = tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                s = self.session.accept_uni() => {
                    Bytes::from(s.unwrap().read_to_end(1 << 20).await.unwrap())
                }
                d = self.session.read_datagram() => d.unwrap(),
            }
        })
        .await
        .expect("no media frame");
        MediaFrame::parse(bytes).unwrap()
    }
}

fn audio(seq: u32) -> Bytes {
    key_frame(seq, b"opus")
}

/// A key frame of track 1 carrying `payload`.
fn key_frame(seq: u32, payload: &[u8]) -> Bytes {
    MediaFrame::build(
        &MediaHeader {
            key: true,
            sender: 0,
            track_id: 1,
            sequence: seq,
            capture_timestamp_us: 0,
        },
        None,
        payload,
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_and_websocket_participants_share_a_room() {
    let server = server(|c| c.dev_tls = true).await;
    let mut wt = WtClient::connect(&server).await;
    let wt_id = wt.join("mixed", true).await;
    // With TLS on, the WebSocket side is wss on the same port number (TCP).
    let mut ws = common::Client::joined_tls(&server, "mixed", true).await;

    let track = |kind: TrackKind| TrackInfo {
        track_id: 1,
        kind: kind as i32,
        codec: "opus".into(),
        ..Default::default()
    };
    wt.send(C::Publish(v1::Publish {
        track: Some(track(TrackKind::Audio)),
    }))
    .await;
    ws.expect(|m| matches!(m, S::TrackPublished(t) if t.participant_id == wt_id))
        .await;
    ws.send(C::Publish(v1::Publish {
        track: Some(track(TrackKind::Audio)),
    }))
    .await;
    wt.expect(|m| matches!(m, S::TrackPublished(t) if t.participant_id == ws.id))
        .await;

    // WebTransport → WebSocket, on a unidirectional stream.
    wt.send_media(audio(1)).await;
    loop {
        if let Some(Seen::Media(m)) = ws.next().await {
            assert_eq!(m.header().sender, wt_id);
            assert_eq!(&m.payload()[..], b"opus");
            break;
        }
    }
    // WebSocket → WebTransport.
    ws.send_raw(audio(2)).await;
    let m = wt.next_media().await;
    assert_eq!(m.header().sender, ws.id);
    assert_eq!(m.header().sequence, 2);
    // The server asked this (quinn) subscriber to acknowledge less often.
    assert!(
        (*wt.session).stats().frame_rx.ack_frequency >= 1,
        "no ACK_FREQUENCY frame from the server"
    );
    server.shutdown().await;
}

async fn joined_wt(server: &convene_server::Server) -> WtClient {
    let mut wt = WtClient::connect(server).await;
    wt.hello().await;
    wt
}

/// The session's close code, once it closes.
async fn close_code(wt: &WtClient) -> Option<u32> {
    match tokio::time::timeout(DEADLINE, wt.session.closed())
        .await
        .expect("the session did not close")
    {
        web_transport_quinn::SessionError::WebTransportError(
            web_transport_quinn::WebTransportError::Closed(code, _),
        ) => Some(code),
        other => panic!("closed otherwise: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_another_path_is_refused_with_404() {
    let server = server(|c| c.dev_tls = true).await;
    let hash = hex::decode(server.cert_sha256.as_ref().unwrap()).unwrap();
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(vec![hash])
        .unwrap();
    let port = server.wt_addr.unwrap().port();
    let url = url::Url::parse(&format!("https://127.0.0.1:{port}/elsewhere")).unwrap();
    let err = match tokio::time::timeout(DEADLINE, client.connect(url))
        .await
        .expect("the server answers")
    {
        Ok(_) => panic!("a session on /elsewhere was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("404"), "refused otherwise: {err}");
    // The endpoint still takes sessions on its own path.
    joined_wt(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bidirectional_stream_is_wrong_stream() {
    let server = server(|c| c.dev_tls = true).await;
    let wt = joined_wt(&server).await;
    let (mut s, _r) = wt.session.open_bi().await.unwrap();
    // The server may close the session as soon as it sees the stream, before
    // this byte goes out: only the close code matters.
    let _ = s.write_all(b"x").await;
    assert_eq!(
        close_code(&wt).await,
        Some(convene_protocol::ErrorCode::WrongStream as u32)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unidirectional_stream_without_a_media_frame_is_wrong_stream() {
    let server = server(|c| c.dev_tls = true).await;
    let wt = joined_wt(&server).await;
    let mut s = wt.session.open_uni().await.unwrap();
    // As above: the server may close the session before the stream ends.
    let _ = s.write_all(&[0x01, 0x62, 0x00]).await;
    let _ = s.finish();
    assert_eq!(
        close_code(&wt).await,
        Some(convene_protocol::ErrorCode::WrongStream as u32)
    );
    server.shutdown().await;
}

/// Opens up to `n` unidirectional streams and leaves them unfinished; stops
/// at the first that cannot be opened within 10 s.
async fn open_unfinished(wt: &WtClient, n: usize) -> Vec<web_transport_quinn::SendStream> {
    let mut open = Vec::new();
    for _ in 0..n {
        let opened =
            tokio::time::timeout(std::time::Duration::from_secs(10), wt.session.open_uni()).await;
        let Ok(Ok(mut s)) = opened else {
            break;
        };
        // A stream reaches the server with its first byte.
        let _ = s.write_all(&[0x02]).await;
        open.push(s);
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_more_than_the_limit_is_too_many_streams() {
    let server = server(|c| {
        c.dev_tls = true;
        c.max_concurrent_streams = 10;
    })
    .await;
    let wt = joined_wt(&server).await;
    // Eleven streams opened and left unfinished: the eleventh is one too many.
    let _open = open_unfinished(&wt, 11).await;
    assert_eq!(
        close_code(&wt).await,
        Some(convene_protocol::ErrorCode::TooManyStreams as u32)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_quics_default_of_100_is_the_one_enforced() {
    let server = server(|c| {
        c.dev_tls = true;
        c.max_concurrent_streams = 150;
    })
    .await;
    let wt = joined_wt(&server).await;
    // 151 unfinished streams: the transport lets all of them open (it does
    // not stop at 100), and the 151st is one too many.
    let open = open_unfinished(&wt, 151).await;
    assert_eq!(
        open.len(),
        151,
        "stream {} could not be opened: the transport's limit binds first",
        open.len()
    );
    assert_eq!(
        close_code(&wt).await,
        Some(convene_protocol::ErrorCode::TooManyStreams as u32)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_within_the_limit_are_fine_however_many_in_all() {
    let server = server(|c| {
        c.dev_tls = true;
        c.max_concurrent_streams = 10;
    })
    .await;
    let mut wt = joined_wt(&server).await;
    wt.send(C::Join(v1::Join {
        meeting_id: "streams".into(),
        display_name: "s".into(),
        subscribe_all: false,
    }))
    .await;
    wt.expect(|m| matches!(m, S::Joined(_))).await;
    // Fifty frames one after another, each on a finished stream: never more
    // than one open at a time, so never too many.
    for seq in 0..50 {
        let mut s = wt.session.open_uni().await.unwrap();
        s.write_all(&audio(seq)).await.unwrap();
        s.finish().unwrap();
        // Wait until the server has read it (its permit is back) by a round trip.
        wt.send(C::Ping(v1::Ping {
            timestamp_us: u64::from(seq) + 1,
        }))
        .await;
        wt.expect(|m| matches!(m, S::Pong(p) if p.timestamp_us == u64::from(seq) + 1))
            .await;
    }
    server.shutdown().await;
}

/// Video frames larger than what the subscriber's QUIC connection lets the
/// server send ahead (its connection-level receive window): every frame
/// stops part-way on the peer's credit and must resume when the subscriber
/// reads and grants more. QUIC only wakes a stream for that if the write
/// that stopped was answered "blocked", so a frame left half-written without
/// that answer would never finish and this test would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_the_subscribers_window_arrive_whole() {
    const WINDOW: u32 = 64 * 1024;
    const FRAMES: u32 = 6;
    const PAYLOAD: usize = 200_000;
    let server = server(|c| {
        c.dev_tls = true;
        // Six 200 kB frames at once are well above the default ingress rate.
        c.max_ingress_kbps = 100_000;
    })
    .await;
    let mut wt = WtClient::connect_with_receive_window(&server, WINDOW).await;
    wt.join("window", true).await;
    let mut publisher = common::Client::joined_tls(&server, "window", false).await;
    publisher.send(publish(1, TrackKind::Video)).await;
    wt.expect(|m| matches!(m, S::TrackPublished(t) if t.participant_id == publisher.id))
        .await;

    // Every stream read as it comes, as a browser does: a reader that took
    // them one after another could leave the window filled by a later
    // frame while it waits for the rest of an earlier one.
    let (tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
    let session = wt.session.clone();
    tokio::spawn(async move {
        while let Ok(mut stream) = session.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(bytes) = stream.read_to_end(1 << 20).await {
                    let _ = tx.send(MediaFrame::parse(Bytes::from(bytes)));
                }
            });
        }
    });

    // All at once, so they queue behind one another at the server.
    for seq in 0..FRAMES {
        publisher
            .feed_raw(key_frame(seq, &vec![seq as u8; PAYLOAD]))
            .await;
    }
    publisher.flush().await;

    let mut seen = Vec::new();
    for _ in 0..FRAMES {
        let m = tokio::time::timeout(DEADLINE, frames.recv())
            .await
            .expect("a frame stayed stuck at the server")
            .expect("the session ended before every frame arrived")
            .expect("a well-formed media frame");
        assert_eq!(m.header().sender, publisher.id);
        let seq = m.header().sequence;
        assert_eq!(m.payload().len(), PAYLOAD, "frame {seq} arrived cut");
        assert!(
            m.payload().iter().all(|b| *b == seq as u8),
            "frame {seq} arrived with another frame's bytes"
        );
        seen.push(seq);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..FRAMES).collect::<Vec<_>>());
    server.shutdown().await;
}

/// The WebTransport port and certificate hash of a server running as its own process.
fn wt_of(node: &common::process::Node) -> (u16, Vec<u8>) {
    // Both lines follow the one Node::start waits for, within moments.
    let deadline = std::time::Instant::now() + DEADLINE;
    while node.log_find("\"sha256\":\"").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate hash logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let line = node
        .log_find("WebTransport on https://")
        .expect("WebTransport is on");
    let port = line
        .split("WebTransport on https://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .expect("the WebTransport address is logged")
        .port();
    let hash = node
        .log_find("\"sha256\":\"")
        .and_then(|l| l.split("\"sha256\":\"").nth(1).map(|r| r[..64].to_string()))
        .expect("the certificate hash is logged");
    (port, hex::decode(hash).unwrap())
}

/// Opens `n` unidirectional streams on `wt` and writes `len` bytes of an
/// unfinished media frame on each, in the background.
fn write_partial_streams(wt: &WtClient, n: usize, len: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let session = wt.session.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut s)) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), session.open_uni())
                        .await
                else {
                    return;
                };
                let mut frame = vec![0u8; len];
                frame[0] = 0x02;
                // Blocks for good once flow control stops it, or fails once stopped.
                let _ = s.write_all(&frame).await;
                std::future::pending::<()>().await;
            })
        })
        .collect()
}

/// The largest RSS of `node` over `samples` readings 50 ms apart.
async fn peak_rss(node: &common::process::Node, samples: usize) -> u64 {
    let mut peak = 0;
    for _ in 0..samples {
        peak = peak.max(node.rss_kib());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    peak
}

/// Four sessions each open 100 media streams and send 200 KiB of a frame on
/// each without finishing it. Before: every byte was kept, 26 MB a session
/// (106 MB for four). Now a session holds its budget (4 frames of partial
/// media, as much queued for its task and QUIC's window of the same size,
/// PROTOCOL.md §11.5), sheds the streams beyond it, and stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_media_streams_cannot_make_a_session_hold_more_than_its_budget() {
    let node = common::process::Node::start(&["--dev-tls"]);
    let (port, hash) = wt_of(&node);
    let base = node.rss_kib();
    let mut sessions = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..4 {
        let mut wt = WtClient::connect_to(port, hash.clone()).await;
        wt.hello().await;
        writers.extend(write_partial_streams(&wt, 100, 200 << 10));
        sessions.push(wt);
    }
    let peak = peak_rss(&node, 60).await;
    let grew = peak.saturating_sub(base);
    println!(
        "RSS {base} KiB before, {peak} KiB at most: +{} KiB a session",
        grew / 4
    );
    assert!(
        grew < 4 * 6 * 1024,
        "4 sessions grew the server by {grew} KiB"
    );
    // Each session still answers.
    for wt in &mut sessions {
        wt.send(C::Ping(v1::Ping { timestamp_us: 7 })).await;
        wt.expect(|m| matches!(m, S::Pong(p) if p.timestamp_us == 7))
            .await;
    }
    for w in writers {
        w.abort();
    }
}

/// The same before Hello: the budget is then that of the 8 KiB Hello
/// limit, so sessions that never authenticate hold almost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello_a_session_holds_almost_nothing() {
    let node = common::process::Node::start(&["--dev-tls", "--handshake-timeout-ms", "30000"]);
    let (port, hash) = wt_of(&node);
    let base = node.rss_kib();
    let mut sessions = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..16 {
        let wt = WtClient::connect_to(port, hash.clone()).await;
        writers.extend(write_partial_streams(&wt, 50, 200 << 10));
        sessions.push(wt);
    }
    let peak = peak_rss(&node, 40).await;
    let grew = peak.saturating_sub(base);
    println!(
        "RSS {base} KiB before, {peak} KiB at most: +{} KiB a session before Hello",
        grew / 16
    );
    assert!(
        grew < 16 * 512,
        "16 sessions before Hello grew the server by {grew} KiB"
    );
    for w in writers {
        w.abort();
    }
}

/// A QUIC connection that never opens a WebTransport session holds a
/// handshaking slot, and is closed at the handshake timeout (before: kept
/// for good and not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_without_a_session_is_counted_and_timed_out() {
    use web_transport_quinn::quinn;
    let server = server(|c| {
        c.dev_tls = true;
        c.handshake_timeout_ms = 500;
    })
    .await;
    let hash = hex::decode(server.cert_sha256.as_ref().unwrap()).unwrap();
    let mut tls = convene_client::tls::client_config(Some(hash)).unwrap();
    tls.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Keep-alives: the connection is never idle, only sessionless.
    transport.keep_alive_interval(Some(std::time::Duration::from_millis(100)));
    config.transport_config(std::sync::Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, server.wt_addr.unwrap(), "localhost")
        .unwrap()
        .await
        .expect("QUIC handshake");
    assert_eq!(
        server.state.slots.counts().0,
        1,
        "the connection holds a handshaking slot"
    );
    let closed = tokio::time::timeout(DEADLINE, conn.closed())
        .await
        .expect("the server closes a connection with no session");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.state.slots.counts().0 != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_meetings_waiting_room_and_limit_hold_for_webtransport_participants() {
    use common::managed::{ADMIN, SECRET, admin, error_code, token};
    let server = server(|c| {
        c.dev_tls = true;
        c.admin_token = Some(ADMIN.into());
        c.admin_listen = "127.0.0.1:0".parse().unwrap();
        c.auth_secret = Some(SECRET.into());
        c.ad_hoc_meetings = false;
    })
    .await;
    let mut a = admin(&server, Some(ADMIN)).await;
    a.create_meeting(convene_admin::CreateMeetingRequest {
        meeting_id: "wt-clinic".into(),
        settings: Some(convene_admin::MeetingSettings {
            waiting_room: true,
            max_participants: 2,
            ..Default::default()
        }),
    })
    .await
    .expect("created");
    let host_token = token(&mut a, "host", &["moderate", "subscribe"]).await;
    let guest_token = token(&mut a, "guest", &["subscribe"]).await;
    let mut host = WtClient::connect(&server).await;
    let (_, first) = host.join_with_token(&host_token, "wt-clinic").await;
    assert!(
        matches!(first, S::Joined(_)),
        "a moderator walks in: {first:?}"
    );
    let mut guest = WtClient::connect(&server).await;
    let (guest_id, first) = guest.join_with_token(&guest_token, "wt-clinic").await;
    assert!(matches!(first, S::Waiting(_)), "the guest waits: {first:?}");
    host.expect(|m| matches!(m, S::AdmissionRequest(r) if r.participant.as_ref().is_some_and(|p| p.participant_id == guest_id)))
        .await;
    host.send(C::Admit(v1::Admit {
        participant_id: guest_id,
    }))
    .await;
    guest.expect(|m| matches!(m, S::Joined(_))).await;
    let mut third = WtClient::connect(&server).await;
    let (_, first) = third.join_with_token(&host_token, "wt-clinic").await;
    assert_eq!(error_code(&first), convene_protocol::ErrorCode::RoomFull);
    let mut stray = WtClient::connect(&server).await;
    let (_, first) = stray.join_with_token(&host_token, "not-created").await;
    assert_eq!(
        error_code(&first),
        convene_protocol::ErrorCode::UnknownMeeting
    );
    server.shutdown().await;
}
