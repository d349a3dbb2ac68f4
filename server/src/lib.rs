//! The Convene reference server: rooms, transports, fan-out, limits and operations.
//!
//! Built on the sans-IO core in `convene-protocol`; this crate is the IO shell.
