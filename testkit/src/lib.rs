//! Test utilities for Convene. The kernel here has no `netem`, so network
//! impairment is done in user space: [`UdpRelay`] sits between QUIC clients
//! and the server and drops, delays, reorders and rate-limits datagrams,
//! each decision drawn from a seeded generator so a failing run can be
//! replayed with the seed it prints. [`TcpRelay`] is its twin for WebSocket
//! paths: it limits rate and adds delay with little buffering of its own, so
//! a sender into a slow path sees its socket writes block. [`pki::TestPki`]
//! makes certificates for tests of TLS listeners.

pub mod pki;
mod tcp_relay;
mod udp_relay;

pub use tcp_relay::{Direction, TcpImpairment, TcpRelay, TcpRelayStats};
pub use udp_relay::{Impairment, RelayStats, UdpRelay};
