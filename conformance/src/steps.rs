//! One function per kind of step
//! ([`Action`](convene_protocol::cases::Action)), named after it; `Run::step`
//! only dispatches. Each plays its step for actor `who` and returns the
//! failure text the report prints.

use std::time::Duration;

use bytes::Bytes;
use convene_protocol::cases::{Field, Msg, Value as CaseValue};
use convene_protocol::limits::max;
use convene_protocol::{ErrorCode, Layer, MediaFrame, MediaHeader};
use prost_reflect::{DynamicMessage, Value};

use crate::actor::{Actor, deadline};
use crate::dynamic::{Var, build, capture, message_name};
use crate::{Run, closed_note, error_code_of, publish_frame};

/// `Action::Connect`: opens a transport connection and sends nothing.
pub(super) async fn connect(run: &mut Run<'_>, who: &str) -> Result<(), String> {
    let a = run.connect(who).await?;
    run.actors.insert(who.to_string(), a);
    Ok(())
}

/// `Action::Accept`: waits for the client under test to connect.
pub(super) async fn accept(run: &mut Run<'_>, who: &str) -> Result<(), String> {
    let listener = run
        .listener
        .as_ref()
        .ok_or("`accept` belongs to client cases")?;
    let (tcp, _) = tokio::time::timeout(run.target.step_timeout, listener.accept())
        .await
        .map_err(|_| "the client under test did not connect".to_string())?
        .map_err(|e| format!("accept failed: {e}"))?;
    let ws = tokio_tungstenite::accept_async(tcp)
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    let actor = Actor::new(ws, run.receives.clone(), run.sends.clone());
    // A reconnecting client replaces its earlier connection.
    run.actors.insert(who.to_string(), actor);
    Ok(())
}

/// `Action::Handshake`: connects, says Hello, keeps what Welcome tells
/// (`<who>.id`, the idle timeout, the limits) and joins `join` if given.
pub(super) async fn handshake(
    run: &mut Run<'_>,
    who: &str,
    join: Option<&str>,
    name: &str,
    subscribe_all: bool,
    features: &'static [&'static str],
) -> Result<(), String> {
    let a = run.connect(who).await?;
    run.actors.insert(who.to_string(), a);
    // Feature names as case values: leaked once per step, a few bytes.
    let names: &'static [CaseValue] =
        Vec::leak(features.iter().map(|f| CaseValue::Str(f)).collect());
    let hello = Msg {
        name: "hello",
        fields: Vec::leak(vec![
            Field {
                name: "versions",
                value: CaseValue::List(&[CaseValue::Int(1)]),
            },
            Field {
                name: "client_kind",
                value: CaseValue::Enum("CLIENT_KIND_CONFORMANCE"),
            },
            Field {
                name: "features",
                value: CaseValue::List(names),
            },
        ]),
    };
    run.send_msg(who, &hello, 0).await?;
    let welcome = run
        .expect(
            who,
            &Msg {
                name: "welcome",
                fields: &[],
            },
        )
        .await?;
    let id = capture(&welcome, "welcome.participant_id").ok_or("Welcome without participant_id")?;
    run.vars.insert(format!("{who}.id"), id);
    if let Some(Var::Int(ms)) = capture(&welcome, "welcome.idle_timeout_ms")
        && ms > 0
    {
        run.idle_ms = ms;
    }
    if let Some(Value::Message(limits)) = welcome.get_field_by_name("welcome").and_then(|w| match w
        .into_owned()
    {
        Value::Message(w) => w.get_field_by_name("limits").map(|l| l.into_owned()),
        _ => None,
    }) {
        run.limits.insert(who.to_string(), limits);
    }
    if let Some(meeting) = join {
        let meeting = format!("{meeting}{}", run.suffix);
        let mut join = DynamicMessage::new(
            run.schema
                .client
                .get_field_by_name("join")
                .and_then(|f| f.kind().as_message().cloned())
                .ok_or("no Join")?,
        );
        join.set_field_by_name("meeting_id", Value::String(meeting));
        join.set_field_by_name("display_name", Value::String(name.to_string()));
        join.set_field_by_name("subscribe_all", Value::Bool(subscribe_all));
        let mut env = DynamicMessage::new(run.schema.client.clone());
        env.set_field_by_name("join", Value::Message(join));
        let mut bytes = vec![0x01];
        prost::Message::encode(&env, &mut bytes).map_err(|e| e.to_string())?;
        run.actor(who)?.send(bytes.into()).await?;
        run.expect(
            who,
            &Msg {
                name: "joined",
                fields: &[],
            },
        )
        .await?;
    }
    Ok(())
}

/// `Action::Send`: sends one control message.
pub(super) async fn send(
    run: &mut Run<'_>,
    who: &str,
    msg: &Msg,
    request_id: u32,
) -> Result<(), String> {
    run.send_msg(who, msg, request_id).await
}

/// `Action::Flood`: sends one control message `count` times without waiting.
pub(super) async fn flood(
    run: &mut Run<'_>,
    who: &str,
    msg: &Msg,
    count: u32,
) -> Result<(), String> {
    let frame = build(&run.sends, msg, 0, &run.ctx())?;
    let frames: Vec<Bytes> = (0..count).map(|_| frame.clone()).collect();
    run.actor(who)?.send_many(frames).await
}

/// The frames of one `send_media` step.
pub(super) struct MediaSpec {
    /// The first sequence number.
    pub seq: u32,
    /// The KEY flag.
    pub key: bool,
    /// Payload bytes.
    pub size: u32,
    /// How many frames.
    pub count: u32,
    /// Milliseconds between frames; 0 sends them at once.
    pub interval_ms: u32,
    /// Sent as LAYERED frames with this prefix.
    pub layer: Option<Layer>,
}

/// `Action::SendMedia`: sends `count` media frames with consecutive
/// sequence numbers from `seq`, as LAYERED frames when a layer is given.
pub(super) async fn send_media(
    run: &mut Run<'_>,
    who: &str,
    track: Option<&CaseValue>,
    sender: Option<&CaseValue>,
    spec: MediaSpec,
) -> Result<(), String> {
    let track = run.int(track)?.unwrap_or(1) as u32;
    let sender = run.int(sender)?.unwrap_or(0) as u32;
    let payload = vec![0x5a; spec.size as usize];
    let frames: Vec<Bytes> = (0..spec.count)
        .map(|i| {
            let h = MediaHeader {
                key: spec.key,
                sender,
                track_id: track,
                sequence: spec.seq.wrapping_add(i),
                capture_timestamp_us: 1,
            };
            match spec.layer {
                Some(l) => MediaFrame::build_layered(l, &h, None, &payload)
                    .as_wire()
                    .clone(),
                None => MediaFrame::build(&h, None, &payload).into_bytes(),
            }
        })
        .collect();
    if spec.interval_ms == 0 {
        return run.actor(who)?.send_many(frames).await;
    }
    for f in frames {
        run.actor(who)?.send(f).await?;
        tokio::time::sleep(Duration::from_millis(spec.interval_ms as u64)).await;
    }
    Ok(())
}

/// What an `expect_media` step looks for besides sender and track.
pub(super) struct MediaWanted {
    /// The KEY flag.
    pub key: Option<bool>,
    /// Payload bytes.
    pub size: Option<u32>,
    /// A LAYERED frame of this encoding.
    pub encoding: Option<u8>,
    /// LAYERED (true) or MEDIA (false).
    pub layered: Option<bool>,
}

/// `Action::SendRaw`: sends the bytes, given in hex, as one frame.
pub(super) async fn send_raw(run: &mut Run<'_>, who: &str, hex: &str) -> Result<(), String> {
    let bytes = hex::decode(hex).map_err(|e| e.to_string())?;
    run.actor(who)?.send(bytes.into()).await
}

/// `Action::SendPrefix`: sends only the transport's header of a frame of
/// `length` bytes.
pub(super) async fn send_prefix(run: &mut Run<'_>, who: &str, length: u32) -> Result<(), String> {
    run.actor(who)?.send_prefix(length).await
}

/// `Action::SendText`: sends a WebSocket text message.
pub(super) async fn send_text(run: &mut Run<'_>, who: &str, text: &str) -> Result<(), String> {
    run.actor(who)?.send_text(text).await
}

/// `Action::Expect`: waits for a control message matching `msg` and
/// captures the variables `caps` names.
pub(super) async fn expect(
    run: &mut Run<'_>,
    who: &str,
    msg: &Msg,
    caps: &[(&str, &str)],
) -> Result<(), String> {
    let got = run.expect(who, msg).await?;
    for (var, path) in caps.iter() {
        let v = capture(&got, path).ok_or_else(|| format!("nothing at {path} to capture"))?;
        run.vars.insert(var.to_string(), v);
    }
    Ok(())
}

/// `Action::ExpectError`: waits for an Error with `code` (and
/// `request_id`, if given).
pub(super) async fn expect_error(
    run: &mut Run<'_>,
    who: &str,
    code: ErrorCode,
    request_id: Option<u32>,
) -> Result<(), String> {
    run.expect_error(who, code, request_id).await
}

/// `Action::ExpectMedia`: waits for a media frame matching whichever of
/// sender, track, key flag and size are given.
pub(super) async fn expect_media(
    run: &mut Run<'_>,
    who: &str,
    from: Option<&CaseValue>,
    track: Option<&CaseValue>,
    want: MediaWanted,
) -> Result<(), String> {
    let from = run.int(from)?;
    let track = run.int(track)?;
    let MediaWanted {
        key,
        size,
        encoding,
        layered,
    } = want;
    let until = deadline(run.target.step_timeout);
    loop {
        let a = run.actor(who)?;
        while let Some(m) = a.media.pop_front() {
            let h = m.header();
            if from.is_none_or(|f| f as u32 == h.sender)
                && track.is_none_or(|t| t as u32 == h.track_id)
                && key.is_none_or(|k| k == h.key)
                && size.is_none_or(|s| s as usize == m.payload().len())
                && encoding.is_none_or(|e| m.layer().is_some_and(|l| l.encoding == e))
                && layered.is_none_or(|l| l == m.layer().is_some())
            {
                return Ok(());
            }
        }
        if !a.pump(until).await {
            return Err(format!("no matching media frame arrived{}", closed_note(a)));
        }
    }
}

/// `Action::ExpectNo`: checks, after a round trip on every actor, that
/// `what` (a message name, or `media`) has not arrived.
pub(super) async fn expect_no(run: &mut Run<'_>, who: &str, what: &str) -> Result<(), String> {
    run.sync_all(who).await?;
    let a = run.actor(who)?;
    a.pump_ready().await;
    if what == "media" {
        if let Some(m) = a.media.front() {
            return Err(format!(
                "received a media frame from {} on track {}",
                m.header().sender,
                m.header().track_id
            ));
        }
    } else if let Some(m) = a
        .control
        .iter()
        .find(|m| message_name(m).as_deref() == Some(what))
    {
        return Err(format!("received {what}: {m:?}"));
    }
    Ok(())
}

/// `Action::ExpectClose`: waits for the connection to close, after an
/// Error with `code` and with the matching close code if `code` is given.
pub(super) async fn expect_close(
    run: &mut Run<'_>,
    who: &str,
    code: Option<ErrorCode>,
) -> Result<(), String> {
    let wait = Duration::from_millis(max::HANDSHAKE_TIMEOUT_MS.max(run.idle_ms as u32) as u64)
        + run.target.step_timeout;
    let until = deadline(wait);
    let a = run.actor(who)?;
    while a.closed.is_none() {
        if !a.pump(until).await && a.closed.is_none() {
            return Err("the connection did not close".into());
        }
    }
    a.pump_ready().await;
    if let Some(code) = code {
        let got: Vec<i32> = a.control.iter().filter_map(error_code_of).collect();
        if !got.contains(&(code as i32)) {
            return Err(format!(
                "closed without an Error {} first (errors seen: {got:?})",
                code.name()
            ));
        }
        let ws_code = a.closed.flatten();
        if ws_code != Some(4000 + code as u16) {
            return Err(format!(
                "WebSocket close code {ws_code:?}, expected {}",
                4000 + code as u16
            ));
        }
    }
    Ok(())
}

/// `Action::Silence`: the actor stops sending anything, Pong included.
pub(super) fn silence(run: &mut Run<'_>, who: &str) -> Result<(), String> {
    run.actor(who)?.silence();
    Ok(())
}

/// `Action::ExceedTrackLimit`: publishes one track more than Welcome's
/// `max_tracks_per_participant` and expects TOO_MANY_TRACKS.
pub(super) async fn exceed_track_limit(run: &mut Run<'_>, who: &str) -> Result<(), String> {
    let n = run
        .limits
        .get(who)
        .and_then(|l| l.get_field_by_name("max_tracks_per_participant"))
        .and_then(|v| v.as_u32())
        .ok_or("no max_tracks_per_participant in Welcome")?;
    for id in 1..=n + 1 {
        let frame = publish_frame(id)?;
        run.actor(who)?.send(frame).await?;
        if id <= n {
            run.expect(
                who,
                &Msg {
                    name: "track_published",
                    fields: &[],
                },
            )
            .await?;
        }
    }
    run.expect_error(who, ErrorCode::TooManyTracks, None).await
}

/// `Action::SleepMs`: waits `ms` milliseconds.
pub(super) async fn sleep_ms(ms: u32) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    Ok(())
}
