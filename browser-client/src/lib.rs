//! The Convene browser client, compiled to `wasm32-unknown-unknown` and served
//! by the server.
//!
//! It joins a meeting over WebTransport (WebSocket when that is not there or
//! fails) with the same sans-IO session machine as every other client
//! (`convene-protocol`), sends the camera and microphone (WebCodecs), shows
//! a tile per remote video track and plays remote sound. The screens are Yew
//! components ([`ui`]) drawn from one view model that this module's session
//! code updates.

#[cfg(target_arch = "wasm32")]
mod audio;
#[cfg(target_arch = "wasm32")]
mod camera;
#[cfg(target_arch = "wasm32")]
mod capture;
pub mod links;
pub mod retry;
#[cfg(target_arch = "wasm32")]
mod transport;
pub mod ui;
#[cfg(target_arch = "wasm32")]
mod video;

/// The browser client's camera track id.
const VIDEO_TRACK: u32 = 1;
/// The browser client's microphone track id.
#[cfg(target_arch = "wasm32")]
const AUDIO_TRACK: u32 = 2;
/// The bitrate the camera starts at, bit/s (also what it announces).
const CAMERA_START_BPS: u32 = 800_000;
/// The lowest bitrate the camera goes down to, bit/s.
const CAMERA_FLOOR_BPS: u32 = 100_000;
/// The browser client's screen-share track id.
#[cfg(target_arch = "wasm32")]
const SCREEN_TRACK: u32 = 3;

thread_local! {
    /// The camera and microphone the join screen opened, sent once joined.
    static LOCAL_MEDIA: RefCell<Option<web_sys::MediaStream>> = const { RefCell::new(None) };
    /// A meeting joined before the camera and microphone were ready: they
    /// are sent as soon as they are.
    static WAITING_FOR_MEDIA: RefCell<Option<Rc<RefCell<App>>>> = const { RefCell::new(None) };
    /// The meeting this page is in, for the screens' buttons.
    static CURRENT: RefCell<Option<Rc<RefCell<App>>>> = const { RefCell::new(None) };
}

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{ClientEvent, ClientSession, ClientSessionConfig, Timestamp};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

#[cfg(target_arch = "wasm32")]
use links::webtransport_override;
pub use links::{e2ee_from_link, page_meeting};
use links::{e2ee_in_link, hex_bytes, server_override, token_from, ws_url};
use retry::{delay_ms, worth_reconnecting};

/// The link to the server.
enum Link {
    /// A WebSocket: one frame per binary message.
    WebSocket(web_sys::WebSocket),
    /// A WebTransport session (PROTOCOL.md §3.3).
    #[cfg(target_arch = "wasm32")]
    WebTransport(transport::Wt),
}

impl Link {
    /// What the page calls it.
    fn label(&self) -> &'static str {
        match self {
            Link::WebSocket(_) => "WebSocket",
            #[cfg(target_arch = "wasm32")]
            Link::WebTransport(_) => "WebTransport",
        }
    }

    /// Sends one frame the way its transport carries frames.
    fn send(&self, frame: &Bytes) {
        match self {
            Link::WebSocket(s) => {
                let _ = s.send_with_u8_array(frame);
            }
            #[cfg(target_arch = "wasm32")]
            Link::WebTransport(w) => w.send(frame),
        }
    }

    /// Closes it.
    fn close(&self) {
        match self {
            Link::WebSocket(s) => {
                let _ = s.close();
            }
            #[cfg(target_arch = "wasm32")]
            Link::WebTransport(w) => w.close(),
        }
    }
}

/// What the page shows and the session behind it.
struct App {
    session: ClientSession,
    /// The transport, once open.
    link: Option<Link>,
    /// Which link attempt is current; events of older links are ignored.
    generation: u32,
    /// Set when the page has just closed its link because the session ended.
    closed_here: bool,
    /// Reconnect attempts since the last successful join.
    reconnects: u32,
    /// The settings every session of this page starts with.
    session_config: ClientSessionConfig,
    /// Why WebTransport was not used, when it was offered and failed.
    fallback: Option<String>,
    meeting: String,
    name: String,
    /// Who is in the room: name and whether a moderator.
    roster: BTreeMap<u32, (String, bool)>,
    /// This participant may moderate.
    moderator: bool,
    /// The room is locked.
    locked: bool,
    /// Remote video on screen, by (participant, track).
    #[cfg(target_arch = "wasm32")]
    tiles: BTreeMap<(u32, u32), video::Tile>,
    /// The camera being sent, once joined.
    #[cfg(target_arch = "wasm32")]
    camera: Option<camera::Camera>,
    /// The microphone being sent, once joined.
    #[cfg(target_arch = "wasm32")]
    mic: Option<audio::Mic>,
    /// The screen being shared, and its capture track.
    #[cfg(target_arch = "wasm32")]
    screen: Option<(camera::Camera, web_sys::MediaStreamTrack)>,
    /// The next screen frame's sequence number.
    #[cfg(target_arch = "wasm32")]
    screen_sequence: u32,
    /// Remote audio being played, by (participant, track).
    #[cfg(target_arch = "wasm32")]
    players: BTreeMap<(u32, u32), audio::Player>,
    /// The next audio frame's sequence number.
    #[cfg(target_arch = "wasm32")]
    audio_sequence: u32,
    /// Our Publish requests awaiting an answer: request id to track id.
    pending_publish: BTreeMap<u32, u32>,
    /// Participants whose microphone is muted.
    mic_muted: std::collections::BTreeSet<u32>,
    /// Joined and not sending yet: the caller starts the camera.
    want_camera: bool,
    /// The next video frame's sequence number.
    #[cfg(target_arch = "wasm32")]
    video_sequence: u32,
    /// The user asked for end-to-end encryption in this meeting.
    e2ee_wanted: bool,
    /// The session's end-to-end encryption, once joined with it on.
    keyring: Option<convene_protocol::e2ee::Keyring>,
    /// The safety code last shown.
    safety_code: String,
    /// The encryption state last shown.
    e2ee_text: String,
    /// The camera's bitrate, from the path and the server's hints.
    rate: convene_protocol::rate::RateController,
    /// WebTransport's packet counters at the last path sample: sent, lost.
    #[cfg(target_arch = "wasm32")]
    path_counters: Option<(f64, f64)>,
    /// Timer ticks since the meeting screen came up.
    ticks: u32,
}

impl App {
    /// The name to show for `pid`.
    fn name_of(&self, pid: u32) -> String {
        self.roster
            .get(&pid)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("participant {pid}"))
    }
}

fn now() -> Timestamp {
    let ms = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now());
    Timestamp((ms * 1000.0) as u64)
}

/// `x` with one decimal, formatted by JS (which keeps float formatting
/// out of the wasm), for the counters the page shows in data attributes.
#[cfg(target_arch = "wasm32")]
pub(crate) fn fixed1(x: f64) -> String {
    js_sys::Number::from(x)
        .to_fixed(1)
        .map(String::from)
        .unwrap_or_default()
}

fn by_id(id: &str) -> Option<web_sys::Element> {
    web_sys::window()?.document()?.get_element_by_id(id)
}

/// The camera and microphone the join screen opened, once it has.
pub fn local_media() -> Option<web_sys::MediaStream> {
    LOCAL_MEDIA.with(|m| m.borrow().clone())
}

/// Mounts the screens in `#app` and opens the camera and microphone for the
/// join screen's preview; with `?join=1` connects at once.
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let root = by_id("app").ok_or("the page has no #app")?;
    // The "Loading…" line goes; Yew adds to what the root holds.
    root.set_inner_html("");
    yew::Renderer::<ui::Page>::with_root(root).render();
    preview(None);
    // `?join=1`: connect at once (for kiosks and the conformance runner).
    if window
        .location()
        .search()?
        .trim_start_matches('?')
        .split('&')
        .any(|kv| kv == "join=1")
    {
        let (name, meeting) = page_meeting();
        begin(name, meeting, e2ee_from_link());
    }
    Ok(())
}

/// Asks for the camera and microphone (the chosen devices, or any) for the
/// preview and the meeting, and lists the devices to choose from; says in
/// the preview line when there are none or permission is refused.
pub fn preview(chosen: Option<(String, String)>) {
    wasm_bindgen_futures::spawn_local(async move {
        ui::update(|v| v.preview = "Opening the camera and microphone…".into());
        let (camera, mic) = chosen.clone().unwrap_or_default();
        // The previous devices are released when a new pick replaces them.
        if chosen.is_some()
            && let Some(old) = LOCAL_MEDIA.with(|m| m.borrow_mut().take())
        {
            for t in old.get_tracks().iter() {
                if let Ok(t) = t.dyn_into::<web_sys::MediaStreamTrack>() {
                    t.stop();
                }
            }
        }
        match open_devices(&camera, &mic).await {
            Ok(stream) => {
                let tracks = stream.get_tracks().length();
                // Kept even when the join screen is gone already (Connect
                // pressed before the devices answered): the meeting sends it.
                LOCAL_MEDIA.with(|m| *m.borrow_mut() = Some(stream.clone()));
                ui::update(|v| {
                    v.media += 1;
                    v.preview = format!("Camera and microphone ready ({tracks} tracks)");
                });
                #[cfg(target_arch = "wasm32")]
                if let Some(app) = WAITING_FOR_MEDIA.with(|w| w.borrow_mut().take()) {
                    send_camera(&app);
                }
                let devices = list_devices(&stream).await;
                ui::update(|v| v.devices = devices);
            }
            Err(e) => ui::update(|v| v.preview = e),
        }
    });
}

/// Opens the camera and microphone: the devices with these ids, or any
/// where an id is empty.
async fn open_devices(camera: &str, mic: &str) -> Result<web_sys::MediaStream, String> {
    let devices = web_sys::window()
        .and_then(|w| w.navigator().media_devices().ok())
        .ok_or("This browser cannot capture here (a secure context is needed).")?;
    let constraints = web_sys::MediaStreamConstraints::new();
    // A chosen device: `{deviceId: {exact: id}}`; otherwise any.
    let pick = |id: &str| -> JsValue {
        if id.is_empty() {
            return JsValue::TRUE;
        }
        let exact = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&exact, &"exact".into(), &id.into());
        let c = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&c, &"deviceId".into(), &exact);
        c.into()
    };
    constraints.set_video(&pick(camera));
    constraints.set_audio(&pick(mic));
    let promise = devices
        .get_user_media_with_constraints(&constraints)
        .map_err(|_| "No camera or microphone access.")?;
    let stream = wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|e| {
            format!(
                "No camera or microphone: {}",
                e.as_string().unwrap_or_else(|| format!("{e:?}"))
            )
        })?;
    stream
        .dyn_into::<web_sys::MediaStream>()
        .map_err(|_| "The browser gave no media stream.".into())
}

/// The cameras and microphones the browser lists, the ones `stream` uses
/// marked.
async fn list_devices(stream: &web_sys::MediaStream) -> Vec<ui::Device> {
    let Some(devices) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) else {
        return Vec::new();
    };
    let in_use = |tracks: js_sys::Array| {
        tracks
            .get(0)
            .dyn_into::<web_sys::MediaStreamTrack>()
            .ok()
            .and_then(|t| {
                let s = t.get_settings();
                js_sys::Reflect::get(&s, &"deviceId".into())
                    .ok()?
                    .as_string()
            })
            .unwrap_or_default()
    };
    let using = [
        in_use(stream.get_video_tracks()),
        in_use(stream.get_audio_tracks()),
    ];
    let Ok(listed) = devices.enumerate_devices() else {
        return Vec::new();
    };
    let Ok(list) = wasm_bindgen_futures::JsFuture::from(listed).await else {
        return Vec::new();
    };
    let Ok(list) = list.dyn_into::<js_sys::Array>() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|d| {
            let get = |k: &str| {
                js_sys::Reflect::get(&d, &k.into())
                    .ok()
                    .and_then(|v| v.as_string())
                    .unwrap_or_default()
            };
            let kind = get("kind");
            let id = get("deviceId");
            let in_use = match kind.as_str() {
                "videoinput" => id == using[0],
                "audioinput" => id == using[1],
                _ => return None,
            };
            Some(ui::Device {
                kind,
                label: get("label"),
                id,
                in_use,
            })
        })
        .collect()
}

/// The server's discovery document (PROTOCOL.md §3.3).
const DISCOVERY_URL: &str = "/.well-known/convene.json";

thread_local! {
    /// The discovery document, when the sign-in step has just read it.
    static FRESH_DISCOVERY: RefCell<Option<JsValue>> = const { RefCell::new(None) };
}

/// Finds the token (the link's, or the sign-in service's) and connects.
pub fn begin(name: String, meeting: String, e2ee: bool) {
    let Some(location) = web_sys::window().map(|w| w.location()) else {
        return;
    };
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-connect-at", &js_sys::Date::now().to_string());
    }
    // Still inside the click: the one moment a page may start sound.
    #[cfg(target_arch = "wasm32")]
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
    FRESH_DISCOVERY.with(|f| *f.borrow_mut() = Some(d.clone()));
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
        ..ClientSessionConfig::default()
    };
    let app = Rc::new(RefCell::new(App {
        session: ClientSession::new(now(), config.clone()),
        link: None,
        generation: 0,
        closed_here: false,
        reconnects: 0,
        session_config: config,
        fallback: None,
        meeting,
        name,
        roster: BTreeMap::new(),
        moderator: false,
        locked: false,
        #[cfg(target_arch = "wasm32")]
        tiles: BTreeMap::new(),
        #[cfg(target_arch = "wasm32")]
        camera: None,
        #[cfg(target_arch = "wasm32")]
        mic: None,
        #[cfg(target_arch = "wasm32")]
        screen: None,
        #[cfg(target_arch = "wasm32")]
        screen_sequence: 0,
        #[cfg(target_arch = "wasm32")]
        players: BTreeMap::new(),
        #[cfg(target_arch = "wasm32")]
        audio_sequence: 0,
        pending_publish: BTreeMap::new(),
        mic_muted: Default::default(),
        want_camera: false,
        #[cfg(target_arch = "wasm32")]
        video_sequence: 0,
        e2ee_wanted: e2ee,
        keyring: None,
        safety_code: String::new(),
        e2ee_text: String::new(),
        rate: convene_protocol::rate::RateController::new(CAMERA_START_BPS, CAMERA_FLOOR_BPS),
        #[cfg(target_arch = "wasm32")]
        path_counters: None,
        ticks: 0,
    }));
    CURRENT.with(|c| *c.borrow_mut() = Some(app.clone()));
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
    #[cfg(target_arch = "wasm32")]
    {
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
                    web_sys::console::warn_1(&format!("WebTransport failed: {e}").into());
                    app.borrow_mut().fallback = Some(e);
                }
            }
        }
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
            #[cfg(target_arch = "wasm32")]
            {
                app.tiles.clear();
                app.players.clear();
                show_tiles(&app);
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
            }
            show_roster(&app);
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
        send_camera(a);
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

/// The WebTransport URL and certificate hashes the server's discovery
/// document offers, when this browser has WebTransport.
#[cfg(target_arch = "wasm32")]
async fn webtransport_offer() -> Option<(String, Vec<Vec<u8>>)> {
    let window = web_sys::window()?;
    if !js_sys::Reflect::has(&window, &"WebTransport".into()).unwrap_or(false) {
        return None;
    }
    // The copy the sign-in step just read, if any; otherwise (and on every
    // reconnect, where a restarted server may have a new certificate) fetched.
    let d = match FRESH_DISCOVERY.with(|f| f.borrow_mut().take()) {
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
        #[cfg(target_arch = "wasm32")]
        show_audio(&app);
        app.ticks = app.ticks.wrapping_add(1);
        let sample = app.ticks.is_multiple_of(4);
        drop(app);
        after_close(&a);
        #[cfg(target_arch = "wasm32")]
        if sample {
            sample_path(&a);
        }
        #[cfg(not(target_arch = "wasm32"))]
        let _ = sample;
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

/// Sends a chat message; false when the session would not take it (not
/// joined, too long).
pub fn send_chat(text: String) -> bool {
    let Some(a) = CURRENT.with(|c| c.borrow().clone()) else {
        return false;
    };
    let mut app = a.borrow_mut();
    let sent = app.session.send(
        now(),
        C::Chat(v1::ChatSend {
            text,
            ..Default::default()
        }),
    );
    pump(&mut app);
    sent.is_ok()
}

/// Does what a button of the meeting screen says.
pub fn act(action: ui::Action) {
    use ui::Action as A;
    let Some(a) = CURRENT.with(|c| c.borrow().clone()) else {
        return;
    };
    if action == A::Screen {
        // Still inside the click: browsers let getDisplayMedia run only here.
        #[cfg(target_arch = "wasm32")]
        toggle_screen(&a);
        return;
    }
    let mut app = a.borrow_mut();
    let msg = match action {
        A::Leave => {
            let _ = app.session.leave(now());
            None
        }
        A::Lock => Some(C::LockRoom(v1::LockRoom {
            locked: !app.locked,
        })),
        A::End => Some(C::EndMeeting(v1::EndMeeting {})),
        A::Mic | A::Camera => toggle(&mut app, action == A::Mic),
        A::Mute(pid) => Some(C::MuteRequest(v1::MuteRequest {
            participant_id: pid,
            kind: v1::TrackKind::Unspecified as i32,
        })),
        A::Remove(pid) => Some(C::RemoveParticipant(v1::RemoveParticipant {
            participant_id: pid,
            reason: String::new(),
        })),
        A::Admit(pid) | A::Deny(pid) => {
            ui::update(|v| v.waiting.retain(|(w, _)| *w != pid));
            Some(if matches!(action, A::Admit(_)) {
                C::Admit(v1::Admit {
                    participant_id: pid,
                })
            } else {
                C::Deny(v1::Deny {
                    participant_id: pid,
                })
            })
        }
        A::Screen => None,
    };
    if let Some(m) = msg {
        let _ = app.session.send(now(), m);
    }
    pump(&mut app);
    drop(app);
    after_close(&a);
}

/// Sends what the session has queued and shows what happened.
fn pump(app: &mut App) {
    while let Some(frame) = app.session.poll_transmit() {
        if let Some(link) = &app.link {
            link.send(&frame);
        }
    }
    while let Some(ev) = app.session.poll_event() {
        match ev {
            ClientEvent::Welcome(_) => {
                let (meeting, name) = (app.meeting.clone(), app.name.clone());
                if let Err(e) = app.session.join(now(), &meeting, &name, true) {
                    ui::status(format!("cannot join: {e}"));
                }
            }
            ClientEvent::Joined(j) => {
                app.roster = j
                    .participants
                    .iter()
                    .map(|p| (p.participant_id, person(p)))
                    .collect();
                let me = app.session.participant_id();
                app.moderator = app.roster.get(&me).is_some_and(|(_, m)| *m);
                app.locked = j.locked;
                app.reconnects = 0;
                let status = format!(
                    "In `{}` as participant {}",
                    j.meeting_id,
                    app.session.participant_id()
                );
                let label = app.link.as_ref().map_or("?", Link::label);
                let text = match &app.fallback {
                    Some(why) => format!("Connected over {label} (WebTransport failed: {why})"),
                    None => format!("Connected over {label}"),
                };
                let locked = app.locked;
                ui::update(|v| {
                    v.locked = locked;
                    v.banner.clear();
                    v.status = status;
                    v.login_url = None;
                    v.transport = text;
                });
                if let Some(root) = by_id("app") {
                    let _ = root.set_attribute("data-transport", label);
                }
                show_roster(app);
                start_e2ee(app);
                app.want_camera = true;
                let me = app.session.participant_id();
                for p in j.participants.iter().filter(|p| p.participant_id != me) {
                    for t in &p.tracks {
                        add_tile(app, p.participant_id, t);
                    }
                }
            }
            ClientEvent::Room(S::TrackPublished(t)) => {
                if let Some(track) = t.track {
                    if t.participant_id != app.session.participant_id() {
                        add_tile(app, t.participant_id, &track);
                    } else {
                        // The server has our track: start sending it.
                        app.pending_publish.retain(|_, id| *id != track.track_id);
                        #[cfg(target_arch = "wasm32")]
                        {
                            if track.track_id == VIDEO_TRACK
                                && let Some(c) = &app.camera
                            {
                                c.key_wanted.set(true);
                                c.on.set(true);
                            }
                            if track.track_id == AUDIO_TRACK
                                && let Some(m) = &app.mic
                            {
                                m.on.set(true);
                            }
                            if track.track_id == SCREEN_TRACK
                                && let Some((c, _)) = &app.screen
                            {
                                c.key_wanted.set(true);
                                c.on.set(true);
                            }
                        }
                    }
                }
            }
            ClientEvent::Room(S::KeyFrameRequest(_k)) => {
                #[cfg(target_arch = "wasm32")]
                if _k.track_id == VIDEO_TRACK
                    && let Some(c) = &app.camera
                {
                    c.key_wanted.set(true);
                }
                #[cfg(target_arch = "wasm32")]
                if _k.track_id == SCREEN_TRACK
                    && let Some((c, _)) = &app.screen
                {
                    c.key_wanted.set(true);
                }
            }
            ClientEvent::Room(S::CongestionHint(_h)) => {
                // Move the encoder toward the server's suggestion (§6.5),
                // within what the camera started at.
                let bps = _h.target_bitrate_kbps.saturating_mul(1000);
                if _h.track_id == VIDEO_TRACK {
                    app.rate.on_hint(bps);
                    #[cfg(target_arch = "wasm32")]
                    apply_rate(app);
                }
                #[cfg(target_arch = "wasm32")]
                if _h.track_id == SCREEN_TRACK
                    && let Some((c, _)) = &app.screen
                {
                    c.bitrate.set(bps.clamp(CAMERA_FLOOR_BPS, CAMERA_START_BPS));
                }
            }
            ClientEvent::Room(S::TrackUnpublished(_u)) => {
                #[cfg(target_arch = "wasm32")]
                {
                    app.tiles.remove(&(_u.participant_id, _u.track_id));
                    app.players.remove(&(_u.participant_id, _u.track_id));
                    show_tiles(app);
                }
            }
            ClientEvent::Room(S::TrackMuted(m)) => {
                #[cfg(target_arch = "wasm32")]
                let tile = app
                    .tiles
                    .get(&(m.participant_id, m.track_id))
                    .map(|t| t.element().clone());
                #[cfg(not(target_arch = "wasm32"))]
                let tile: Option<web_sys::Element> = None;
                if let Some(tile) = tile {
                    let _ =
                        tile.set_attribute("data-muted", if m.muted { "true" } else { "false" });
                } else if m.muted {
                    app.mic_muted.insert(m.participant_id);
                    show_roster(app);
                } else {
                    app.mic_muted.remove(&m.participant_id);
                    show_roster(app);
                }
            }
            ClientEvent::Media(_m) => {
                #[cfg(target_arch = "wasm32")]
                {
                    let h = *_m.header();
                    let _m = match open_media(app, _m) {
                        Some(m) => m,
                        None => continue,
                    };
                    let now_ms = now().0 as f64 / 1000.0;
                    if let Some(p) = app.players.get_mut(&(h.sender, h.track_id)) {
                        p.play(&_m);
                    } else if let Some(tile) = app.tiles.get_mut(&(h.sender, h.track_id))
                        && tile.decode(&_m)
                        && now_ms - tile.last_key_request_ms > 1000.0
                    {
                        // Ask the publisher for a picture to start from, at most once a second.
                        tile.last_key_request_ms = now_ms;
                        let _ = app.session.send(
                            now(),
                            C::KeyFrameRequest(v1::KeyFrameRequest {
                                participant_id: h.sender,
                                track_id: h.track_id,
                            }),
                        );
                    }
                }
            }
            ClientEvent::Waiting(_) => {
                ui::status("Waiting for a moderator to let you in…");
            }
            ClientEvent::Room(S::ParticipantJoined(j)) => {
                if let Some(p) = j.participant {
                    // Admitted from the waiting room: no longer waiting.
                    ui::update(|v| v.waiting.retain(|(w, _)| *w != p.participant_id));
                    if let Some(ring) = app.keyring.as_mut() {
                        ring.participant_joined(p.participant_id);
                    }
                    app.roster.insert(p.participant_id, person(&p));
                    show_roster(app);
                    show_e2ee(app);
                }
            }
            ClientEvent::Room(S::E2ee(m)) => {
                if let Some(ring) = app.keyring.as_mut() {
                    match ring.receive(m.from_participant_id, &m.payload) {
                        Ok(out) => e2ee_outcome(app, out),
                        Err(e) => web_sys::console::warn_1(&format!("E2EE: {e}").into()),
                    }
                }
            }
            ClientEvent::Room(S::ParticipantLeft(l)) => {
                if let Some(ring) = app.keyring.as_mut() {
                    let out = ring.participant_left(l.participant_id);
                    e2ee_outcome(app, out);
                }
                app.roster.remove(&l.participant_id);
                app.mic_muted.remove(&l.participant_id);
                #[cfg(target_arch = "wasm32")]
                {
                    app.tiles.retain(|(pid, _), _| *pid != l.participant_id);
                    app.players.retain(|(pid, _), _| *pid != l.participant_id);
                    show_tiles(app);
                }
                show_roster(app);
                show_e2ee(app);
            }
            ClientEvent::Room(S::Chat(c)) => {
                let who = app.name_of(c.from_participant_id);
                ui::update(|v| v.chat_line(format!("{who}: {}", c.text)));
            }
            ClientEvent::Left(_) => {
                ui::status("You left the meeting.");
                app.roster.clear();
                show_roster(app);
                app.session.goodbye(now(), "left");
            }
            ClientEvent::Room(S::RoomLocked(l)) => {
                app.locked = l.locked;
                ui::update(|v| v.locked = l.locked);
            }
            ClientEvent::Room(S::AdmissionRequest(r)) => {
                if let Some(p) = r.participant {
                    ui::update(|v| v.waiting_add(p.participant_id, p.display_name));
                }
            }
            ClientEvent::Room(S::MuteRequested(m)) => {
                let by = app.name_of(m.by_participant_id);
                ui::notice(format!("{by} asked you to mute."));
            }
            ClientEvent::JoinRefused(e) | ClientEvent::Error(e)
                if e.code == v1::ErrorCode::AdmissionDenied as i32 =>
            {
                ui::status("A moderator did not let you in.");
            }
            ClientEvent::Error(e) if app.pending_publish.contains_key(&e.request_id) => {
                // A track the server will not take (the token's grants): say
                // so and leave its button off.
                let track = app.pending_publish.remove(&e.request_id).unwrap_or(0);
                let camera = track == 1;
                let what = if camera { "camera" } else { "microphone" };
                let text = format!("Not sending your {what}: {}", e.text);
                ui::update(|v| {
                    v.notice = text;
                    if camera {
                        v.camera_refused = true;
                    } else {
                        v.mic_refused = true;
                    }
                });
            }
            ClientEvent::JoinRefused(e) => {
                ui::status(format!("The server said: {}", e.text));
            }
            ClientEvent::Error(e) => {
                ui::notice(format!("The server said: {}", e.text));
            }
            ClientEvent::Closed => {
                let text = match app.session.close_reason() {
                    Some(r) if r.goodbye == Some(v1::GoodbyeReason::Removed) => {
                        "A moderator removed you from the meeting.".to_string()
                    }
                    Some(r) if r.goodbye == Some(v1::GoodbyeReason::MeetingEnded) => {
                        "The meeting has ended.".to_string()
                    }
                    Some(r) => format!("Disconnected: {}", r.text),
                    None => "Disconnected.".to_string(),
                };
                ui::status(text);
                app.roster.clear();
                show_roster(app);
                #[cfg(target_arch = "wasm32")]
                {
                    app.tiles.clear();
                    app.players.clear();
                    show_tiles(app);
                }
            }
            _ => {}
        }
    }
    while let Some(frame) = app.session.poll_transmit() {
        if let Some(link) = &app.link {
            link.send(&frame);
        }
    }
    // The session is over (left, removed, refused): the last words are
    // sent, so the transport can go.
    if app.session.close_reason().is_some()
        && let Some(link) = app.link.take()
    {
        link.close();
        app.closed_here = true;
    }
}

/// After the page closed the link itself (the session ended): reconnects
/// when that is worth it, without waiting for the transport's close event,
/// which a peer that never finishes the closing handshake would hold back.
fn after_close(a: &Rc<RefCell<App>>) {
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

/// Publishes the camera and microphone the join screen opened and starts
/// sending them (after a reconnect: publishes them again).
fn send_camera(_app: &Rc<RefCell<App>>) {
    #[cfg(target_arch = "wasm32")]
    {
        let Some(stream) = LOCAL_MEDIA.with(|m| m.borrow().clone()) else {
            WAITING_FOR_MEDIA.with(|w| *w.borrow_mut() = Some(_app.clone()));
            return;
        };
        let first =
            |tracks: js_sys::Array| tracks.get(0).dyn_into::<web_sys::MediaStreamTrack>().ok();
        if let Some(track) = first(stream.get_video_tracks()) {
            let rc = _app.clone();
            let sink = move |e: camera::Encoded| {
                let mut app = rc.borrow_mut();
                let seq = app.video_sequence;
                app.video_sequence = seq.wrapping_add(1);
                send_frame(&mut app, VIDEO_TRACK, seq, e.key, &e.data, e.captured_us);
            };
            let info = v1::TrackInfo {
                track_id: VIDEO_TRACK,
                kind: v1::TrackKind::Video as i32,
                codec: camera::CODEC.into(),
                frame_rate: 30,
                target_bitrate_kbps: CAMERA_START_BPS / 1000,
                ..Default::default()
            };
            // After a reconnect the encoder runs already: publishing again is enough.
            if publish(_app, info) && _app.borrow().camera.is_none() {
                match camera::start(&track, sink) {
                    Ok(c) => _app.borrow_mut().camera = Some(c),
                    Err(e) => web_sys::console::warn_2(&"cannot send the camera".into(), &e),
                }
            }
        }
        if let Some(track) = first(stream.get_audio_tracks()) {
            let rc = _app.clone();
            let sink = move |data: Vec<u8>| {
                let mut app = rc.borrow_mut();
                let seq = app.audio_sequence;
                app.audio_sequence = seq.wrapping_add(1);
                let now_us = (js_sys::Date::now() * 1000.0) as u64;
                send_frame(&mut app, AUDIO_TRACK, seq, true, &data, now_us);
            };
            let info = v1::TrackInfo {
                track_id: AUDIO_TRACK,
                kind: v1::TrackKind::Audio as i32,
                codec: audio::CODEC.into(),
                sample_rate: 48_000,
                channels: 1,
                ..Default::default()
            };
            if publish(_app, info) && _app.borrow().mic.is_none() {
                match audio::start_mic(&track, sink) {
                    Ok(m) => _app.borrow_mut().mic = Some(m),
                    Err(e) => web_sys::console::warn_2(&"cannot send the microphone".into(), &e),
                }
            }
        }
    }
}

/// Announces a track; false when the server will not have it.
#[cfg(target_arch = "wasm32")]
fn publish(app: &Rc<RefCell<App>>, track: v1::TrackInfo) -> bool {
    let mut app = app.borrow_mut();
    let id = track.track_id;
    let sent = app
        .session
        .send(now(), C::Publish(v1::Publish { track: Some(track) }));
    if let Ok(request) = sent {
        app.pending_publish.insert(request, id);
    }
    pump(&mut app);
    sent.is_ok()
}

/// Starts sharing the screen (asking the browser which one), or stops.
#[cfg(target_arch = "wasm32")]
fn toggle_screen(a: &Rc<RefCell<App>>) {
    let sharing = a.borrow_mut().screen.take();
    if let Some((c, track)) = sharing {
        stop_screen(a, c, track);
        return;
    }
    let Some(devices) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) else {
        return;
    };
    let Ok(promise) = devices.get_display_media() else {
        return;
    };
    let a = a.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let stream = match wasm_bindgen_futures::JsFuture::from(promise).await {
            Ok(s) => s.unchecked_into::<web_sys::MediaStream>(),
            Err(e) => {
                ui::notice(format!("Not sharing the screen: {e:?}"));
                return;
            }
        };
        let Ok(track) = stream
            .get_video_tracks()
            .get(0)
            .dyn_into::<web_sys::MediaStreamTrack>()
        else {
            return;
        };
        let info = v1::TrackInfo {
            track_id: SCREEN_TRACK,
            kind: v1::TrackKind::Screen as i32,
            codec: camera::CODEC.into(),
            frame_rate: 30,
            ..Default::default()
        };
        if !publish(&a, info) {
            track.stop();
            return;
        }
        let rc = a.clone();
        let sink = move |e: camera::Encoded| {
            let mut app = rc.borrow_mut();
            let seq = app.screen_sequence;
            app.screen_sequence = seq.wrapping_add(1);
            send_frame(&mut app, SCREEN_TRACK, seq, e.key, &e.data, e.captured_us);
        };
        match camera::start(&track, sink) {
            Ok(c) => {
                // The browser's own "stop sharing" ends the track: stop too.
                let rc = a.clone();
                let ended = Closure::<dyn FnMut()>::new(move || {
                    let taken = rc.borrow_mut().screen.take();
                    if let Some((c, t)) = taken {
                        stop_screen(&rc, c, t);
                    }
                });
                track.set_onended(Some(ended.as_ref().unchecked_ref()));
                ended.forget();
                a.borrow_mut().screen = Some((c, track));
                ui::update(|v| v.sharing = true);
            }
            Err(e) => web_sys::console::warn_2(&"cannot share the screen".into(), &e),
        }
    });
}

/// Stops sending the screen and tells the room.
#[cfg(target_arch = "wasm32")]
fn stop_screen(a: &Rc<RefCell<App>>, c: camera::Camera, track: web_sys::MediaStreamTrack) {
    c.on.set(false);
    track.set_onended(None);
    track.stop();
    let mut app = a.borrow_mut();
    let _ = app.session.send(
        now(),
        C::Unpublish(v1::Unpublish {
            track_id: SCREEN_TRACK,
        }),
    );
    pump(&mut app);
    ui::update(|v| v.sharing = false);
}

/// Starts end-to-end encryption for a session just joined, when asked for:
/// a keyring with fresh keys from the browser's secure random source, and
/// our identity key announced to the room.
fn start_e2ee(app: &mut App) {
    app.keyring = None;
    if !app.e2ee_wanted {
        ui::update(|v| v.e2ee = "Not end-to-end encrypted".into());
        return;
    }
    let mut seed = [0u8; 32];
    let random = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .map(|c| c.get_random_values_with_u8_array(&mut seed));
    if !matches!(random, Some(Ok(_))) {
        ui::update(|v| {
            v.e2ee = "Cannot encrypt: this browser gave no secure random numbers".into()
        });
        return;
    }
    let mut ring =
        convene_protocol::e2ee::Keyring::new(&app.meeting, app.session.participant_id(), seed);
    for id in app.roster.keys() {
        ring.participant_joined(*id);
    }
    let _ = app.session.send(now(), C::E2ee(ring.start()));
    app.keyring = Some(ring);
    show_e2ee(app);
}

/// Sends what the keyring answered, asks for key frames it says are
/// needed, and shows the (possibly new) safety code.
fn e2ee_outcome(app: &mut App, out: convene_protocol::e2ee::Outcome) {
    for m in out.send {
        let _ = app.session.send(now(), C::E2ee(m));
    }
    #[cfg(target_arch = "wasm32")]
    if let Some(sender) = out.new_key_from {
        let tracks: Vec<u32> = app
            .tiles
            .keys()
            .filter(|(pid, _)| *pid == sender)
            .map(|(_, t)| *t)
            .collect();
        for track_id in tracks {
            let _ = app.session.send(
                now(),
                C::KeyFrameRequest(v1::KeyFrameRequest {
                    participant_id: sender,
                    track_id,
                }),
            );
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = out.new_key_from;
    show_e2ee(app);
}

/// Shows the encryption state and safety code, and puts the counters on
/// `#app` for tests and curious users.
fn show_e2ee(app: &mut App) {
    let Some(ring) = &app.keyring else {
        return;
    };
    app.safety_code = ring.safety_code();
    let members = ring.members();
    // Participants in the room without keys: they cannot see or hear us,
    // nor we them (for a moment after someone joins, until their key comes).
    let me = app.session.participant_id();
    let outside: Vec<String> = app
        .roster
        .iter()
        .filter(|(id, _)| **id != me && !members.contains(id))
        .map(|(_, (name, _))| name.clone())
        .collect();
    let mut text = format!(
        "🔒 End-to-end encrypted · safety code {} · {} with keys; compare the code with the others",
        app.safety_code,
        members.len() + 1
    );
    if !outside.is_empty() {
        text.push_str(&format!(
            " · not encrypted with you (they cannot see or hear you): {}",
            outside.join(", ")
        ));
    }
    if text != app.e2ee_text {
        app.e2ee_text = text.clone();
        ui::update(|v| v.e2ee = text);
    }
    if let Some(root) = by_id("app") {
        let s = ring.stats();
        let _ = root.set_attribute("data-e2ee", "on");
        let _ = root.set_attribute("data-safety-code", &app.safety_code);
        let _ = root.set_attribute("data-e2ee-decrypted", &s.decrypted.to_string());
        let _ = root.set_attribute("data-e2ee-rejected", &s.rejected.to_string());
        let _ = root.set_attribute("data-e2ee-members", &ring.members().len().to_string());
    }
}

/// A received frame with its payload decrypted, when E2EE is on; `None`
/// (counted, never decoded) when it does not decrypt.
#[cfg(target_arch = "wasm32")]
fn open_media(
    app: &mut App,
    m: convene_protocol::MediaFrame,
) -> Option<convene_protocol::MediaFrame> {
    let Some(ring) = app.keyring.as_mut() else {
        return Some(m);
    };
    let opened = ring.open_media(&m);
    // The counters on the page: at every refusal, and now and then otherwise.
    if opened.is_err() || ring.stats().decrypted % 30 == 1 {
        show_e2ee(app);
    }
    opened.ok()
}

/// Runs the RFC 9605 vectors (`spec/v1/vectors/sframe/sframe.json` and
/// `aes_ctr_hmac.json`, as text) through this build's SFrame; returns how
/// many passed, or what failed. For checking the wasm build in a browser.
#[wasm_bindgen(js_name = sframeVectors)]
pub fn sframe_vectors(sframe_json: &str, aead_json: &str) -> Result<u32, JsValue> {
    use convene_protocol::sframe::{AeadKey, CipherSuite, Header, KeyContext};
    let parse = |s: &str| -> Result<js_sys::Array, JsValue> {
        let v = js_sys::JSON::parse(s)?;
        let list = js_sys::Object::values(&v.dyn_into::<js_sys::Object>()?).get(0);
        list.dyn_into::<js_sys::Array>()
            .map_err(|_| JsValue::from_str("no vector list"))
    };
    let field =
        |v: &JsValue, k: &str| -> Result<JsValue, JsValue> { js_sys::Reflect::get(v, &k.into()) };
    let bytes = |v: &JsValue, k: &str| -> Result<Vec<u8>, JsValue> {
        let s = field(v, k)?.as_string().ok_or(format!("{k} is not text"))?;
        hex_bytes(&s).ok_or_else(|| format!("{k} is not hexadecimal").into())
    };
    let number = |v: &JsValue, k: &str| -> Result<u64, JsValue> {
        field(v, k)?
            .as_f64()
            .map(|f| f as u64)
            .ok_or_else(|| format!("{k} is not a number").into())
    };
    let suite_of = |v: &JsValue| -> Result<CipherSuite, JsValue> {
        CipherSuite::from_u16(number(v, "cipher_suite")? as u16)
            .ok_or_else(|| "unknown suite".into())
    };
    let mut passed = 0;
    for v in parse(sframe_json)?.iter() {
        let suite = suite_of(&v)?;
        let (kid, ctr) = (number(&v, "kid")?, number(&v, "ctr")?);
        let ctx = KeyContext::derive(suite, kid, &bytes(&v, "base_key")?);
        let (meta, pt, ct) = (bytes(&v, "metadata")?, bytes(&v, "pt")?, bytes(&v, "ct")?);
        if ctx.encrypt(ctr, &meta, &pt) != ct {
            return Err(format!("suite {suite:?}: ciphertext differs").into());
        }
        let (h, len) = Header::parse(&ct).map_err(|e| e.to_string())?;
        if ctx.decrypt(&ct, h, len, &meta).ok() != Some(pt) {
            return Err(format!("suite {suite:?}: decryption differs").into());
        }
        passed += 1;
    }
    for v in parse(aead_json)?.iter() {
        let suite = suite_of(&v)?;
        let key = AeadKey::new(suite, &bytes(&v, "key")?).map_err(|e| e.to_string())?;
        let nonce: [u8; 12] = bytes(&v, "nonce")?.try_into().map_err(|_| "nonce length")?;
        let (aad, pt, ct) = (bytes(&v, "aad")?, bytes(&v, "pt")?, bytes(&v, "ct")?);
        if key.seal(&nonce, &aad, &pt) != ct || key.open(&nonce, &aad, &ct).ok() != Some(pt) {
            return Err(format!("AEAD suite {suite:?} differs").into());
        }
        passed += 1;
    }
    Ok(passed)
}

/// Times SFrame in this build: `frames` frames of `size` bytes encrypted,
/// then decrypted, by the clients' keyring. Returns
/// `{encrypt_mb_s, decrypt_mb_s, encrypt_us, decrypt_us}` (per frame); used
/// to report wasm throughput, never asserted.
#[wasm_bindgen(js_name = sframeBench)]
pub fn sframe_bench(size: usize, frames: usize) -> Result<JsValue, JsValue> {
    let clock = web_sys::window()
        .and_then(|w| w.performance())
        .ok_or("no performance clock")?;
    let (mut a, mut b) = convene_protocol::fuzzing::keyed_pair();
    let meta = [0u8; 19];
    let payload = vec![0x5au8; size];
    let t0 = clock.now();
    let sealed: Vec<Vec<u8>> = (0..frames).map(|_| a.encrypt(&meta, &payload)).collect();
    let t1 = clock.now();
    for ct in &sealed {
        b.decrypt(1, &meta, ct).map_err(|e| e.to_string())?;
    }
    let t2 = clock.now();
    let mb = (size * frames) as f64 / 1e6;
    let out = js_sys::Object::new();
    for (k, v) in [
        ("encrypt_mb_s", mb / ((t1 - t0) / 1e3)),
        ("decrypt_mb_s", mb / ((t2 - t1) / 1e3)),
        ("encrypt_us", (t1 - t0) * 1e3 / frames as f64),
        ("decrypt_us", (t2 - t1) * 1e3 / frames as f64),
    ] {
        js_sys::Reflect::set(&out, &k.into(), &v.into())?;
    }
    Ok(out.into())
}

/// Sends one encoded frame of our own track.
#[cfg(target_arch = "wasm32")]
fn send_frame(
    app: &mut App,
    track_id: u32,
    sequence: u32,
    key: bool,
    data: &[u8],
    captured_us: u64,
) {
    let header = convene_protocol::MediaHeader {
        key,
        sender: 0,
        track_id,
        sequence,
        capture_timestamp_us: captured_us,
    };
    let frame = match app.keyring.as_mut() {
        Some(ring) => ring.seal_media(&header, None, data),
        None => convene_protocol::MediaFrame::build(&header, None, data),
    };
    let _ = app.session.send_media(now(), frame);
    pump(app);
}

/// Turns the microphone (or the camera) off or on, tells the room, and
/// relabels its button.
fn toggle(app: &mut App, mic: bool) -> Option<C> {
    #[cfg(target_arch = "wasm32")]
    {
        let (on, track) = if mic {
            (app.mic.as_ref().map(|m| m.on.clone()), AUDIO_TRACK)
        } else {
            if let Some(c) = &app.camera {
                // Start again from a picture the others can decode.
                c.key_wanted.set(true);
            }
            (app.camera.as_ref().map(|c| c.on.clone()), VIDEO_TRACK)
        };
        let on = on?;
        on.set(!on.get());
        let off = !on.get();
        ui::update(|v| {
            if mic {
                v.mic_off = off;
            } else {
                v.camera_off = off;
            }
        });
        Some(C::SetTrackMuted(v1::SetTrackMuted {
            track_id: track,
            muted: !on.get(),
        }))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (app, mic);
        None
    }
}

/// Marks who is speaking (the loudest remote audio above a floor: their
/// tiles and their row in the participant list) and
/// counts decoded audio frames and played samples in `#app[data-audio-frames]`
/// and `#app[data-audio-played]`.
#[cfg(target_arch = "wasm32")]
fn show_audio(app: &App) {
    let decoded: u32 = app.players.values().map(|p| p.decoded.get()).sum();
    let played: u32 = app.players.values().map(|p| p.played.get()).sum();
    let loudest = app
        .players
        .iter()
        .map(|((pid, _), p)| (*pid, p.level.get()))
        .filter(|(_, l)| *l > 0.01)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(pid, _)| pid);
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-audio-frames", &decoded.to_string());
        let _ = root.set_attribute("data-audio-played", &played.to_string());
        let _ = root.set_attribute(
            "data-speaker",
            &loudest.map(|p| p.to_string()).unwrap_or_default(),
        );
    }
    for ((pid, _), tile) in &app.tiles {
        let _ = tile
            .element()
            .class_list()
            .toggle_with_force("speaking", Some(*pid) == loudest);
    }
    if ui::read(|v| v.speaker) != loudest {
        ui::update(|v| v.speaker = loudest);
    }
}

/// Puts a remote video track on screen, or plays a remote audio track.
fn add_tile(_app: &mut App, _participant: u32, _track: &v1::TrackInfo) {
    #[cfg(target_arch = "wasm32")]
    {
        let key = (_participant, _track.track_id);
        if _track.kind == v1::TrackKind::Audio as i32 {
            if let std::collections::btree_map::Entry::Vacant(slot) = _app.players.entry(key) {
                match audio::Player::new(&_track.codec) {
                    Ok(p) => {
                        slot.insert(p);
                    }
                    Err(e) => web_sys::console::warn_2(&"cannot play an audio track".into(), &e),
                }
            }
            if _track.muted {
                _app.mic_muted.insert(_participant);
            }
            return;
        }
        if _app.tiles.contains_key(&key) {
            return;
        }
        let mut name = _app.name_of(_participant);
        if _track.kind == v1::TrackKind::Screen as i32 {
            name.push_str(" · screen");
        }
        match video::Tile::new(_participant, _track.track_id, &name, &_track.codec) {
            Ok(t) => {
                _app.tiles.insert((_participant, _track.track_id), t);
                show_tiles(_app);
            }
            Err(e) => web_sys::console::warn_2(&"cannot show a video track".into(), &e),
        }
    }
}

/// Looks at the path once a second: the round trip (the browser's
/// WebTransport statistics where it has them, `getStats()`; otherwise our
/// own Ping, sent here, answered ahead of media), the share of packets lost
/// since the last look (`getStats()` only) and the media the transport has
/// not sent yet; the camera's bitrate follows (PROTOCOL.md §6.5, §9.2).
#[cfg(target_arch = "wasm32")]
fn sample_path(a: &Rc<RefCell<App>>) {
    let (stats, ping_rtt, backlog) = {
        let mut app = a.borrow_mut();
        let (stats, backlog) = match &app.link {
            Some(Link::WebTransport(wt)) => (wt.stats(), wt.unsent()),
            Some(Link::WebSocket(ws)) => (None, u64::from(ws.buffered_amount())),
            None => (None, 0),
        };
        let t = now();
        let _ = app.session.send(
            t,
            C::Ping(v1::Ping {
                timestamp_us: t.as_micros(),
            }),
        );
        pump(&mut app);
        (stats, app.session.rtt(), backlog)
    };
    let a = a.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let read = match stats {
            Some(p) => wasm_bindgen_futures::JsFuture::from(p).await.ok(),
            None => None,
        };
        let number = |s: &JsValue, k: &str| {
            js_sys::Reflect::get(s, &k.into())
                .ok()
                .and_then(|v| v.as_f64())
        };
        let mut app = a.borrow_mut();
        let mut rtt = ping_rtt;
        let mut loss = None;
        if let Some(s) = &read {
            if let Some(ms) = number(s, "smoothedRtt").filter(|ms| *ms > 0.0) {
                rtt = Some(std::time::Duration::from_secs_f64(ms / 1000.0));
            }
            if let (Some(sent), Some(lost)) = (number(s, "packetsSent"), number(s, "packetsLost")) {
                if let Some((sent0, lost0)) = app.path_counters
                    && sent > sent0
                {
                    loss = Some(((lost - lost0) / (sent - sent0)).clamp(0.0, 1.0));
                }
                app.path_counters = Some((sent, lost));
            }
        }
        app.rate.on_path(now(), rtt, loss, backlog);
        if let Some(root) = by_id("app") {
            if let Some(r) = rtt {
                let _ = root.set_attribute("data-rtt-ms", &fixed1(r.as_secs_f64() * 1000.0));
            }
            if let Some(l) = loss {
                let _ = root.set_attribute("data-loss-pct", &fixed1(l * 100.0));
            }
            let _ = root.set_attribute("data-backlog-bytes", &backlog.to_string());
            let state = match app.rate.path_state() {
                Some(convene_protocol::rate::PathState::Congested) => "congested",
                Some(convene_protocol::rate::PathState::Hold) => "hold",
                _ => "clean",
            };
            let _ = root.set_attribute("data-path", state);
        }
        apply_rate(&mut app);
    });
}

/// Gives the camera's encoder the controller's bitrate and shows it in
/// `#app[data-video-kbps]`.
#[cfg(target_arch = "wasm32")]
fn apply_rate(app: &mut App) {
    let target = app.rate.target();
    if let Some(c) = &app.camera
        && c.bitrate.get() != target
    {
        c.bitrate.set(target);
    }
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-video-kbps", &(target / 1000).to_string());
    }
}

/// Puts the remote video tiles in the meeting screen's grid.
#[cfg(target_arch = "wasm32")]
fn show_tiles(app: &App) {
    let tiles: Vec<ui::TileNode> = app
        .tiles
        .iter()
        .map(|((participant, track), t)| ui::TileNode {
            participant: *participant,
            track: *track,
            node: t.element().clone(),
        })
        .collect();
    ui::update(|v| v.tiles = tiles);
}

/// Shows who is in the room, and the moderator's controls to a moderator.
fn show_roster(app: &App) {
    let me = app.session.participant_id();
    let people: Vec<ui::Person> = app
        .roster
        .iter()
        .map(|(id, (name, moderator))| ui::Person {
            id: *id,
            name: name.clone(),
            moderator: *moderator,
            muted: app.mic_muted.contains(id),
            me: *id == me,
        })
        .collect();
    let moderator = app.moderator;
    ui::update(|v| {
        v.people = people;
        v.moderator = moderator;
    });
}

/// A roster entry: the name to show and whether a moderator.
fn person(p: &v1::Participant) -> (String, bool) {
    (p.display_name.clone(), p.role == v1::Role::Moderator as i32)
}
