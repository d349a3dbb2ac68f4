//! Criterion benchmarks of Convene's hot paths live in `benches/benches/`.
