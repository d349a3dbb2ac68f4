//! Entry points shared by the cargo-fuzz targets in `fuzz/` and by the test
//! that replays their corpora on stable Rust. Each must never panic, whatever
//! the input.

use bytes::Bytes;

use crate::time::Timestamp;
use crate::v1::{ClientMessage, Joined, ServerMessage};
use crate::{
    ClientSession, ClientSessionConfig, MediaFrame, ServerEvent, ServerSession,
    ServerSessionConfig, StreamDecoder, decode_frame,
};

/// Decodes `data` as a frame in both directions, as a media frame, and as a
/// WebTransport control stream.
pub fn frame(data: &[u8]) {
    let b = Bytes::copy_from_slice(data);
    let _ = decode_frame::<ClientMessage>(b.clone(), 1 << 20);
    let _ = decode_frame::<ServerMessage>(b.clone(), 1 << 20);
    let _ = MediaFrame::parse(b);
    let mut d = StreamDecoder::new(4096);
    d.push(data);
    while let Ok(Some(_)) = d.next_frame() {}
}

/// Splits fuzz input into operations: `[op][len: u16 BE][len bytes]`, repeated.
fn ops(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 3 {
            return None;
        }
        let op = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        Some((op, body))
    })
}

/// Drives a server session with frames, clock advances and transport loss,
/// answering Hello and Join as a permissive room would.
pub fn server_session(data: &[u8]) {
    let mut now = Timestamp(1_000_000);
    let mut s = ServerSession::new(now, ServerSessionConfig::default());
    for (op, body) in ops(data) {
        match op % 4 {
            0 | 1 => s.handle_frame(now, Bytes::copy_from_slice(body)),
            2 => {
                let ms = body.first().copied().unwrap_or(0) as u64 * 100;
                now = Timestamp(now.0 + ms * 1000);
                s.handle_timeout(now);
            }
            _ => s.handle_transport_closed(),
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                // The session asked: answering it right away is never misuse.
                ServerEvent::Hello { .. } => s
                    .accept_hello(now, 1, "fuzz".into(), Bytes::new())
                    .expect("a Hello event is answerable"),
                ServerEvent::Join { join, .. } => s
                    .joined(Joined {
                        meeting_id: join.meeting_id,
                        participants: Vec::new(),
                        locked: false,
                        e2ee_required: false,
                    })
                    .expect("a Join event is answerable"),
                _ => {}
            }
        }
        while s.poll_transmit().is_some() {}
        let _ = s.poll_timeout();
    }
}

/// Drives a client session with server frames, clock advances and local joins.
pub fn client_session(data: &[u8]) {
    let mut now = Timestamp(1_000_000);
    let mut c = ClientSession::new(now, ClientSessionConfig::default());
    c.connected(now);
    for (op, body) in ops(data) {
        match op % 4 {
            0 | 1 => c.handle_frame(now, Bytes::copy_from_slice(body)),
            2 => {
                let ms = body.first().copied().unwrap_or(0) as u64 * 100;
                now = Timestamp(now.0 + ms * 1000);
                c.handle_timeout(now);
            }
            _ => {
                let _ = c.join(now, "fuzz", "fuzzer", true);
            }
        }
        while c.poll_event().is_some() {}
        while c.poll_transmit().is_some() {}
        let _ = c.poll_timeout();
    }
}

/// Parses `data` as an SFrame header (RFC 9605 §4.3); a header that parses
/// must encode to bytes that parse back to it.
pub fn sframe_header(data: &[u8]) {
    if let Ok((h, len)) = crate::sframe::Header::parse(data) {
        assert!(len <= 17, "an SFrame header is at most 17 bytes");
        let again = h.encode();
        assert_eq!(
            crate::sframe::Header::parse(&again),
            Ok((h, again.len())),
            "re-encoded header"
        );
    }
}

/// Two E2EE members (participants 1 and 2) with each other's keys, as after
/// an honest exchange: the starting point of the fuzz target and the benches.
pub fn keyed_pair() -> (crate::e2ee::Keyring, crate::e2ee::Keyring) {
    use crate::e2ee::Keyring;
    let mut rings = [
        Keyring::new("fuzz", 1, [1; 32]),
        Keyring::new("fuzz", 2, [2; 32]),
    ];
    rings[0].participant_joined(2);
    rings[1].participant_joined(1);
    let mut queue = std::collections::VecDeque::from([(1u32, rings[0].start())]);
    // In order, as the server delivers one sender's messages.
    while let Some((from, m)) = queue.pop_front() {
        let to = if from == 1 { 2 } else { 1 };
        let out = rings[to as usize - 1]
            .receive(from, &m.payload)
            .expect("honest key messages are accepted");
        queue.extend(out.send.into_iter().map(|s| (to, s)));
    }
    let [a, b] = rings;
    (a, b)
}

/// Feeds `data` to an E2EE member: the first byte picks an E2EE payload from
/// participant 1 (0), an encrypted media payload from it (1), or (2) an
/// alteration XORed into a real encrypted frame, which must be refused
/// unless it changes nothing.
pub fn sframe_frame(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut a, mut b) = keyed_pair();
    match mode % 3 {
        0 => {
            let _ = b.receive(1, rest);
        }
        1 => {
            let _ = b.decrypt(1, b"", rest);
        }
        _ => {
            let meta = b"media header";
            let ct = a.encrypt(meta, b"an encoded frame");
            let mut bad = ct.clone();
            for (x, d) in bad.iter_mut().zip(rest) {
                *x ^= d;
            }
            let r = b.decrypt(1, meta, &bad);
            if bad == ct {
                assert_eq!(r.as_deref(), Ok(&b"an encoded frame"[..]));
            } else {
                assert!(r.is_err(), "an altered frame decrypted");
            }
        }
    }
}
