//! The Convene reference server: rooms, transports, fan-out, limits and operations.
//!
//! Built on the sans-IO core in `convene-protocol`; the room router
//! ([`room`]) and subscriber queues ([`outbox`]) are sans-IO too. The rest
//! is the tokio shell.

pub mod outbox;
pub mod room;
