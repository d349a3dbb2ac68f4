//! Sending the camera: frames from a MediaStreamTrackProcessor (or a
//! `<video>`, see `capture`), encoded by a WebCodecs VideoEncoder in the
//! codec `codecs` chose, handed to a callback as encoded pictures. H.264
//! leaves here as Annex B with in-band SPS/PPS, what every Convene client
//! decodes, whatever form the encoder emitted (`h264`). wasm32 only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::h264;

/// A key frame at least this often, in pictures.
const KEY_EVERY: u32 = 60;

/// One encoded picture.
pub(crate) struct Encoded {
    /// A key frame.
    pub(crate) key: bool,
    /// The picture (for H.264, Annex B bytes).
    pub(crate) data: Vec<u8>,
    /// When the picture was taken from the camera, µs since the Unix epoch.
    pub(crate) captured_us: u64,
}

/// A running camera encoder; dropping it does not stop it (the page keeps
/// sending until it leaves).
pub(crate) struct Camera {
    /// Set to make the next picture a key frame.
    pub(crate) key_wanted: Rc<Cell<bool>>,
    /// Cleared while the camera is off (and until the server has accepted
    /// the track): pictures are read and dropped, and what the encoder still
    /// returns is not sent.
    pub(crate) on: Rc<Cell<bool>>,
    /// The bitrate to encode at, bit/s; a change reconfigures the encoder
    /// (congestion hints set it).
    pub(crate) bitrate: Rc<Cell<u32>>,
    /// The codec it encodes in (what the track is published as).
    pub(crate) codec: &'static str,
}

/// Starts encoding `track` in `codec` and calls `sink` with every encoded
/// picture.
pub(crate) fn start(
    track: &web_sys::MediaStreamTrack,
    codec: &'static str,
    sink: impl FnMut(Encoded) + 'static,
) -> Result<Camera, JsValue> {
    let sink = Rc::new(RefCell::new(sink));
    // Wall-clock capture time by the picture's own timestamp, so the encoded
    // picture can carry when it was taken (for glass-to-glass latency).
    let captured: Rc<RefCell<std::collections::VecDeque<(i64, u64)>>> = Rc::default();
    let cap = captured.clone();
    // Off until the server confirms the track (TrackPublished).
    let on = Rc::new(Cell::new(false));
    let o = on.clone();
    // The form of the encoder's H.264, from its decoderConfig (and failing
    // that, its first chunk).
    let mut form = codec.starts_with("avc1").then(h264::Form::default);
    let output = Closure::<dyn FnMut(web_sys::EncodedVideoChunk, JsValue)>::new(
        move |chunk: web_sys::EncodedVideoChunk, metadata: JsValue| {
            if let Some(form) = form.as_mut()
                && let Some(config) = decoder_config(&metadata)
            {
                match h264::Form::from_description(description(&config).as_deref()) {
                    Ok(f) => {
                        let name = if f == h264::Form::AnnexB {
                            "annexb"
                        } else {
                            "avcc"
                        };
                        if let Some(app) = crate::dom::by_id("app") {
                            let _ = app.set_attribute("data-encoder-form", name);
                        }
                        *form = f;
                    }
                    Err(e) => web_sys::console::warn_1(
                        &format!("the encoder's avcC record is unreadable: {}", e.0).into(),
                    ),
                }
            }
            let mut data = vec![0u8; chunk.byte_length() as usize];
            if o.get() && chunk.copy_to_with_u8_slice(&mut data).is_ok() {
                let key = chunk.type_() == web_sys::EncodedVideoChunkType::Key;
                if let Some(form) = form.as_mut() {
                    match form.to_annex_b(&data, key) {
                        Some(annex_b) => data = annex_b,
                        None => {
                            web_sys::console::warn_1(
                                &"an H.264 chunk in no known form, not sent".into(),
                            );
                            return;
                        }
                    }
                }
                let ts = chunk.timestamp() as i64;
                let mut c = cap.borrow_mut();
                while c.front().is_some_and(|(t, _)| *t < ts) {
                    c.pop_front();
                }
                let captured_us = match c.front() {
                    Some((t, wall)) if *t == ts => *wall,
                    _ => (js_sys::Date::now() * 1000.0) as u64,
                };
                (sink.borrow_mut())(Encoded {
                    key,
                    data,
                    captured_us,
                });
            }
        },
    );
    let error = Closure::<dyn FnMut(JsValue)>::new(|e: JsValue| {
        web_sys::console::warn_2(&"video encoder error".into(), &e);
    });
    let encoder = web_sys::VideoEncoder::new(&web_sys::VideoEncoderInit::new(
        error.as_ref().unchecked_ref(),
        output.as_ref().unchecked_ref(),
    ))?;
    output.forget();
    error.forget();

    let key_wanted = Rc::new(Cell::new(true));
    // The bitrate the encoder is configured with; 0 until configured.
    let configured_at = Rc::new(Cell::new(0u32));
    let bitrate = Rc::new(Cell::new(crate::publish::CAMERA_START_BPS));
    let br = bitrate.clone();
    let count = Rc::new(Cell::new(0u32));
    let (kw, o) = (key_wanted.clone(), on.clone());
    crate::capture::each_frame(track, move |frame: JsValue| {
        if let Ok(frame) = frame.dyn_into::<web_sys::VideoFrame>() {
            if configured_at.get() != br.get() {
                let config = crate::codecs::encoder_config(
                    codec,
                    frame.display_width(),
                    frame.display_height(),
                    br.get(),
                );
                if encoder.configure(&config).is_ok() {
                    // A reconfigured encoder starts again from a key frame.
                    if configured_at.get() != 0 {
                        kw.set(true);
                    }
                    configured_at.set(br.get());
                    // What the encoder now aims at, for the curious and the tests.
                    if let Some(app) = web_sys::window()
                        .and_then(|w| w.document())
                        .and_then(|d| d.get_element_by_id("app"))
                    {
                        let _ =
                            app.set_attribute("data-encoder-kbps", &(br.get() / 1000).to_string());
                    }
                }
            }
            // A slow encoder skips pictures instead of queueing them.
            if o.get() && configured_at.get() != 0 && encoder.encode_queue_size() < 3 {
                let key = kw.get() || count.get().is_multiple_of(KEY_EVERY);
                let options = web_sys::VideoEncoderEncodeOptions::new();
                options.set_key_frame(key);
                let mut c = captured.borrow_mut();
                c.push_back((
                    frame.timestamp() as i64,
                    (js_sys::Date::now() * 1000.0) as u64,
                ));
                if c.len() > 64 {
                    c.pop_front();
                }
                drop(c);
                if encoder.encode_with_options(&frame, &options).is_ok() {
                    count.set(count.get() + 1);
                    if key {
                        kw.set(false);
                    }
                }
            }
            frame.close();
        }
    })?;
    Ok(Camera {
        key_wanted,
        on,
        bitrate,
        codec,
    })
}

/// The `decoderConfig` of an output's metadata, when it has one (the first
/// output after a configure, and whenever the configuration changes).
fn decoder_config(metadata: &JsValue) -> Option<JsValue> {
    if !metadata.is_object() {
        return None;
    }
    js_sys::Reflect::get(metadata, &"decoderConfig".into())
        .ok()
        .filter(JsValue::is_object)
}

/// The bytes of a `decoderConfig`'s `description` (an `ArrayBuffer` or a
/// view of one), when it has one.
fn description(config: &JsValue) -> Option<Vec<u8>> {
    let d = js_sys::Reflect::get(config, &"description".into()).ok()?;
    if let Some(buffer) = d.dyn_ref::<js_sys::ArrayBuffer>() {
        return Some(js_sys::Uint8Array::new(buffer).to_vec());
    }
    let view = d.dyn_ref::<js_sys::Object>()?;
    let buffer = js_sys::Reflect::get(view, &"buffer".into())
        .ok()?
        .dyn_into::<js_sys::ArrayBuffer>()
        .ok()?;
    let at = |k: &str| js_sys::Reflect::get(view, &k.into()).ok()?.as_f64();
    let bytes = js_sys::Uint8Array::new_with_byte_offset_and_length(
        &buffer,
        at("byteOffset")? as u32,
        at("byteLength")? as u32,
    );
    Some(bytes.to_vec())
}
