//! The session code's state, in one place: [`Page`], its one global (what
//! lives longer than a meeting or arrives before one), and [`App`], one
//! meeting's session and everything shown and sent in it.
//!
//! `Page` is a thread-local because the browser calls us with no handle of
//! ours: a button's click, the camera permission's answer. An `App` is not
//! global: the closures of its link, timers and encoders each hold an
//! `Rc<RefCell<App>>` (JS callbacks need a `'static` handle), and `Page`
//! names the current one. Two other globals stay with their modules: the
//! screens' view model in `ui` (which builds natively, without this
//! module) and the page's one AudioContext in `audio`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use convene_protocol::rate::RateController;
use convene_protocol::{ClientSession, ClientSessionConfig, e2ee::Keyring};
use wasm_bindgen::JsValue;

use crate::dom::now;
use crate::publish::{CAMERA_FLOOR_BPS, CAMERA_START_BPS};
use crate::session::Link;
use crate::{audio, camera, video};

/// What the page keeps between the browser's calls.
pub(crate) struct Page {
    /// The camera and microphone the join screen opened, sent once joined.
    pub(crate) local_media: Option<web_sys::MediaStream>,
    /// A meeting joined before the camera and microphone were ready: they
    /// are sent as soon as they are.
    pub(crate) waiting_for_media: Option<Rc<RefCell<App>>>,
    /// The meeting this page is in, for the screens' buttons.
    pub(crate) current: Option<Rc<RefCell<App>>>,
    /// The discovery document, when the sign-in step has just read it.
    pub(crate) fresh_discovery: Option<JsValue>,
}

thread_local! {
    static PAGE: RefCell<Page> = const {
        RefCell::new(Page {
            local_media: None,
            waiting_for_media: None,
            current: None,
            fresh_discovery: None,
        })
    };
}

/// Reads or changes the page's state. Keep `f` short: it must not call
/// `page` again (the state is borrowed meanwhile), so take out what you
/// need (an `Rc` of the meeting) and use it after.
pub(crate) fn page<R>(f: impl FnOnce(&mut Page) -> R) -> R {
    PAGE.with(|p| f(&mut p.borrow_mut()))
}

/// The meeting this page is in, if any.
pub(crate) fn current() -> Option<Rc<RefCell<App>>> {
    page(|p| p.current.clone())
}

/// One meeting: the session, the link it runs on, and what the page shows
/// and sends in it.
pub(crate) struct App {
    /// The protocol session (sans-IO); replaced by a new one on reconnect.
    pub(crate) session: ClientSession,
    /// The transport, once open.
    pub(crate) link: Option<Link>,
    /// Which link attempt is current; events of older links are ignored.
    pub(crate) generation: u32,
    /// Set when the page has just closed its link because the session ended.
    pub(crate) closed_here: bool,
    /// Reconnect attempts since the last successful join.
    pub(crate) reconnects: u32,
    /// The settings every session of this page starts with.
    pub(crate) session_config: ClientSessionConfig,
    /// Why WebTransport was not used, when the browser has none or it was
    /// offered and failed ("WebTransport failed after 0.2 s: …").
    pub(crate) fallback: Option<String>,
    /// The meeting id, joined again after each Welcome.
    pub(crate) meeting: String,
    /// Our display name.
    pub(crate) name: String,
    /// Who is in the room: name and whether a moderator.
    pub(crate) roster: BTreeMap<u32, (String, bool)>,
    /// This participant may moderate.
    pub(crate) moderator: bool,
    /// The recorders in the room (PROTOCOL.md §5.10).
    pub(crate) recorders: std::collections::BTreeSet<u32>,
    /// The request id of our last StartRecording or StopRecording, to tell
    /// its refusal from others.
    pub(crate) recording_request: Option<u32>,
    /// The room is locked.
    pub(crate) locked: bool,
    /// Remote video on screen, by (participant, track).
    pub(crate) tiles: BTreeMap<(u32, u32), video::Tile>,
    /// The camera being sent, once joined.
    pub(crate) camera: Option<camera::Camera>,
    /// The microphone being sent, once joined.
    pub(crate) mic: Option<audio::Mic>,
    /// The screen being shared, and its capture track.
    pub(crate) screen: Option<(camera::Camera, web_sys::MediaStreamTrack)>,
    /// Remote audio being played, by (participant, track).
    pub(crate) players: BTreeMap<(u32, u32), audio::Player>,
    /// The next audio frame's sequence number.
    pub(crate) audio_sequence: u32,
    /// Our Publish requests awaiting an answer: request id to track id.
    pub(crate) pending_publish: BTreeMap<u32, u32>,
    /// Participants whose microphone is muted.
    pub(crate) mic_muted: BTreeSet<u32>,
    /// Joined and not sending yet: the caller starts the camera.
    pub(crate) want_camera: bool,
    /// The user asked for end-to-end encryption in this meeting.
    pub(crate) e2ee_wanted: bool,
    /// The session's end-to-end encryption, once joined with it on.
    pub(crate) keyring: Option<Keyring>,
    /// The safety code last shown.
    pub(crate) safety_code: String,
    /// The encryption state last shown.
    pub(crate) e2ee_text: String,
    /// The camera's bitrate, from the path and the server's hints.
    pub(crate) rate: RateController,
    /// WebTransport's packet counters at the last path sample: sent, lost.
    pub(crate) path_counters: Option<(f64, f64)>,
    /// Timer ticks since the meeting screen came up.
    pub(crate) ticks: u32,
}

impl App {
    /// A meeting not connected yet, with a fresh session.
    pub(crate) fn new(
        name: String,
        meeting: String,
        config: ClientSessionConfig,
        e2ee_wanted: bool,
    ) -> App {
        App {
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
            recorders: Default::default(),
            recording_request: None,
            locked: false,
            tiles: BTreeMap::new(),
            camera: None,
            mic: None,
            screen: None,
            players: BTreeMap::new(),
            audio_sequence: 0,
            pending_publish: BTreeMap::new(),
            mic_muted: BTreeSet::new(),
            want_camera: false,
            e2ee_wanted,
            keyring: None,
            safety_code: String::new(),
            e2ee_text: String::new(),
            rate: RateController::new(CAMERA_START_BPS, CAMERA_FLOOR_BPS),
            path_counters: None,
            ticks: 0,
        }
    }

    /// The name to show for `pid`.
    pub(crate) fn name_of(&self, pid: u32) -> String {
        self.roster
            .get(&pid)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("participant {pid}"))
    }
}
