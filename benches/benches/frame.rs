//! Frame encode and decode: control messages and media frames, and the
//! server's sender stamp.

use std::hint::black_box;

use bytes::Bytes;
use convene_protocol::v1::{ClientMessage, Ping, client_message::Msg};
use convene_protocol::{MediaFrame, MediaHeader, decode_frame, encode_control};
use criterion::{Criterion, criterion_group, criterion_main};

fn frames(c: &mut Criterion) {
    let ping = ClientMessage {
        request_id: 1,
        msg: Some(Msg::Ping(Ping {
            timestamp_us: 1_700_000_000_000_000,
        })),
    };
    let encoded = encode_control(&ping);
    c.bench_function("control_encode_ping", |b| {
        b.iter(|| encode_control(black_box(&ping)))
    });
    c.bench_function("control_decode_ping", |b| {
        b.iter(|| decode_frame::<ClientMessage>(black_box(encoded.clone()), 1 << 20).unwrap())
    });
    let header = MediaHeader {
        key: true,
        sender: 0,
        track_id: 1,
        sequence: 7,
        capture_timestamp_us: 1,
    };
    let payload = vec![0u8; 2000];
    c.bench_function("media_build_2kB", |b| {
        b.iter(|| MediaFrame::build(black_box(&header), None, black_box(&payload)))
    });
    let media: Bytes = MediaFrame::build(&header, None, &payload).into_bytes();
    c.bench_function("media_parse_and_stamp_2kB", |b| {
        b.iter(|| {
            MediaFrame::parse(black_box(media.clone()))
                .unwrap()
                .stamp_sender(42)
        })
    });
}

criterion_group!(benches, frames);
criterion_main!(benches);
