//! The join screen's camera and microphone: opening them (the chosen
//! devices, or any) for the preview, listing the devices to choose from,
//! and keeping the stream for the meeting to send once joined.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::state::page;
use crate::{publish, ui};

/// The camera and microphone the join screen opened, once it has.
pub(crate) fn local_media() -> Option<web_sys::MediaStream> {
    page(|p| p.local_media.clone())
}

/// Asks for the camera and microphone (the chosen devices, or any) for the
/// preview and the meeting, and lists the devices to choose from; says in
/// the preview line when there are none or permission is refused.
pub(crate) fn preview(chosen: Option<(String, String)>) {
    wasm_bindgen_futures::spawn_local(async move {
        ui::update(|v| v.preview = "Opening the camera and microphone…".into());
        let (camera, mic) = chosen.clone().unwrap_or_default();
        // The previous devices are released when a new pick replaces them.
        if chosen.is_some()
            && let Some(old) = page(|p| p.local_media.take())
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
                page(|p| p.local_media = Some(stream.clone()));
                meter(&stream);
                ui::update(|v| {
                    v.media += 1;
                    v.preview = format!("Camera and microphone ready ({tracks} tracks)");
                });
                if let Some(app) = page(|p| p.waiting_for_media.take()) {
                    publish::send_camera(&app);
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
            let name = js_sys::Reflect::get(&e, &"name".into())
                .ok()
                .and_then(|n| n.as_string())
                .unwrap_or_default();
            refusal(&name).map_or_else(
                || {
                    format!(
                        "No camera or microphone: {}",
                        e.as_string().unwrap_or_else(|| format!("{e:?}"))
                    )
                },
                str::to_string,
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

/// What to tell someone whose camera and microphone the browser refused,
/// by the error's name, and what they can do.
fn refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "NotAllowedError" | "SecurityError" => {
            "The browser was not allowed to use the camera and microphone. Allow them for this site (the camera icon in the address bar), then reload; or join without them."
        }
        "NotFoundError" | "OverconstrainedError" => {
            "No camera or microphone was found. Connect one and reload, or join without them."
        }
        "NotReadableError" | "AbortError" => {
            "The camera or microphone is busy (another program may be using it). Close that program and reload, or join without them."
        }
        _ => return None,
    })
}

thread_local! {
    /// The join screen's microphone meter: its audio context and the
    /// interval that reads it, while the join screen shows.
    static METER: std::cell::RefCell<Option<(web_sys::AudioContext, i32)>> =
        const { std::cell::RefCell::new(None) };
}

/// How often the join screen's microphone meter is read, milliseconds.
const METER_EVERY_MS: i32 = 100;

/// Samples the meter looks at each reading (a power of two, as the
/// analyser wants): about a third of a second at 48 kHz.
const METER_SAMPLES: u32 = 16_384;

/// Shows the level of `stream`'s microphone in the join screen's
/// `#mic-level` while that screen is there (so people see they are heard
/// before they join); stops when the screen goes.
fn meter(stream: &web_sys::MediaStream) {
    stop_meter();
    if stream.get_audio_tracks().length() == 0 {
        return;
    }
    let Ok(ctx) = web_sys::AudioContext::new() else {
        return;
    };
    // Runs at once if the page was touched already (the devices can answer
    // after the first click); otherwise at the next touch (`wake_meter`).
    let _ = ctx.resume();
    let Ok(source) = ctx.create_media_stream_source(stream) else {
        return;
    };
    let Ok(analyser) = ctx.create_analyser() else {
        return;
    };
    // A third of a second of sound at each reading (three readings' worth),
    // so a short sound between two readings still shows.
    analyser.set_fft_size(METER_SAMPLES);
    if source.connect_with_audio_node(&analyser).is_err() {
        return;
    }
    let mut samples = vec![0f32; METER_SAMPLES as usize];
    let read = Closure::<dyn FnMut()>::new(move || {
        let Some(meter) = crate::dom::by_id("mic-level")
            .and_then(|m| m.dyn_into::<web_sys::HtmlMeterElement>().ok())
        else {
            // The join screen is gone: so is the meter.
            stop_meter();
            return;
        };
        analyser.get_float_time_domain_data(&mut samples);
        // The loudest 20 ms or so of it, as a level meter shows.
        let rms = samples
            .chunks(1024)
            .map(|c| (c.iter().map(|s| s * s).sum::<f32>() / c.len() as f32).sqrt())
            .fold(0f32, f32::max);
        // -60 dBFS to 0 dBFS across the meter.
        let db = 20.0 * f64::from(rms.max(1e-6)).log10();
        meter.set_value(((db + 60.0) / 60.0).clamp(0.0, 1.0));
    });
    let Some(w) = web_sys::window() else {
        return;
    };
    if let Ok(id) = w.set_interval_with_callback_and_timeout_and_arguments_0(
        read.as_ref().unchecked_ref(),
        METER_EVERY_MS,
    ) {
        // Lives until stop_meter clears the interval.
        read.forget();
        METER.with(|m| *m.borrow_mut() = Some((ctx, id)));
    }
}

/// Stops the join screen's microphone meter, if it runs.
pub(crate) fn stop_meter() {
    if let Some((ctx, id)) = METER.with(|m| m.borrow_mut().take()) {
        if let Some(w) = web_sys::window() {
            w.clear_interval_with_handle(id);
        }
        let _ = ctx.close();
    }
}

/// Lets the meter's audio context run once the person has touched the page
/// (browsers start audio only after a gesture).
pub(crate) fn wake_meter() {
    METER.with(|m| {
        if let Some((ctx, _)) = m.borrow().as_ref()
            && ctx.state() == web_sys::AudioContextState::Suspended
        {
            let _ = ctx.resume();
        }
    });
}

/// Opens the chosen camera and microphone in the meeting and sends them in
/// place of the ones in use, through the same encoders and tracks: the
/// others see and hear the new devices without anyone leaving or joining.
pub(crate) fn switch(camera: String, mic: String) {
    wasm_bindgen_futures::spawn_local(async move {
        let stream = match open_devices(&camera, &mic).await {
            Ok(s) => s,
            Err(e) => {
                ui::notice(format!("Could not switch devices: {e}"));
                return;
            }
        };
        // The old ones stop first: their capture ends, so only the new
        // devices feed the encoders.
        if let Some(old) = page(|p| p.local_media.replace(stream.clone())) {
            for t in old.get_tracks().iter() {
                if let Ok(t) = t.dyn_into::<web_sys::MediaStreamTrack>() {
                    t.stop();
                }
            }
        }
        let first =
            |tracks: js_sys::Array| tracks.get(0).dyn_into::<web_sys::MediaStreamTrack>().ok();
        if let Some(a) = crate::state::current() {
            let app = a.borrow();
            if let (Some(c), Some(t)) = (&app.camera, first(stream.get_video_tracks()))
                && let Err(e) = c.switch(&t)
            {
                web_sys::console::warn_2(&"cannot switch the camera".into(), &e);
            }
            if let (Some(m), Some(t)) = (&app.mic, first(stream.get_audio_tracks()))
                && let Err(e) = m.switch(&t)
            {
                web_sys::console::warn_2(&"cannot switch the microphone".into(), &e);
            }
        }
        if let Some(root) = crate::dom::by_id("app") {
            let n = root
                .get_attribute("data-device-switches")
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
            let _ = root.set_attribute("data-device-switches", &(n + 1).to_string());
        }
        let devices = list_devices(&stream).await;
        ui::update(|v| {
            v.media += 1;
            v.devices = devices;
        });
    });
}
