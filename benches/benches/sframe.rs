//! End-to-end encryption cost: SFrame encryption and decryption of media
//! payloads (AES-128-GCM) at the sizes a meeting sends, through the same
//! keyring the clients use, and the key exchange when someone joins.

use std::hint::black_box;

use convene_protocol::e2ee::media_metadata;
use convene_protocol::fuzzing::keyed_pair;
use convene_protocol::media::MediaHeader;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn sframe(c: &mut Criterion) {
    let header = MediaHeader {
        key: false,
        sender: 0,
        track_id: 1,
        sequence: 7,
        capture_timestamp_us: 1,
    };
    let meta = media_metadata(&header, None);
    let mut g = c.benchmark_group("sframe");
    // An Opus frame, a typical 720p delta frame, a key frame.
    for size in [100usize, 2_000, 20_000, 100_000] {
        let payload = vec![0x5a; size];
        g.throughput(Throughput::Bytes(size as u64));
        let (mut a, mut b) = keyed_pair();
        g.bench_with_input(BenchmarkId::new("encrypt", size), &payload, |bench, p| {
            bench.iter(|| a.encrypt(black_box(&meta), black_box(p)))
        });
        // Decryption needs fresh counters (replays are refused): encrypt a
        // batch first, outside the timing.
        g.bench_with_input(BenchmarkId::new("decrypt", size), &payload, |bench, p| {
            bench.iter_batched(
                || a.encrypt(&meta, p),
                |ct| b.decrypt(1, black_box(&meta), black_box(&ct)).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    // A join in a meeting of two: both announce, both draw and seal a key.
    c.bench_function("e2ee_join_pair", |bench| bench.iter(keyed_pair));
}

criterion_group!(benches, sframe);
criterion_main!(benches);
