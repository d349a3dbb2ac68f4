//! The Convene reference server: rooms, transports, fan-out, limits and operations.
//!
//! Built on the sans-IO core in `convene-protocol`; the room router
//! ([`room`]) and subscriber queues ([`outbox`]) are sans-IO too. The rest
//! is the tokio shell: [`start`] binds and serves, returning a [`Server`]
//! handle that tests and `main` use alike.

pub mod accept;
pub mod admin;
pub mod admin_http;
pub mod auth;
pub mod bus;
pub mod config;
pub mod connection;
pub mod estimate;
pub mod events;
pub mod fetch;
pub mod http;
pub mod ids;
pub mod load;
pub mod mailbox;
pub mod meetings;
pub mod metrics;
pub mod nats;
pub mod outbox;
pub mod recording;
pub mod room;
pub mod slots;
pub mod state;
pub mod tcp_info;
pub mod tls;
pub mod ws;
pub mod wt;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::Config;
use state::AppState;
use tls::Identity;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another server running there? choose another with --listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The WebTransport endpoint could not start.
    #[error("{0}")]
    WebTransport(String),
    /// The settings cannot work (e.g. the token secret file is unreadable).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The NATS bus could not be set up.
    #[error(transparent)]
    Bus(#[from] nats::NatsError),
    /// The store of managed meetings (--data-dir) could not be opened.
    #[error(transparent)]
    Store(#[from] meetings::StoreError),
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// The bound HTTP(S) address.
    pub addr: SocketAddr,
    /// Shared state, for inspection.
    pub state: Arc<AppState>,
    /// SHA-256 of the TLS certificate, hex, when TLS is on.
    pub cert_sha256: Option<String>,
    /// The bound WebTransport (UDP) address, when TLS is on.
    pub wt_addr: Option<SocketAddr>,
    /// The bound admin API address, when it is on.
    pub admin_addr: Option<SocketAddr>,
    /// Where /metrics and /load are served, when not on the public port.
    pub metrics_addr: Option<SocketAddr>,
    /// The TLS certificate and key in use, for a program that embeds the
    /// server and serves more on the same certificate.
    pub identity: Option<Identity>,
    serving: JoinHandle<()>,
}

/// Binds the listener and starts serving: a single node, or a node of the
/// cluster on the NATS bus the configuration names.
pub async fn start(config: Config) -> Result<Server, StartError> {
    match config.nats() {
        None => start_node(config, Arc::new(bus::NoBus), None).await,
        Some(opts) => {
            info!(node = opts.node, urls = %opts.urls.join(","), "joining the cluster over NATS");
            let (bus, inbound) = nats::connect(opts).await?;
            start_node(config, bus, Some(inbound)).await
        }
    }
}

/// Starts a node of a cluster: rooms are shared with the other nodes on
/// `bus`, and what they send arrives on `inbound`.
pub async fn start_node(
    config: Config,
    bus: Arc<dyn bus::Bus>,
    inbound: Option<tokio::sync::mpsc::Receiver<bus::BusMessage>>,
) -> Result<Server, StartError> {
    let secret = config.load_auth_secret()?;
    let webhook_secret = config.load_webhook_secret()?;
    let admin_token = config.load_admin_token()?;
    let admin_tls = match (&admin_token, &config.admin_tls_cert, &config.admin_tls_key) {
        (Some(_), Some(cert), Some(key)) => {
            let clients = match &config.admin_client_ca {
                Some(ca) => Some(tls::client_verifier(ca)?),
                None => None,
            };
            let server = Identity::from_pem_files(cert, key)?
                .server_config_verifying(&[b"h2", b"http/1.1"], clients)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        }
        _ => None,
    };
    let admin_listener = match &admin_token {
        Some(_) => Some(admin::bind(config.admin_listen).await?),
        None => None,
    };
    let jwks = config.auth_jwks_url.as_deref().map(auth::Jwks::new);
    let verifier = (secret.is_some() || jwks.is_some()).then(|| {
        auth::Verifier::new(
            secret.as_deref(),
            jwks.clone(),
            config.auth_issuer.as_deref(),
            config.auth_audience.as_deref(),
        )
    });
    let jwks_refresh = Duration::from_secs(u64::from(config.auth_jwks_refresh_s));
    let identity = if config.dev_tls {
        Some(Identity::self_signed(&[])?)
    } else if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        Some(Identity::from_pem_files(cert, key)?)
    } else {
        None
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    if !addr.ip().is_loopback() && identity.is_none() {
        warn!(%addr, "serving plain text on a non-loopback address (--insecure)");
    }
    let cert_sha256 = identity.as_ref().map(Identity::sha256_hex);
    if verifier.is_none() {
        warn!(
            "no token required (no --auth-secret): anyone who can reach this server may join any meeting"
        );
    }
    let auth = verifier.is_some();
    // Opening the store reads a file and may migrate it: a blocking thread's work.
    let cache = Arc::new(meetings::MeetingCache::new(
        config.ad_hoc_meetings,
        config.waiting_rooms.clone(),
    ));
    // An empty URL (an unset secret) means none.
    let (meetings, changes) = match config.database_url.as_ref().filter(|u| !u.is_empty()) {
        Some(url) => {
            let (m, changes) = {
                let ca = match &config.database_ca_file {
                    Some(path) => tls::ca_certificates(path)?,
                    None => Vec::new(),
                };
                meetings::Meetings::open_postgres(url, ca, config.data_dir.as_deref(), cache)
                    .await?
            };
            info!(
                meetings = m.list().len(),
                "managed meetings stored in PostgreSQL, shared with every node using it"
            );
            (m, Some(changes))
        }
        None => {
            let data_dir = config.data_dir.clone();
            let m = tokio::task::spawn_blocking(move || {
                meetings::Meetings::open(data_dir.as_deref(), cache)
            })
            .await
            .map_err(|e| StartError::Store(meetings::StoreError::Task(e.to_string())))??;
            if let Some(d) = &config.data_dir {
                info!(dir = %d.display(), meetings = m.list().len(), "managed meetings stored in {}", d.join(crate::meetings::store::FILE_NAME).display());
            }
            (m, None)
        }
    };
    let state = Arc::new(AppState::new(
        config,
        cert_sha256.clone(),
        verifier,
        bus,
        meetings,
    ));
    // Recorders connect back to this node: to --recorder-server-url, or to
    // the listener itself on loopback.
    let recorder_url = state.config.recorder_server_url.clone().unwrap_or_else(|| {
        let host = match addr.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        let scheme = if cert_sha256.is_some() {
            "https"
        } else {
            "http"
        };
        format!(
            "{scheme}://{}",
            std::net::SocketAddr::new(host, addr.port())
        )
    });
    state.recorders.set_target(recording::Target {
        url: recorder_url,
        // Only a --dev-tls certificate needs its hash given.
        cert_sha256: if state.config.dev_tls {
            cert_sha256.clone()
        } else {
            None
        },
        secret: secret.clone(),
        auth,
    });
    start_events(&state, webhook_secret).await?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let (Some(listener), Some(token)) = (admin_listener, admin_token) {
        tokio::spawn(admin_http::serve(
            state.clone(),
            listener,
            admin_tls,
            token,
            secret.clone(),
        ));
    }
    if let Some(jwks) = jwks {
        let mut stop = state.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                _ = auth::refresh_jwks(jwks, jwks_refresh, Duration::from_secs(2)) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
    {
        // Samples the node's load once a second for admission control and /load.
        let state = state.clone();
        let mut stop = state.shutdown_signal();
        tokio::spawn(async move {
            let cores = state.cores() as f64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // An interval's first tick is immediate: taken here, so the first
            // sample spans a whole second. (Over a few microseconds, one clock
            // tick of CPU read as hundreds of percent and made a node that had
            // just started refuse joins.)
            tick.tick().await;
            let mut last = (
                std::time::Instant::now(),
                load::process_cpu(),
                state.metrics.bytes_out.get(),
            );
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let now = (
                    std::time::Instant::now(),
                    load::process_cpu(),
                    state.metrics.bytes_out.get(),
                );
                let wall = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                let cpu = match (last.1, now.1) {
                    (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() / wall / cores * 100.0,
                    _ => 0.0,
                };
                state.load.record(load::Sample {
                    cpu_percent: cpu,
                    queue_delay_ms: state.load.take_queue_delay_ms(),
                    egress_mbps: (now.2.saturating_sub(last.2)) as f64 * 8.0 / wall / 1e6,
                });
                last = now;
            }
        });
    }
    if let Some(mut changes) = changes {
        // Changes to managed meetings made on any node (PostgreSQL NOTIFY):
        // the cache follows, then the live room here.
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                match state.meetings.refresh(change).await {
                    Ok(ids) => {
                        for id in ids {
                            state.router.apply_settings(&id);
                        }
                    }
                    Err(e) => warn!(error = %e, "could not read a changed meeting"),
                }
            }
        });
    }
    {
        // Removes members that keep a meeting that requires encryption
        // waiting for their key, and ends managed meetings whose rooms
        // stayed empty for their timeout.
        let state = state.clone();
        let mut stop = state.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let grace = Duration::from_millis(u64::from(state.config.e2ee_announce_timeout_ms));
                for (meeting, participant) in state.router.remove_unannounced(state.now(), grace) {
                    info!(
                        meeting,
                        participant,
                        "removed: no end-to-end encryption key announced in a meeting that requires it"
                    );
                }
                for meeting in state.router.end_idle(state.now()) {
                    match state.meetings.end_idle(&meeting).await {
                        Ok(()) => info!(
                            meeting,
                            "meeting ended: its room stayed empty for its empty-room timeout"
                        ),
                        Err(e) => {
                            warn!(meeting, error = %e, "could not record that an idle meeting ended")
                        }
                    }
                }
            }
        });
    }
    if let Some(mut inbound) = inbound {
        let state = state.clone();
        let mut stop = state.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    m = inbound.recv() => match m {
                        Some(m) => state.router.apply(state.now(), m),
                        None => break,
                    },
                    _ = tick.tick() => state.router.tick(state.now()),
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
    }
    // WebTransport needs TLS: it runs on UDP, by default on the same port
    // number as HTTPS.
    let wt_addr = match &identity {
        Some(id) => {
            let (bound, _task) = wt::start(
                state.clone(),
                id,
                state.config.webtransport_listen.unwrap_or(addr),
            )
            .map_err(StartError::WebTransport)?;
            info!(addr = %bound, "WebTransport on https://{bound}{}", wt::PATH);
            state.set_wt_addr(bound);
            Some(bound)
        }
        None => None,
    };
    let metrics_addr = match state.config.metrics_listen {
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .map_err(|source| StartError::Bind { addr: at, source })?;
            let bound = l.local_addr().ok();
            let mut stop = state.shutdown_signal();
            let app = http::operator_app(state.clone());
            tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            });
            info!(addr = ?bound, "metrics and load on their own address");
            bound
        }
        None => None,
    };
    let app = http::app(state.clone());
    let kept_identity = identity.clone();
    let tls = match identity {
        Some(id) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            id.server_config(&[b"http/1.1"])?,
        ))),
        None => None,
    };
    let serving = tokio::spawn(accept::serve(state.clone(), listener, app, tls));
    let scheme = if cert_sha256.is_some() {
        "https"
    } else {
        "http"
    };
    info!(%addr, "serving on {scheme}://{addr} (WebSocket at /convene/ws)");
    if let Some(h) = &cert_sha256 {
        info!(sha256 = %h, "development certificate hash, for serverCertificateHashes");
    }
    Ok(Server {
        addr,
        state,
        cert_sha256,
        wt_addr,
        admin_addr,
        metrics_addr,
        identity: kept_identity,
        serving,
    })
}

/// Starts the writer of meeting events, the webhook deliverers (resuming
/// what a previous run left undelivered) and the deletion of old
/// attendance; first closes the stays a previous run left open (it stopped
/// without writing those leaves).
async fn start_events(
    state: &Arc<AppState>,
    webhook_secret: Option<Vec<u8>>,
) -> Result<(), StartError> {
    use events::webhook;
    let store = state.meetings.store().clone();
    let node = u32::from(state.router.bus().node());
    let c = &state.config;
    let hooks = Arc::new(webhook::Webhooks::new(
        &c.webhook_urls,
        node,
        c.webhook_max_pending,
        state.metrics.webhooks.clone(),
    ));
    let (closing, loading) = (store.clone(), hooks.clone());
    let now = events::unix_ms();
    let stopped = events::LeaveReason::ServerStopped.as_str();
    let (closed, first_id) = tokio::task::spawn_blocking(move || {
        let s = meetings::lock(&closing);
        loading.load(&s)?;
        let closed = s.attendance_close_open(node, now, stopped)?;
        Ok::<_, meetings::StoreError>((closed, s.attendance_next_id()?))
    })
    .await
    .map_err(|e| StartError::Store(meetings::StoreError::Task(e.to_string())))??;
    if closed > 0 {
        warn!(
            rows = closed,
            "attendance left open by the previous run closed as server_stopped"
        );
    }
    // In PostgreSQL too: a previous run whose store is gone (memory, a new
    // --data-dir) cannot ship those leaves itself. Not fatal: the rows stay open.
    if let Some(pg) = state.meetings.postgres() {
        match pg
            .attendance_close_stale(node, first_id, now, stopped)
            .await
        {
            Ok(0) => {}
            Ok(n) => warn!(
                rows = n,
                "attendance left open in PostgreSQL by a previous run of this node closed as server_stopped"
            ),
            Err(e) => {
                warn!(error = %e, "attendance left open in PostgreSQL by a previous run not closed")
            }
        }
    }
    if let Some(secret) = webhook_secret.filter(|_| !hooks.targets.is_empty()) {
        let extra = match &c.webhook_ca_file {
            Some(path) => tls::ca_certificates(path)?,
            None => Vec::new(),
        };
        let tls = crate::fetch::tls_config_with(extra)
            .map_err(|e| StartError::Tls(tls::TlsError::Config(format!("webhook TLS: {e}"))))?;
        let delivery = webhook::Delivery {
            tls: Arc::new(tls),
            store: store.clone(),
            secret: Arc::new(secret),
            backoff_cap: Duration::from_millis(u64::from(c.webhook_backoff_max_ms)),
            metrics: state.metrics.webhooks.clone(),
        };
        for t in &hooks.targets {
            info!(url = %t.url, "meeting events POSTed to {}", t.url);
            tokio::spawn(webhook::run_deliverer(
                t.clone(),
                delivery.clone(),
                state.shutdown_signal(),
            ));
        }
    }
    // With PostgreSQL, attendance is shipped there for every node to list.
    let shipper = state
        .meetings
        .shipper(state.metrics.attendance_shipping.clone());
    if let Some(s) = &shipper {
        info!("attendance shipped to PostgreSQL, listed on every node sharing it");
        tokio::spawn(meetings::ship::run_shipper(
            s.clone(),
            state.shutdown_signal(),
        ));
    }
    if let Some(rx) = state.take_events_queue() {
        tokio::spawn(events::run_writer(rx, store.clone(), hooks, shipper));
    }
    tokio::spawn(events::run_retention(
        store,
        state.meetings.postgres().cloned(),
        state.config.attendance_retention_days,
        state.shutdown_signal(),
    ));
    Ok(())
}

impl Server {
    /// Shuts down: stops accepting, says Goodbye to every session, and waits
    /// up to the configured grace period for connections to drain.
    pub async fn shutdown(self) {
        self.state.begin_shutdown();
        let grace = Duration::from_millis(self.state.config.shutdown_grace_ms as u64);
        let deadline = tokio::time::Instant::now() + grace;
        // Recorders finish their files while the sessions drain.
        let recorders = self.state.recorders.clone();
        let stopping = tokio::spawn(async move { recorders.stop_all(deadline).await });
        let left = self.state.connections_closed(deadline).await;
        let _ = stopping.await;
        // The leaves of those who just went are written before the end.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.state.events.flush()).await;
        // And, with PostgreSQL, shipped there: a store in memory is gone after this.
        if let Some(s) = self
            .state
            .meetings
            .shipper(self.state.metrics.attendance_shipping.clone())
        {
            match tokio::time::timeout(Duration::from_secs(5), s.ship()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "the last attendance not shipped to PostgreSQL"),
                Err(_) => warn!("the last attendance not shipped to PostgreSQL in 5 s"),
            }
        }
        if left > 0 {
            warn!(
                left,
                "connections still open after the shutdown grace period"
            );
        }
        self.serving.abort();
    }
}
