//! Between the meeting and its screens: what the meeting screen shows of
//! the session (roster, tiles, who speaks), put into the view model of
//! [`ui`], and what its buttons and chat box do.

use convene_protocol::v1::{self, client_message::Msg as C};

use crate::dom::{by_id, now};
use crate::events::pump;
use crate::session::after_close;
use crate::state::{self, App};
use crate::{publish, ui};

/// Sends a chat message; false when the session would not take it (not
/// joined, too long).
pub(crate) fn send_chat(text: String) -> bool {
    let Some(a) = state::current() else {
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
pub(crate) fn act(action: ui::Action) {
    use ui::Action as A;
    if action.view_only() {
        let before = ui::read(|v| v.panel);
        ui::update(|v| {
            v.arrange(action);
        });
        if before != ui::Panel::Closed && ui::read(|v| v.panel) != before {
            focus_back_from_panel(before);
        }
        return;
    }
    let Some(a) = state::current() else {
        return;
    };
    if action == A::Screen {
        // Still inside the click: browsers let getDisplayMedia run only here.
        publish::toggle_screen(&a);
        return;
    }
    // A tile's menu closes once one of its actions is done.
    if matches!(action, A::Mute(_) | A::Remove(_)) {
        ui::update(|v| v.tile_menu = None);
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
        A::Hand | A::React(_) if !app.session.reactions() => {
            ui::notice("This server does not pass on raised hands and reactions.");
            None
        }
        A::Hand => {
            let raised = !ui::read(|v| v.hands.contains(&v.me));
            ui::update(|v| v.reactions_open = false);
            Some(C::RaiseHand(v1::RaiseHand { raised }))
        }
        A::React(kind) => {
            ui::update(|v| v.reactions_open = false);
            Some(C::SendReaction(v1::SendReaction { kind }))
        }
        A::Record if !app.session.recording() => {
            ui::notice("This server does not record.");
            None
        }
        A::Record => {
            ui::update(|v| v.more_open = false);
            Some(if app.recorders.is_empty() {
                C::StartRecording(v1::StartRecording {})
            } else {
                C::StopRecording(v1::StopRecording {})
            })
        }
        A::Mic | A::Camera => publish::toggle(&mut app, action == A::Mic),
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
        _ => None,
    };
    if let Some(m) = msg {
        let recording = matches!(m, C::StartRecording(_) | C::StopRecording(_));
        let sent = app.session.send(now(), m);
        if recording {
            app.recording_request = sent.ok();
        }
    }
    pump(&mut app);
    drop(app);
    after_close(&a);
}

/// Marks who is speaking (the loudest remote audio above a floor: their
/// tiles and their row in the participant list) and
/// counts decoded audio frames and played samples in `#app[data-audio-frames]`
/// and `#app[data-audio-played]`, and decoded frames per participant in
/// `#app[data-audio-by]` (`pid=frames pid=frames`).
pub(crate) fn show_audio(app: &App) {
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
        let by: Vec<String> = app
            .players
            .iter()
            .map(|((pid, _), p)| format!("{pid}={}", p.decoded.get()))
            .collect();
        let _ = root.set_attribute("data-audio-by", &by.join(" "));
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

/// Puts the remote video tiles in the meeting screen's grid.
pub(crate) fn show_tiles(app: &App) {
    let tiles: Vec<ui::TileNode> = app
        .tiles
        .iter()
        .map(|((participant, track), t)| ui::TileNode {
            participant: *participant,
            track: *track,
            node: t.element().clone(),
            screen: t.element().get_attribute("data-kind").as_deref() == Some("screen"),
        })
        .collect();
    ui::update(|v| v.set_tiles(tiles));
    // Cameras come and go with tiles: the participant list shows them.
    show_roster(app);
}

/// How long without a pointer move or a key before the bars fade on a
/// large stage, milliseconds.
const IDLE_MS: i32 = 4000;

thread_local! {
    /// The pending timeout that fades the bars.
    static IDLE_TIMER: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

/// The person moved the pointer or pressed a key: the bars show, and fade
/// again after [`IDLE_MS`] of nothing, unless something is open or the
/// focus is on them (`#meeting-screen[data-idle]`; the fading itself is the
/// stylesheet's, on large windows only).
pub(crate) fn activity() {
    use wasm_bindgen::JsCast;
    crate::devices::wake_meter();
    let Some(w) = web_sys::window() else {
        return;
    };
    if let Some(screen) = by_id("meeting-screen")
        && screen.get_attribute("data-idle").as_deref() != Some("false")
    {
        let _ = screen.set_attribute("data-idle", "false");
    }
    if let Some(t) = IDLE_TIMER.with(|c| c.take()) {
        w.clear_timeout_with_handle(t);
    }
    let fade = wasm_bindgen::closure::Closure::once_into_js(|| {
        IDLE_TIMER.with(|c| c.set(None));
        let open = ui::read(|v| v.panel != ui::Panel::Closed || v.card_open());
        let focus_on_bars = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.active_element())
            .is_some_and(|a| {
                ["controls", "topbar"]
                    .iter()
                    .filter_map(|id| by_id(id))
                    .any(|bar| bar.contains(Some(&a)))
            });
        if !open
            && !focus_on_bars
            && let Some(screen) = by_id("meeting-screen")
        {
            let _ = screen.set_attribute("data-idle", "true");
        }
    });
    if let Ok(t) =
        w.set_timeout_with_callback_and_timeout_and_arguments_0(fade.unchecked_ref(), IDLE_MS)
    {
        IDLE_TIMER.with(|c| c.set(Some(t)));
    }
}

/// Shows who is in the room, and the moderator's controls to a moderator.
pub(crate) fn show_roster(app: &App) {
    let me = app.session.participant_id();
    let people: Vec<ui::Person> = app
        .roster
        .iter()
        .map(|(id, (name, moderator))| ui::Person {
            id: *id,
            name: name.clone(),
            moderator: *moderator,
            muted: app.mic_muted.contains(id),
            // A camera tile of theirs, not a screen: on unless muted.
            // (Their tiles only: a range of the map, not a walk of every tile.)
            camera: app
                .tiles
                .range((*id, 0)..=(*id, u32::MAX))
                .map(|(_, t)| t.element())
                .find(|e| e.get_attribute("data-kind").as_deref() != Some("screen"))
                .map(|e| e.get_attribute("data-muted").as_deref() != Some("true")),
            me: *id == me,
            recorder: app.recorders.contains(id),
        })
        .collect();
    let moderator = app.moderator;
    let recording = !app.recorders.is_empty();
    let can_record = app.session.recording();
    ui::update(|v| {
        v.people = people;
        v.moderator = moderator;
        v.recording = recording;
        v.can_record = can_record;
    });
}

/// A roster entry: the name to show and whether a moderator.
pub(crate) fn person(p: &v1::Participant) -> (String, bool) {
    (p.display_name.clone(), p.role == v1::Role::Moderator as i32)
}

/// Shows a piece of passing news for a few seconds (and to screen readers,
/// through the toasts' live region).
pub(crate) fn toast(text: impl Into<String>) {
    let text = text.into();
    let mut id = 0;
    ui::update(|v| id = v.toast(text));
    let gone = wasm_bindgen::closure::Closure::once_into_js(move || {
        ui::update(|v| v.toast_gone(id));
    });
    if let Some(w) = web_sys::window() {
        let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(
            wasm_bindgen::JsCast::unchecked_ref(&gone),
            TOAST_MS,
        );
    }
}

/// How long a toast stays, milliseconds.
const TOAST_MS: i32 = 5000;

/// A panel closed while the focus was in it (its chat box): the focus goes
/// back to the button that opens it, not to nowhere, so the keys go on
/// working and a screen reader stays in place.
fn focus_back_from_panel(panel: ui::Panel) {
    use wasm_bindgen::JsCast;
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let inside = doc
        .active_element()
        .zip(by_id("side"))
        .is_some_and(|(a, side)| side.contains(Some(&a)));
    if !inside {
        return;
    }
    let id = match panel {
        ui::Panel::Chat => "toggle-chat",
        _ => "toggle-people",
    };
    if let Some(b) = by_id(id).and_then(|b| b.dyn_into::<web_sys::HtmlElement>().ok()) {
        let _ = b.focus();
    }
}
