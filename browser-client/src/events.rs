//! What the page does with the session's output: [`pump`] sends the frames
//! the session has queued and hands each event to one function of its own,
//! here for the meeting as a whole (joining, the roster, chat, moderation,
//! the end) and in `publish`, `remote` and `e2ee` for media and keys.

use convene_protocol::ClientEvent;
use convene_protocol::v1::{self, server_message::Msg as S};

use crate::dom::{by_id, now};
use crate::session::Link;
use crate::state::App;
use crate::{e2ee, publish, remote, screens, ui};

/// Sends what the session has queued and shows what happened; once the
/// session is over, closes the link.
pub(crate) fn pump(app: &mut App) {
    transmit(app);
    while let Some(ev) = app.session.poll_event() {
        match ev {
            ClientEvent::Welcome(_) => on_welcome(app),
            ClientEvent::Joined(j) => on_joined(app, j),
            ClientEvent::Waiting(_) => ui::status("Waiting for a moderator to let you in…"),
            ClientEvent::Room(m) => on_room(app, m),
            ClientEvent::Media(m) => remote::on_media(app, m),
            ClientEvent::Left(_) => on_left(app),
            ClientEvent::JoinRefused(e) | ClientEvent::Error(e)
                if e.code == v1::ErrorCode::AdmissionDenied as i32 =>
            {
                ui::status("A moderator did not let you in.");
            }
            ClientEvent::Error(e) if app.pending_publish.contains_key(&e.request_id) => {
                publish::on_refused(app, e);
            }
            ClientEvent::Error(e)
                if e.request_id != 0 && app.recording_request == Some(e.request_id) =>
            {
                app.recording_request = None;
                screens::toast(format!("Recording: {}", e.text));
            }
            ClientEvent::Error(e)
                if e.code == v1::ErrorCode::E2eeRequired as i32 && app.keyring.is_none() =>
            {
                // The meeting came to require encryption while we were in it.
                app.e2ee_wanted = true;
                e2ee::start(app);
                screens::toast("This meeting now requires end-to-end encryption: encrypting");
            }
            ClientEvent::JoinRefused(e) => ui::status(format!("The server said: {}", e.text)),
            ClientEvent::Error(e) => ui::notice(format!("The server said: {}", e.text)),
            ClientEvent::Closed => on_closed(app),
            _ => {}
        }
    }
    transmit(app);
    // The session is over (left, removed, refused): the last words are
    // sent, so the transport can go.
    if app.session.close_reason().is_some()
        && let Some(link) = app.link.take()
    {
        link.close();
        app.closed_here = true;
    }
}

/// Sends every frame the session has queued on the link, if there is one.
fn transmit(app: &mut App) {
    while let Some(frame) = app.session.poll_transmit() {
        if let Some(link) = &app.link {
            link.send(&frame);
        }
    }
}

/// A room message, to the function for its kind.
fn on_room(app: &mut App, msg: S) {
    match msg {
        S::TrackPublished(t) => on_track_published(app, t),
        S::TrackUnpublished(u) => remote::on_track_unpublished(app, u),
        S::TrackMuted(m) => on_track_muted(app, m),
        S::KeyFrameRequest(k) => publish::on_key_frame_request(app, k),
        S::CongestionHint(h) => publish::on_congestion_hint(app, h),
        S::EncodingDemand(d) => publish::on_encoding_demand(app, d),
        S::ActiveSpeakers(a) => on_active_speakers(app, a),
        S::HandRaised(h) => on_hand_raised(app, h),
        S::Reaction(r) => on_reaction(app, r),
        S::RecordingAnswer(a) => on_recording_answer(app, a),
        S::ParticipantJoined(j) => on_participant_joined(app, j),
        S::ParticipantLeft(l) => on_participant_left(app, l),
        S::E2ee(m) => e2ee::on_message(app, m),
        S::Chat(c) => on_chat(app, c),
        S::RoomLocked(l) => on_room_locked(app, l),
        S::AdmissionRequest(r) => on_admission_request(r),
        S::MuteRequested(m) => on_mute_requested(app, m),
        _ => {}
    }
}

/// The handshake is done: joins the meeting (again, after a reconnect).
fn on_welcome(app: &mut App) {
    let (meeting, name) = (app.meeting.clone(), app.name.clone());
    if let Err(e) = app.session.join(now(), &meeting, &name, true) {
        ui::status(format!("cannot join: {e}"));
    }
}

/// In the meeting: shows who is there and how we are connected, starts
/// E2EE when asked for, asks for our camera and microphone to be sent, and
/// shows the tracks already published.
fn on_joined(app: &mut App, j: v1::Joined) {
    app.roster = j
        .participants
        .iter()
        .map(|p| (p.participant_id, screens::person(p)))
        .collect();
    app.recorders = j
        .participants
        .iter()
        .filter(|p| p.recording)
        .map(|p| p.participant_id)
        .collect();
    let me = app.session.participant_id();
    app.moderator = app.roster.get(&me).is_some_and(|(_, m)| *m);
    app.locked = j.locked;
    if app.reconnects > 0 {
        screens::toast("Reconnected");
    }
    app.reconnects = 0;
    let meeting = j.meeting_id.clone();
    let hands: std::collections::BTreeSet<u32> = j
        .participants
        .iter()
        .filter(|p| p.hand_raised)
        .map(|p| p.participant_id)
        .collect();
    let me = app.session.participant_id();
    let label = app.link.as_ref().map_or("?", Link::label);
    let text = match &app.fallback {
        Some(why) => format!("Connected over {label} ({why})"),
        None => format!("Connected over {label}"),
    };
    let locked = app.locked;
    ui::update(|v| {
        v.locked = locked;
        v.banner.clear();
        v.status.clear();
        v.meeting = meeting;
        v.hands = hands;
        v.me = me;
        v.login_url = None;
        v.transport = text;
    });
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-transport", label);
    }
    screens::show_roster(app);
    // A meeting that requires encryption has it, whatever the link said.
    app.e2ee_wanted |= j.e2ee_required;
    e2ee::start(app);
    app.want_camera = true;
    let me = app.session.participant_id();
    for p in j.participants.iter().filter(|p| p.participant_id != me) {
        for t in &p.tracks {
            remote::add_track(app, p.participant_id, t);
        }
    }
}

/// A track was published: someone else's is shown or played; our own is
/// accepted by the server, so it starts sending.
fn on_track_published(app: &mut App, t: v1::TrackPublished) {
    let Some(track) = t.track else {
        return;
    };
    if t.participant_id != app.session.participant_id() {
        remote::add_track(app, t.participant_id, &track);
    } else {
        publish::on_accepted(app, track.track_id);
    }
}

/// A track was muted or unmuted: a video tile says so itself; a microphone
/// shows in the participant list.
fn on_track_muted(app: &mut App, m: v1::TrackMuted) {
    let tile = app
        .tiles
        .get(&(m.participant_id, m.track_id))
        .map(|t| t.element().clone());
    if let Some(tile) = tile {
        let _ = tile.set_attribute("data-muted", if m.muted { "true" } else { "false" });
        // The participant list shows cameras too.
        screens::show_roster(app);
    } else if m.muted {
        app.mic_muted.insert(m.participant_id);
        screens::show_roster(app);
    } else {
        app.mic_muted.remove(&m.participant_id);
        screens::show_roster(app);
    }
}

/// Who speaks, as the server hears it (PROTOCOL.md §6.6.4): their tiles get
/// `data-active-speaker`, the main speaker's the class `dominant`, and
/// `#app[data-dominant]` names them (empty when nobody speaks).
fn on_active_speakers(app: &mut App, a: v1::ActiveSpeakers) {
    let dominant = a
        .speakers
        .iter()
        .find(|s| s.dominant)
        .map(|s| s.participant_id);
    for ((pid, _), tile) in &app.tiles {
        let e = tile.element();
        let active = a.speakers.iter().any(|s| s.participant_id == *pid);
        let _ = e.set_attribute("data-active-speaker", if active { "true" } else { "false" });
        let _ = e
            .class_list()
            .toggle_with_force("dominant", Some(*pid) == dominant);
    }
    if crate::ui::read(|v| v.dominant) != dominant {
        crate::ui::update(|v| v.dominant = dominant);
    }
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute(
            "data-dominant",
            &dominant.map(|p| p.to_string()).unwrap_or_default(),
        );
    }
}

/// Someone joined (or was admitted from the waiting room).
fn on_participant_joined(app: &mut App, j: v1::ParticipantJoined) {
    let Some(p) = j.participant else {
        return;
    };
    // Admitted from the waiting room: no longer waiting.
    ui::update(|v| v.waiting.retain(|(w, _)| *w != p.participant_id));
    if let Some(ring) = app.keyring.as_mut() {
        ring.participant_joined(p.participant_id);
    }
    if p.recording {
        app.recorders.insert(p.participant_id);
        screens::toast("This meeting is being recorded");
    } else {
        screens::toast(format!("{} joined", p.display_name));
    }
    app.roster.insert(p.participant_id, screens::person(&p));
    screens::show_roster(app);
    e2ee::show(app);
}

/// Someone left: their keys, tiles and sound go.
fn on_participant_left(app: &mut App, l: v1::ParticipantLeft) {
    if let Some(ring) = app.keyring.as_mut() {
        let out = ring.participant_left(l.participant_id);
        e2ee::outcome(app, out);
    }
    let recorder = app.recorders.remove(&l.participant_id);
    if let Some((name, _)) = app.roster.remove(&l.participant_id) {
        screens::toast(if recorder {
            "Recording stopped".to_string()
        } else {
            format!("{name} left")
        });
    }
    app.mic_muted.remove(&l.participant_id);
    ui::update(|v| {
        v.hands.remove(&l.participant_id);
        v.quality.remove(&l.participant_id);
    });
    remote::remove_participant(app, l.participant_id);
    screens::show_roster(app);
    e2ee::show(app);
}

/// The server started or stopped a recorder at our request (§5.10); the
/// badge follows the recorder itself as it joins and leaves.
fn on_recording_answer(app: &mut App, a: v1::RecordingAnswer) {
    if app.recording_request == Some(a.request_id) {
        app.recording_request = None;
    }
    screens::toast(if a.recording {
        "Recording requested: the recorder is joining"
    } else {
        "Recording will stop"
    });
}

/// Someone's hand went up or down (PROTOCOL.md §5.9).
fn on_hand_raised(app: &mut App, h: v1::HandRaised) {
    let me = app.session.participant_id();
    if h.participant_id != me && h.raised {
        screens::toast(format!(
            "✋ {} raised a hand",
            app.name_of(h.participant_id)
        ));
    }
    ui::update(|v| {
        if h.raised {
            v.hands.insert(h.participant_id);
        } else {
            v.hands.remove(&h.participant_id);
        }
    });
}

/// Someone reacted: shown for a moment, and ignored if of a kind this page
/// does not know (§5.9).
fn on_reaction(app: &mut App, r: v1::Reaction) {
    if let Some((symbol, _)) = ui::reaction_symbol(r.kind) {
        screens::toast(format!("{symbol} {}", app.name_of(r.participant_id)));
    }
}

/// A chat line, shown with its sender's name.
fn on_chat(app: &mut App, c: v1::ChatMessage) {
    let who = app.name_of(c.from_participant_id);
    ui::update(|v| v.chat_line(format!("{who}: {}", c.text)));
}

/// The room was locked or unlocked.
fn on_room_locked(app: &mut App, l: v1::RoomLocked) {
    if app.locked != l.locked {
        screens::toast(if l.locked {
            "A moderator locked the room: nobody new can join"
        } else {
            "A moderator unlocked the room"
        });
    }
    app.locked = l.locked;
    ui::update(|v| v.locked = l.locked);
}

/// Someone waits to be let in (we are a moderator).
fn on_admission_request(r: v1::AdmissionRequest) {
    if let Some(p) = r.participant {
        screens::toast(format!("{} is waiting to join", p.display_name));
        ui::update(|v| v.waiting_add(p.participant_id, p.display_name));
    }
}

/// A moderator asks us to mute.
fn on_mute_requested(app: &mut App, m: v1::MuteRequested) {
    let by = app.name_of(m.by_participant_id);
    ui::notice(format!("{by} asked you to mute."));
}

/// We left: says goodbye, which ends the session.
fn on_left(app: &mut App) {
    ui::status("You left the meeting.");
    app.roster.clear();
    screens::show_roster(app);
    app.session.goodbye(now(), "left");
}

/// The session ended: says why, and clears the roster and remote media.
fn on_closed(app: &mut App) {
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
    screens::show_roster(app);
    remote::clear(app);
}
