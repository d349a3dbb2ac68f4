//! Sending the camera: frames from a MediaStreamTrackProcessor (or a
//! `<video>`, see `capture`), encoded by WebCodecs VideoEncoders in the
//! codec `codecs` chose (one per simulcast encoding, each picture scaled
//! down on a canvas for the smaller ones, and only the encodings the server
//! says anyone receives), handed to a callback as encoded pictures. H.264
//! leaves here as Annex B with in-band SPS/PPS, what every Convene client
//! decodes, whatever form the encoder emitted (`h264`). wasm32 only.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use convene_protocol::simulcast::Rung;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::h264;

/// A key frame at least this often, in pictures.
const KEY_EVERY: u32 = 60;
/// Every encoding of a picture, as a bit mask.
const ALL: u8 = 0b111;
/// Pictures remembered for their sequence number and capture time until
/// their encoded form comes out (encoders run a few pictures behind).
const REMEMBERED: usize = 64;

/// One encoded picture.
pub(crate) struct Encoded {
    /// A key frame.
    pub(crate) key: bool,
    /// The picture (for H.264, Annex B bytes).
    pub(crate) data: Vec<u8>,
    /// When the picture was taken from the camera, µs since the Unix epoch.
    pub(crate) captured_us: u64,
    /// The picture's number, shared by its simulcast encodings (§6.6.1).
    pub(crate) sequence: u32,
    /// The simulcast encoding (0 the smallest); `None` for a plain track.
    pub(crate) encoding: Option<u8>,
    /// The temporal layer, when the encoder makes several (L1T2: every
    /// picture of layer 1 refers to layer 0 only).
    pub(crate) temporal: Option<u8>,
}

/// A running camera encoder; dropping it does not stop it (the page keeps
/// sending until it leaves).
pub(crate) struct Camera {
    /// Encodings whose next picture should be a key frame (bit per encoding).
    key_wanted: Rc<Cell<u8>>,
    /// Cleared while the camera is off (and until the server has accepted
    /// the track): pictures are read and dropped, and what the encoder still
    /// returns is not sent.
    pub(crate) on: Rc<Cell<bool>>,
    /// The bitrate to encode the top encoding at, bit/s (the others in the
    /// ladder's proportions); a change reconfigures the encoders (the path
    /// and congestion hints set it).
    pub(crate) bitrate: Rc<Cell<u32>>,
    /// Encodings anyone receives (the server's EncodingDemand, §6.6.5):
    /// the others are not encoded.
    pub(crate) active: Rc<Cell<u8>>,
    /// The codec it encodes in (what the track is published as).
    pub(crate) codec: &'static str,
    /// The simulcast encodings, smallest first; empty for one encoding at
    /// the picture's own size.
    pub(crate) rungs: Vec<Rung>,
    /// Temporal layers each encoding is made of (1: none).
    pub(crate) temporal_layers: u32,
    /// Takes pictures to the encoders, from whichever camera is in use.
    feed: Feed,
}

impl Camera {
    /// Sends another camera's `track` through the same encoders, from a
    /// key frame (the old track must be stopped first, or both would feed
    /// them): the others see the new camera in the same tile.
    pub(crate) fn switch(&self, track: &web_sys::MediaStreamTrack) -> Result<(), JsValue> {
        self.want_key(0);
        attach(track, &self.feed)
    }

    /// Makes the next picture of the encodings in `mask` a key frame (0:
    /// all of them, as a KeyFrameRequest without a mask means).
    pub(crate) fn want_key(&self, mask: u8) {
        let mask = if mask == 0 { ALL } else { mask };
        self.key_wanted.set(self.key_wanted.get() | mask);
    }
}

/// One encoder of the camera: one simulcast encoding, or the only one.
struct Encoder {
    encoder: web_sys::VideoEncoder,
    /// Size and bitrate it is configured with; `None` before the first.
    configured: Option<(u32, u32, u32)>,
    /// Pictures encoded.
    count: u32,
    /// Out of the demand at the last picture: it starts again with a key frame.
    paused: bool,
    /// Where a picture is scaled to this encoding's size (when it differs).
    scaler: Option<(
        web_sys::HtmlCanvasElement,
        web_sys::CanvasRenderingContext2d,
    )>,
}

/// Starts encoding `track` in `codec`, as the simulcast encodings `rungs`
/// (smallest first; empty or one: a single encoding at the picture's own
/// size), and calls `sink` with every encoded picture.
pub(crate) fn start(
    track: &web_sys::MediaStreamTrack,
    codec: &'static str,
    rungs: Vec<Rung>,
    temporal_layers: u32,
    sink: impl FnMut(Encoded) + 'static,
) -> Result<Camera, JsValue> {
    let sink: Rc<RefCell<dyn FnMut(Encoded)>> = Rc::new(RefCell::new(sink));
    // Each picture's number and wall-clock capture time by its own
    // timestamp, so every encoding of it carries the same ones.
    let pictures: Rc<RefCell<VecDeque<(i64, u32, u64)>>> = Rc::default();
    // Off until the server confirms the track (TrackPublished).
    let on = Rc::new(Cell::new(false));
    let simulcast = rungs.len() > 1;
    let mut encoders = Vec::new();
    for i in 0..rungs.len().max(1) {
        let encoding = simulcast.then_some(i as u8);
        encoders.push(Encoder {
            encoder: encoder(
                codec,
                encoding,
                temporal_layers > 1,
                sink.clone(),
                pictures.clone(),
                on.clone(),
            )?,
            configured: None,
            count: 0,
            paused: false,
            scaler: None,
        });
    }

    let key_wanted = Rc::new(Cell::new(ALL));
    let bitrate = Rc::new(Cell::new(crate::publish::CAMERA_START_BPS));
    let active = Rc::new(Cell::new(ALL));
    let (kw, o, br, act) = (
        key_wanted.clone(),
        on.clone(),
        bitrate.clone(),
        active.clone(),
    );
    let ladder = rungs.clone();
    let mut sequence = 0u32;
    let feed: Feed = Rc::new(RefCell::new(move |frame: JsValue| {
        let Ok(frame) = frame.dyn_into::<web_sys::VideoFrame>() else {
            return;
        };
        let seq = sequence;
        sequence = sequence.wrapping_add(1);
        {
            let mut p = pictures.borrow_mut();
            p.push_back((
                frame.timestamp() as i64,
                seq,
                (js_sys::Date::now() * 1000.0) as u64,
            ));
            if p.len() > REMEMBERED {
                p.pop_front();
            }
        }
        let own = (frame.display_width(), frame.display_height());
        let demand = if simulcast { act.get() } else { ALL };
        let top_kbps = ladder.last().map_or(1, |r| r.kbps.max(1));
        for (i, enc) in encoders.iter_mut().enumerate() {
            let bit = 1u8 << i;
            if demand & bit == 0 {
                enc.paused = true;
                continue;
            }
            if std::mem::take(&mut enc.paused) {
                // Back in demand: starts with a key frame (§6.6.5).
                kw.set(kw.get() | bit);
            }
            let (w, h, bps) = match ladder.get(i) {
                Some(r) if simulcast => (
                    r.width,
                    r.height,
                    (u64::from(br.get()) * u64::from(r.kbps) / u64::from(top_kbps)) as u32,
                ),
                _ => (own.0, own.1, br.get()),
            };
            if enc.configured != Some((w, h, bps)) {
                let config = crate::codecs::encoder_config(codec, w, h, bps, temporal_layers);
                if enc.encoder.configure(&config).is_ok() {
                    // A reconfigured encoder starts again from a key frame.
                    if enc.configured.is_some() {
                        kw.set(kw.get() | bit);
                    }
                    enc.configured = Some((w, h, bps));
                    if i + 1 == ladder.len().max(1) {
                        // What the top encoder now aims at, for the curious and the tests.
                        if let Some(app) = crate::dom::by_id("app") {
                            let _ =
                                app.set_attribute("data-encoder-kbps", &(bps / 1000).to_string());
                        }
                    }
                }
            }
            // A slow encoder skips pictures instead of queueing them.
            if !o.get() || enc.configured.is_none() || enc.encoder.encode_queue_size() >= 3 {
                continue;
            }
            let key = kw.get() & bit != 0 || enc.count.is_multiple_of(KEY_EVERY);
            let options = web_sys::VideoEncoderEncodeOptions::new();
            options.set_key_frame(key);
            let encoded = if (w, h) == own {
                enc.encoder.encode_with_options(&frame, &options)
            } else {
                match scaled(&mut enc.scaler, &frame, w, h) {
                    Ok(small) => {
                        let r = enc.encoder.encode_with_options(&small, &options);
                        small.close();
                        r
                    }
                    Err(e) => Err(e),
                }
            };
            if encoded.is_ok() {
                enc.count += 1;
                if key {
                    kw.set(kw.get() & !bit);
                }
            }
        }
        frame.close();
    }));
    attach(track, &feed)?;
    Ok(Camera {
        key_wanted,
        on,
        bitrate,
        active,
        codec,
        rungs,
        temporal_layers,
        feed,
    })
}

/// What takes each picture of the camera (or sound of the microphone) to
/// its encoders, shared so another device's track can feed the same ones.
pub(crate) type Feed = Rc<RefCell<dyn FnMut(JsValue)>>;

/// Feeds `track`'s pictures (or sound) to `feed` until the track ends.
pub(crate) fn attach(track: &web_sys::MediaStreamTrack, feed: &Feed) -> Result<(), JsValue> {
    let feed = feed.clone();
    crate::capture::each_frame(track, move |frame: JsValue| (feed.borrow_mut())(frame))
}

/// `frame` drawn at `width`×`height` on the encoder's own canvas, as a
/// new picture with the same timestamp (the caller closes it).
fn scaled(
    scaler: &mut Option<(
        web_sys::HtmlCanvasElement,
        web_sys::CanvasRenderingContext2d,
    )>,
    frame: &web_sys::VideoFrame,
    width: u32,
    height: u32,
) -> Result<web_sys::VideoFrame, JsValue> {
    if scaler.is_none() {
        let canvas: web_sys::HtmlCanvasElement = web_sys::window()
            .and_then(|w| w.document())
            .ok_or("no document")?
            .create_element("canvas")?
            .dyn_into()?;
        let ctx: web_sys::CanvasRenderingContext2d = canvas
            .get_context("2d")?
            .ok_or("no 2d context")?
            .dyn_into()?;
        *scaler = Some((canvas, ctx));
    }
    let (canvas, ctx) = scaler.as_ref().ok_or("no canvas")?;
    if canvas.width() != width || canvas.height() != height {
        canvas.set_width(width);
        canvas.set_height(height);
    }
    ctx.draw_image_with_video_frame_and_dw_and_dh(
        frame,
        0.0,
        0.0,
        f64::from(width),
        f64::from(height),
    )?;
    let init = web_sys::VideoFrameInit::new();
    init.set_timestamp_f64(frame.timestamp());
    web_sys::VideoFrame::new_with_html_canvas_element_and_video_frame_init(canvas, &init)
}

/// A WebCodecs encoder whose pictures go to `sink` as encoding `encoding`,
/// each with the number and capture time `pictures` recorded for it.
fn encoder(
    codec: &'static str,
    encoding: Option<u8>,
    temporal: bool,
    sink: Rc<RefCell<dyn FnMut(Encoded)>>,
    pictures: Rc<RefCell<VecDeque<(i64, u32, u64)>>>,
    on: Rc<Cell<bool>>,
) -> Result<web_sys::VideoEncoder, JsValue> {
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
            if !on.get() || chunk.copy_to_with_u8_slice(&mut data).is_err() {
                return;
            }
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
            let found = pictures
                .borrow()
                .iter()
                .rev()
                .find(|(t, _, _)| *t == ts)
                .map(|(_, seq, wall)| (*seq, *wall));
            // A picture older than what is remembered is too late to send.
            let Some((sequence, captured_us)) = found else {
                return;
            };
            let temporal = temporal.then(|| temporal_layer(&metadata));
            (sink.borrow_mut())(Encoded {
                key,
                data,
                captured_us,
                sequence,
                encoding,
                temporal,
            });
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
    Ok(encoder)
}

/// The temporal layer an output belongs to (`metadata.svc.temporalLayerId`;
/// 0 when the encoder does not say).
fn temporal_layer(metadata: &JsValue) -> u8 {
    js_sys::Reflect::get(metadata, &"svc".into())
        .ok()
        .filter(JsValue::is_object)
        .and_then(|svc| js_sys::Reflect::get(&svc, &"temporalLayerId".into()).ok())
        .and_then(|t| t.as_f64())
        .map_or(0, |t| t.clamp(0.0, 3.0) as u8)
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
