//! The others' media: a video tile per remote video track (decoded onto its
//! canvas), a player per remote audio track, and what arrives for them.

use convene_protocol::MediaFrame;
use convene_protocol::v1::{self, client_message::Msg as C};

use crate::dom::now;
use crate::events::pump;
use crate::state::App;
use crate::{audio, e2ee, quality, screens, ui, video};

/// Puts a remote video track on screen, or plays a remote audio track.
pub(crate) fn add_track(app: &mut App, participant: u32, track: &v1::TrackInfo) {
    let key = (participant, track.track_id);
    if track.kind == v1::TrackKind::Audio as i32 {
        if let std::collections::btree_map::Entry::Vacant(slot) = app.players.entry(key) {
            match audio::Player::new(&track.codec) {
                Ok(p) => {
                    slot.insert(p);
                }
                Err(e) => web_sys::console::warn_2(&"cannot play an audio track".into(), &e),
            }
        }
        if track.muted {
            app.mic_muted.insert(participant);
            screens::show_roster(app);
        }
        return;
    }
    if app.tiles.contains_key(&key) {
        return;
    }
    let mut name = app.name_of(participant);
    if track.kind == v1::TrackKind::Screen as i32 {
        name.push_str(" · screen");
    }
    let selective = !track.encodings.is_empty();
    match video::Tile::new(participant, track.track_id, &name, &track.codec, selective) {
        Ok(mut t) => {
            t.picture = Some((track.width, track.height));
            // Published off (its owner joined with the camera off).
            let muted = if track.muted { "true" } else { "false" };
            let _ = t.element().set_attribute("data-muted", muted);
            if track.kind == v1::TrackKind::Screen as i32 {
                let _ = t.element().set_attribute("data-kind", "screen");
            }
            app.tiles.insert((participant, track.track_id), t);
            screens::show_tiles(app);
        }
        Err(e) => web_sys::console::warn_2(&"cannot show a video track".into(), &e),
    }
}

/// A media frame from the server: decrypted when E2EE is on, then played or
/// decoded onto its tile.
pub(crate) fn on_media(app: &mut App, m: MediaFrame) {
    let h = *m.header();
    if let Some(layer) = m.layer()
        && let Some(tile) = app.tiles.get_mut(&(h.sender, h.track_id))
    {
        tile.note_encoding(layer.encoding);
    }
    let Some(m) = e2ee::open_media(app, m) else {
        return;
    };
    let now_ms = now().0 as f64 / 1000.0;
    if let Some(p) = app.players.get_mut(&(h.sender, h.track_id)) {
        // Muted for me: not played here (the others still hear them).
        if !ui::read(|v| v.muted_for_me.contains(&h.sender)) {
            p.play(&m);
        }
    } else if let Some(tile) = app.tiles.get_mut(&(h.sender, h.track_id))
        && tile.decode(&m)
        && now_ms - tile.last_key_request_ms > 1000.0
    {
        // Ask the publisher for a picture to start from, at most once a second.
        tile.last_key_request_ms = now_ms;
        let _ = app.session.send(
            now(),
            C::KeyFrameRequest(v1::KeyFrameRequest {
                participant_id: h.sender,
                track_id: h.track_id,
                ..Default::default()
            }),
        );
    }
}

/// Tells the server the size each selective track is shown at, or that
/// it is not shown (PROTOCOL.md §6.6.3): called four times a second, it
/// sends at most one UpdateSubscription a call, for the tile whose wish
/// changed and was asked about longest ago.
pub(crate) fn ask_for_sizes(app: &mut App) {
    if !app.session.sfu() {
        return;
    }
    let ratio = web_sys::window().map_or(1.0, |w| w.device_pixel_ratio());
    let changed: Vec<((u32, u32), quality::Wanted, Option<f64>)> = app
        .tiles
        .iter()
        .filter(|(_, t)| t.selective)
        .filter_map(|(k, t)| {
            let (w, h) = t.shown_size();
            let wanted = quality::wanted(w, h, ratio, t.picture);
            match t.asked {
                Some((asked, _)) if asked == wanted => None,
                asked => Some((*k, wanted, asked.map(|(_, at)| at))),
            }
        })
        .collect();
    let Some(key) = quality::next_to_send(changed.iter().map(|(k, _, at)| (*k, *at))) else {
        return;
    };
    let Some((_, wanted, _)) = changed.into_iter().find(|(k, _, _)| *k == key) else {
        return;
    };
    let sent = app.session.send(
        now(),
        C::UpdateSubscription(v1::UpdateSubscription {
            participant_id: key.0,
            track_id: key.1,
            preferences: Some(v1::SubscriptionPreferences {
                max_width: wanted.max_width,
                max_height: wanted.max_height,
                max_frame_rate: 0,
                paused: wanted.paused,
            }),
        }),
    );
    if sent.is_ok()
        && let Some(t) = app.tiles.get_mut(&key)
    {
        t.asked = Some((wanted, now().0 as f64 / 1000.0));
        let size = if wanted.paused {
            "paused".to_string()
        } else {
            format!("{}x{}", wanted.max_width, wanted.max_height)
        };
        let _ = t.element().set_attribute("data-asked", &size);
    }
    pump(app);
}

/// A remote track was unpublished: its tile or player goes.
pub(crate) fn on_track_unpublished(app: &mut App, u: v1::TrackUnpublished) {
    app.tiles.remove(&(u.participant_id, u.track_id));
    app.players.remove(&(u.participant_id, u.track_id));
    screens::show_tiles(app);
}

/// Someone left: all their tiles and players go.
pub(crate) fn remove_participant(app: &mut App, participant: u32) {
    app.tiles.retain(|(pid, _), _| *pid != participant);
    app.players.retain(|(pid, _), _| *pid != participant);
    screens::show_tiles(app);
}

/// The session ended: every tile and player goes.
pub(crate) fn clear(app: &mut App) {
    app.tiles.clear();
    app.players.clear();
    screens::show_tiles(app);
}
