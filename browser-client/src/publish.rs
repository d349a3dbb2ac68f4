//! Our own media: publishing the camera and microphone the join screen
//! opened and the shared screen, sending their encoded frames (sealed when
//! E2EE is on), muting them, and what the server says about them (accepted,
//! refused, a key frame wanted, a bitrate hinted).

use std::cell::RefCell;
use std::rc::Rc;

use convene_protocol::v1::{self, client_message::Msg as C};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use convene_protocol::{AudioLevel, simulcast};

use crate::dom::{by_id, now};
use crate::events::pump;
use crate::state::{App, page};
use crate::{audio, camera, codecs, path, ui};

/// The browser client's camera track id.
pub(crate) const VIDEO_TRACK: u32 = 1;
/// The browser client's microphone track id.
pub(crate) const AUDIO_TRACK: u32 = 2;
/// The browser client's screen-share track id.
pub(crate) const SCREEN_TRACK: u32 = 3;
/// The bitrate the camera starts at, bit/s (also what it announces).
pub(crate) const CAMERA_START_BPS: u32 = 800_000;
/// The lowest bitrate the camera goes down to, bit/s.
pub(crate) const CAMERA_FLOOR_BPS: u32 = 100_000;

/// Publishes the camera and microphone the join screen opened and starts
/// sending them (after a reconnect: publishes them again).
pub(crate) fn send_camera(app: &Rc<RefCell<App>>) {
    let Some(stream) = page(|p| p.local_media.clone()) else {
        page(|p| p.waiting_for_media = Some(app.clone()));
        return;
    };
    let first = |tracks: js_sys::Array| tracks.get(0).dyn_into::<web_sys::MediaStreamTrack>().ok();
    if let Some(track) = first(stream.get_video_tracks()) {
        // The codec is the page's probe's answer, which the first call
        // waits for (it was started when the page loaded).
        let app = app.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let support = codecs::probed().await;
            send_video(&app, &track, support.send, support.temporal);
        });
    }
    if let Some(track) = first(stream.get_audio_tracks()) {
        let rc = app.clone();
        let sink = move |data: Vec<u8>, level: AudioLevel| {
            let mut app = rc.borrow_mut();
            let seq = app.audio_sequence;
            app.audio_sequence = seq.wrapping_add(1);
            let now_us = (js_sys::Date::now() * 1000.0) as u64;
            send_audio(&mut app, seq, &data, now_us, level);
        };
        // Levels beside the sound, for the server's speaker detection
        // (§6.6.4), where the server forwards selectively.
        let levels = app.borrow().session.sfu();
        let info = v1::TrackInfo {
            track_id: AUDIO_TRACK,
            kind: v1::TrackKind::Audio as i32,
            codec: audio::CODEC.into(),
            sample_rate: 48_000,
            channels: 1,
            audio_levels: levels,
            // Off from the start when the join screen said so.
            muted: ui::read(|v| v.mic_off),
            ..Default::default()
        };
        if publish(app, info) && app.borrow().mic.is_none() {
            match audio::start_mic(&track, sink) {
                Ok(m) => app.borrow_mut().mic = Some(m),
                Err(e) => web_sys::console::warn_2(&"cannot send the microphone".into(), &e),
            }
        }
    }
}

/// Publishes the camera in `codec` (after a reconnect, in the codec its
/// encoder runs already) and starts its encoder: as three simulcast
/// encodings when the server forwards selectively (`sfu.1`) and the link
/// does not say `simulcast=0`, else as one.
fn send_video(
    app: &Rc<RefCell<App>>,
    track: &web_sys::MediaStreamTrack,
    codec: Option<&'static str>,
    temporal: bool,
) {
    let running = app
        .borrow()
        .camera
        .as_ref()
        .map(|c| (c.codec, c.rungs.clone(), c.temporal_layers));
    let Some(codec) = running.as_ref().map(|r| r.0).or(codec) else {
        ui::notice("Not sending your camera: this browser can encode no video codec Convene uses");
        return;
    };
    let rungs = match &running {
        Some((_, rungs, _)) => rungs.clone(),
        None => {
            let settings = track.get_settings();
            let size = |v: Option<i32>| v.filter(|v| *v > 0).unwrap_or(0) as u32;
            let (w, h) = (size(settings.get_width()), size(settings.get_height()));
            let wanted = app.borrow().session.sfu() && simulcast_in_link() && w > 0 && h > 0;
            let rungs = simulcast::ladder(w & !1, h & !1, CAMERA_START_BPS / 1000, wanted);
            if rungs.len() > 1 { rungs } else { Vec::new() }
        }
    };
    let rc = app.clone();
    let layered = rungs.len() > 1;
    // Two temporal layers where the browser's encoder makes them: a
    // subscriber's frame-rate cap is then the server's to apply (§6.6.3).
    let temporal_layers = match &running {
        Some((_, _, layers)) => *layers,
        None if layered && temporal => 2,
        None => 1,
    };
    let sink = move |e: camera::Encoded| {
        let mut app = rc.borrow_mut();
        // A session without sfu.1 (a reconnect to an older server) gets the
        // top encoding alone, as a plain track.
        let encoding = match e.encoding {
            Some(i) if !app.session.sfu() => {
                if usize::from(i) + 1 != app.camera.as_ref().map_or(1, |c| c.rungs.len()) {
                    return;
                }
                None
            }
            other => other,
        };
        send_frame(&mut app, VIDEO_TRACK, &e, encoding);
    };
    let announced = if layered && app.borrow().session.sfu() {
        simulcast::encodings(&rungs, 30, temporal_layers)
    } else {
        Vec::new()
    };
    let top = rungs.last();
    let info = v1::TrackInfo {
        track_id: VIDEO_TRACK,
        kind: v1::TrackKind::Video as i32,
        codec: codec.into(),
        width: top.map_or(0, |r| r.width),
        height: top.map_or(0, |r| r.height),
        frame_rate: 30,
        target_bitrate_kbps: CAMERA_START_BPS / 1000,
        encodings: announced,
        muted: ui::read(|v| v.camera_off),
        ..Default::default()
    };
    if let Some(root) = by_id("app") {
        let sizes: Vec<String> = rungs
            .iter()
            .map(|r| format!("{}x{}", r.width, r.height))
            .collect();
        let _ = root.set_attribute("data-simulcast", &sizes.join(" "));
    }
    // After a reconnect the encoder runs already: publishing again is enough.
    if publish(app, info) && running.is_none() {
        match camera::start(track, codec, rungs, temporal_layers, sink) {
            Ok(c) => app.borrow_mut().camera = Some(c),
            Err(e) => web_sys::console::warn_2(&"cannot send the camera".into(), &e),
        }
    }
}

/// False when the page's link turns simulcast off (`simulcast=0`).
fn simulcast_in_link() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    let search = window.location().search().unwrap_or_default();
    let agent = window.navigator().user_agent().unwrap_or_default();
    crate::links::simulcast_in_link(&search) && !crate::links::one_encoder_only(&agent)
}

/// Announces a track; false when the server will not have it.
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
pub(crate) fn toggle_screen(a: &Rc<RefCell<App>>) {
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
        let Some(codec) = codecs::probed().await.send else {
            track.stop();
            ui::notice(
                "Not sharing the screen: this browser can encode no video codec Convene uses",
            );
            return;
        };
        let info = v1::TrackInfo {
            track_id: SCREEN_TRACK,
            kind: v1::TrackKind::Screen as i32,
            codec: codec.into(),
            frame_rate: 30,
            ..Default::default()
        };
        if !publish(&a, info) {
            track.stop();
            return;
        }
        let rc = a.clone();
        let sink = move |e: camera::Encoded| {
            send_frame(&mut rc.borrow_mut(), SCREEN_TRACK, &e, None);
        };
        match camera::start(&track, codec, Vec::new(), 1, sink) {
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

/// Sends one encoded picture of our own camera or screen, as LAYERED when
/// it is one of several encodings.
fn send_frame(app: &mut App, track_id: u32, e: &camera::Encoded, encoding: Option<u8>) {
    let header = convene_protocol::MediaHeader {
        key: e.key,
        sender: 0,
        track_id,
        sequence: e.sequence,
        capture_timestamp_us: e.captured_us,
    };
    let mut frame = match app.keyring.as_mut() {
        Some(ring) => ring.seal_media(&header, None, &e.data),
        None => convene_protocol::MediaFrame::build(&header, None, &e.data),
    };
    if let Some(encoding) = encoding {
        // In L1T2 a picture of layer 1 refers to layer 0 only: each is a
        // place to start forwarding layer 1 from.
        frame = frame.with_layer(convene_protocol::Layer {
            encoding,
            temporal: e.temporal.unwrap_or(0),
            switch_point: e.temporal.is_some(),
            ..Default::default()
        });
    }
    let _ = app.session.send_media(now(), frame);
    pump(app);
}

/// Sends one encoded frame of our microphone, with its level where the
/// session forwards selectively (the track then announced levels).
fn send_audio(app: &mut App, sequence: u32, data: &[u8], captured_us: u64, level: AudioLevel) {
    let header = convene_protocol::MediaHeader {
        key: true,
        sender: 0,
        track_id: AUDIO_TRACK,
        sequence,
        capture_timestamp_us: captured_us,
    };
    let mut frame = match app.keyring.as_mut() {
        Some(ring) => ring.seal_media(&header, None, data),
        None => convene_protocol::MediaFrame::build(&header, None, data),
    };
    if app.session.sfu() {
        frame = frame.with_layer(convene_protocol::Layer {
            level: Some(level),
            ..Default::default()
        });
    }
    let _ = app.session.send_media(now(), frame);
    pump(app);
}

/// Turns the microphone (or the camera) off or on, tells the room, and
/// relabels its button.
pub(crate) fn toggle(app: &mut App, mic: bool) -> Option<C> {
    // The screen's state is the choice: it holds before the track exists
    // (publishing uses it) and while the server has not taken it yet
    // (`on_accepted` applies it).
    let off = !ui::read(|v| if mic { v.mic_off } else { v.camera_off });
    ui::update(|v| {
        if mic {
            v.mic_off = off;
        } else {
            v.camera_off = off;
        }
    });
    let (on, track) = if mic {
        (app.mic.as_ref().map(|m| m.on.clone()), AUDIO_TRACK)
    } else {
        (app.camera.as_ref().map(|c| c.on.clone()), VIDEO_TRACK)
    };
    let on = on?;
    if app.pending_publish.values().any(|t| *t == track) {
        return None;
    }
    if !mic
        && !off
        && let Some(c) = &app.camera
    {
        // Start again from a picture the others can decode.
        c.want_key(0);
    }
    on.set(!off);
    Some(C::SetTrackMuted(v1::SetTrackMuted {
        track_id: track,
        muted: off,
    }))
}

/// The server has our track: starts sending it.
pub(crate) fn on_accepted(app: &mut App, track_id: u32) {
    app.pending_publish.retain(|_, id| *id != track_id);
    // Sending starts unless it was turned off (on the join screen, before
    // a reconnect, or while the server took the track): the server is told
    // in case the track went out unmuted.
    let off = |mic: bool| ui::read(|v| if mic { v.mic_off } else { v.camera_off });
    if track_id == VIDEO_TRACK
        && let Some(c) = &app.camera
    {
        c.want_key(0);
        c.on.set(!off(false));
    }
    if track_id == AUDIO_TRACK
        && let Some(m) = &app.mic
    {
        m.on.set(!off(true));
    }
    if (track_id == VIDEO_TRACK || track_id == AUDIO_TRACK) && off(track_id == AUDIO_TRACK) {
        let _ = app.session.send(
            now(),
            C::SetTrackMuted(v1::SetTrackMuted {
                track_id,
                muted: true,
            }),
        );
    }
    if track_id == SCREEN_TRACK
        && let Some((c, _)) = &app.screen
    {
        c.want_key(0);
        c.on.set(true);
    }
}

/// A track the server will not take (the token's grants): says so and
/// leaves its button off.
pub(crate) fn on_refused(app: &mut App, e: v1::Error) {
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

/// Someone needs a key frame of our camera or screen to start decoding.
pub(crate) fn on_key_frame_request(app: &mut App, k: v1::KeyFrameRequest) {
    if k.track_id == VIDEO_TRACK
        && let Some(c) = &app.camera
    {
        c.want_key(k.encoding_mask as u8);
    }
    if k.track_id == SCREEN_TRACK
        && let Some((c, _)) = &app.screen
    {
        c.want_key(0);
    }
}

/// Which of our camera's encodings anyone receives (§6.6.5): the others
/// stop, and one that comes back starts with a key frame. Shown in
/// `#app[data-encodings-active]` (a bit mask).
pub(crate) fn on_encoding_demand(app: &mut App, d: v1::EncodingDemand) {
    if d.track_id != VIDEO_TRACK {
        return;
    }
    if let Some(c) = &app.camera {
        c.active.set(d.active_mask as u8);
    }
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-encodings-active", &d.active_mask.to_string());
    }
}

/// Moves the encoder toward the server's suggestion (§6.5), within what
/// the camera started at.
pub(crate) fn on_congestion_hint(app: &mut App, h: v1::CongestionHint) {
    let bps = h.target_bitrate_kbps.saturating_mul(1000);
    if h.track_id == VIDEO_TRACK {
        app.rate.on_hint(bps);
        path::apply_rate(app);
    }
    if h.track_id == SCREEN_TRACK
        && let Some((c, _)) = &app.screen
    {
        c.bitrate.set(bps.clamp(CAMERA_FLOOR_BPS, CAMERA_START_BPS));
    }
}
