//! The screens, in Yew: the join screen and the meeting screen, both drawn
//! from one [`View`] that the session code changes through [`update`].
//!
//! Remote video tiles are the exception: each is a `<figure>` whose canvas
//! its decoder draws on directly, with its counters (`data-frames`,
//! `data-fps`, …) set on it as pictures arrive. That happens thirty times a
//! second per tile and should not cost a re-render, so the meeting screen
//! places those figures in its grid as they are ([`TileNode`]).

use std::cell::RefCell;
use std::collections::VecDeque;

use yew::prelude::*;

/// Chat messages kept on screen; older ones scroll away for good, so a busy
/// chat cannot grow the page without bound.
pub const CHAT_KEPT: usize = 200;

/// Which screen the page shows.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub enum Screen {
    /// Name, meeting, camera preview and Connect.
    #[default]
    Join,
    /// The meeting itself.
    Meeting,
}

/// A row of the participant list.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Person {
    /// The participant id.
    pub id: u32,
    /// The display name.
    pub name: String,
    /// Whether a moderator.
    pub moderator: bool,
    /// Whether the microphone is muted.
    pub muted: bool,
    /// The camera: `Some(true)` sending, `Some(false)` turned off, `None`
    /// none published (or us: the bar says it).
    pub camera: Option<bool>,
    /// Whether this is us.
    pub me: bool,
    /// Whether a recorder (PROTOCOL.md §5.10).
    pub recorder: bool,
}

/// A camera or microphone the browser lists, for the join screen's pickers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Device {
    /// `videoinput` or `audioinput`.
    pub kind: String,
    /// The browser's device id.
    pub id: String,
    /// The label (empty until the user has allowed capture).
    pub label: String,
    /// Whether the preview uses it now.
    pub in_use: bool,
}

/// A remote video tile: the figure its decoder made and draws on.
#[derive(Clone, PartialEq, Debug)]
pub struct TileNode {
    /// Whose track.
    pub participant: u32,
    /// Which track.
    pub track: u32,
    /// The `<figure class="tile">`.
    pub node: web_sys::Element,
    /// A shared screen, which takes the stage by default.
    pub screen: bool,
}

/// Everything the screens show.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct View {
    /// The screen shown.
    pub screen: Screen,
    /// The status line.
    pub status: String,
    /// A sign-in page to link to from the status line.
    pub login_url: Option<String>,
    /// A notice (a refusal, a request to mute).
    pub notice: String,
    /// The connection banner; hidden when empty.
    pub banner: String,
    /// Which transport carries the session.
    pub transport: String,
    /// The end-to-end encryption state and safety code.
    pub e2ee: String,
    /// The join screen's camera preview state.
    pub preview: String,
    /// The cameras and microphones to pick from.
    pub devices: Vec<Device>,
    /// Bumped whenever the local camera and microphone change, so the
    /// preview and self view show the new ones.
    pub media: u32,
    /// The room is locked.
    pub locked: bool,
    /// We may moderate.
    pub moderator: bool,
    /// Who is in the room.
    pub people: Vec<Person>,
    /// Who waits to be let in (moderators see them).
    pub waiting: Vec<(u32, String)>,
    /// The chat, oldest first, at most [`CHAT_KEPT`].
    pub chat: VecDeque<String>,
    /// Remote video, in grid order.
    pub tiles: Vec<TileNode>,
    /// Our microphone is off.
    pub mic_off: bool,
    /// Our camera is off.
    pub camera_off: bool,
    /// We share our screen.
    pub sharing: bool,
    /// The server will not take our microphone.
    pub mic_refused: bool,
    /// The server will not take our camera.
    pub camera_refused: bool,
    /// Who is speaking.
    pub speaker: Option<u32>,
    /// The main speaker, as the server says (PROTOCOL.md §6.6.4).
    pub dominant: Option<u32>,
    /// Grid or speaker view.
    pub mode: crate::stage::Mode,
    /// The tile pinned large, (participant, track).
    pub pinned: Option<(u32, u32)>,
    /// The page of tiles shown, from 0.
    pub page: usize,
    /// The meeting's name, as joined.
    pub meeting: String,
    /// The side panel open, if any.
    pub panel: Panel,
    /// Chat messages that arrived while the chat was closed.
    pub unread: u32,
    /// The meeting information (link, encryption, connection) is open.
    pub info_open: bool,
    /// The "More" menu is open.
    pub more_open: bool,
    /// The keyboard shortcuts are shown.
    pub help_open: bool,
    /// Passing news (joins, leaves, moderators' actions), newest last:
    /// each with its number, for taking it away again.
    pub toasts: VecDeque<(u32, String)>,
    /// The number the next toast gets.
    pub next_toast: u32,
    /// The latest toast, kept after it goes (`#events[data-last]`, for
    /// tests and the curious).
    pub last_toast: String,
    /// Whose hands are up (PROTOCOL.md §5.9), ours included.
    pub hands: std::collections::BTreeSet<u32>,
    /// Our participant id, to know our own hand.
    pub me: u32,
    /// The reactions palette is open.
    pub reactions_open: bool,
    /// The tile whose menu is open, (participant, track).
    pub tile_menu: Option<(u32, u32)>,
    /// Participants whose sound this page does not play ("mute for me").
    pub muted_for_me: std::collections::BTreeSet<u32>,
    /// The card to change camera and microphone mid-meeting is open.
    pub devices_open: bool,
    /// Each participant's connection as their pictures arrive here (good,
    /// fair or poor), for the participant list.
    pub quality: std::collections::BTreeMap<u32, &'static str>,
    /// A recorder is in the room (PROTOCOL.md §5.10): the badge shows.
    pub recording: bool,
    /// We may start and stop recording: a moderator on a server that
    /// negotiated `recording.1`.
    pub can_record: bool,
}

/// The reactions offered, with what they show and their names.
pub const REACTIONS: [(i32, &str, &str); 6] = [
    (1, "👍", "Thumbs up"),
    (2, "👏", "Applause"),
    (3, "❤️", "Heart"),
    (4, "😂", "Laughter"),
    (5, "😮", "Surprise"),
    (6, "🎉", "Celebration"),
];

/// What a reaction kind shows, or `None` for a kind this page does not know.
pub fn reaction_symbol(kind: i32) -> Option<(&'static str, &'static str)> {
    REACTIONS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, s, n)| (*s, *n))
}

/// Toasts shown at once; an older one makes way.
pub const TOASTS_KEPT: usize = 3;

/// The side panel beside the stage.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub enum Panel {
    /// None: the stage has the window.
    #[default]
    Closed,
    /// Who is here (and, for moderators, their actions).
    People,
    /// The chat.
    Chat,
}

impl View {
    /// Adds a chat line, forgetting the oldest past [`CHAT_KEPT`]; counted
    /// as unread while the chat is closed.
    pub fn chat_line(&mut self, line: String) {
        if self.panel != Panel::Chat {
            self.unread = self.unread.saturating_add(1);
        }
        self.chat.push_back(line);
        while self.chat.len() > CHAT_KEPT {
            self.chat.pop_front();
        }
    }

    /// Shows a piece of passing news; returns its number, for
    /// [`View::toast_gone`] once it has been read.
    pub fn toast(&mut self, text: String) -> u32 {
        let id = self.next_toast;
        self.next_toast = self.next_toast.wrapping_add(1);
        self.last_toast.clone_from(&text);
        self.toasts.push_back((id, text));
        while self.toasts.len() > TOASTS_KEPT {
            self.toasts.pop_front();
        }
        id
    }

    /// Takes toast `id` away.
    pub fn toast_gone(&mut self, id: u32) {
        self.toasts.retain(|(t, _)| *t != id);
    }

    /// Takes the remote tiles as they are now: a shared screen that was not
    /// there before takes the stage (the speaker view, the screen large).
    pub fn set_tiles(&mut self, tiles: Vec<TileNode>) {
        let new_screen = tiles.iter().any(|t| {
            t.screen
                && !self
                    .tiles
                    .iter()
                    .any(|o| (o.participant, o.track) == (t.participant, t.track))
        });
        if new_screen && self.pinned.is_none() {
            self.mode = crate::stage::Mode::Speaker;
            self.page = 0;
        }
        self.tiles = tiles;
    }

    /// Adds a participant to the waiting list, once.
    pub fn waiting_add(&mut self, id: u32, name: String) {
        if !self.waiting.iter().any(|(w, _)| *w == id) {
            self.waiting.push((id, name));
        }
    }
}

/// The screens' state: what they show and how to have them drawn again.
/// A thread-local, because the session code changes it from the browser's
/// callbacks, which have no handle to pass it in; it is apart from the
/// session's state (`state::Page`) so the screens build and test without it.
struct Screens {
    /// What the page shows.
    view: View,
    /// Re-renders the page; set by the page's first render.
    redraw: Option<UseForceUpdateHandle>,
    /// A re-render is asked for and has not happened yet.
    pending: bool,
}

thread_local! {
    static SCREENS: RefCell<Screens> = RefCell::new(Screens {
        view: View::default(),
        redraw: None,
        pending: false,
    });
}

/// Changes what the page shows; it re-renders once for any number of
/// changes made before the browser gets to it.
pub fn update(change: impl FnOnce(&mut View)) {
    let redraw = SCREENS.with(|s| {
        let mut s = s.borrow_mut();
        change(&mut s.view);
        if std::mem::replace(&mut s.pending, true) {
            None
        } else {
            s.redraw.clone()
        }
    });
    // Outside the borrow: a render reads the view.
    if let Some(redraw) = redraw {
        redraw.force_update();
    }
}

/// A copy of what the page shows.
pub fn current() -> View {
    read(View::clone)
}

/// Reads something of what the page shows, without copying the rest.
pub fn read<R>(f: impl FnOnce(&View) -> R) -> R {
    SCREENS.with(|s| f(&s.borrow().view))
}

/// Sets the status line.
pub fn status(text: impl Into<String>) {
    let text = text.into();
    update(|v| {
        v.status = text;
        v.login_url = None;
    });
}

/// Sets the notice line.
pub fn notice(text: impl Into<String>) {
    let text = text.into();
    update(|v| v.notice = text);
}

/// What a button of the meeting screen does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Mute or unmute our microphone.
    Mic,
    /// Stop or start our camera.
    Camera,
    /// Share the screen or stop.
    Screen,
    /// Leave the meeting.
    Leave,
    /// Lock or unlock the room (moderators).
    Lock,
    /// End the meeting for everyone (moderators).
    End,
    /// Ask a participant to mute (moderators).
    Mute(u32),
    /// Remove a participant (moderators).
    Remove(u32),
    /// Let a waiting participant in (moderators).
    Admit(u32),
    /// Turn a waiting participant away (moderators).
    Deny(u32),
    /// Pin a tile large, or unpin it: (participant, track).
    Pin(u32, u32),
    /// Switch between the grid and the speaker view.
    Layout,
    /// Show the next (true) or the previous page of tiles.
    Page(bool),
    /// Open this side panel, or close it if it is open.
    Panel(Panel),
    /// Open or close the meeting information.
    Info,
    /// Open or close the "More" menu.
    More,
    /// Show or hide the keyboard shortcuts.
    Help,
    /// Close whatever is open over the stage (Escape).
    Dismiss,
    /// Open or close the reactions palette.
    Reactions,
    /// Raise our hand, or lower it.
    Hand,
    /// Send a reaction of this kind.
    React(i32),
    /// Open or close a tile's menu: (participant, track).
    TileMenu(u32, u32),
    /// Stop or start playing a participant's sound here only.
    MuteForMe(u32),
    /// Open or close the camera and microphone card.
    Devices,
    /// Start recording, or stop it (moderators).
    Record,
}

impl Action {
    /// True for what only changes what the page shows ([`View::arrange`]).
    pub fn view_only(self) -> bool {
        matches!(
            self,
            Action::Pin(..)
                | Action::Layout
                | Action::Page(_)
                | Action::Panel(_)
                | Action::Info
                | Action::More
                | Action::Help
                | Action::Dismiss
                | Action::Reactions
                | Action::TileMenu(..)
                | Action::MuteForMe(_)
                | Action::Devices
        )
    }
}

/// The keyboard shortcuts of the meeting screen: key, what it does, and the
/// action. Letters alone, as in the meeting products people know; ignored
/// while typing in a field.
pub const SHORTCUTS: [(&str, &str, Action); 8] = [
    ("m", "Mute or unmute the microphone", Action::Mic),
    ("v", "Turn the camera off or on", Action::Camera),
    ("h", "Raise or lower your hand", Action::Hand),
    ("c", "Open or close the chat", Action::Panel(Panel::Chat)),
    (
        "p",
        "Open or close the participants",
        Action::Panel(Panel::People),
    ),
    ("g", "Switch between grid and speaker view", Action::Layout),
    ("?", "Show these shortcuts", Action::Help),
    ("Escape", "Close what is open", Action::Dismiss),
];

/// The action of a key pressed on the meeting screen, if any.
pub fn shortcut(key: &str) -> Option<Action> {
    SHORTCUTS
        .iter()
        .find(|(k, _, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, _, a)| *a)
}

impl View {
    /// Carries out an action that only changes what the page shows; false
    /// for one the session must carry out.
    pub fn arrange(&mut self, action: Action) -> bool {
        match action {
            Action::TileMenu(p, t) => {
                self.tile_menu = if self.tile_menu == Some((p, t)) {
                    None
                } else {
                    Some((p, t))
                };
            }
            Action::MuteForMe(p) => {
                if !self.muted_for_me.remove(&p) {
                    self.muted_for_me.insert(p);
                }
                self.tile_menu = None;
            }
            Action::Pin(p, t) => {
                self.tile_menu = None;
                if self.pinned == Some((p, t)) {
                    self.pinned = None;
                } else {
                    self.pinned = Some((p, t));
                    self.mode = crate::stage::Mode::Speaker;
                }
                self.page = 0;
            }
            Action::Layout => {
                self.mode = match self.mode {
                    crate::stage::Mode::Grid => crate::stage::Mode::Speaker,
                    crate::stage::Mode::Speaker => crate::stage::Mode::Grid,
                };
                self.page = 0;
            }
            Action::Page(next) => {
                self.page = if next {
                    self.page.saturating_add(1)
                } else {
                    self.page.saturating_sub(1)
                };
            }
            Action::Panel(p) => {
                self.panel = if self.panel == p { Panel::Closed } else { p };
                if self.panel == Panel::Chat {
                    self.unread = 0;
                }
                self.more_open = false;
            }
            Action::Info => {
                self.info_open = !self.info_open;
                self.more_open = false;
            }
            Action::Devices => {
                self.devices_open = !self.devices_open;
                self.more_open = false;
            }
            Action::More => {
                self.more_open = !self.more_open;
                self.reactions_open = false;
            }
            Action::Reactions => {
                self.reactions_open = !self.reactions_open;
                self.more_open = false;
            }
            Action::Help => {
                self.help_open = !self.help_open;
                self.more_open = false;
            }
            Action::Dismiss => {
                // The innermost first: a menu or overlay, then the panel.
                if self.card_open() {
                    self.more_open = false;
                    self.devices_open = false;
                    self.reactions_open = false;
                    self.tile_menu = None;
                    self.help_open = false;
                    self.info_open = false;
                } else {
                    self.panel = Panel::Closed;
                }
            }
            _ => return false,
        }
        true
    }

    /// True while a menu or card is open over the stage (not the panel).
    pub fn card_open(&self) -> bool {
        self.more_open
            || self.help_open
            || self.info_open
            || self.reactions_open
            || self.tile_menu.is_some()
            || self.devices_open
    }

    /// Where each remote tile goes for a page of `per_page` tiles.
    pub fn arrangement(&self, per_page: usize) -> crate::stage::Arrangement {
        let who: Vec<u32> = self.tiles.iter().map(|t| t.participant).collect();
        // A pinned tile leads; else a shared screen (§ the stage).
        let pinned = self
            .pinned
            .and_then(|k| {
                self.tiles
                    .iter()
                    .position(|t| (t.participant, t.track) == k)
            })
            .or_else(|| self.tiles.iter().position(|t| t.screen));
        crate::stage::arrange(&who, pinned, self.dominant, self.mode, self.page, per_page)
    }
}

/// A click handler doing `action`.
fn on(action: Action) -> Callback<MouseEvent> {
    Callback::from(move |_: MouseEvent| crate::act(action))
}

/// The whole page: the status lines and the current screen.
#[function_component(Page)]
pub fn page() -> Html {
    let redraw = use_force_update();
    let v = SCREENS.with(|s| {
        let mut s = s.borrow_mut();
        s.redraw = Some(redraw);
        s.pending = false;
        s.view.clone()
    });
    // The stage's size decides the tiles' size, and the stage is only
    // measured once drawn: when it changed, draw again.
    use_effect(|| {
        if let Some(size) = measure_stage()
            && STAGE.with(|s| s.replace(size)) != size
        {
            update(|_| {});
        }
    });
    let status = html! {
        <div id="toasts">
            <p id="status" role="status">
                { &v.status }
                if let Some(url) = &v.login_url {
                    <a id="login-link" href={url.clone()}>{ "sign in" }</a>
                }
            </p>
            <p id="notice" role="alert">{ &v.notice }</p>
            <ul id="events" aria-live="polite" aria-label="What happens in the meeting" data-last={v.last_toast.clone()}>
                { for v.toasts.iter().map(|(id, text)| html! { <li key={*id}>{ text }</li> }) }
            </ul>
        </div>
    };
    match v.screen {
        Screen::Join => html! {
            <div id="join-screen">
                <header class="top"><h1>{ "Convene" }</h1></header>
                { status }
                <Join preview={v.preview.clone()} devices={v.devices.clone()} media={v.media} mic_off={v.mic_off} camera_off={v.camera_off} />
            </div>
        },
        Screen::Meeting => html! {
            <>
                { status }
                { meeting(&v) }
            </>
        },
    }
}

thread_local! {
    /// The stage's size when last measured, CSS pixels.
    static STAGE: std::cell::Cell<(i32, i32)> = const { std::cell::Cell::new((0, 0)) };
}

/// The window changed size: the stage has its new size already (the
/// layout is CSS's), so it is measured before drawing, which then sizes the
/// tiles for it at once.
pub fn resized() {
    if let Some(size) = measure_stage() {
        STAGE.with(|s| s.set(size));
    }
    update(|_| {});
}

/// The stage's size now, if it is on the page.
fn measure_stage() -> Option<(i32, i32)> {
    let stage = web_sys::window()?.document()?.get_element_by_id("stage")?;
    Some((stage.client_width(), stage.client_height()))
}

/// The stage's size for laying tiles out: as last measured, or before the
/// first measurement the window less the bars.
fn stage_size() -> (f64, f64) {
    let (w, h) = STAGE.with(|s| s.get());
    if w > 0 && h > 0 {
        // Less the stage's own padding.
        return (f64::from(w) - 16.0, f64::from(h) - 16.0);
    }
    let px = |v: Option<wasm_bindgen::JsValue>| v.and_then(|v| v.as_f64()).unwrap_or(0.0);
    let w = web_sys::window();
    let width = px(w.as_ref().and_then(|w| w.inner_width().ok()));
    let height = px(w.as_ref().and_then(|w| w.inner_height().ok()));
    (width - 16.0, height - 150.0)
}

/// What the join screen shows.
#[derive(Properties, PartialEq)]
pub struct JoinProps {
    /// The camera preview's state.
    pub preview: String,
    /// The devices to pick from.
    pub devices: Vec<Device>,
    /// The local media's version.
    pub media: u32,
    /// Join with the microphone off.
    pub mic_off: bool,
    /// Join with the camera off.
    pub camera_off: bool,
}

/// Whether the checkbox an event came from is checked.
fn checked(e: &Event) -> bool {
    e.target_dyn_into::<web_sys::HtmlInputElement>()
        .is_some_and(|i| i.checked())
}

/// The join screen, prefilled from the URL: name, meeting, camera preview
/// with device pickers, end-to-end encryption, Connect.
#[function_component(Join)]
pub fn join(props: &JoinProps) -> Html {
    let name_ref = use_node_ref();
    let meeting_ref = use_node_ref();
    let camera_ref = use_node_ref();
    let mic_ref = use_node_ref();
    let video_ref = use_node_ref();
    let e2ee = use_state(crate::links::e2ee_from_link);
    use_local_media(&video_ref, props.media);
    // Prefilled from the URL once, then the user's to change.
    {
        let (name_ref, meeting_ref) = (name_ref.clone(), meeting_ref.clone());
        use_effect_with((), move |_| {
            let (name, meeting) = crate::links::page_meeting();
            for (input, value) in [(name_ref, name), (meeting_ref, meeting)] {
                if let Some(i) = input.cast::<web_sys::HtmlInputElement>() {
                    i.set_value(&value);
                }
            }
        });
    }

    let picked = {
        let (camera, mic) = (camera_ref.clone(), mic_ref.clone());
        Callback::from(move |_: Event| crate::preview(Some((selected(&camera), selected(&mic)))))
    };
    let toggled = {
        let e2ee = e2ee.clone();
        Callback::from(move |_: Event| e2ee.set(!*e2ee))
    };
    let submit = {
        let (name, meeting, e2ee) = (name_ref.clone(), meeting_ref.clone(), e2ee.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            crate::begin(typed(&name), typed(&meeting), *e2ee);
        })
    };
    let options = |kind: &str| device_options(&props.devices, kind);
    html! {
        <form id="join" onsubmit={submit}>
            <label>{ "Your name" }
                <input id="name" ref={name_ref} required=true autocomplete="nickname" />
            </label>
            <label>{ "Meeting" }
                <input id="meeting" ref={meeting_ref} required=true />
            </label>
            <video id="preview" ref={video_ref} autoplay=true playsinline=true muted=true />
            <p id="preview-status">{ &props.preview }</p>
            <label id="mic-level-label" class="meter">{ "Microphone" }
                <meter id="mic-level" min="0" max="1" low="0.2" high="0.9" optimum="0.6" />
            </label>
            <div id="join-devices">
                <label>{ "Camera" }
                    <select id="camera-select" ref={camera_ref} onchange={picked.clone()}>{ options("videoinput") }</select>
                </label>
                <label>{ "Microphone" }
                    <select id="mic-select" ref={mic_ref} onchange={picked}>{ options("audioinput") }</select>
                </label>
            </div>
            <fieldset id="join-media">
                <legend>{ "When I join" }</legend>
                <label class="check">
                    <input id="join-mic-off" type="checkbox" checked={props.mic_off}
                        onchange={Callback::from(|e: Event| { let off = checked(&e); update(|v| v.mic_off = off) })} />
                    { "Microphone off" }
                </label>
                <label class="check">
                    <input id="join-camera-off" type="checkbox" checked={props.camera_off}
                        onchange={Callback::from(|e: Event| { let off = checked(&e); update(|v| v.camera_off = off) })} />
                    { "Camera off" }
                </label>
            </fieldset>
            <label id="e2ee-label" class="check">
                <input id="e2ee" type="checkbox" checked={*e2ee} onchange={toggled} />
                { " End-to-end encrypt (everyone in the meeting must turn this on)" }
            </label>
            <button id="connect" type="submit">{ "Connect" }</button>
        </form>
    }
}

/// The `<option>`s of a device picker: the devices of `kind` (`videoinput`
/// or `audioinput`), the one in use selected.
fn device_options(devices: &[Device], kind: &str) -> Html {
    devices
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| {
            let label = if d.label.is_empty() { &d.id } else { &d.label };
            html! { <option value={d.id.clone()} selected={d.in_use}>{ label }</option> }
        })
        .collect()
}

/// Shows the local camera in `video` whenever it changes.
#[hook]
fn use_local_media(video: &NodeRef, media: u32) {
    let video = video.clone();
    use_effect_with(media, move |_| {
        if let (Some(v), Some(stream)) = (
            video.cast::<web_sys::HtmlVideoElement>(),
            crate::local_media(),
        ) {
            v.set_muted(true);
            v.set_src_object(Some(&stream));
        }
    });
}

/// The text in an `<input>`.
fn typed(input: &NodeRef) -> String {
    input
        .cast::<web_sys::HtmlInputElement>()
        .map(|i| i.value())
        .unwrap_or_default()
}

/// The value of a `<select>`.
fn selected(select: &NodeRef) -> String {
    select
        .cast::<web_sys::HtmlSelectElement>()
        .map(|s| s.value())
        .unwrap_or_default()
}

/// The meeting screen: a bar of meeting information on top, the stage
/// filling the window, a side panel (participants or chat) when open, and
/// the controls in a bar at the bottom.
fn meeting(v: &View) -> Html {
    let others = v.people.len();
    let here = if others == 1 {
        "1 here".to_string()
    } else {
        format!("{others} here")
    };
    let encrypted = v.e2ee.starts_with('🔒');
    let panel = v.panel;
    let (arrangement, style) = layout(v);
    html! {
        <div id="meeting-screen" data-panel={match panel { Panel::Closed => "none", Panel::People => "people", Panel::Chat => "chat" }}>
            <header id="topbar">
                <h1 id="meeting-name">{ &v.meeting }</h1>
                <span id="count">{ icon("people") }{ here }</span>
                <button id="toggle-info" class={classes!("chip", encrypted.then_some("secure"))}
                    aria-expanded={bool_str(v.info_open)}
                    title={if encrypted { "End-to-end encrypted: open for the safety code" } else { "Encrypted to the server only: open for details" }}
                    onclick={on(Action::Info)}>
                    { icon(if encrypted { "lock" } else { "shield" }) }
                    <span>{ if encrypted { "End-to-end encrypted" } else { "Meeting info" } }</span>
                </button>
                <span id="recording" role="status" class="chip recording" hidden={!v.recording}>
                    if v.recording {
                        <span class="rec-dot" aria-hidden="true"></span>{ "Recording" }
                    }
                </span>
                if v.locked {
                    <span id="room-state" class="chip">{ icon("lock") }{ "Room locked" }</span>
                } else {
                    <span id="room-state" hidden=true></span>
                }
                { stage_bar(v, &arrangement) }
            </header>
            if !v.banner.is_empty() {
                <p id="banner" role="alert">{ &v.banner }</p>
            } else if v.sharing {
                <p id="sharing" role="status">
                    { icon("screen") }{ "You are sharing your screen with everyone" }
                    <button id="stop-sharing" class="chip" onclick={on(Action::Screen)}>{ "Stop sharing" }</button>
                </p>
            }
            if v.info_open {
                <InfoPanel meeting={v.meeting.clone()} transport={v.transport.clone()} e2ee={v.e2ee.clone()} />
            } else {
                <div hidden=true>
                    <p id="transport">{ &v.transport }</p>
                    <p id="e2ee-state">{ &v.e2ee }</p>
                </div>
            }
            if v.moderator && !v.waiting.is_empty() {
                <section id="waiting" aria-label="Waiting to join">
                    <ul id="admissions">
                        {
                            for v.waiting.iter().map(|(id, name)| html! {
                                <li key={*id} id={format!("waiting-{id}")} data-pid={id.to_string()}>
                                    <span>{ format!("{name} wants to join") }</span>
                                    <button data-action="admit" onclick={on(Action::Admit(*id))}>{ "Admit" }</button>
                                    <button data-action="deny" class="quiet" onclick={on(Action::Deny(*id))}>{ "Deny" }</button>
                                </li>
                            })
                        }
                    </ul>
                </section>
            }
            <main id="stage" aria-label="Video">
                { stage(v, &arrangement, style) }
            </main>
            <aside id="side" hidden={panel == Panel::Closed} aria-label={match panel { Panel::Chat => "Chat", _ => "Participants" }}>
                <section id="people" hidden={panel != Panel::People} aria-labelledby="people-title">
                    <header class="panel-head">
                        <h2 id="people-title">{ format!("Participants ({others})") }</h2>
                        <button class="close" aria-label="Close participants" onclick={on(Action::Panel(Panel::People))}>{ icon("close") }</button>
                    </header>
                    <ul id="participants">
                        { for v.people.iter().map(|p| person(v, p)) }
                    </ul>
                    if v.moderator {
                        <div id="moderation">
                            <h3>{ "Moderation" }</h3>
                            <button id="lock" data-action="lock" onclick={on(Action::Lock)}>
                                { if v.locked { "Unlock room" } else { "Lock room" } }
                            </button>
                            <button id="end-meeting" data-action="end" class="danger" onclick={on(Action::End)}>
                                { "End meeting for all" }
                            </button>
                        </div>
                    }
                </section>
                <Chat lines={v.chat.clone()} open={panel == Panel::Chat} />
            </aside>
            { controls(v) }
            if v.more_open {
                <div id="more-menu" role="menu" aria-label="More">
                    <button role="menuitem" id="menu-layout" onclick={on(Action::Layout)}>
                        { icon("grid") }{ if v.mode == crate::stage::Mode::Speaker { "Grid view" } else { "Speaker view" } }
                    </button>
                    <button role="menuitem" id="menu-info" onclick={on(Action::Info)}>{ icon("shield") }{ "Meeting info" }</button>
                    <button role="menuitem" id="menu-devices" onclick={on(Action::Devices)}>{ icon("camera") }{ "Camera and microphone" }</button>
                    <button role="menuitem" id="menu-help" onclick={on(Action::Help)}>{ icon("keyboard") }{ "Keyboard shortcuts" }</button>
                    if v.moderator && v.can_record {
                        <button role="menuitem" id="menu-record" onclick={on(Action::Record)}>
                            <span class="rec-dot" aria-hidden="true"></span>{ if v.recording { "Stop recording" } else { "Record" } }
                        </button>
                    }
                </div>
            }
            if v.reactions_open {
                <div id="reactions-menu" role="menu" aria-label="Raise a hand or react">
                    <button role="menuitemcheckbox" id="raise-hand" aria-checked={bool_str(v.hands.contains(&v.me))} onclick={on(Action::Hand)}>
                        { icon("hand") }{ if v.hands.contains(&v.me) { "Lower hand" } else { "Raise hand" } }
                    </button>
                    <div class="row">
                        {
                            for REACTIONS.iter().map(|(kind, symbol, name)| html! {
                                <button role="menuitem" class="reaction" data-kind={kind.to_string()} aria-label={*name} title={*name} onclick={on(Action::React(*kind))}>
                                    <span aria-hidden="true">{ *symbol }</span>
                                </button>
                            })
                        }
                    </div>
                </div>
            }
            if v.devices_open {
                <DevicesCard devices={v.devices.clone()} />
            }
            if let Some((pid, track)) = v.tile_menu {
                { tile_menu(v, pid, track) }
            }
            if v.help_open {
                <div id="help" role="dialog" aria-modal="false" aria-labelledby="help-title">
                    <header class="panel-head">
                        <h2 id="help-title">{ "Keyboard shortcuts" }</h2>
                        <button class="close" aria-label="Close shortcuts" onclick={on(Action::Help)}>{ icon("close") }</button>
                    </header>
                    <dl>
                        { for SHORTCUTS.iter().map(|(k, what, _)| html! { <><dt><kbd>{ *k }</kbd></dt><dd>{ *what }</dd></> }) }
                    </dl>
                </div>
            }
        </div>
    }
}

/// A tile's menu, beside the tile: pin, mute for me, and for moderators
/// ask to mute and remove.
fn tile_menu(v: &View, pid: u32, track: u32) -> Html {
    let name = v
        .people
        .iter()
        .find(|p| p.id == pid)
        .map_or_else(|| "this participant".to_string(), |p| p.name.clone());
    // Placed at the tile's top right corner, kept on screen.
    let rect = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| {
            d.query_selector(&format!(
                "#tiles .tile[data-pid=\"{pid}\"][data-track=\"{track}\"]"
            ))
            .ok()
            .flatten()
        })
        .map(|e| e.get_bounding_client_rect());
    let style = rect.map_or_else(String::new, |r| {
        format!(
            "top:{:.0}px;left:{:.0}px",
            r.top() + 44.0,
            (r.right() - 232.0).max(8.0)
        )
    });
    let pinned = v.pinned == Some((pid, track));
    let muted = v.muted_for_me.contains(&pid);
    html! {
        <div id="tile-menu" role="menu" aria-label={format!("{name}'s tile")} style={style}>
            <button role="menuitem" id="tile-pin" onclick={on(Action::Pin(pid, track))}>
                { if pinned { "Unpin" } else { "Pin to the stage" } }
            </button>
            <button role="menuitemcheckbox" id="tile-mute-for-me" aria-checked={bool_str(muted)} onclick={on(Action::MuteForMe(pid))}>
                { if muted { "Unmute for me" } else { "Mute for me" } }
            </button>
            if v.moderator && pid != v.me {
                <button role="menuitem" id="tile-ask-mute" onclick={on(Action::Mute(pid))}>{ format!("Ask {name} to mute") }</button>
                <button role="menuitem" id="tile-remove" class="danger-text" onclick={on(Action::Remove(pid))}>{ "Remove from the meeting" }</button>
            }
        </div>
    }
}

/// "true" or "false", for ARIA attributes.
fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// The control bar: microphone, camera, screen, chat, participants, more,
/// leave; each with an icon and a label that says its state.
fn controls(v: &View) -> Html {
    let hand_up = v.hands.contains(&v.me);
    let toggle = |id: &'static str,
                  action: Action,
                  on_now: bool,
                  (icon_on, icon_off): (&'static str, &'static str),
                  (label_on, label_off): (&'static str, &'static str),
                  disabled: bool| {
        html! {
            <button id={id} class={classes!("ctl", (!on_now).then_some("off"))} data-action={id.trim_start_matches("toggle-").to_string()}
                aria-pressed={bool_str(!on_now)} title={if on_now { label_on } else { label_off }} disabled={disabled} onclick={on(action)}>
                { icon(if on_now { icon_on } else { icon_off }) }
                <span class="label">{ if on_now { label_on } else { label_off } }</span>
            </button>
        }
    };
    let panel_button = |id: &'static str,
                        panel: Panel,
                        icon_name: &'static str,
                        label: &'static str,
                        badge: u32| {
        let open = v.panel == panel;
        html! {
            <button id={id} class={classes!("ctl", open.then_some("active"))} title={label} aria-expanded={bool_str(open)} aria-controls="side" onclick={on(Action::Panel(panel))}>
                { icon(icon_name) }
                <span class="label">{ label }</span>
                if badge > 0 {
                    <span id="chat-unread" class="badge" aria-label={format!("{badge} unread")}>{ badge.min(99) }</span>
                }
            </button>
        }
    };
    html! {
        <footer id="controls" role="region" aria-label="Meeting controls">
            { toggle("toggle-mic", Action::Mic, !v.mic_off, ("mic", "mic-off"), ("Mute", "Unmute"), v.mic_refused) }
            { toggle("toggle-camera", Action::Camera, !v.camera_off, ("camera", "camera-off"), ("Stop camera", "Start camera"), v.camera_refused) }
            <button id="toggle-screen" class={classes!("ctl", v.sharing.then_some("active"))} data-action="screen"
                aria-pressed={bool_str(v.sharing)} title={if v.sharing { "Stop sharing" } else { "Share screen" }} onclick={on(Action::Screen)}>
                { icon("screen") }
                <span class="label">{ if v.sharing { "Stop sharing" } else { "Share screen" } }</span>
            </button>
            { panel_button("toggle-chat", Panel::Chat, "chat", "Chat", v.unread) }
            { panel_button("toggle-people", Panel::People, "people", "People", 0) }
            <button id="toggle-reactions" class={classes!("ctl", hand_up.then_some("active"))} title="Raise a hand or react" aria-haspopup="menu"
                aria-expanded={bool_str(v.reactions_open)} onclick={on(Action::Reactions)}>
                { icon("hand") }
                <span class="label">{ if hand_up { "Hand raised" } else { "React" } }</span>
            </button>
            <button id="toggle-more" class="ctl" title="More" aria-haspopup="menu" aria-expanded={bool_str(v.more_open)} onclick={on(Action::More)}>
                { icon("more") }
                <span class="label">{ "More" }</span>
            </button>
            <button id="leave" class="ctl leave" data-action="leave" title="Leave the meeting" onclick={on(Action::Leave)}>
                { icon("leave") }
                <span class="label">{ "Leave" }</span>
            </button>
        </footer>
    }
}

/// What the camera and microphone card offers.
#[derive(Properties, PartialEq)]
pub struct DevicesProps {
    /// The devices to pick from.
    pub devices: Vec<Device>,
}

/// Changing camera and microphone mid-meeting: the same pickers as on the
/// join screen; a choice takes effect at once, without leaving.
#[function_component(DevicesCard)]
pub fn devices_card(props: &DevicesProps) -> Html {
    let camera_ref = use_node_ref();
    let mic_ref = use_node_ref();
    let picked = {
        let (camera, mic) = (camera_ref.clone(), mic_ref.clone());
        Callback::from(move |_: Event| crate::switch_devices(selected(&camera), selected(&mic)))
    };
    let options = |kind: &str| device_options(&props.devices, kind);
    html! {
        <section id="devices-card" role="dialog" aria-labelledby="devices-title">
            <header class="panel-head">
                <h2 id="devices-title">{ "Camera and microphone" }</h2>
                <button class="close" aria-label="Close camera and microphone" onclick={on(Action::Devices)}>{ icon("close") }</button>
            </header>
            <label>{ "Camera" }
                <select id="meeting-camera-select" ref={camera_ref} onchange={picked.clone()}>{ options("videoinput") }</select>
            </label>
            <label>{ "Microphone" }
                <select id="meeting-mic-select" ref={mic_ref} onchange={picked}>{ options("audioinput") }</select>
            </label>
        </section>
    }
}

/// What the meeting information shows.
#[derive(Properties, PartialEq)]
pub struct InfoProps {
    /// The meeting's name.
    pub meeting: String,
    /// How the page is connected.
    pub transport: String,
    /// The encryption state and safety code.
    pub e2ee: String,
}

/// The meeting information: its link (with a copy button), how the page
/// is connected, and the encryption state with the safety code to compare.
#[function_component(InfoPanel)]
pub fn info_panel(props: &InfoProps) -> Html {
    let copied = use_state(|| false);
    let link = web_sys::window()
        .and_then(|w| w.location().href().ok())
        .map(|href| meeting_link(&href))
        .unwrap_or_default();
    let copy = {
        let (copied, link) = (copied.clone(), link.clone());
        Callback::from(move |_: MouseEvent| {
            if let Some(w) = web_sys::window() {
                let _ = w.navigator().clipboard().write_text(&link);
                copied.set(true);
            }
        })
    };
    let e2ee = if props.e2ee.is_empty() {
        "Encrypted between your browser and the server (TLS), not end to end."
    } else {
        props.e2ee.as_str()
    };
    html! {
        <section id="info" role="dialog" aria-labelledby="info-title">
            <header class="panel-head">
                <h2 id="info-title">{ &props.meeting }</h2>
                <button class="close" aria-label="Close meeting info" onclick={on(Action::Info)}>{ icon("close") }</button>
            </header>
            <label for="meeting-link">{ "Link to this meeting" }</label>
            <div class="row">
                <input id="meeting-link" readonly=true value={link} />
                <button id="copy-link" onclick={copy}>{ if *copied { "Copied" } else { "Copy link" } }</button>
            </div>
            <p id="e2ee-state">{ e2ee }</p>
            <p id="transport">{ &props.transport }</p>
        </section>
    }
}

/// The link others open to join: the page's address without anything
/// that is only this visitor's (the query: a name, a token).
pub fn meeting_link(href: &str) -> String {
    let cut = href.find(['?', '#']).unwrap_or(href.len());
    let base = &href[..cut];
    // `/meeting/NAME/ROOM` names the visitor: others get `/meeting/ROOM`.
    match base.find("/meeting/") {
        Some(at) => {
            let (head, rest) = base.split_at(at + "/meeting/".len());
            let room = rest.rsplit('/').next().unwrap_or(rest);
            format!("{head}{room}")
        }
        None => base.to_string(),
    }
}

/// An icon (inline SVG, decorative: the button's label says what it is).
fn icon(name: &str) -> Html {
    // 24x24 strokes, drawn here so no icon font or image is fetched.
    let d = match name {
        "mic" | "mic-off" => {
            "M12 3a3 3 0 0 1 3 3v6a3 3 0 0 1-6 0V6a3 3 0 0 1 3-3zM5 11a7 7 0 0 0 14 0M12 18v3M8 21h8"
        }
        "camera" | "camera-off" => "M3 7h12v10H3zM15 10l6-3v10l-6-3",
        "screen" => "M3 4h18v12H3zM8 20h8M12 16v4",
        "chat" => "M4 5h16v11H9l-5 4z",
        "people" => {
            "M9 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM3 20c0-3 3-5 6-5s6 2 6 5M17 11a2.5 2.5 0 1 0 0-5M17 14c2 .4 4 2 4 5"
        }
        "more" => "M5 12h.01M12 12h.01M19 12h.01",
        "leave" => "M4 14c5-4 11-4 16 0l-2 3-3-1v-2c-2-.6-4-.6-6 0v2l-3 1z",
        "lock" => "M6 11h12v9H6zM8 11V8a4 4 0 0 1 8 0v3",
        "shield" => "M12 3l8 3v6c0 5-4 8-8 9-4-1-8-4-8-9V6z",
        "grid" => "M4 4h7v7H4zM13 4h7v7h-7zM4 13h7v7H4zM13 13h7v7h-7z",
        "keyboard" => "M3 7h18v10H3zM7 11h.01M11 11h.01M15 11h.01M8 14h8",
        "close" => "M6 6l12 12M18 6L6 18",
        "hand" => {
            "M8 13V6a1.5 1.5 0 0 1 3 0v5M11 11V4.5a1.5 1.5 0 0 1 3 0V11M14 11V6a1.5 1.5 0 0 1 3 0v7c0 4-2.5 7-6 7-2.5 0-4-1.5-5.5-4L4 13a1.5 1.5 0 0 1 2.5-1.5L8 13"
        }
        _ => "",
    };
    let slash = name.ends_with("-off");
    html! {
        <svg class="icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
            <path d={d} />
            if slash {
                <path class="slash" d="M4 4l16 16" />
            }
        </svg>
    }
}

/// The stage's layout now: where each tile goes, and the `#tiles` style
/// that sizes them to fill the stage.
fn layout(v: &View) -> (crate::stage::Arrangement, String) {
    use crate::stage::{GAP, Mode, Place};
    let (width, height) = stage_size();
    let a = v.arrangement(per_page(width, height));
    let shown = a
        .places
        .iter()
        .filter(|p| matches!(p, Place::Grid | Place::Strip))
        .count()
        + 1;
    let style = if v.mode == Mode::Speaker {
        // The strip: a row of small tiles under the large one, small
        // enough that they receive a publisher's smallest encoding.
        let strip_h = 90.0;
        let strip_w = ((width - GAP * (shown - 1) as f64) / shown as f64).min(160.0);
        format!(
            "--cols:{shown};--tile-w:{:.0}px;--tile-h:{:.0}px;--main-h:{:.0}px",
            strip_w.max(80.0),
            strip_h,
            (height - strip_h - GAP).max(90.0)
        )
    } else {
        let f = crate::stage::fit(shown, width, height);
        format!(
            "--cols:{};--tile-w:{}px;--tile-h:{}px",
            f.cols, f.width, f.height
        )
    };
    (a, style)
}

/// The stage's buttons, in the top bar: grid or speaker view, and the
/// pages when there are several.
fn stage_bar(v: &View, a: &crate::stage::Arrangement) -> Html {
    let speaker = v.mode == crate::stage::Mode::Speaker;
    html! {
        <div id="stage-bar">
            <button id="toggle-layout" class="chip" data-action="layout" aria-pressed={bool_str(speaker)} onclick={on(Action::Layout)}>
                { icon("grid") }<span>{ if speaker { "Grid view" } else { "Speaker view" } }</span>
            </button>
            if a.pages > 1 {
                <nav id="pager" aria-label="Pages of video">
                    <button id="page-prev" class="chip" aria-label="Previous page" disabled={a.page == 0} onclick={on(Action::Page(false))}>{ "‹" }</button>
                    <span id="page-of" data-page={a.page.to_string()} data-pages={a.pages.to_string()}>
                        { format!("Page {} of {}", a.page + 1, a.pages) }
                    </span>
                    <button id="page-next" class="chip" aria-label="Next page" disabled={a.page + 1 >= a.pages} onclick={on(Action::Page(true))}>{ "›" }</button>
                </nav>
            }
        </div>
    }
}

/// The video tiles: the self view and the remote tiles, as a paged grid
/// or a speaker view, sized to fill the stage.
fn stage(v: &View, a: &crate::stage::Arrangement, style: String) -> Html {
    use crate::stage::{Mode, Place};
    for (t, place) in v.tiles.iter().zip(&a.places) {
        let n = &t.node;
        let _ = n.set_attribute("data-place", place.name());
        let _ = n.toggle_attribute_with_force("hidden", *place == Place::Hidden);
        let pinned = v.pinned == Some((t.participant, t.track));
        let _ = n.set_attribute("data-pinned", bool_str(pinned));
        let _ = n.set_attribute("data-hand", bool_str(v.hands.contains(&t.participant)));
        if let Ok(Some(b)) = n.query_selector("button.pin") {
            b.set_text_content(Some(if pinned { "Unpin" } else { "Pin" }));
            let _ = b.set_attribute("aria-pressed", bool_str(pinned));
        }
    }
    let tile = |i: usize| {
        let t = &v.tiles[i];
        html! { <Embed key={format!("{}-{}", t.participant, t.track)} node={t.node.clone()} /> }
    };
    let speaker = v.mode == Mode::Speaker;
    // In the speaker view the large tile comes first, before the self view.
    let (lead, rest) = match (speaker, a.order.split_first()) {
        (true, Some((first, rest))) => (Some(*first), rest),
        _ => (None, &a.order[..]),
    };
    html! {
        <div id="tiles" data-mode={if speaker { "speaker" } else { "grid" }} style={style}>
            { for lead.map(tile) }
            <SelfView key="self" media={v.media} off={v.camera_off} />
            { for rest.iter().map(|i| tile(*i)) }
        </div>
    }
}

/// Remote tiles a page holds: as the link says (`?page_size=N`), else as
/// many as fit a stage of `width`×`height` beside the self view.
fn per_page(width: f64, height: f64) -> usize {
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    if let Some(n) = crate::links::page_size_in_link(&search) {
        return n;
    }
    crate::stage::capacity(width, height)
        .saturating_sub(1)
        .max(1)
}

/// A row of the participant list: name, role, microphone, whether speaking,
/// and moderator buttons for others.
fn person(v: &View, p: &Person) -> Html {
    let mut text = p.name.clone();
    if p.moderator {
        text.push_str(" · moderator");
    }
    if p.muted {
        text.push_str(" · muted");
    }
    if p.me {
        text.push_str(" (you)");
    }
    let speaking = v.speaker == Some(p.id) || v.dominant == Some(p.id);
    html! {
        <li key={p.id} data-pid={p.id.to_string()} class={classes!(speaking.then_some("speaking"))}>
            <span class="name">{ text }</span>
            if p.recorder {
                <span class="tag recorder" title="Recording this meeting"><span class="rec-dot" aria-hidden="true"></span>{ "recording" }</span>
            }
            if v.hands.contains(&p.id) {
                <span class="tag hand" title="Hand raised">{ icon("hand") }{ "hand raised" }</span>
            }
            if speaking {
                <span class="tag">{ "speaking" }</span>
            }
            if let Some(q) = v.quality.get(&p.id) {
                <span class={classes!("quality", *q)} title={format!("Connection: {q}")}>{ format!("{q} connection") }</span>
            }
            if let Some(on) = p.camera {
                <span class="mic" title={if on { "Camera on" } else { "Camera off" }}>
                    { icon(if on { "camera" } else { "camera-off" }) }
                </span>
            }
            <span class="mic" title={if p.muted { "Microphone off" } else { "Microphone on" }}>
                { icon(if p.muted { "mic-off" } else { "mic" }) }
            </span>
            if v.moderator && !p.me {
                <button data-action="mute" class="quiet" aria-label={format!("Ask {} to mute", p.name)} onclick={on(Action::Mute(p.id))}>{ "Mute" }</button>
                <button data-action="remove" class="quiet danger" aria-label={format!("Remove {}", p.name)} onclick={on(Action::Remove(p.id))}>{ "Remove" }</button>
            }
        </li>
    }
}

/// What the self view shows.
#[derive(Properties, PartialEq)]
pub struct SelfViewProps {
    /// The local media's version.
    pub media: u32,
    /// Our camera is off: the picture is dimmed, as the others see none.
    pub off: bool,
}

/// Our own camera, first in the grid: what the others see.
#[function_component(SelfView)]
pub fn self_view(props: &SelfViewProps) -> Html {
    let video = use_node_ref();
    use_local_media(&video, props.media);
    // Moved in the grid, a video element can be left paused: play on.
    {
        let video = video.clone();
        use_effect(move || {
            if let Some(v) = video.cast::<web_sys::HtmlVideoElement>()
                && v.paused()
            {
                let _ = v.play();
            }
        });
    }
    html! {
        <figure id="self" class="self" data-muted={bool_str(props.off)}>
            <video id="self-view" ref={video} autoplay=true playsinline=true muted=true />
            <figcaption>{ "You" }</figcaption>
        </figure>
    }
}

/// An element made outside Yew.
#[derive(Properties, PartialEq)]
pub struct EmbedProps {
    /// The element to place.
    pub node: web_sys::Element,
}

/// Places an element made outside Yew (a video tile) where it is rendered.
#[function_component(Embed)]
pub fn embed(props: &EmbedProps) -> Html {
    Html::VRef(props.node.clone().into())
}

/// What the chat panel shows.
#[derive(Properties, PartialEq)]
pub struct ChatProps {
    /// The messages, oldest first.
    pub lines: VecDeque<String>,
    /// The panel is open.
    pub open: bool,
}

/// The chat panel: messages and a line to send one.
#[function_component(Chat)]
pub fn chat(props: &ChatProps) -> Html {
    let input = use_node_ref();
    let list = use_node_ref();
    // Keep the newest message in sight.
    {
        let list = list.clone();
        use_effect_with(props.lines.len(), move |_| {
            // Through Reflect: web-sys types scrollTop differently with and
            // without its unstable APIs, which only the wasm build turns on.
            if let Some(l) = list.get()
                && let Ok(height) = js_sys::Reflect::get(&l, &"scrollHeight".into())
            {
                let _ = js_sys::Reflect::set(&l, &"scrollTop".into(), &height);
            }
        });
    }
    let submit = {
        let input = input.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let Some(i) = input.cast::<web_sys::HtmlInputElement>() else {
                return;
            };
            let text = i.value();
            if !text.trim().is_empty() && crate::send_chat(text) {
                i.set_value("");
            }
        })
    };
    // Opening the chat puts the cursor in its box.
    {
        let input = input.clone();
        use_effect_with(props.open, move |open| {
            if *open && let Some(i) = input.cast::<web_sys::HtmlElement>() {
                let _ = i.focus();
            }
        });
    }
    html! {
        <section id="chat" hidden={!props.open} aria-labelledby="chat-title">
            <header class="panel-head">
                <h2 id="chat-title">{ "Chat" }</h2>
                <button class="close" aria-label="Close chat" onclick={on(Action::Panel(Panel::Chat))}>{ icon("close") }</button>
            </header>
            <ol id="messages" ref={list} aria-live="polite" aria-label="Messages">
                { for props.lines.iter().map(|l| html! { <li>{ l }</li> }) }
            </ol>
            <form id="chat-form" onsubmit={submit}>
                <input id="chat-input" ref={input} placeholder="Message everyone" aria-label="Message everyone" maxlength="2000" autocomplete="off" />
                <button id="chat-send" type="submit">{ "Send" }</button>
            </form>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_keeps_the_newest_lines_only() {
        let mut v = View::default();
        for i in 0..CHAT_KEPT + 50 {
            v.chat_line(format!("line {i}"));
        }
        assert_eq!(v.chat.len(), CHAT_KEPT);
        assert_eq!(v.chat.front().map(String::as_str), Some("line 50"));
        assert_eq!(
            v.chat.back().map(String::as_str),
            Some(format!("line {}", CHAT_KEPT + 49).as_str())
        );
    }

    #[test]
    fn pinning_shows_the_speaker_view_and_pages_start_again() {
        let mut v = View {
            page: 2,
            ..View::default()
        };
        assert!(v.arrange(Action::Pin(7, 2)));
        assert_eq!(v.pinned, Some((7, 2)));
        assert_eq!(v.mode, crate::stage::Mode::Speaker);
        assert_eq!(v.page, 0);
        assert!(v.arrange(Action::Page(true)));
        assert_eq!(v.page, 1);
        assert!(v.arrange(Action::Pin(7, 2)));
        assert_eq!(v.pinned, None, "a second click unpins");
        assert!(v.arrange(Action::Layout));
        assert_eq!(v.mode, crate::stage::Mode::Grid);
        assert!(!v.arrange(Action::Mic), "the session's to do");
    }

    #[test]
    fn toasts_go_when_read_and_make_way_for_newer_ones() {
        let mut v = View::default();
        let first = v.toast("Ann joined".into());
        for n in 0..TOASTS_KEPT {
            v.toast(format!("news {n}"));
        }
        assert_eq!(v.toasts.len(), TOASTS_KEPT);
        assert!(
            v.toasts.iter().all(|(id, _)| *id != first),
            "the oldest made way"
        );
        let last = v.toasts.back().unwrap().0;
        v.toast_gone(last);
        assert_eq!(v.toasts.len(), TOASTS_KEPT - 1);
    }

    #[test]
    fn the_chat_counts_what_arrives_while_it_is_closed() {
        let mut v = View::default();
        v.chat_line("Ann: hi".into());
        v.chat_line("Ann: there?".into());
        assert_eq!(v.unread, 2);
        assert!(v.arrange(Action::Panel(Panel::Chat)));
        assert_eq!(v.unread, 0);
        v.chat_line("Ann: yes".into());
        assert_eq!(v.unread, 0, "read as it arrives");
        assert!(v.arrange(Action::Dismiss));
        assert_eq!(v.panel, Panel::Closed);
    }

    #[test]
    fn escape_closes_a_card_before_the_panel() {
        let mut v = View::default();
        v.arrange(Action::Panel(Panel::People));
        v.arrange(Action::Help);
        v.arrange(Action::Dismiss);
        assert!(!v.help_open);
        assert_eq!(v.panel, Panel::People);
        v.arrange(Action::Dismiss);
        assert_eq!(v.panel, Panel::Closed);
        assert_eq!(shortcut("M"), Some(Action::Mic));
        assert_eq!(shortcut("Escape"), Some(Action::Dismiss));
        assert_eq!(shortcut("x"), None);
    }

    #[test]
    fn the_link_to_share_names_the_meeting_not_the_visitor() {
        assert_eq!(
            meeting_link("https://meet.example/meeting/Ann/standup?token=x#e2ee=1"),
            "https://meet.example/meeting/standup"
        );
        assert_eq!(
            meeting_link("http://127.0.0.1:8080/meeting/standup"),
            "http://127.0.0.1:8080/meeting/standup"
        );
        assert_eq!(meeting_link("http://h/?m=1"), "http://h/");
    }

    #[test]
    fn a_participant_waits_in_the_list_once() {
        let mut v = View::default();
        v.waiting_add(7, "Gus".into());
        v.waiting_add(7, "Gus".into());
        v.waiting_add(8, "Lee".into());
        assert_eq!(v.waiting, vec![(7, "Gus".into()), (8, "Lee".into())]);
    }
}
