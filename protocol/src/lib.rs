//! The Convene wire protocol, version 1: generated messages, framing, limits,
//! error codes and the sans-IO session machines.
//!
//! Nothing here touches a socket or a clock: bytes and a timestamp go in,
//! bytes, events and the next deadline come out. The crate builds for
//! `wasm32-unknown-unknown` as well as native targets.

pub mod auth;
pub mod cases;
pub mod e2ee;

/// The protobuf messages of `spec/v1/*.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!("generated/convene.v1.rs");
}

pub use v1::ErrorCode;

/// State machines generated from `spec/v1/states/*.toml`.
pub mod states {
    include!("generated/states.rs");
}

/// Limits and timers generated from `spec/v1/limits.toml` (PROTOCOL.md §7).
pub mod limits {
    include!("generated/limits.rs");
}

mod generated_errors {
    include!("generated/errors.rs");
}

mod generated_cases {
    include!("generated/cases.rs");
}

/// The encoded `FileDescriptorSet` of `spec/v1/*.proto`, for reflection-based tools.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!("generated/descriptor.bin");

pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod media;
pub mod rate;
pub mod session;
pub mod sframe;
pub mod simulcast;
pub mod time;
pub mod validate;

pub use error::ProtocolError;
pub use frame::{
    FEATURE_REACTIONS, FEATURE_RECORDING, FEATURE_SFU, Frame, StreamDecoder, decode_frame,
    decode_frame_with, encode_control,
};
pub use media::{AudioLevel, Layer, MediaFrame, MediaHeader, MediaPeek};
pub use session::CloseReason;
pub use session::client::{ClientEvent, ClientSession, ClientSessionConfig};
pub use session::server::{
    ApiMisuse, REACTION_RELAY_BYTES, RoomRequest, ServerEvent, ServerSession, ServerSessionConfig,
};
pub use time::{Timestamp, TokenBucket};
