//! The shape of the conformance case tables generated from
//! `spec/v1/conformance/*.toml` (PROTOCOL.md §12). The runner in
//! `convene-conformance` executes them; the data is in [`CASES`].

use crate::ErrorCode;
pub use crate::media::{AudioLevel, Layer};

pub use crate::generated_cases::CASES;

/// One conformance case.
#[derive(Debug)]
pub struct Case {
    /// Stable identifier, e.g. `handshake.welcome`.
    pub id: &'static str,
    /// What the case checks, in one sentence.
    pub title: &'static str,
    /// The PROTOCOL.md section it checks.
    pub section: &'static str,
    /// The spec file it comes from.
    pub file: &'static str,
    /// Whether the runner tests a server or a client.
    pub target: Target,
    /// The transports the case applies to.
    pub transports: &'static [Transport],
    /// Capabilities the implementation under test must have for the case to apply.
    pub requires: &'static [&'static str],
    /// What to do, in order.
    pub steps: &'static [Step],
}

/// What kind of implementation a case tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The runner plays clients against a server.
    Server,
    /// The runner plays the server against a client.
    Client,
}

/// A transport a case runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket (PROTOCOL.md §3.2).
    Ws,
    /// WebTransport (PROTOCOL.md §3.3).
    Wt,
}

/// One step of a case, done by or to one actor.
#[derive(Debug)]
pub struct Step {
    /// The actor (connection) the step is about; empty for `SleepMs`.
    pub actor: &'static str,
    /// What to do.
    pub action: Action,
}

/// The step vocabulary of PROTOCOL.md §12.
#[derive(Debug)]
pub enum Action {
    /// Open a transport connection and send nothing.
    Connect,
    /// Wait for the client under test to connect.
    Accept,
    /// Connect, Hello, expect Welcome (capturing `<actor>.id`), and optionally join.
    Handshake {
        /// The meeting to join, if any.
        join: Option<&'static str>,
        /// The display name to join with.
        name: &'static str,
        /// Whether to join with `subscribe_all`.
        subscribe_all: bool,
        /// Feature names for `Hello.features`.
        features: &'static [&'static str],
    },
    /// Send one control message.
    Send {
        /// The message.
        msg: Msg,
        /// The envelope's request id.
        request_id: u32,
    },
    /// Send one control message many times without waiting.
    Flood {
        /// The message.
        msg: Msg,
        /// How many times.
        count: u32,
    },
    /// Send media frames.
    SendMedia {
        /// The track id.
        track: Option<Value>,
        /// The first sequence number.
        seq: u32,
        /// The KEY flag.
        key: bool,
        /// The sender field, 0 when absent.
        sender: Option<Value>,
        /// Payload length in bytes.
        size: u32,
        /// How many frames, with consecutive sequence numbers.
        count: u32,
        /// Milliseconds between frames.
        interval_ms: u32,
        /// Sent as LAYERED frames with this prefix (§6.6.2).
        layer: Option<Layer>,
    },
    /// Send the bytes as one frame.
    SendRaw {
        /// The frame, in hex.
        hex: &'static str,
    },
    /// Send only the transport's header of a frame of `length` bytes (the
    /// WebSocket frame header, or the control stream's length prefix) and
    /// none of its body: a server must judge the frame from its length.
    SendPrefix {
        /// The length announced.
        length: u32,
    },
    /// Send a WebSocket text message.
    SendText {
        /// The text.
        text: &'static str,
    },
    /// Wait for a control message matching `msg`, skipping others.
    Expect {
        /// The fields that must match.
        msg: Msg,
        /// Variables to capture: (name, field path from the envelope's message).
        capture: &'static [(&'static str, &'static str)],
    },
    /// Wait for an Error with this code.
    ExpectError {
        /// The code.
        code: ErrorCode,
        /// The request id the error must echo, when given.
        request_id: Option<u32>,
    },
    /// Wait for a media frame matching the fields given.
    ExpectMedia {
        /// The sender field.
        from: Option<Value>,
        /// The track id.
        track: Option<Value>,
        /// The KEY flag.
        key: Option<bool>,
        /// The payload length.
        size: Option<u32>,
        /// A LAYERED frame of this encoding.
        encoding: Option<u8>,
        /// LAYERED (true) or MEDIA (false).
        layered: Option<bool>,
    },
    /// After a round trip on every connection, nothing of this kind has arrived.
    ExpectNo {
        /// `media` or a message name.
        what: &'static str,
    },
    /// Wait for the connection to close, after an Error with `code` when given.
    ExpectClose {
        /// The error expected before the close.
        code: Option<ErrorCode>,
    },
    /// Stop sending anything, Pong included, on this connection.
    Silence,
    /// Publish tracks up to the advertised limit, then one more, expecting TOO_MANY_TRACKS.
    ExceedTrackLimit,
    /// Wait this many milliseconds.
    SleepMs(u32),
}

/// A control message given by the fields that matter.
#[derive(Debug)]
pub struct Msg {
    /// The envelope's oneof field name, e.g. `hello`.
    pub name: &'static str,
    /// The message's fields.
    pub fields: &'static [Field],
}

/// One field of a [`Msg`].
#[derive(Debug)]
pub struct Field {
    /// The protobuf field name.
    pub name: &'static str,
    /// Its value.
    pub value: Value,
}

/// A field value.
#[derive(Debug)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(&'static str),
    /// A captured variable, by name.
    Var(&'static str),
    /// An enum value, by its protobuf name.
    Enum(&'static str),
    /// Bytes, in hex.
    Bytes(&'static str),
    /// A string (or, in hex, bytes) repeated this many times.
    Repeat(&'static str, i64),
    /// A repeated field; when expected, each item must match some received item.
    List(&'static [Value]),
    /// A nested message.
    Msg(&'static [Field]),
}
