//! The bus over NATS: several server nodes share meetings through a
//! `nats-server` (or a NATS cluster). Subjects, the wire format and the
//! failure behaviour are written down in `docs/CLUSTER.md`.
//!
//! Subjects:
//!
//! - `convene.m.<meeting>.media`: media frames of the meeting, exactly as
//!   forwarded to subscribers (one publish per frame by the publisher's node);
//! - `convene.m.<meeting>.ctl`: everything else about the meeting, as an
//!   [`Envelope`];
//! - `convene.m.<meeting>.n<node>`: the same, meant for one node only;
//! - `convene.nodes.alive`: every node's heartbeat;
//! - `convene.nodes.sync`: roster requests, which every node answers.
//!
//! A node subscribes to `convene.m.<meeting>.*` once for each meeting it has
//! participants in, so everything another node says about a meeting arrives
//! through one subscription, in the order that node said it. The connection
//! is made with `no_echo`: a node never hears (and so never re-delivers) its
//! own messages. `.` is not allowed in a subject token, so a meeting id's
//! dots are written as `~` (which meeting ids cannot contain).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use convene_protocol::RoomRequest;
use convene_protocol::v1;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::bus::{Bus, BusMessage, INBOUND_QUEUE, MAX_NODES, NodeId, RosterEntry};

/// Subject every node's heartbeat goes to.
pub const NODES_SUBJECT: &str = "convene.nodes.alive";

/// Subject of roster requests, which every node hears (those without the
/// meeting answer that they have nobody in it).
pub const SYNC_SUBJECT: &str = "convene.nodes.sync";

/// Commands waiting for the NATS connection before newer ones are dropped.
const OUTBOUND_QUEUE: usize = 8192;

/// Messages async-nats holds for one subscription before it drops (and
/// reports a slow consumer): our reader hands them on at once, so this only
/// fills when the router's inbound queue is full too.
const SUBSCRIPTION_CAPACITY: usize = 4096;

/// How to reach NATS and who this node is.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:port` or `tls://host:port`).
    pub urls: Vec<String>,
    /// This node's id, 0 to 4095, unique in the cluster.
    pub node: NodeId,
    /// A credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// CA certificates (PEM) to trust for the NATS server's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for NATS servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Silence after which another node counts as gone.
    pub node_timeout: Duration,
}

impl NatsOptions {
    /// Options for a plain connection to `url` as `node`.
    pub fn new(url: &str, node: NodeId) -> Self {
        NatsOptions {
            urls: vec![url.to_string()],
            node,
            creds: None,
            token: None,
            user_password: None,
            tls_ca: None,
            tls_client: None,
            node_timeout: Duration::from_millis(3000),
        }
    }

    /// Time between heartbeats: a third of the timeout, so one or two lost
    /// heartbeats do not end a node.
    pub fn heartbeat(&self) -> Duration {
        self.node_timeout / 3
    }
}

/// Why the NATS bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The node id is 4096 or more.
    #[error("node id {0} is out of range: give --node-id between 0 and {max}", max = MAX_NODES - 1)]
    NodeId(NodeId),
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// async-nats refused the settings.
    #[error("cannot set up the NATS connection to {urls}: {message}")]
    Connect {
        /// The URLs.
        urls: String,
        /// Why.
        message: String,
    },
}

/// What the backend counts, for metrics and tests.
#[derive(Debug, Default)]
pub struct NatsStats {
    /// Messages published.
    pub published: AtomicU64,
    /// Payload bytes published.
    pub published_bytes: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Messages dropped: queue full, bus down, or a slow consumer.
    pub dropped: AtomicU64,
    /// Messages from other nodes that did not decode.
    pub malformed: AtomicU64,
}

/// Another node as this one last heard it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    epoch: u64,
    at: Instant,
}

/// State shared by the bus handle and its tasks.
#[derive(Debug)]
struct Shared {
    node: NodeId,
    /// Random per start, so a restarted node is told apart from its old self.
    epoch: u64,
    connected: AtomicBool,
    /// When the current NATS connection came up.
    connected_at: Mutex<Option<Instant>>,
    /// How long after connecting every live node has been heard.
    settle: Duration,
    /// Another node uses our id: we refuse to count as ready.
    conflict: AtomicBool,
    stats: NatsStats,
    nodes: Mutex<HashMap<NodeId, Seen>>,
    /// Nodes declared gone; one heard again was only cut off, and gets told
    /// who is here.
    downed: Mutex<std::collections::HashSet<NodeId>>,
    inbound: mpsc::Sender<BusMessage>,
}

impl Shared {
    /// Notes that `node` spoke: a new incarnation loses its predecessor's
    /// participants, and a node we had given up on gets resynchronised.
    fn heard(&self, node: NodeId, epoch: u64) {
        if node == self.node {
            if epoch != self.epoch && !self.conflict.swap(true, Ordering::Relaxed) {
                warn!(
                    node,
                    "another server uses this node id: give every node its own --node-id; \
                     this node reports not ready until restarted"
                );
            }
            return;
        }
        let restarted = {
            let mut nodes = lock(&self.nodes);
            let prev = nodes.insert(
                node,
                Seen {
                    epoch,
                    at: Instant::now(),
                },
            );
            prev.is_some_and(|p| p.epoch != epoch)
        };
        if restarted {
            info!(node, "node restarted: dropping its earlier participants");
            let _ = self.inbound.try_send(BusMessage::NodeDown { node });
        }
        if lock(&self.downed).remove(&node) {
            info!(node, "node is back: exchanging rosters");
            let _ = self.inbound.try_send(BusMessage::Resync);
        }
    }

    fn deliver(&self, msg: BusMessage) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if self.inbound.try_send(msg).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Command {
    Publish(String, Bytes),
    Interest(String, bool),
}

/// One node's bus over NATS.
#[derive(Debug)]
pub struct NatsBus {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Publish(s, b) => write!(f, "Publish({s}, {} bytes)", b.len()),
            Command::Interest(m, i) => write!(f, "Interest({m}, {i})"),
        }
    }
}

/// Connects to NATS (in the background: a node starts, serves its own
/// participants and reports not ready until NATS answers) and returns the
/// bus and the queue of what the other nodes say.
pub async fn connect(
    opts: NatsOptions,
) -> Result<(Arc<NatsBus>, mpsc::Receiver<BusMessage>), NatsError> {
    if u32::from(opts.node) >= MAX_NODES {
        return Err(NatsError::NodeId(opts.node));
    }
    let urls = opts.urls.join(",");
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let shared = Arc::new(Shared {
        node: opts.node,
        epoch: random_epoch(),
        connected: AtomicBool::new(false),
        connected_at: Mutex::new(None),
        settle: opts.heartbeat() + opts.heartbeat() / 2,
        conflict: AtomicBool::new(false),
        stats: NatsStats::default(),
        nodes: Mutex::new(HashMap::new()),
        downed: Mutex::new(Default::default()),
        inbound: inbound_tx,
    });
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("convene-server node {}", opts.node))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(opts.heartbeat().max(Duration::from_secs(1)))
        .connection_timeout(Duration::from_secs(5))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(5)).min(2000))
        });
    if let Some(path) = &opts.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| NatsError::Creds {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(t) = &opts.token {
        options = options.token(t.clone());
    }
    if let Some((u, p)) = &opts.user_password {
        options = options.user_and_password(u.clone(), p.clone());
    }
    if let Some(ca) = &opts.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &opts.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if opts.urls.iter().any(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    let events = shared.clone();
    let shown = urls.clone();
    options = options.event_callback(move |event| {
        let shared = events.clone();
        let urls = shown.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    shared.connected.store(true, Ordering::Relaxed);
                    *lock(&shared.connected_at) = Some(Instant::now());
                    info!(%urls, "bus: connected to NATS");
                    // Messages may have been lost both ways while we were
                    // away: every room says who is here and asks who is there.
                    let _ = shared.inbound.send(BusMessage::Resync).await;
                }
                async_nats::Event::Disconnected => {
                    shared.connected.store(false, Ordering::Relaxed);
                    warn!(%urls, "bus: lost NATS; serving local participants only until it is back");
                }
                async_nats::Event::SlowConsumer(_) => {
                    shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // E.g. an authorization violation: the operator must see it.
                async_nats::Event::ServerError(e) => {
                    warn!(%urls, error = %e, "bus: NATS refused this node; check --bus-creds, --bus-token or --bus-user")
                }
                other => debug!(event = %other, "bus: NATS event"),
            }
        }
    });
    let client = options
        .connect(opts.urls.clone())
        .await
        .map_err(|e| NatsError::Connect {
            urls: urls.clone(),
            message: e.to_string(),
        })?;
    let (commands, command_rx) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(drive(client.clone(), shared.clone(), command_rx));
    tokio::spawn(heartbeats(
        client,
        shared.clone(),
        opts.heartbeat(),
        opts.node_timeout,
        commands.clone(),
    ));
    Ok((Arc::new(NatsBus { shared, commands }), inbound_rx))
}

fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

impl NatsBus {
    /// What the backend counted.
    pub fn stats(&self) -> &NatsStats {
        &self.shared.stats
    }

    /// Whether NATS is connected now.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    fn queue(&self, cmd: Command) {
        if self.commands.try_send(cmd).is_err() {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send(&self, subject: String, msg: &BusMessage) {
        // While NATS is away nothing we say would arrive in order; the
        // resync when it returns puts the other nodes right.
        if !self.connected() {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = match msg {
            BusMessage::Media { frame, .. } => frame.clone(),
            other => match encode(self.shared.node, self.shared.epoch, other) {
                Some(b) => b,
                None => return,
            },
        };
        self.queue(Command::Publish(subject, payload));
    }
}

impl Bus for NatsBus {
    fn node(&self) -> NodeId {
        self.shared.node
    }

    fn publish(&self, msg: BusMessage) {
        let Some(meeting) = msg.meeting() else {
            return;
        };
        if msg.to_every_node() {
            self.send(SYNC_SUBJECT.to_string(), &msg);
            return;
        }
        let kind = if matches!(msg, BusMessage::Media { .. }) {
            "media"
        } else {
            "ctl"
        };
        let subject = format!("convene.m.{}.{kind}", subject_token(meeting));
        self.send(subject, &msg);
    }

    fn send_to(&self, node: NodeId, msg: BusMessage) {
        let Some(meeting) = msg.meeting() else {
            return;
        };
        if node != self.shared.node {
            let subject = format!("convene.m.{}.n{node}", subject_token(meeting));
            self.send(subject, &msg);
        }
    }

    fn interest(&self, meeting: &str, interested: bool) {
        // Never dropped silently: a lost unsubscribe would leak, a lost
        // subscribe would cut a meeting in two.
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self
            .commands
            .try_send(Command::Interest(meeting.to_string(), interested))
        {
            let tx = self.commands.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.stats.dropped.load(Ordering::Relaxed)
    }

    fn peers(&self) -> Vec<NodeId> {
        lock(&self.shared.nodes).keys().copied().collect()
    }

    fn ready(&self) -> bool {
        // Ready once connected long enough to have heard every live node's
        // heartbeat: a room opened before that could not wait for them all.
        self.connected()
            && lock(&self.shared.connected_at).is_some_and(|t| t.elapsed() >= self.shared.settle)
            && !self.shared.conflict.load(Ordering::Relaxed)
    }
}

/// A meeting id as one subject token: ids are `[A-Za-z0-9._-]`, and `.`
/// separates tokens, so it becomes `~`.
pub fn subject_token(meeting: &str) -> String {
    meeting.replace('.', "~")
}

/// Publishes what the router says and keeps one subscription per meeting.
async fn drive(
    client: async_nats::Client,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut readers: HashMap<String, JoinHandle<()>> = HashMap::new();
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Publish(subject, payload) => {
                let n = payload.len() as u64;
                match client.publish(subject, payload).await {
                    Ok(()) => {
                        shared.stats.published.fetch_add(1, Ordering::Relaxed);
                        shared.stats.published_bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, "bus: publish failed");
                    }
                }
            }
            Command::Interest(meeting, true) => {
                if readers.contains_key(&meeting) {
                    continue;
                }
                let subject = format!("convene.m.{}.*", subject_token(&meeting));
                match client.subscribe(subject).await {
                    Ok(sub) => {
                        let task = tokio::spawn(read_meeting(meeting.clone(), sub, shared.clone()));
                        readers.insert(meeting, task);
                    }
                    Err(e) => warn!(%meeting, error = %e, "bus: cannot subscribe"),
                }
            }
            Command::Interest(meeting, false) => {
                // Dropping the subscriber (with its task) unsubscribes.
                if let Some(task) = readers.remove(&meeting) {
                    task.abort();
                }
            }
        }
    }
    for (_, t) in readers {
        t.abort();
    }
}

/// Hands one meeting's messages to the router.
async fn read_meeting(meeting: String, mut sub: async_nats::Subscriber, shared: Arc<Shared>) {
    let ours = format!("n{}", shared.node);
    while let Some(m) = sub.next().await {
        let Some(last) = m.subject.rsplit('.').next() else {
            continue;
        };
        if last == "media" {
            shared.deliver(BusMessage::Media {
                meeting: meeting.clone(),
                frame: m.payload,
            });
            continue;
        }
        if last != "ctl" && last != ours {
            continue; // meant for another node
        }
        match decode(&m.payload) {
            Some((from, epoch, msg)) => {
                shared.heard(from, epoch);
                if from != shared.node && msg.meeting() == Some(meeting.as_str()) {
                    shared.deliver(msg);
                }
            }
            None => {
                shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(subject = %m.subject, "bus: a message that does not decode, ignored");
            }
        }
    }
}

/// Says we are alive, listens to the others, and declares silent ones gone.
async fn heartbeats(
    client: async_nats::Client,
    shared: Arc<Shared>,
    every: Duration,
    timeout: Duration,
    commands: mpsc::Sender<Command>,
) {
    let listener = {
        let shared = shared.clone();
        let client = client.clone();
        async move {
            let mut sub = loop {
                match client.subscribe("convene.nodes.*").await {
                    Ok(s) => break s,
                    Err(e) => {
                        warn!(error = %e, "bus: cannot subscribe to heartbeats; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            while let Some(m) = sub.next().await {
                if m.subject.as_str() == SYNC_SUBJECT {
                    match decode(&m.payload) {
                        Some((from, epoch, msg)) if from != shared.node => {
                            shared.heard(from, epoch);
                            shared.deliver(msg);
                        }
                        Some(_) => {}
                        None => {
                            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                match decode_heartbeat(&m.payload) {
                    Some((node, epoch)) => shared.heard(node, epoch),
                    None => {
                        shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    let listening = tokio::spawn(listener);
    let beat = Envelope {
        from: u32::from(shared.node),
        epoch: shared.epoch,
        meeting: String::new(),
        op: Some(Op::Alive(true)),
    }
    .encode_to_vec();
    let beat = Bytes::from(beat);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if commands.is_closed() {
            break;
        }
        if shared.connected.load(Ordering::Relaxed) {
            let _ = commands.try_send(Command::Publish(NODES_SUBJECT.into(), beat.clone()));
        }
        let silent: Vec<NodeId> = {
            let mut nodes = lock(&shared.nodes);
            let now = Instant::now();
            let silent: Vec<NodeId> = nodes
                .iter()
                .filter(|(_, s)| now.duration_since(s.at) > timeout)
                .map(|(n, _)| *n)
                .collect();
            for n in &silent {
                nodes.remove(n);
            }
            lock(&shared.downed).extend(silent.iter().copied());
            silent
        };
        for node in silent {
            warn!(
                node,
                "bus: node silent for {} ms: its participants leave",
                timeout.as_millis()
            );
            if shared
                .inbound
                .send(BusMessage::NodeDown { node })
                .await
                .is_err()
            {
                break;
            }
        }
    }
    listening.abort();
}

// The wire format between nodes. Internal to a cluster (every node of one
// cluster runs the same release), so it lives here rather than in the spec.

/// One control message between nodes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// The sending node.
    #[prost(uint32, tag = "1")]
    pub from: u32,
    /// The sending node's start epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// The meeting ("" for heartbeats).
    #[prost(string, tag = "3")]
    pub meeting: String,
    /// What happened.
    #[prost(oneof = "Op", tags = "4, 5, 6, 7, 8, 9, 10, 11, 12, 13")]
    pub op: Option<Op>,
}

/// What an [`Envelope`] carries.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// [`BusMessage::Join`].
    #[prost(message, tag = "4")]
    Join(Member),
    /// [`BusMessage::Leave`]: the participant id.
    #[prost(uint32, tag = "5")]
    Leave(u32),
    /// [`BusMessage::Request`].
    #[prost(message, tag = "6")]
    Request(Request),
    /// [`BusMessage::KeyFrameRequest`].
    #[prost(message, tag = "7")]
    KeyFrame(KeyFrame),
    /// [`BusMessage::SyncRequest`].
    #[prost(bool, tag = "8")]
    Sync(bool),
    /// [`BusMessage::Roster`].
    #[prost(message, tag = "9")]
    Roster(Roster),
    /// A heartbeat.
    #[prost(bool, tag = "10")]
    Alive(bool),
    /// [`BusMessage::Waiting`].
    #[prost(message, tag = "11")]
    Waiting(v1::Participant),
    /// [`BusMessage::WaitingGone`]: the participant id.
    #[prost(uint32, tag = "12")]
    WaitingGone(u32),
    /// [`BusMessage::Demand`].
    #[prost(message, tag = "13")]
    Demand(Demand),
}

/// The encodings of a track wanted by the sending node's subscribers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Demand {
    /// The publisher.
    #[prost(uint32, tag = "1")]
    pub publisher: u32,
    /// The track.
    #[prost(uint32, tag = "2")]
    pub track: u32,
    /// The encodings wanted, a bit each.
    #[prost(uint32, tag = "3")]
    pub encodings: u32,
}

/// A participant with its node's view of it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Member {
    /// As the room shows it, tracks included.
    #[prost(message, optional, tag = "1")]
    pub participant: Option<v1::Participant>,
    /// Receives every track.
    #[prost(bool, tag = "2")]
    pub subscribe_all: bool,
}

/// An accepted room request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Who made it.
    #[prost(uint32, tag = "1")]
    pub participant_id: u32,
    /// The request, as the client sent it.
    #[prost(message, optional, tag = "2")]
    pub message: Option<v1::ClientMessage>,
    /// The origin's clock when it was accepted.
    #[prost(uint64, tag = "3")]
    pub server_time_us: u64,
}

/// A key-frame request for a publisher on the receiving node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyFrame {
    /// The publisher.
    #[prost(uint32, tag = "1")]
    pub publisher: u32,
    /// The track.
    #[prost(uint32, tag = "2")]
    pub track: u32,
    /// Who asks (0: the server).
    #[prost(uint32, tag = "3")]
    pub requester: u32,
    /// Skip the rate limit.
    #[prost(bool, tag = "4")]
    pub force: bool,
    /// The encodings that need one, a bit each (0: all; PROTOCOL.md §6.6.3).
    #[prost(uint32, tag = "5")]
    pub encodings: u32,
}

/// One node's participants in a meeting.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Roster {
    /// All of them.
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<Member>,
    /// The room is locked.
    #[prost(bool, tag = "2")]
    pub locked: bool,
    /// Who waits in the waiting room there.
    #[prost(message, repeated, tag = "3")]
    pub waiting: Vec<v1::Participant>,
}

/// A control message as it goes on the wire (media frames go as they are).
pub fn encode(from: NodeId, epoch: u64, msg: &BusMessage) -> Option<Bytes> {
    let (meeting, op) = match msg.clone() {
        BusMessage::Join {
            meeting,
            participant,
            subscribe_all,
            ..
        } => (
            meeting,
            Op::Join(Member {
                participant: Some(participant),
                subscribe_all,
            }),
        ),
        BusMessage::Leave {
            meeting,
            participant_id,
        } => (meeting, Op::Leave(participant_id)),
        BusMessage::Request {
            meeting,
            participant_id,
            request,
            server_time_us,
        } => (
            meeting,
            Op::Request(Request {
                participant_id,
                message: Some(v1::ClientMessage {
                    request_id: 0,
                    msg: Some(request.into_message()),
                }),
                server_time_us,
            }),
        ),
        BusMessage::KeyFrameRequest {
            meeting,
            publisher,
            track,
            requester,
            force,
            encodings,
        } => (
            meeting,
            Op::KeyFrame(KeyFrame {
                publisher,
                track,
                requester,
                force,
                encodings: encodings as u32,
            }),
        ),
        BusMessage::Demand {
            meeting,
            publisher,
            track,
            encodings,
            ..
        } => (
            meeting,
            Op::Demand(Demand {
                publisher,
                track,
                encodings: encodings as u32,
            }),
        ),
        BusMessage::SyncRequest { meeting, .. } => (meeting, Op::Sync(true)),
        BusMessage::Waiting {
            meeting,
            participant,
            ..
        } => (meeting, Op::Waiting(participant)),
        BusMessage::WaitingGone {
            meeting,
            participant_id,
        } => (meeting, Op::WaitingGone(participant_id)),
        BusMessage::Roster {
            meeting,
            members,
            locked,
            waiting,
            ..
        } => (
            meeting,
            Op::Roster(Roster {
                locked,
                waiting,
                members: members
                    .into_iter()
                    .map(|e| Member {
                        participant: Some(e.participant),
                        subscribe_all: e.subscribe_all,
                    })
                    .collect(),
            }),
        ),
        BusMessage::Media { .. } | BusMessage::NodeDown { .. } | BusMessage::Resync => {
            return None;
        }
    };
    Some(Bytes::from(
        Envelope {
            from: u32::from(from),
            epoch,
            meeting,
            op: Some(op),
        }
        .encode_to_vec(),
    ))
}

/// A control message from the wire: (sending node, its epoch, the message).
/// `None` for anything malformed, which the caller counts and ignores.
pub fn decode(bytes: &[u8]) -> Option<(NodeId, u64, BusMessage)> {
    let env = Envelope::decode(bytes).ok()?;
    let node = node_of(env.from)?;
    let meeting = env.meeting;
    convene_protocol::validate::meeting_id(&meeting).ok()?;
    let msg = match env.op? {
        Op::Join(m) => BusMessage::Join {
            meeting,
            node,
            participant: m.participant?,
            subscribe_all: m.subscribe_all,
        },
        Op::Leave(participant_id) => BusMessage::Leave {
            meeting,
            participant_id,
        },
        Op::Request(r) => BusMessage::Request {
            meeting,
            participant_id: r.participant_id,
            request: RoomRequest::from_message(r.message?.msg?)?,
            server_time_us: r.server_time_us,
        },
        Op::KeyFrame(k) => BusMessage::KeyFrameRequest {
            meeting,
            publisher: k.publisher,
            track: k.track,
            requester: k.requester,
            force: k.force,
            encodings: k.encodings.min(0b111) as u8,
        },
        Op::Demand(d) => BusMessage::Demand {
            meeting,
            node,
            publisher: d.publisher,
            track: d.track,
            encodings: d.encodings.min(0b111) as u8,
        },
        Op::Sync(_) => BusMessage::SyncRequest { meeting, node },
        Op::Waiting(participant) => BusMessage::Waiting {
            meeting,
            node,
            participant,
        },
        Op::WaitingGone(participant_id) => BusMessage::WaitingGone {
            meeting,
            participant_id,
        },
        Op::Roster(r) => BusMessage::Roster {
            meeting,
            node,
            locked: r.locked,
            waiting: r.waiting,
            members: r
                .members
                .into_iter()
                .map(|m| {
                    Some(RosterEntry {
                        participant: m.participant?,
                        subscribe_all: m.subscribe_all,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        },
        Op::Alive(_) => return None,
    };
    Some((node, env.epoch, msg))
}

/// A sender's node id, if it is one.
fn node_of(from: u32) -> Option<NodeId> {
    NodeId::try_from(from)
        .ok()
        .filter(|n| u32::from(*n) < MAX_NODES)
}

fn decode_heartbeat(bytes: &[u8]) -> Option<(NodeId, u64)> {
    let env = Envelope::decode(bytes).ok()?;
    let node = node_of(env.from)?;
    matches!(env.op, Some(Op::Alive(_))).then_some((node, env.epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(pid: u32) -> v1::Participant {
        v1::Participant {
            participant_id: pid,
            display_name: "ann".into(),
            tracks: vec![v1::TrackInfo {
                track_id: 1,
                kind: v1::TrackKind::Video as i32,
                codec: "H264".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn control_messages_survive_the_wire() {
        let msgs = vec![
            BusMessage::Join {
                meeting: "a.b".into(),
                node: 3,
                participant: participant(7),
                subscribe_all: true,
            },
            BusMessage::Leave {
                meeting: "a.b".into(),
                participant_id: 7,
            },
            BusMessage::Request {
                meeting: "a.b".into(),
                participant_id: 7,
                request: RoomRequest::Chat(v1::ChatSend {
                    text: "hi".into(),
                    ..Default::default()
                }),
                server_time_us: 99,
            },
            BusMessage::Request {
                meeting: "a.b".into(),
                participant_id: 7,
                request: RoomRequest::Publish(participant(7).tracks[0].clone()),
                server_time_us: 1,
            },
            BusMessage::KeyFrameRequest {
                meeting: "a.b".into(),
                publisher: 7,
                track: 1,
                requester: 0,
                force: true,
                encodings: 0b010,
            },
            BusMessage::Demand {
                meeting: "a.b".into(),
                node: 3,
                publisher: 7,
                track: 1,
                encodings: 0b001,
            },
            BusMessage::SyncRequest {
                meeting: "a.b".into(),
                node: 3,
            },
            BusMessage::Roster {
                meeting: "a.b".into(),
                node: 3,
                members: vec![RosterEntry {
                    participant: participant(7),
                    subscribe_all: false,
                }],
                locked: true,
                waiting: vec![participant(9)],
            },
            BusMessage::Waiting {
                meeting: "a.b".into(),
                node: 3,
                participant: participant(8),
            },
            BusMessage::WaitingGone {
                meeting: "a.b".into(),
                participant_id: 8,
            },
        ];
        for m in msgs {
            let bytes = encode(3, 42, &m).expect("control messages encode");
            let (from, epoch, back) = decode(&bytes).expect("and decode");
            assert_eq!((from, epoch), (3, 42));
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
    }

    #[test]
    fn garbage_and_lies_do_not_decode() {
        assert!(decode(b"\xff\xff\xff").is_none());
        assert!(decode(&[]).is_none(), "an empty envelope has no operation");
        let bad_meeting = Envelope {
            from: 2,
            epoch: 1,
            meeting: "no spaces allowed".into(),
            op: Some(Op::Leave(1)),
        }
        .encode_to_vec();
        assert!(decode(&bad_meeting).is_none());
        let bad_node = Envelope {
            from: 70_000,
            epoch: 1,
            meeting: "m".into(),
            op: Some(Op::Leave(1)),
        }
        .encode_to_vec();
        assert!(decode(&bad_node).is_none());
        let hb = Envelope {
            from: 5,
            epoch: 9,
            meeting: String::new(),
            op: Some(Op::Alive(true)),
        }
        .encode_to_vec();
        assert_eq!(decode_heartbeat(&hb), Some((5, 9)));
        assert!(decode(&hb).is_none(), "a heartbeat is not a room message");
    }

    #[test]
    fn meeting_ids_become_one_subject_token() {
        assert_eq!(subject_token("team.standup-2_x"), "team~standup-2_x");
        assert_ne!(subject_token("a.b"), subject_token("a-b"));
    }
}
