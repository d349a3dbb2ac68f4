//! The Convene client side in Rust: a transport that speaks WebTransport
//! (PROTOCOL.md §3.3) and falls back to WebSocket (§3.2), and an async
//! session over it. The native CLI, the load generator and the tests use it.

pub mod session;
pub mod tls;
pub mod transport;

pub use session::{Client, ClientError, PathReport};
pub use transport::{
    ConnectError, Endpoint, PathCounters, Received, SendClass, SendError, Transport,
    TransportChoice, TransportKind,
};
