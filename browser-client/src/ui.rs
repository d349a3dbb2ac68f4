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
    /// Whether this is us.
    pub me: bool,
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
}

impl View {
    /// Adds a chat line, forgetting the oldest past [`CHAT_KEPT`].
    pub fn chat_line(&mut self, line: String) {
        self.chat.push_back(line);
        while self.chat.len() > CHAT_KEPT {
            self.chat.pop_front();
        }
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
}

impl View {
    /// Carries out an action that only changes what the page shows; false
    /// for one the session must carry out.
    pub fn arrange(&mut self, action: Action) -> bool {
        match action {
            Action::Pin(p, t) => {
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
            _ => return false,
        }
        true
    }

    /// Where each remote tile goes for a page of `per_page` tiles.
    pub fn arrangement(&self, per_page: usize) -> crate::stage::Arrangement {
        let who: Vec<u32> = self.tiles.iter().map(|t| t.participant).collect();
        let pinned = self.pinned.and_then(|k| {
            self.tiles
                .iter()
                .position(|t| (t.participant, t.track) == k)
        });
        crate::stage::arrange(&who, pinned, self.dominant, self.mode, self.page, per_page)
    }
}

/// A click handler doing `action`.
fn on(action: Action) -> Callback<MouseEvent> {
    Callback::from(move |_: MouseEvent| crate::act(action))
}

/// The whole page: header, status lines and the current screen.
#[function_component(Page)]
pub fn page() -> Html {
    let redraw = use_force_update();
    let v = SCREENS.with(|s| {
        let mut s = s.borrow_mut();
        s.redraw = Some(redraw);
        s.pending = false;
        s.view.clone()
    });
    html! {
        <>
            <header class="top">
                <h1>{ "Convene" }</h1>
                if v.screen == Screen::Meeting {
                    <p id="transport">{ &v.transport }</p>
                }
            </header>
            <p id="status" role="status">
                { &v.status }
                if let Some(url) = &v.login_url {
                    <a id="login-link" href={url.clone()}>{ "sign in" }</a>
                }
            </p>
            <p id="notice" role="alert">{ &v.notice }</p>
            {
                match v.screen {
                    Screen::Join => html! {
                        <Join preview={v.preview.clone()} devices={v.devices.clone()} media={v.media} />
                    },
                    Screen::Meeting => meeting(&v),
                }
            }
        </>
    }
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
    let options = |kind: &str| -> Html {
        props
            .devices
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| {
                let label = if d.label.is_empty() { &d.id } else { &d.label };
                html! { <option value={d.id.clone()} selected={d.in_use}>{ label }</option> }
            })
            .collect()
    };
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
            <label>{ "Camera" }
                <select id="camera-select" ref={camera_ref} onchange={picked.clone()}>{ options("videoinput") }</select>
            </label>
            <label>{ "Microphone" }
                <select id="mic-select" ref={mic_ref} onchange={picked}>{ options("audioinput") }</select>
            </label>
            <label id="e2ee-label" class="check">
                <input id="e2ee" type="checkbox" checked={*e2ee} onchange={toggled} />
                { " End-to-end encrypt (everyone in the meeting must turn this on)" }
            </label>
            <button id="connect" type="submit">{ "Connect" }</button>
        </form>
    }
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

/// The meeting screen: banner, state lines, controls, the video grid, the
/// participant list, the chat and (for moderators) moderation.
fn meeting(v: &View) -> Html {
    let label = |off: bool, when_off: &'static str, when_on: &'static str| {
        if off { when_off } else { when_on }
    };
    html! {
        <div id="meeting-screen">
            if !v.banner.is_empty() {
                <p id="banner" role="alert">{ &v.banner }</p>
            }
            <p id="e2ee-state">{ &v.e2ee }</p>
            <p id="room-state">{ if v.locked { "Room locked" } else { "" } }</p>
            <div id="controls">
                <button id="toggle-mic" data-action="mic" disabled={v.mic_refused} onclick={on(Action::Mic)}>
                    { label(v.mic_off, "Unmute", "Mute") }
                </button>
                <button id="toggle-camera" data-action="camera" disabled={v.camera_refused} onclick={on(Action::Camera)}>
                    { label(v.camera_off, "Start camera", "Stop camera") }
                </button>
                <button id="toggle-screen" data-action="screen" onclick={on(Action::Screen)}>
                    { label(!v.sharing, "Share screen", "Stop sharing") }
                </button>
                <button id="leave" data-action="leave" onclick={on(Action::Leave)}>{ "Leave" }</button>
            </div>
            { stage(v) }
            <div id="meeting">
                <section id="people">
                    <h2>{ format!("Participants ({})", v.people.len()) }</h2>
                    <ul id="participants">
                        { for v.people.iter().map(|p| person(v, p)) }
                    </ul>
                </section>
                <Chat lines={v.chat.clone()} />
            </div>
            if v.moderator {
                <section id="moderation">
                    <h2>{ "Moderation" }</h2>
                    <div class="row">
                        <button id="lock" data-action="lock" onclick={on(Action::Lock)}>
                            { if v.locked { "Unlock room" } else { "Lock room" } }
                        </button>
                        <button id="end-meeting" data-action="end" onclick={on(Action::End)}>
                            { "End meeting for all" }
                        </button>
                    </div>
                    <h2>{ "Waiting to join" }</h2>
                    <ul id="admissions">
                        {
                            for v.waiting.iter().map(|(id, name)| html! {
                                <li key={*id} id={format!("waiting-{id}")} data-pid={id.to_string()}>
                                    <span>{ name }</span>
                                    <button data-action="admit" onclick={on(Action::Admit(*id))}>{ "Admit" }</button>
                                    <button data-action="deny" onclick={on(Action::Deny(*id))}>{ "Deny" }</button>
                                </li>
                            })
                        }
                    </ul>
                </section>
            }
        </div>
    }
}

/// Remote tiles a page holds: as the link says (`?page_size=N`), else as
/// many as fit the window beside the self view.
fn per_page() -> usize {
    let Some(w) = web_sys::window() else {
        return 1;
    };
    let search = w.location().search().unwrap_or_default();
    if let Some(n) = crate::links::page_size_in_link(&search) {
        return n;
    }
    let px = |v: Result<wasm_bindgen::JsValue, _>| v.ok().and_then(|v| v.as_f64()).unwrap_or(0.0);
    let (width, height) = (px(w.inner_width()), px(w.inner_height()));
    // The page is at most 80rem wide with 1rem margins; header and
    // controls take about 200 px above the stage.
    let stage = crate::stage::capacity(width.min(1280.0) - 32.0, height - 200.0);
    stage.saturating_sub(1).max(1)
}

/// The video stage: the self view and the remote tiles, as a paged grid
/// or a speaker view, with its layout and page buttons.
fn stage(v: &View) -> Html {
    use crate::stage::{Mode, Place};
    let a = v.arrangement(per_page());
    for (t, place) in v.tiles.iter().zip(&a.places) {
        let n = &t.node;
        let _ = n.set_attribute("data-place", place.name());
        let _ = n.toggle_attribute_with_force("hidden", *place == Place::Hidden);
        let pinned = v.pinned == Some((t.participant, t.track));
        let _ = n.set_attribute("data-pinned", if pinned { "true" } else { "false" });
        if let Ok(Some(b)) = n.query_selector("button.pin") {
            b.set_text_content(Some(if pinned { "Unpin" } else { "Pin" }));
            let _ = b.set_attribute("aria-pressed", if pinned { "true" } else { "false" });
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
        <>
            <div id="stage-bar">
                <button id="toggle-layout" data-action="layout" aria-pressed={if speaker { "true" } else { "false" }} onclick={on(Action::Layout)}>
                    { if speaker { "Grid view" } else { "Speaker view" } }
                </button>
                if a.pages > 1 {
                    <nav id="pager" aria-label="Pages of video">
                        <button id="page-prev" disabled={a.page == 0} onclick={on(Action::Page(false))}>{ "Previous" }</button>
                        <span id="page-of" data-page={a.page.to_string()} data-pages={a.pages.to_string()}>
                            { format!("Page {} of {}", a.page + 1, a.pages) }
                        </span>
                        <button id="page-next" disabled={a.page + 1 >= a.pages} onclick={on(Action::Page(true))}>{ "Next" }</button>
                    </nav>
                }
            </div>
            <div id="tiles" data-mode={if speaker { "speaker" } else { "grid" }}>
                { for lead.map(tile) }
                <SelfView media={v.media} />
                { for rest.iter().map(|i| tile(*i)) }
            </div>
        </>
    }
}

/// A row of the participant list, with moderator buttons for others.
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
    let speaking = (v.speaker == Some(p.id)).then_some("speaking");
    html! {
        <li key={p.id} data-pid={p.id.to_string()} class={classes!(speaking)}>
            <span>{ text }</span>
            if v.moderator && !p.me {
                <button data-action="mute" onclick={on(Action::Mute(p.id))}>{ "Mute" }</button>
                <button data-action="remove" onclick={on(Action::Remove(p.id))}>{ "Remove" }</button>
            }
        </li>
    }
}

/// What the self view shows.
#[derive(Properties, PartialEq)]
pub struct SelfViewProps {
    /// The local media's version.
    pub media: u32,
}

/// Our own camera, first in the grid: what the others see.
#[function_component(SelfView)]
pub fn self_view(props: &SelfViewProps) -> Html {
    let video = use_node_ref();
    use_local_media(&video, props.media);
    html! {
        <figure id="self" class="self">
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
    html! {
        <section id="chat">
            <h2>{ "Chat" }</h2>
            <ol id="messages" ref={list}>
                { for props.lines.iter().map(|l| html! { <li>{ l }</li> }) }
            </ol>
            <form id="chat-form" onsubmit={submit}>
                <input id="chat-input" ref={input} placeholder="Say something" maxlength="2000" autocomplete="off" />
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
    fn a_participant_waits_in_the_list_once() {
        let mut v = View::default();
        v.waiting_add(7, "Gus".into());
        v.waiting_add(7, "Gus".into());
        v.waiting_add(8, "Lee".into());
        assert_eq!(v.waiting, vec![(7, "Gus".into()), (8, "Lee".into())]);
    }
}
