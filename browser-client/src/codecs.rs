//! Which video codec the camera and the screen are sent in, and which
//! remote codecs this page can show: asked of the browser once per page
//! (`VideoDecoder.isConfigSupported`, then `VideoEncoder.isConfigSupported`)
//! and kept. wasm32 only.
//!
//! The decoder is asked first, and before any encoder exists: in WebKitGTK
//! a `VideoEncoder` that is the page's first user of GStreamer can abort the
//! web process, and a decoder probe first avoids it.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// H.264 constrained baseline, level 3.1: what every Convene client
/// decodes (`convene receive` decodes nothing else), so sent whenever the
/// browser can encode it.
pub(crate) const H264: &str = "avc1.42E01F";

/// What the camera is sent in, best first. H.264 is the one every client
/// decodes; VP8 and VP9 only stand in for a browser that cannot encode it
/// (browsers decode them, `convene receive` does not).
///
/// AV1 is deliberately absent. WebKitGTK's `VideoEncoder.isConfigSupported`
/// says yes to it, and encoding then aborts the whole web process (its
/// GStreamer AV1 encoder): a probe answers "supported" for what crashes, so
/// no probe result can make AV1 safe to send. Nor would sending it gain
/// anything here: H.264 is probed first and every browser tested has it.
const SEND: &[&str] = &[H264, "vp8", "vp09.00.10.08"];

/// Remote codecs the page is asked about (decoding AV1 does not crash).
const SHOWN: &[&str] = &[H264, "vp8", "vp09.00.10.08", "av01.0.04M.08"];

/// What the browser answered.
pub(crate) struct Support {
    /// The codec our camera and screen are sent in; `None` when the browser
    /// can encode none of [`SEND`].
    pub(crate) send: Option<&'static str>,
    /// The remote codecs it can decode.
    pub(crate) shown: Vec<&'static str>,
    /// The encoder of `send` makes two temporal layers (`scalabilityMode`
    /// L1T2), so the server can halve a frame rate by itself (§6.6.1).
    pub(crate) temporal: bool,
}

impl Support {
    /// Whether a remote track in `codec` can be shown; an unprobed codec
    /// is tried.
    pub(crate) fn can_show(&self, codec: &str) -> bool {
        !SHOWN.iter().any(|c| c.eq_ignore_ascii_case(codec))
            || self.shown.iter().any(|c| c.eq_ignore_ascii_case(codec))
    }
}

thread_local! {
    /// The probe, started once; awaited by everyone who needs its answer.
    static PROBE: RefCell<Option<js_sys::Promise>> = const { RefCell::new(None) };
    /// Its answer, once it has one.
    static ANSWER: RefCell<Option<Rc<Support>>> = const { RefCell::new(None) };
}

/// Starts asking the browser, once per page (later calls do nothing).
pub(crate) fn start_probe() {
    PROBE.with(|p| {
        if p.borrow().is_none() {
            *p.borrow_mut() = Some(wasm_bindgen_futures::future_to_promise(async {
                let support = probe().await;
                show(&support);
                ANSWER.with(|a| *a.borrow_mut() = Some(Rc::new(support)));
                Ok(JsValue::UNDEFINED)
            }));
        }
    });
}

/// The browser's answer, once it has given it.
pub(crate) fn known() -> Option<Rc<Support>> {
    ANSWER.with(|a| a.borrow().clone())
}

/// The browser's answer, waiting for it (and starting the probe if needed).
pub(crate) async fn probed() -> Rc<Support> {
    start_probe();
    if let Some(p) = PROBE.with(|p| p.borrow().clone()) {
        let _ = JsFuture::from(p).await;
    }
    known().unwrap_or_else(|| {
        Rc::new(Support {
            send: None,
            shown: Vec::new(),
            temporal: false,
        })
    })
}

/// Asks the decoders, then the encoders, one question at a time.
async fn probe() -> Support {
    let global = js_sys::global();
    let has = |name: &str| js_sys::Reflect::has(&global, &name.into()).unwrap_or(false);
    let mut shown = Vec::new();
    if has("VideoDecoder") {
        for codec in SHOWN {
            let config = web_sys::VideoDecoderConfig::new(codec);
            if supported(&global, "VideoDecoder", &config).await {
                shown.push(*codec);
            }
        }
    }
    let mut send = None;
    let mut temporal = false;
    if has("VideoEncoder") {
        for codec in SEND {
            let config = encoder_config(codec, 640, 480, 800_000, 1);
            if supported(&global, "VideoEncoder", &config).await {
                send = Some(*codec);
                let layered = encoder_config(codec, 640, 480, 800_000, 2);
                temporal = supported(&global, "VideoEncoder", &layered).await;
                break;
            }
        }
    }
    Support {
        send,
        shown,
        temporal,
    }
}

/// An encoder configuration for `codec` at `width`×`height`, `bps` bit/s,
/// 30 pictures a second and `temporal_layers` temporal layers (more than
/// one: `scalabilityMode` L1T*n*); H.264 asks for Annex B (which WebKit
/// ignores: see `crate::h264`).
pub(crate) fn encoder_config(
    codec: &str,
    width: u32,
    height: u32,
    bps: u32,
    temporal_layers: u32,
) -> web_sys::VideoEncoderConfig {
    let config = web_sys::VideoEncoderConfig::new(codec, height, width);
    config.set_bitrate(bps);
    config.set_framerate(30.0);
    if temporal_layers > 1 {
        let mode = format!("L1T{temporal_layers}");
        let _ = js_sys::Reflect::set(&config, &"scalabilityMode".into(), &mode.into());
    }
    if codec.starts_with("avc1") {
        let avc = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&avc, &"format".into(), &"annexb".into());
        let _ = js_sys::Reflect::set(&config, &"avc".into(), &avc);
    }
    config
}

/// Whether `class.isConfigSupported(config)` says `supported` (a
/// rejection, or a call that threw, is a no).
async fn supported(global: &JsValue, class: &str, config: &JsValue) -> bool {
    let call = || -> Option<js_sys::Promise> {
        let class = js_sys::Reflect::get(global, &class.into()).ok()?;
        let method = js_sys::Reflect::get(&class, &"isConfigSupported".into()).ok()?;
        let method: js_sys::Function = method.dyn_into().ok()?;
        method.call1(&class, config).ok()?.dyn_into().ok()
    };
    let Some(promise) = call() else {
        return false;
    };
    JsFuture::from(promise)
        .await
        .ok()
        .and_then(|r| js_sys::Reflect::get(&r, &"supported".into()).ok())
        .is_some_and(|s| s.is_truthy())
}

/// Puts the answer on `#app` (`data-video-codec`, `data-video-decoders`,
/// `data-temporal-layers`), for the curious and the tests.
fn show(s: &Support) {
    if let Some(app) = crate::dom::by_id("app") {
        let _ = app.set_attribute("data-temporal-layers", if s.temporal { "2" } else { "1" });
        let _ = app.set_attribute("data-video-codec", s.send.unwrap_or("none"));
        let _ = app.set_attribute("data-video-decoders", &s.shown.join(" "));
    }
}
