//! The room router: one publisher to 10, 100 and 1000 subscribers. Reports
//! time per delivered frame (criterion's throughput is per delivery) and
//! prints allocations per delivered frame; once with one encoding to
//! everyone, once with a simulcast track of three encodings whose
//! subscribers each choose one (PROTOCOL.md §6.6).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use convene_benches::{CountingAlloc, allocations};
use convene_protocol::v1::{
    Encoding, Participant, Subscribe, SubscriptionPreferences, TrackInfo, TrackKind,
};
use convene_protocol::{Layer, MediaFrame, MediaHeader, RoomRequest, Timestamp};
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
fn local(outbox: Arc<Outbox>, sfu: bool) -> Local {
    Local {
        outbox,
        mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
        sfu,
        reactions: false,
    }
}

fn room(subscribers: u32, kind: TrackKind) -> (Room, Vec<Arc<Outbox>>) {
    room_with(subscribers, kind, false)
}

/// A room of one publisher and `subscribers` who take everything; with
/// `simulcast` everyone speaks sfu.1, the track has three encodings, and
/// every other subscriber asks for the smallest.
fn room_with(subscribers: u32, kind: TrackKind, simulcast: bool) -> (Room, Vec<Arc<Outbox>>) {
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
        local(new_outbox(), simulcast),
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
            local(o.clone(), simulcast),
        )
        .unwrap();
        outs.push(o);
    }
    let mut track = TrackInfo {
        track_id: 1,
        kind: kind as i32,
        codec: "avc1.42E01F".into(),
        ..Default::default()
    };
    if simulcast {
        track.width = 1280;
        track.height = 720;
        track.encodings = [(320, 180), (640, 360), (1280, 720)]
            .iter()
            .map(|&(width, height)| Encoding {
                width,
                height,
                frame_rate: 30,
                temporal_layers: 1,
                ..Default::default()
            })
            .collect();
    }
    room.handle(t0, 1, RoomRequest::Publish(track), 0).unwrap();
    if simulcast {
        for pid in (2..2 + subscribers).step_by(2) {
            let prefs = SubscriptionPreferences {
                max_height: 180,
                ..Default::default()
            };
            let s = Subscribe {
                participant_id: 1,
                track_id: 1,
                preferences: Some(prefs),
            };
            room.handle(t0, pid, RoomRequest::Subscribe(s), 0).unwrap();
        }
    }
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
        measure(
            &mut group,
            "router_fanout_video_2kB",
            n,
            &mut room,
            &outs,
            std::slice::from_ref(&frame),
        );
    }
    group.finish();
}

/// Times routing `frames` (one publisher's, each subscriber receiving one of
/// them) to `n` subscribers whose queues are drained between rounds, per
/// delivery; then prints the allocations per delivered frame in steady state.
fn measure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: u32,
    room: &mut Room,
    outs: &[Arc<Outbox>],
    frames: &[MediaFrame],
) {
    let mut sink = Vec::with_capacity(64);
    // Warm the queues so their buffers exist, as in steady state; and check
    // that what is timed is what it says (each subscriber gets one frame).
    for _ in 0..4 {
        let delivered: u32 = frames
            .iter()
            .map(|f| room.route(Timestamp(0), 1, f).unwrap().delivered)
            .sum();
        assert_eq!(delivered, n, "{name}/{n}: every subscriber gets one frame");
    }
    drain_all(outs, &mut sink);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for f in frames {
                    black_box(room.route(Timestamp(0), 1, f).unwrap());
                }
                total += start.elapsed();
                drain_all(outs, &mut sink);
            }
            total
        })
    });
    let before = allocations();
    let rounds = 100u64;
    for _ in 0..rounds {
        for f in frames {
            room.route(Timestamp(0), 1, f).unwrap();
        }
        drain_all(outs, &mut sink);
    }
    let per = (allocations() - before) as f64 / (rounds * n as u64) as f64;
    println!("{name}/{n}: {per:.4} allocations per delivered frame");
}

/// A picture of a simulcast track, in each of its three encodings.
fn picture(seq: u32, key: bool) -> [MediaFrame; 3] {
    [0u8, 1, 2].map(|encoding| {
        let h = MediaHeader {
            key,
            sender: 1,
            track_id: 1,
            sequence: seq,
            capture_timestamp_us: seq as u64 * 33_333,
        };
        let layer = Layer {
            encoding,
            ..Layer::default()
        };
        MediaFrame::build_layered(layer, &h, None, &[0u8; 2000])
    })
}

fn fanout_layered(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_fanout_simulcast_2kB");
    for n in [10u32, 100, 1000] {
        let (mut room, outs) = room_with(n, TrackKind::Video, true);
        let mut sink = Vec::with_capacity(64);
        // A key picture starts every subscriber on its encoding.
        // (Later pictures repeat one delta picture: subscribers stay on
        // their encoding, which is the steady state measured.)
        let seq = 1u32;
        for f in picture(seq, true) {
            room.route(Timestamp(0), 1, &f).unwrap();
        }
        drain_all(&outs, &mut sink);
        let frames = picture(seq + 1, false);
        // One picture (three frames, one per encoding) reaches each
        // subscriber once: throughput counts those deliveries.
        measure(
            &mut group,
            "router_fanout_simulcast_2kB",
            n,
            &mut room,
            &outs,
            &frames,
        );
    }
    group.finish();
}

/// Sharing out every subscriber's bandwidth (PROTOCOL.md §6.6.3) in a room
/// of `n` members who each publish a three-encoding camera and receive
/// everyone else's with a `max_receive_kbps`: what one allocation costs,
/// timed as a routed frame whose time forces one against the same frame
/// without.
fn budget_allocation(c: &mut Criterion) {
    use convene_protocol::v1::ReceiverSettings;
    let mut group = c.benchmark_group("router_budget_allocation");
    for n in [10u32, 100] {
        let limits = RoomLimits {
            max_participants: 100_000,
            max_tracks: 8,
            max_rooms: 1,
            ..RoomLimits::default()
        };
        let mut room = Room::new("bench", limits);
        let mut outs = Vec::new();
        for pid in 1..=n {
            let o = Arc::new(Outbox::new(
                OutboxLimits {
                    max_media_frames: 1 << 20,
                    max_media_bytes: usize::MAX,
                    ..OutboxLimits::default()
                },
                Box::new(NoWake),
            ));
            let p = Participant {
                participant_id: pid,
                display_name: "p".into(),
                ..Default::default()
            };
            room.join(Timestamp(0), p, true, local(o.clone(), true))
                .unwrap();
            outs.push(o);
        }
        for pid in 1..=n {
            let track = TrackInfo {
                track_id: 1,
                kind: TrackKind::Video as i32,
                codec: "avc1.42E01F".into(),
                width: 1280,
                height: 720,
                encodings: [(320, 180), (640, 360), (1280, 720)]
                    .iter()
                    .map(|&(width, height)| Encoding {
                        width,
                        height,
                        frame_rate: 30,
                        temporal_layers: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            room.handle(Timestamp(0), pid, RoomRequest::Publish(track), 0)
                .unwrap();
            let settings = ReceiverSettings {
                max_receive_kbps: 4000,
                ..Default::default()
            };
            room.handle(
                Timestamp(0),
                pid,
                RoomRequest::ReceiverSettings(settings),
                0,
            )
            .unwrap();
        }
        let mut sink = Vec::new();
        let [frame, ..] = picture(1, true);
        let mut t = 0u64;
        group.bench_function(BenchmarkId::new("with_allocation", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A second later each time: the periodic allocation is due.
                    t += 1_000_000;
                    let start = Instant::now();
                    black_box(room.route(Timestamp(t), 1, &frame).unwrap());
                    total += start.elapsed();
                    drain_all(&outs, &mut sink);
                }
                total
            })
        });
        group.bench_function(BenchmarkId::new("without", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    black_box(room.route(Timestamp(t), 1, &frame).unwrap());
                    total += start.elapsed();
                    drain_all(&outs, &mut sink);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, fanout_layered, budget_allocation);
criterion_main!(benches);
