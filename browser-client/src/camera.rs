//! Sending the camera: frames from a MediaStreamTrackProcessor, H.264 from a
//! WebCodecs VideoEncoder (Annex B, what every Convene client decodes),
//! handed to a callback as encoded pictures. wasm32 only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// The codec string the browser client publishes (H.264 constrained baseline, level 3.1).
pub(crate) const CODEC: &str = "avc1.42E01F";

/// A key frame at least this often, in pictures.
const KEY_EVERY: u32 = 60;

/// One encoded picture.
pub(crate) struct Encoded {
    /// A key frame.
    pub(crate) key: bool,
    /// Annex B bytes.
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
}

/// Starts encoding `track` and calls `sink` with every encoded picture.
pub(crate) fn start(
    track: &web_sys::MediaStreamTrack,
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
    let output = Closure::<dyn FnMut(web_sys::EncodedVideoChunk)>::new(
        move |chunk: web_sys::EncodedVideoChunk| {
            let mut data = vec![0u8; chunk.byte_length() as usize];
            if o.get() && chunk.copy_to_with_u8_slice(&mut data).is_ok() {
                let key = chunk.type_() == web_sys::EncodedVideoChunkType::Key;
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
                let config = web_sys::VideoEncoderConfig::new(
                    CODEC,
                    frame.display_height(),
                    frame.display_width(),
                );
                config.set_bitrate(br.get());
                config.set_framerate(30.0);
                let avc = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&avc, &"format".into(), &"annexb".into());
                let _ = js_sys::Reflect::set(&config, &"avc".into(), &avc);
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
    })
}
