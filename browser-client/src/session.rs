//! Connecting and staying connected: the token (from the link or the
//! sign-in service), the link to the server (WebTransport when offered,
//! WebSocket otherwise), feeding the link's frames and closes and the
//! timers into the session, and reconnecting after a loss. What the
//! session's events do is in `events`.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use convene_protocol::v1;
use convene_protocol::{ClientSession, ClientSessionConfig};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::dom::{by_id, now};
use crate::events::pump;
use crate::links::{
    e2ee_in_link, hex_bytes, server_override, token_from, webtransport_override, ws_url,
};
use crate::publish::AUDIO_TRACK;
use crate::retry::{delay_ms, worth_reconnecting};
use crate::state::{App, page};
use crate::{audio, path, publish, remote, screens, transport, ui};

/// The link to the server.
pub(crate) enum Link {
    /// A WebSocket: one frame per binary message.
    WebSocket(web_sys::WebSocket),
    /// A WebTransport session (PROTOCOL.md §3.3).
    WebTransport(transport::Wt),
}

impl Link {
    /// What the page calls it.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Link::WebSocket(_) => "WebSocket",
            Link::WebTransport(_) => "WebTransport",
        }
    }

    /// Sends one frame the way its transport carries frames.
    pub(crate) fn send(&self, frame: &Bytes) {
        match self {
            Link::WebSocket(s) => {
                let _ = s.send_with_u8_array(frame);
            }
            Link::WebTransport(w) => w.send(frame),
        }
    }

    /// Closes it.
    pub(crate) fn close(&self) {
        match self {
            Link::WebSocket(s) => {
                let _ = s.close();
            }
            Link::WebTransport(w) => w.close(),
        }
    }
}

/// The server's discovery document (PROTOCOL.md §3.3).
const DISCOVERY_URL: &str = "/.well-known/convene.json";

/// Finds the token (the link's, or the sign-in service's) and connects.
pub(crate) fn begin(name: String, meeting: String, e2ee: bool) {
    let Some(location) = web_sys::window().map(|w| w.location()) else {
        return;
    };
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-connect-at", &js_sys::Date::now().to_string());
    }
    // Still inside the click: the one moment a page may start sound.
    audio::open_output();
    let search = location.search().unwrap_or_default();
    let given = token_from(&search, &location.hash().unwrap_or_default());
    let e2ee = e2ee || e2ee_in_link(&search, &location.hash().unwrap_or_default());
    // A server named in the link (loopback only) has no sign-in service to ask.
    let elsewhere = server_override(&location.host().unwrap_or_default(), &search).is_some();
    wasm_bindgen_futures::spawn_local(async move {
        let token = match given {
            Some(t) => t,
            None if elsewhere => String::new(),
            None => match login_token(&meeting).await {
                Ok(t) => t.unwrap_or_default(),
                // login_token has said why on the page.
                Err(_) => return,
            },
        };
        if let Err(err) = connect(name, meeting, token, e2ee).await {
            ui::status(format!("cannot connect: {err:?}"));
        }
    });
}

/// Asks the sign-in service the server names in its discovery document for
/// a token; `None` when the server names none. On failure it says why on the
/// page, and when the service refuses (not signed in) links to it.
async fn login_token(meeting: &str) -> Result<Option<String>, String> {
    let d = fetch_json(DISCOVERY_URL, false)
        .await
        .inspect_err(|e| ui::status(format!("cannot reach the server: {e}")))?;
    // Connecting reads it next: once is enough.
    page(|p| p.fresh_discovery = Some(d.clone()));
    let Some(login) = js_sys::Reflect::get(&d, &"login_url".into())
        .ok()
        .and_then(|v| v.as_string())
    else {
        return Ok(None);
    };
    ui::status("Getting a token from the sign-in service…");
    let sep = if login.contains('?') { '&' } else { '?' };
    let url = format!(
        "{login}{sep}meeting={}",
        String::from(js_sys::encode_uri_component(meeting))
    );
    match fetch_json(&url, true).await {
        Ok(v) => js_sys::Reflect::get(&v, &"token".into())
            .ok()
            .and_then(|t| t.as_string())
            .filter(|t| !t.is_empty())
            .map(Some)
            .ok_or_else(|| format!("{login} answered without a token")),
        Err(e) => {
            let text = format!("Sign in first ({e}): ");
            ui::update(|v| {
                v.status = text;
                v.login_url = Some(login);
            });
            Err(format!("Sign in first ({e})"))
        }
    }
}

/// GETs `url` and parses its JSON body; `credentials` sends cookies to
/// another origin too.
async fn fetch_json(url: &str, credentials: bool) -> Result<JsValue, String> {
    use wasm_bindgen_futures::JsFuture;
    let window = web_sys::window().ok_or("no window")?;
    let init = web_sys::RequestInit::new();
    if credentials {
        init.set_credentials(web_sys::RequestCredentials::Include);
    }
    let failed = |e: JsValue| {
        format!(
            "{url}: {}",
            e.as_string().unwrap_or_else(|| format!("{e:?}"))
        )
    };
    let resp = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .map_err(failed)?;
    let resp: web_sys::Response = resp.dyn_into().map_err(failed)?;
    if !resp.ok() {
        return Err(format!("{url} answered HTTP {}", resp.status()));
    }
    JsFuture::from(resp.json().map_err(failed)?)
        .await
        .map_err(failed)
}

/// Swaps in the meeting screen, opens WebTransport when the server offers
/// it (WebSocket otherwise, or when WebTransport fails) and runs the session.
async fn connect(name: String, meeting: String, token: String, e2ee: bool) -> Result<(), JsValue> {
    let config = ClientSessionConfig {
        client_kind: v1::ClientKind::Browser,
        client_version: concat!("convene-web/", env!("CARGO_PKG_VERSION")).into(),
        auth_token: token,
        // Selective forwarding (PROTOCOL.md §6.6): simulcast out, the
        // size each tile needs in.
        features: vec![
            convene_protocol::FEATURE_SFU.into(),
            convene_protocol::FEATURE_REACTIONS.into(),
            convene_protocol::FEATURE_RECORDING.into(),
        ],
        ..ClientSessionConfig::default()
    };
    let app = Rc::new(RefCell::new(App::new(name, meeting, config, e2ee)));
    page(|p| p.current = Some(app.clone()));
    ui::update(|v| v.screen = ui::Screen::Meeting);
    timers(&app)?;
    open_link(&app).await
}

/// Opens the transport for the app's session: WebTransport when offered
/// (WebSocket when it fails or `?transport=websocket`), WebSocket otherwise.
/// The link's events are tied to this attempt, so a late event of an older
/// link never reaches a newer session.
async fn open_link(app: &Rc<RefCell<App>>) -> Result<(), JsValue> {
    let location = web_sys::window().ok_or("no window")?.location();
    let given = server_override(&location.host()?, &location.search()?);
    let ws = given
        .clone()
        .unwrap_or(ws_url(&location.protocol()?, &location.host()?));
    let generation = {
        let mut a = app.borrow_mut();
        a.generation += 1;
        a.fallback = None;
        a.generation
    };
    let forced_ws = location.search()?.contains("transport=websocket") || given.is_some();
    let wt_given = webtransport_override(&location.host()?, &location.search()?);
    if let Some((offered, hashes)) = webtransport_offer().await
        && !forced_ws
    {
        let url = wt_given.unwrap_or(offered);
        ui::status(format!("Connecting to {url}…"));
        let (a, b) = (app.clone(), app.clone());
        let handlers = transport::Handlers {
            frame: Box::new(move |bytes| on_frame(&a, generation, bytes)),
            closed: Box::new(move || on_closed(&b, generation)),
        };
        match transport::open_webtransport(&url, &hashes, AUDIO_TRACK, handlers).await {
            Ok(wt) => {
                let mut a = app.borrow_mut();
                a.link = Some(Link::WebTransport(wt));
                a.session.connected(now());
                pump(&mut a);
                return Ok(());
            }
            Err(e) => {
                web_sys::console::warn_1(&e.clone().into());
                app.borrow_mut().fallback = Some(e);
            }
        }
    } else if !forced_ws && !has_webtransport() {
        // Nothing to wait for: straight to WebSocket, and said so.
        app.borrow_mut().fallback = Some("this browser has no WebTransport".into());
    }

    ui::status(format!("Connecting to {ws}…"));
    let socket = web_sys::WebSocket::new(&ws)?;
    socket.set_binary_type(web_sys::BinaryType::Arraybuffer);
    app.borrow_mut().link = Some(Link::WebSocket(socket.clone()));
    let a = app.clone();
    let on_open = Closure::<dyn FnMut()>::new(move || {
        let mut app = a.borrow_mut();
        if app.generation == generation {
            app.session.connected(now());
            pump(&mut app);
        }
    });
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    on_open.forget();

    let a = app.clone();
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            if let Ok(buf) = e.data().dyn_into::<js_sys::ArrayBuffer>() {
                on_frame(
                    &a,
                    generation,
                    Bytes::from(js_sys::Uint8Array::new(&buf).to_vec()),
                );
            }
        });
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();

    let a = app.clone();
    let on_close = Closure::<dyn FnMut()>::new(move || on_closed(&a, generation));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    on_close.forget();
    Ok(())
}

/// After a lost connection: waits (1, 2, 4 … 10 s), then starts a new
/// session on a new link; the page keeps its camera and microphone and
/// publishes them again once joined.
fn reconnect(a: &Rc<RefCell<App>>) {
    let attempt = {
        let mut app = a.borrow_mut();
        app.reconnects += 1;
        app.reconnects
    };
    let delay_ms = delay_ms(attempt);
    let banner = format!(
        "Connection lost. Reconnecting in {} s (attempt {attempt})…",
        delay_ms / 1000
    );
    ui::update(|v| v.banner = banner);
    let a = a.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let timer = js_sys::Promise::new(&mut |resolve, _| {
            if let Some(w) = web_sys::window() {
                let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, delay_ms);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(timer).await;
        {
            let mut app = a.borrow_mut();
            let config = app.session_config.clone();
            app.session = ClientSession::new(now(), config);
            app.link = None;
            app.pending_publish.clear();
            app.roster.clear();
            app.mic_muted.clear();
            remote::clear(&mut app);
            // Quiet until the server has the tracks again.
            if let Some(c) = &app.camera {
                c.on.set(false);
            }
            if let Some(m) = &app.mic {
                m.on.set(false);
            }
            // Screen sharing does not survive a reconnect: it is asked for again.
            if let Some((c, track)) = app.screen.take() {
                c.on.set(false);
                track.set_onended(None);
                track.stop();
                ui::update(|v| v.sharing = false);
            }
            screens::show_roster(&app);
        }
        if let Err(e) = open_link(&a).await {
            web_sys::console::warn_2(&"reconnect failed".into(), &e);
            reconnect(&a);
        }
    });
}

/// A frame from the server, whichever way it came.
fn on_frame(a: &Rc<RefCell<App>>, generation: u32, bytes: Bytes) {
    let mut app = a.borrow_mut();
    if app.generation != generation {
        return;
    }
    app.session.handle_frame(now(), bytes);
    pump(&mut app);
    let camera = std::mem::take(&mut app.want_camera);
    drop(app);
    if camera {
        publish::send_camera(a);
    }
    after_close(a);
}

/// The transport is gone: reconnects when that is worth it.
fn on_closed(a: &Rc<RefCell<App>>, generation: u32) {
    let mut app = a.borrow_mut();
    if app.generation != generation {
        return;
    }
    app.session.handle_transport_closed();
    pump(&mut app);
    app.closed_here = false;
    let again = app.session.close_reason().is_some_and(worth_reconnecting);
    drop(app);
    if again {
        reconnect(a);
    }
}

/// Whether this browser has the WebTransport API (WebKit's is off by default).
fn has_webtransport() -> bool {
    web_sys::window()
        .is_some_and(|w| js_sys::Reflect::has(&w, &"WebTransport".into()).unwrap_or(false))
}

/// The WebTransport URL and certificate hashes the server's discovery
/// document offers, when this browser has WebTransport.
async fn webtransport_offer() -> Option<(String, Vec<Vec<u8>>)> {
    if !has_webtransport() {
        return None;
    }
    // The copy the sign-in step just read, if any; otherwise (and on every
    // reconnect, where a restarted server may have a new certificate) fetched.
    let d = match page(|p| p.fresh_discovery.take()) {
        Some(d) => d,
        None => fetch_json(DISCOVERY_URL, false).await.ok()?,
    };
    let url = js_sys::Reflect::get(&d, &"webtransport".into())
        .ok()?
        .as_string()?;
    let hashes = js_sys::Reflect::get(&d, &"certificate_hashes".into())
        .ok()
        .and_then(|h| h.dyn_into::<js_sys::Array>().ok())
        .map(|list| {
            list.iter()
                .filter_map(|h| js_sys::Reflect::get(&h, &"value".into()).ok()?.as_string())
                .filter_map(|hex| hex_bytes(&hex))
                .collect()
        })
        .unwrap_or_default();
    Some((url, hashes))
}

/// The session's timers (heartbeat, handshake timeout), and the audio
/// levels and counters shown four times a second.
fn timers(app: &Rc<RefCell<App>>) -> Result<(), JsValue> {
    let a = app.clone();
    let tick = Closure::<dyn FnMut()>::new(move || {
        let mut app = a.borrow_mut();
        app.session.handle_timeout(now());
        pump(&mut app);
        remote::ask_for_sizes(&mut app);
        screens::show_audio(&app);
        app.ticks = app.ticks.wrapping_add(1);
        let sample = app.ticks.is_multiple_of(4);
        drop(app);
        after_close(&a);
        if sample {
            path::sample_path(&a);
        }
    });
    web_sys::window()
        .ok_or("no window")?
        .set_interval_with_callback_and_timeout_and_arguments_0(
            tick.as_ref().unchecked_ref(),
            250,
        )?;
    tick.forget();
    Ok(())
}

/// After the page closed the link itself (the session ended): reconnects
/// when that is worth it, without waiting for the transport's close event,
/// which a peer that never finishes the closing handshake would hold back.
pub(crate) fn after_close(a: &Rc<RefCell<App>>) {
    let mut app = a.borrow_mut();
    if !std::mem::take(&mut app.closed_here) {
        return;
    }
    // The old link's late events belong to no session now.
    app.generation += 1;
    let again = app.session.close_reason().is_some_and(worth_reconnecting);
    drop(app);
    if again {
        reconnect(a);
    }
}
