//! The client against the real server on loopback: both transports, the
//! automatic choice, media both ways, and clear errors.

use std::time::Duration;

mod common;

use common::{DEADLINE, joined, wait_for};
use convene_client::{Client, ConnectError, Endpoint, TransportChoice, TransportKind};
use convene_protocol::v1::{TrackInfo, TrackKind, server_message::Msg as S};
use convene_protocol::{ClientEvent, ClientSessionConfig, MediaFrame, MediaHeader};
use convene_server::config::Config;

async fn server(tls: bool) -> convene_server::Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        dev_tls: tls,
        ..Config::default()
    };
    convene_server::start(config).await.expect("server starts")
}

fn endpoint(s: &convene_server::Server) -> Endpoint {
    match &s.cert_sha256 {
        Some(h) => Endpoint::new(&format!("https://127.0.0.1:{}", s.addr.port()))
            .unwrap()
            .with_cert_sha256_hex(h)
            .unwrap(),
        None => Endpoint::new(&format!("http://{}", s.addr)).unwrap(),
    }
}

fn frame(track: u32, seq: u32, key: bool, len: usize) -> MediaFrame {
    MediaFrame::build(
        &MediaHeader {
            key,
            sender: 0,
            track_id: track,
            sequence: seq,
            capture_timestamp_us: 1,
        },
        None,
        &vec![seq as u8; len],
    )
}

fn track(id: u32, kind: TrackKind) -> TrackInfo {
    TrackInfo {
        track_id: id,
        kind: kind as i32,
        codec: if kind == TrackKind::Audio {
            "opus"
        } else {
            "avc1.42E01F"
        }
        .into(),
        ..Default::default()
    }
}

/// Publishes an audio track (1) and a video track (2) and waits until the
/// other side has seen both announced.
async fn publish_both(publisher: &mut Client, subscriber: &mut Client) {
    publisher.publish(track(1, TrackKind::Audio)).unwrap();
    publisher.publish(track(2, TrackKind::Video)).unwrap();
    let pid = publisher.participant_id();
    for id in [1, 2] {
        wait_for(subscriber, |e| {
            matches!(e, ClientEvent::Room(S::TrackPublished(t))
                if t.participant_id == pid && t.track.as_ref().is_some_and(|t| t.track_id == id))
        })
        .await;
    }
}

/// Sends audio (small, datagrams on WebTransport) and video (large, streams)
/// from `a` and checks that `b` receives each, stamped with `a`'s id.
async fn media_flows(a: &mut Client, b: &mut Client) {
    publish_both(a, b).await;
    let sender = a.participant_id();
    let mut seen_audio = 0;
    let mut seen_video = 0;
    let mut seq = 0;
    // Datagrams may be lost even on loopback; keep sending until enough arrive.
    let got = tokio::time::timeout(DEADLINE, async {
        loop {
            seq += 1;
            a.send_media(frame(1, seq, true, 80)).unwrap();
            a.send_media(frame(2, seq, seq == 1, 3000)).unwrap();
            let tick = tokio::time::sleep(Duration::from_millis(20));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    e = b.next_event() => match e {
                        Some(ClientEvent::Media(m)) => {
                            assert_eq!(m.header().sender, sender, "frames are stamped with the publisher's id");
                            match m.header().track_id {
                                1 => { assert_eq!(m.payload().len(), 80); seen_audio += 1 }
                                2 => { assert_eq!(m.payload().len(), 3000); seen_video += 1 }
                                t => panic!("unexpected track {t}"),
                            }
                        }
                        Some(_) => {}
                        None => panic!("subscriber closed: {:?}", b.close_reason()),
                    },
                    e = a.next_event() => assert!(e.is_some(), "publisher closed: {:?}", a.close_reason()),
                    _ = &mut tick => break,
                }
            }
            if seen_audio >= 10 && seen_video >= 10 {
                return (seen_audio, seen_video);
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "audio {seen_audio} and video {seen_video} frames arrived of {seq} sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_and_websocket_clients_exchange_media_both_ways() {
    let s = server(true).await;
    let ep = endpoint(&s);
    let mut wt = joined(&ep, TransportChoice::WebTransport, "mixed").await;
    let mut ws = joined(&ep, TransportChoice::WebSocket, "mixed").await;
    assert_eq!(wt.transport(), TransportKind::WebTransport);
    assert_eq!(ws.transport(), TransportKind::WebSocket);
    media_flows(&mut wt, &mut ws).await;
    media_flows(&mut ws, &mut wt).await;
    let (datagrams, streams) = wt.media_counts();
    assert!(
        datagrams >= 10,
        "the server sends audio to WebTransport as datagrams ({datagrams})"
    );
    assert!(streams >= 10, "and video on streams ({streams})");
    assert!(wt.rtt().is_some(), "QUIC reports the path's RTT");
    wt.close("done").await;
    ws.close("done").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webtransport_clients_exchange_media() {
    let s = server(true).await;
    let ep = endpoint(&s);
    let mut a = joined(&ep, TransportChoice::Auto, "wt-only").await;
    let mut b = joined(&ep, TransportChoice::Auto, "wt-only").await;
    assert_eq!(
        a.transport(),
        TransportKind::WebTransport,
        "auto prefers WebTransport over https"
    );
    media_flows(&mut a, &mut b).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_websocket_on_plain_http() {
    let s = server(false).await;
    let ep = endpoint(&s);
    let c = joined(&ep, TransportChoice::Auto, "plain").await;
    assert_eq!(c.transport(), TransportKind::WebSocket);
    let err = Client::connect(
        &ep,
        TransportChoice::WebTransport,
        ClientSessionConfig::default(),
    )
    .await
    .expect_err("WebTransport needs TLS");
    assert!(matches!(err, ConnectError::NeedsTls), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_hash_is_refused_on_both_transports() {
    let s = server(true).await;
    let ep = Endpoint::new(&format!("https://127.0.0.1:{}", s.addr.port()))
        .unwrap()
        .with_cert_sha256_hex(&"00".repeat(32))
        .unwrap();
    for choice in [TransportChoice::WebTransport, TransportChoice::WebSocket] {
        let err = Client::connect(&ep, choice, ClientSessionConfig::default())
            .await
            .expect_err("a certificate with another hash is not trusted");
        let text = err.to_string();
        assert!(text.contains("failed"), "{text}");
    }
    assert!(Endpoint::new("ftp://x").is_err());
    assert!(matches!(
        Endpoint::new("https://x")
            .unwrap()
            .with_cert_sha256_hex("abc"),
        Err(ConnectError::BadHash(_))
    ));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_websocket_when_webtransport_is_unreachable() {
    let s = server(true).await;
    // Point WebTransport at a UDP port nobody answers on.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut ep = endpoint(&s);
    ep.wt_port = Some(silent.local_addr().unwrap().port());
    let c = joined(&ep, TransportChoice::Auto, "fallback").await;
    assert_eq!(c.transport(), TransportKind::WebSocket);
    s.shutdown().await;
}
