//! Test utilities for Convene. The kernel here has no `netem`, so network
//! impairment is done in user space: [`UdpRelay`] sits between QUIC clients
//! and the server and drops, delays, reorders and rate-limits datagrams,
//! each decision drawn from a seeded generator so a failing run can be
//! replayed with the seed it prints.

mod udp_relay;

pub use udp_relay::{Impairment, RelayStats, UdpRelay};
