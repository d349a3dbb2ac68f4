//! The Convene conformance runner: plays the spec's cases
//! (`convene_protocol::cases::CASES`, generated from
//! `spec/v1/conformance/*.toml`) against any server, or against any client.
//!
//! Every case is run or reported not applicable with a reason; a case the
//! runner cannot execute is a failure. After each server case the runner
//! checks that a fresh client is still served, so a case that harms the
//! server fails even if its own steps passed.

pub mod actor;
pub mod dynamic;
pub mod report;
mod steps;
pub mod token;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::ErrorCode;
use convene_protocol::cases::{
    Action, CASES, Case, Msg, Step, Target, Transport, Value as CaseValue,
};
use convene_protocol::limits::max;
use prost_reflect::{DynamicMessage, Value};
use tokio::time::Instant;

use crate::actor::{Actor, deadline};
use crate::dynamic::{Context, Schema, Var, Vars, build, capture, matches, message_name};
pub use crate::report::{CaseResult, Outcome, Report};

/// The default of [`ServerTarget::step_timeout`].
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the runner is pointed at.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// WebSocket URL of the server's Convene endpoint, e.g. `ws://127.0.0.1:8080/convene/ws`.
    pub url: String,
    /// Endpoints of further nodes of the same cluster: each case's actors
    /// are spread over `url` and these in turn (first actor on `url`, the
    /// next on the first of these, …), so the cases check that a meeting
    /// spread over nodes behaves as on one.
    pub more_urls: Vec<String>,
    /// Only cases whose id contains this.
    pub filter: Option<String>,
    /// Capabilities the runner can exercise (e.g. `moderation` with a moderator token).
    pub capabilities: Vec<String>,
    /// How long a waiting step waits, beyond any protocol timer involved.
    pub step_timeout: Duration,
    /// The server's HS256 token secret: the runner then signs a token for
    /// every Hello it sends that does not set `auth_token` itself (actor `m`
    /// gets the moderate grant; every actor gets the others).
    pub auth_secret: Option<String>,
    /// A fixed token for every Hello that does not set one, when there is no secret.
    pub token: Option<String>,
    /// WebSocket, or WebTransport (then `url` is the `https://…/convene/wt` URL).
    pub transport: Transport,
    /// Trust exactly the server certificate with this SHA-256 (hex), as a
    /// `--dev-tls` server publishes it; otherwise the system's roots.
    pub cert_sha256: Option<String>,
}

/// Runs every server case over WebSocket and reports each.
pub async fn run_server_cases(target: &ServerTarget, on_result: impl FnMut(&CaseResult)) -> Report {
    run_cases(
        target,
        Target::Server,
        on_result,
        async |schema: &Schema, case: &'static Case, n: usize| {
            let suffix = format!("-r{}-{n}", std::process::id());
            let mut run = Run::new(schema, target, &suffix);
            run.case(case).await?;
            run.health_check()
                .await
                .map_err(|e| format!("after the case, a fresh client was not served: {e}"))
        },
    )
    .await
}

/// Runs every client case: for each, listens on `listen`, starts `command`
/// (with `{url}` replaced by the runner's WebSocket URL) and plays the server.
pub async fn run_client_cases(
    target: &ServerTarget,
    listen: &str,
    command: &[String],
    on_result: impl FnMut(&CaseResult),
) -> Report {
    run_cases(
        target,
        Target::Client,
        on_result,
        async |schema: &Schema, case: &'static Case, n: usize| {
            client_case(schema, target, listen, command, case, n).await
        },
    )
    .await
}

/// Runs the cases for `kind` that pass the filter, each with `one` unless it
/// does not apply, and reports each as it ends.
async fn run_cases(
    target: &ServerTarget,
    kind: Target,
    mut on_result: impl FnMut(&CaseResult),
    mut one: impl AsyncFnMut(&Schema, &'static Case, usize) -> Result<(), String>,
) -> Report {
    let schema = Schema::load();
    let mut report = Report::default();
    for (n, case) in CASES.iter().filter(|c| c.target == kind).enumerate() {
        if target
            .filter
            .as_deref()
            .is_some_and(|f| !case.id.contains(f))
        {
            continue;
        }
        let started = Instant::now();
        let outcome = match not_applicable(case, target.transport, &target.capabilities) {
            Some(reason) => Outcome::NotApplicable(reason),
            None => match one(&schema, case, n).await {
                Ok(()) => Outcome::Pass,
                Err(e) => Outcome::Fail(e),
            },
        };
        let result = CaseResult::new(case, outcome, started.elapsed());
        on_result(&result);
        report.results.push(result);
    }
    report
}

async fn client_case(
    schema: &Schema,
    target: &ServerTarget,
    listen: &str,
    command: &[String],
    case: &Case,
    n: usize,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/convene/ws");
    let (program, args) = command.split_first().ok_or("no client command given")?;
    let mut child = tokio::process::Command::new(program)
        .args(args.iter().map(|a| a.replace("{url}", &url)))
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the client under test `{program}`: {e}"))?;
    let suffix = format!("-c{}-{n}", std::process::id());
    let mut run = Run::new(schema, target, &suffix);
    run.sends = schema.server.clone();
    run.receives = schema.client.clone();
    run.listener = Some(listener);
    let result = run.case(case).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

/// Why a case does not apply, if it does not.
pub fn not_applicable(
    case: &Case,
    transport: Transport,
    capabilities: &[String],
) -> Option<String> {
    if !case.transports.contains(&transport) {
        return Some(format!("only for {:?}", case.transports));
    }
    for r in case.requires {
        if !capabilities.iter().any(|c| c == r) {
            let how = match *r {
                "moderation" => {
                    "needs a moderator token (--moderator-token) on a server with authentication"
                }
                "waiting_room" => {
                    "needs a server that gives meetings whose id starts with `conf-wait` a waiting room (convene-server --waiting-room 'conf-wait*'), and --capability waiting_room"
                }
                "auth" => "needs a server with authentication and a token secret",
                "shutdown" => "needs control over the server's shutdown",
                "sfu" => {
                    "needs a server that speaks the selective-forwarding extension sfu.1 (--capability sfu)"
                }
                "reactions" => {
                    "needs a server that speaks raised hands and reactions, reactions.1 (--capability reactions)"
                }
                "recording" => {
                    "needs a server that knows recorders and speaks recording.1 (--capability recording)"
                }
                "dynacast" => {
                    "needs a single-node server that sends EncodingDemand (--capability dynacast)"
                }
                "reconnect" => {
                    "the client under test does not reconnect (pass --capability reconnect if it does)"
                }
                "publishes_video" => {
                    "the client under test does not publish video (pass --capability publishes_video if it does)"
                }
                _ => "needs a capability the runner was not given",
            };
            return Some(format!("requires `{r}`: {how}"));
        }
    }
    None
}

/// One case in progress.
struct Run<'a> {
    schema: &'a Schema,
    /// The envelope this side sends: `ClientMessage` against a server, `ServerMessage` against a client.
    sends: prost_reflect::MessageDescriptor,
    /// The envelope the other side sends.
    receives: prost_reflect::MessageDescriptor,
    /// Where clients under test connect, in client mode.
    listener: Option<tokio::net::TcpListener>,
    target: &'a ServerTarget,
    suffix: &'a str,
    actors: HashMap<String, Actor>,
    /// Which endpoint each actor uses (an index into the target's URLs),
    /// kept when it reconnects.
    placement: HashMap<String, usize>,
    vars: Vars,
    limits: HashMap<String, DynamicMessage>,
    idle_ms: u64,
    ping_counter: u64,
}

impl<'a> Run<'a> {
    fn new(schema: &'a Schema, target: &'a ServerTarget, suffix: &'a str) -> Self {
        Run {
            schema,
            sends: schema.client.clone(),
            receives: schema.server.clone(),
            listener: None,
            target,
            suffix,
            actors: HashMap::new(),
            placement: HashMap::new(),
            vars: Vars::new(),
            limits: HashMap::new(),
            idle_ms: max::IDLE_TIMEOUT_MS as u64,
            ping_counter: 0,
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            vars: &self.vars,
            meeting_suffix: self.suffix,
        }
    }

    async fn case(&mut self, case: &Case) -> Result<(), String> {
        if let Some(secret) = &self.target.auth_secret {
            for (name, token) in crate::token::variants(secret, self.suffix)? {
                self.vars.insert(name, Var::Str(token));
            }
        }
        for (i, step) in case.steps.iter().enumerate() {
            self.step(step)
                .await
                .map_err(|e| format!("step {} ({}): {e}", i + 1, describe(step)))?;
        }
        Ok(())
    }

    /// The endpoint for actor `who`: the next node in turn for a new actor.
    fn url_for(&mut self, who: &str) -> String {
        let n = 1 + self.target.more_urls.len();
        let next = self.placement.len() % n;
        let i = *self.placement.entry(who.to_string()).or_insert(next);
        match i {
            0 => self.target.url.clone(),
            i => self.target.more_urls[i - 1].clone(),
        }
    }

    async fn connect(&mut self, who: &str) -> Result<Actor, String> {
        let url = self.url_for(who);
        if self.target.transport == Transport::Wt {
            return tokio::time::timeout(self.target.step_timeout, self.connect_wt(&url))
                .await
                .map_err(|_| format!("connecting to {} timed out", url))?;
        }
        if url.starts_with("wss://") {
            return tokio::time::timeout(self.target.step_timeout, self.connect_wss(&url))
                .await
                .map_err(|_| format!("connecting to {} timed out", url))?;
        }
        let connecting = async {
            let fail = |e: String| format!("cannot connect to {}: {e}", url);
            let parsed = url::Url::parse(&url).map_err(|e| fail(e.to_string()))?;
            let host = parsed.host_str().ok_or_else(|| fail("no host".into()))?;
            let port = parsed.port_or_known_default().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let (io, injected) = crate::actor::Injectable::new(tcp);
            let (ws, _) = tokio_tungstenite::client_async(url.as_str(), io)
                .await
                .map_err(|e| fail(e.to_string()))?;
            Ok::<_, String>(Actor::with_injection(
                ws,
                Some(injected),
                self.schema.server.clone(),
                self.schema.client.clone(),
            ))
        };
        tokio::time::timeout(self.target.step_timeout, connecting)
            .await
            .map_err(|_| format!("connecting to {} timed out", url))?
    }

    /// WebSocket over TLS: the certificate pinned by `cert_sha256`, or the
    /// system's roots.
    async fn connect_wss(&self, url: &str) -> Result<Actor, String> {
        let fail = |e: String| format!("cannot connect to {}: {e}", url);
        let parsed = url::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| fail("no host".into()))?
            .to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let hash = match &self.target.cert_sha256 {
            Some(h) => Some(hex::decode(h.replace(':', "")).map_err(|e| fail(e.to_string()))?),
            None => None,
        };
        let tls = convene_client::tls::connect(tcp, &host, hash)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let (io, injected) = crate::actor::Injectable::new(tls);
        let (ws, _) = tokio_tungstenite::client_async(url, io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(Actor::with_injection(
            ws,
            Some(injected),
            self.schema.server.clone(),
            self.schema.client.clone(),
        ))
    }

    async fn connect_wt(&self, url: &str) -> Result<Actor, String> {
        let fail = |e: String| format!("cannot open WebTransport to {}: {e}", url);
        let builder = web_transport_quinn::ClientBuilder::new();
        let client = match &self.target.cert_sha256 {
            Some(h) => {
                let hash = hex::decode(h.replace(':', "")).map_err(|e| fail(e.to_string()))?;
                builder.with_server_certificate_hashes(vec![hash])
            }
            None => builder.with_system_roots(),
        }
        .map_err(|e| fail(e.to_string()))?;
        let parsed = url::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        let session = client
            .connect(parsed)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (send, recv) = session.open_bi().await.map_err(|e| fail(e.to_string()))?;
        Ok(Actor::webtransport(
            session,
            send,
            recv,
            self.schema.server.clone(),
            self.schema.client.clone(),
        ))
    }

    fn actor(&mut self, name: &str) -> Result<&mut Actor, String> {
        self.actors
            .get_mut(name)
            .ok_or_else(|| format!("actor {name} is not connected"))
    }

    async fn send_msg(&mut self, actor: &str, msg: &Msg, request_id: u32) -> Result<(), String> {
        let mut frame = build(&self.sends, msg, request_id, &self.ctx())?;
        let sets_token = msg.fields.iter().any(|f| f.name == "auth_token");
        if msg.name == "hello" && !sets_token {
            let token = match (&self.target.auth_secret, &self.target.token) {
                (Some(secret), _) => Some(crate::token::mint(secret, actor, self.suffix)?),
                (None, Some(t)) => Some(t.clone()),
                (None, None) => None,
            };
            if let Some(token) = token {
                frame = crate::token::with_auth_token(&self.sends, &frame, &token)?;
            }
        }
        self.actor(actor)?.send(frame).await
    }

    /// Plays one step, with the function in [`steps`] named after its action.
    async fn step(&mut self, step: &Step) -> Result<(), String> {
        let who = step.actor;
        match &step.action {
            Action::Connect => steps::connect(self, who).await,
            Action::Accept => steps::accept(self, who).await,
            Action::Handshake {
                join,
                name,
                subscribe_all,
                features,
            } => steps::handshake(self, who, *join, name, *subscribe_all, features).await,
            Action::Send { msg, request_id } => steps::send(self, who, msg, *request_id).await,
            Action::Flood { msg, count } => steps::flood(self, who, msg, *count).await,
            Action::SendMedia {
                track,
                seq,
                key,
                sender,
                size,
                count,
                interval_ms,
                layer,
            } => {
                let (track, sender) = (track.as_ref(), sender.as_ref());
                let frames = steps::MediaSpec {
                    seq: *seq,
                    key: *key,
                    size: *size,
                    count: *count,
                    interval_ms: *interval_ms,
                    layer: *layer,
                };
                steps::send_media(self, who, track, sender, frames).await
            }
            Action::SendRaw { hex } => steps::send_raw(self, who, hex).await,
            Action::SendPrefix { length } => steps::send_prefix(self, who, *length).await,
            Action::SendText { text } => steps::send_text(self, who, text).await,
            Action::Expect { msg, capture } => steps::expect(self, who, msg, capture).await,
            Action::ExpectError { code, request_id } => {
                steps::expect_error(self, who, *code, *request_id).await
            }
            Action::ExpectMedia {
                from,
                track,
                key,
                size,
                encoding,
                layered,
            } => {
                let (from, track) = (from.as_ref(), track.as_ref());
                let want = steps::MediaWanted {
                    key: *key,
                    size: *size,
                    encoding: *encoding,
                    layered: *layered,
                };
                steps::expect_media(self, who, from, track, want).await
            }
            Action::ExpectNo { what } => steps::expect_no(self, who, what).await,
            Action::ExpectClose { code } => steps::expect_close(self, who, *code).await,
            Action::Silence => steps::silence(self, who),
            Action::ExceedTrackLimit => steps::exceed_track_limit(self, who).await,
            Action::SleepMs(ms) => steps::sleep_ms(*ms).await,
        }
    }

    fn int(&self, v: Option<&CaseValue>) -> Result<Option<u64>, String> {
        match v {
            None => Ok(None),
            Some(CaseValue::Int(i)) => Ok(Some(*i as u64)),
            Some(CaseValue::Var(name)) => match self.vars.get(*name) {
                Some(Var::Int(n)) => Ok(Some(*n)),
                _ => Err(format!("${name} is not a captured integer")),
            },
            Some(other) => Err(format!("{other:?} is not an integer")),
        }
    }

    /// Waits for a control message matching `msg`; earlier ones are consumed.
    async fn expect(&mut self, who: &str, msg: &Msg) -> Result<DynamicMessage, String> {
        let until = deadline(self.target.step_timeout);
        let suffix = self.suffix.to_string();
        let vars = self.vars.clone();
        let ctx = Context {
            vars: &vars,
            meeting_suffix: &suffix,
        };
        let mut skipped = Vec::new();
        loop {
            let a = self
                .actors
                .get_mut(who)
                .ok_or_else(|| format!("actor {who} is not connected"))?;
            while let Some(m) = a.control.pop_front() {
                if matches(&m, msg, &ctx)? {
                    return Ok(m);
                }
                skipped.push(describe_received(&m));
            }
            if !a.pump(until).await && a.control.is_empty() {
                return Err(format!(
                    "no matching {} arrived (saw: {}){}",
                    msg.name,
                    if skipped.is_empty() {
                        "nothing".into()
                    } else {
                        skipped.join(", ")
                    },
                    closed_note(a)
                ));
            }
        }
    }

    async fn expect_error(
        &mut self,
        who: &str,
        code: ErrorCode,
        request_id: Option<u32>,
    ) -> Result<(), String> {
        let until = deadline(self.target.step_timeout);
        let mut seen = Vec::new();
        loop {
            let a = self.actor(who)?;
            while let Some(m) = a.control.pop_front() {
                if let Some(c) = error_code_of(&m) {
                    let rid = capture(&m, "error.request_id").and_then(|v| {
                        if let Var::Int(n) = v {
                            Some(n as u32)
                        } else {
                            None
                        }
                    });
                    if c == code as i32 && request_id.is_none_or(|r| Some(r) == rid) {
                        return Ok(());
                    }
                    seen.push(format!(
                        "{} (request {rid:?})",
                        ErrorCode::try_from(c).map(|e| e.name()).unwrap_or("?")
                    ));
                }
            }
            if !a.pump(until).await && a.control.is_empty() {
                return Err(format!(
                    "no Error {} arrived (errors seen: {}){}",
                    code.name(),
                    if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    },
                    closed_note(a)
                ));
            }
        }
    }

    /// Two Ping/Pong round trips on every other actor, then on `who`: whatever
    /// the server had queued for `who` before has then arrived (PROTOCOL.md §12).
    async fn sync_all(&mut self, who: &str) -> Result<(), String> {
        let mut order: Vec<String> = self
            .actors
            .keys()
            .filter(|k| k.as_str() != who)
            .cloned()
            .collect();
        order.push(who.to_string());
        for name in order {
            if self.actors[&name].closed.is_some() {
                continue;
            }
            for _ in 0..2 {
                self.ping_counter += 1;
                let ts = 0x5eed_0000_0000 + self.ping_counter;
                let frame = ping_frame(self.schema, ts)?;
                let until = deadline(self.target.step_timeout);
                let a = self.actor(&name)?;
                a.send(frame).await?;
                loop {
                    let pos = a
                        .control
                        .iter()
                        .position(|m| capture(m, "pong.timestamp_us") == Some(Var::Int(ts)));
                    if let Some(p) = pos {
                        a.control.remove(p);
                        break;
                    }
                    if !a.pump(until).await {
                        return Err(format!("{name} got no Pong for its Ping{}", closed_note(a)));
                    }
                }
            }
        }
        Ok(())
    }

    /// A fresh client can still connect, say Hello and join a room.
    async fn health_check(&mut self) -> Result<(), String> {
        self.actors.clear();
        let step = Step {
            actor: "health",
            action: Action::Handshake {
                join: Some("conf-health"),
                name: "health",
                subscribe_all: false,
                features: &[],
            },
        };
        self.step(&step).await
    }
}

fn closed_note(a: &Actor) -> String {
    match a.closed {
        Some(Some(code)) => format!("; the connection closed with code {code}"),
        Some(None) => "; the connection closed".into(),
        None => String::new(),
    }
}

/// A received message's name for a failure report; an Error also says its
/// code and text, which is what a reader of the report needs first.
fn describe_received(m: &DynamicMessage) -> String {
    let name = message_name(m).unwrap_or_else(|| "?".into());
    match error_code_of(m) {
        Some(c) => {
            let code = ErrorCode::try_from(c).map(|e| e.name()).unwrap_or("?");
            match capture(m, "error.text") {
                Some(Var::Str(text)) if !text.is_empty() => format!("{name} {code} \"{text}\""),
                _ => format!("{name} {code}"),
            }
        }
        None => name,
    }
}

fn error_code_of(m: &DynamicMessage) -> Option<i32> {
    match capture(m, "error.code") {
        Some(Var::Int(c)) if message_name(m).as_deref() == Some("error") => Some(c as i32),
        _ => None,
    }
}

fn ping_frame(schema: &Schema, ts: u64) -> Result<Bytes, String> {
    let desc = schema
        .client
        .get_field_by_name("ping")
        .and_then(|f| f.kind().as_message().cloned())
        .ok_or("no Ping")?;
    let mut ping = DynamicMessage::new(desc);
    ping.set_field_by_name("timestamp_us", Value::U64(ts));
    let mut env = DynamicMessage::new(schema.client.clone());
    env.set_field_by_name("ping", Value::Message(ping));
    let mut out = vec![0x01];
    prost::Message::encode(&env, &mut out).map_err(|e| e.to_string())?;
    Ok(out.into())
}

fn publish_frame(track_id: u32) -> Result<Bytes, String> {
    use convene_protocol::v1::{ClientMessage, Publish, TrackInfo, TrackKind, client_message};
    let msg = ClientMessage {
        request_id: 0,
        msg: Some(client_message::Msg::Publish(Publish {
            track: Some(TrackInfo {
                track_id,
                kind: TrackKind::Audio as i32,
                codec: "opus".into(),
                ..Default::default()
            }),
        })),
    };
    Ok(convene_protocol::encode_control(&msg))
}

fn describe(step: &Step) -> String {
    let what = match &step.action {
        Action::Connect => "connect".to_string(),
        Action::Accept => "accept".to_string(),
        Action::Handshake { join, .. } => format!(
            "handshake{}",
            join.map(|j| format!(" and join {j}")).unwrap_or_default()
        ),
        Action::Send { msg, .. } => format!("send {}", msg.name),
        Action::Flood { msg, count } => format!("flood {count} × {}", msg.name),
        Action::SendMedia { count, .. } => format!("send {count} media frame(s)"),
        Action::SendRaw { hex } => {
            format!("send raw {}", if hex.len() > 16 { &hex[..16] } else { hex })
        }
        Action::SendPrefix { length } => format!("send the header of a {length}-byte frame"),
        Action::SendText { .. } => "send text".to_string(),
        Action::Expect { msg, .. } => format!("expect {}", msg.name),
        Action::ExpectError { code, .. } => format!("expect error {}", code.name()),
        Action::ExpectMedia { .. } => "expect media".to_string(),
        Action::ExpectNo { what } => format!("expect no {what}"),
        Action::ExpectClose { code } => format!(
            "expect close{}",
            code.map(|c| format!(" with {}", c.name()))
                .unwrap_or_default()
        ),
        Action::Silence => "go silent".to_string(),
        Action::ExceedTrackLimit => "exceed the track limit".to_string(),
        Action::SleepMs(ms) => format!("sleep {ms} ms"),
    };
    if step.actor.is_empty() {
        what
    } else {
        format!("{}: {what}", step.actor)
    }
}
