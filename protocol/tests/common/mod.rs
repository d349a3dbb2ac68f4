//! Helpers shared by the session tests: a virtual clock, message builders and
//! a server-session driver that plays a permissive room.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use convene_protocol::v1::{self, ClientMessage, ServerMessage, client_message, server_message};
use convene_protocol::{
    ErrorCode, Frame, ServerEvent, ServerSession, ServerSessionConfig, Timestamp, decode_frame,
    encode_control,
};

/// A control frame from client to server.
pub fn client(msg: client_message::Msg) -> Bytes {
    client_rid(0, msg)
}

/// A control frame from client to server with a request id.
pub fn client_rid(request_id: u32, msg: client_message::Msg) -> Bytes {
    encode_control(&ClientMessage {
        request_id,
        msg: Some(msg),
    })
}

/// A control frame from server to client.
pub fn server(msg: server_message::Msg) -> Bytes {
    encode_control(&ServerMessage { msg: Some(msg) })
}

/// Hello for version 1.
pub fn hello() -> client_message::Msg {
    client_message::Msg::Hello(v1::Hello {
        versions: vec![1],
        ..Default::default()
    })
}

/// Join with a valid meeting and name.
pub fn join(meeting: &str) -> client_message::Msg {
    client_message::Msg::Join(v1::Join {
        meeting_id: meeting.into(),
        display_name: "tester".into(),
        subscribe_all: false,
    })
}

/// Decodes a frame the server sent.
pub fn decode_server(frame: Bytes) -> Frame<ServerMessage> {
    decode_frame::<ServerMessage>(frame, 1 << 20).expect("server frames decode")
}

/// Decodes a frame the client sent.
pub fn decode_client(frame: Bytes) -> Frame<ClientMessage> {
    decode_frame::<ClientMessage>(frame, 1 << 20).expect("client frames decode")
}

/// Every control message the server queued, in order.
pub fn drain_server(s: &mut ServerSession) -> Vec<server_message::Msg> {
    let mut out = Vec::new();
    while let Some(f) = s.poll_transmit() {
        if let Frame::Control(m) = decode_server(f) {
            out.extend(m.msg);
        }
    }
    out
}

/// The error codes among `msgs`.
pub fn error_codes(msgs: &[server_message::Msg]) -> Vec<ErrorCode> {
    msgs.iter()
        .filter_map(|m| match m {
            server_message::Msg::Error(e) => Some(ErrorCode::try_from(e.code).unwrap()),
            _ => None,
        })
        .collect()
}

/// A server session driven with an always-yes room: Hello and Join are accepted at once.
pub struct Driver {
    pub session: ServerSession,
    pub now: Timestamp,
    pub events: Vec<ServerEvent>,
}

impl Driver {
    pub fn new(config: ServerSessionConfig) -> Self {
        let now = Timestamp::from_millis(1_000);
        Driver {
            session: ServerSession::new(now, config),
            now,
            events: Vec::new(),
        }
    }

    /// Feeds one frame and answers the resulting requests like a permissive room.
    pub fn feed(&mut self, frame: Bytes) -> Vec<server_message::Msg> {
        self.session.handle_frame(self.now, frame);
        self.pump()
    }

    /// Advances the virtual clock and fires due timers.
    pub fn advance_ms(&mut self, ms: u64) -> Vec<server_message::Msg> {
        self.now = Timestamp(self.now.0 + ms * 1000);
        self.session.handle_timeout(self.now);
        self.pump()
    }

    fn pump(&mut self) -> Vec<server_message::Msg> {
        while let Some(ev) = self.session.poll_event() {
            match &ev {
                ServerEvent::Hello { .. } => self
                    .session
                    .accept_hello(self.now, 7, "s".into(), Bytes::new())
                    .unwrap(),
                ServerEvent::Join { join, .. } => self
                    .session
                    .joined(v1::Joined {
                        meeting_id: join.meeting_id.clone(),
                        participants: vec![],
                        locked: false,
                        e2ee_required: false,
                    })
                    .unwrap(),
                _ => {}
            }
            self.events.push(ev);
        }
        drain_server(&mut self.session)
    }

    /// Handshake and join.
    pub fn joined(config: ServerSessionConfig) -> Self {
        let mut d = Driver::new(config);
        d.feed(client(hello()));
        d.feed(client(join("room")));
        d
    }
}
