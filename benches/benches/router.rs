//! The room router: one publisher to 10, 100 and 1000 subscribers. Reports
//! time per delivered frame (criterion's throughput is per delivery) and
//! prints allocations per delivered frame.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use convene_benches::{CountingAlloc, allocations};
use convene_protocol::v1::{Participant, TrackInfo, TrackKind};
use convene_protocol::{MediaFrame, MediaHeader, RoomRequest, Timestamp};
use convene_server::mailbox::Mailbox;
use convene_server::outbox::{Outbox, OutboxLimits, Wake};
use convene_server::room::{Local, Room, RoomLimits};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

/// A member of this node reached through `outbox`; nothing here reads its mailbox.
fn local(outbox: Arc<Outbox>) -> Local {
    Local {
        outbox,
        mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
        sfu: false,
    }
}

fn room(subscribers: u32, kind: TrackKind) -> (Room, Vec<Arc<Outbox>>) {
    let limits = RoomLimits {
        max_participants: 100_000,
        max_tracks: 8,
        max_rooms: 1,
        ..RoomLimits::default()
    };
    let mut room = Room::new("bench", limits);
    let new_outbox = || {
        Arc::new(Outbox::new(
            OutboxLimits {
                max_media_frames: 1 << 20,
                max_media_bytes: usize::MAX,
                ..OutboxLimits::default()
            },
            Box::new(NoWake),
        ))
    };
    let t0 = Timestamp(0);
    room.join(
        t0,
        Participant {
            participant_id: 1,
            display_name: "pub".into(),
            ..Default::default()
        },
        false,
        local(new_outbox()),
    )
    .unwrap();
    let mut outs = Vec::new();
    for pid in 2..2 + subscribers {
        let o = new_outbox();
        room.join(
            t0,
            Participant {
                participant_id: pid,
                display_name: "sub".into(),
                ..Default::default()
            },
            true,
            local(o.clone()),
        )
        .unwrap();
        outs.push(o);
    }
    let track = TrackInfo {
        track_id: 1,
        kind: kind as i32,
        codec: "avc1.42E01F".into(),
        ..Default::default()
    };
    room.handle(t0, 1, RoomRequest::Publish(track), 0).unwrap();
    let mut sink = Vec::new();
    for o in &outs {
        o.drain(&mut sink, usize::MAX);
        sink.clear();
    }
    (room, outs)
}

fn drain_all(outs: &[Arc<Outbox>], sink: &mut Vec<Bytes>) {
    for o in outs {
        o.drain(sink, usize::MAX);
        sink.clear();
    }
}

fn fanout(c: &mut Criterion) {
    let frame = MediaFrame::build(
        &MediaHeader {
            key: false,
            sender: 1,
            track_id: 1,
            sequence: 0,
            capture_timestamp_us: 0,
        },
        None,
        &[0u8; 2000],
    );
    let mut group = c.benchmark_group("router_fanout_video_2kB");
    for n in [10u32, 100, 1000] {
        let (mut room, outs) = room(n, TrackKind::Video);
        let mut sink = Vec::with_capacity(64);
        // Warm the queues so their buffers exist, as in steady state.
        for _ in 0..4 {
            room.route(Timestamp(0), 1, &frame).unwrap();
        }
        drain_all(&outs, &mut sink);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    black_box(room.route(Timestamp(0), 1, &frame).unwrap());
                    total += start.elapsed();
                    drain_all(&outs, &mut sink);
                }
                total
            })
        });
        // Allocations per delivered frame, in steady state.
        let before = allocations();
        let rounds = 100u64;
        for _ in 0..rounds {
            room.route(Timestamp(0), 1, &frame).unwrap();
            drain_all(&outs, &mut sink);
        }
        let per = (allocations() - before) as f64 / (rounds * n as u64) as f64;
        println!("router_fanout_video_2kB/{n}: {per:.4} allocations per delivered frame");
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
