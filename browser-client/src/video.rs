//! Remote video: one tile per video track, decoded with WebCodecs and drawn
//! on a canvas. (WebCodecs is behind `web_sys_unstable_apis` in web-sys, so
//! this module exists only in the wasm32 build.)

use std::cell::Cell;
use std::rc::Rc;

use convene_protocol::MediaFrame;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// A remote video track on screen.
pub(crate) struct Tile {
    decoder: web_sys::VideoDecoder,
    /// The decoder's error and output callbacks, for a new decoder.
    callbacks: (js_sys::Function, js_sys::Function),
    /// The codec, when this browser decodes it.
    codec: Option<String>,
    element: web_sys::Element,
    /// Nothing decodes until a key frame arrives.
    has_key: bool,
    /// When a key frame was last asked for, in ms on the page clock.
    pub(crate) last_key_request_ms: f64,
    /// The track has several encodings: the server sends the one the
    /// tile's size asks for (PROTOCOL.md §6.6.3).
    pub(crate) selective: bool,
    /// The encoding the last frame came in, shown in `data-encoding`.
    encoding: Option<u8>,
    /// What was last asked of the server for this tile, and when (ms).
    pub(crate) asked: Option<(crate::quality::Wanted, f64)>,
    /// The picture's size as published (its top encoding), to ask for no
    /// more than it fills of the tile.
    pub(crate) picture: Option<(u32, u32)>,
    /// The pin button's click handler, alive as long as the tile.
    _pin: Closure<dyn FnMut()>,
    /// The menu button's click handler, alive as long as the tile.
    _menu: Closure<dyn FnMut()>,
}

impl Tile {
    /// A tile for `participant`'s track `track`, decoding `codec`; the
    /// meeting screen places its element in the grid.
    pub(crate) fn new(
        participant: u32,
        track: u32,
        name: &str,
        codec: &str,
        selective: bool,
    ) -> Result<Tile, JsValue> {
        let document = web_sys::window()
            .and_then(|w| w.document())
            .ok_or("no document")?;
        let figure = document.create_element("figure")?;
        figure.set_class_name("tile");
        figure.set_attribute("data-pid", &participant.to_string())?;
        figure.set_attribute("data-track", &track.to_string())?;
        figure.set_attribute("data-frames", "0")?;
        let canvas = document
            .create_element("canvas")?
            .dyn_into::<web_sys::HtmlCanvasElement>()?;
        figure.append_child(&canvas)?;
        let caption = document.create_element("figcaption")?;
        caption.set_text_content(Some(name));
        figure.append_child(&caption)?;
        // Pinning makes the tile the large one of the speaker view.
        let pin_button = document.create_element("button")?;
        pin_button.set_class_name("pin");
        pin_button.set_attribute("type", "button")?;
        pin_button.set_attribute("aria-label", &format!("Pin {name}"))?;
        pin_button.set_attribute("aria-pressed", "false")?;
        pin_button.set_text_content(Some("Pin"));
        let pin = Closure::<dyn FnMut()>::new(move || {
            crate::act(crate::ui::Action::Pin(participant, track));
        });
        pin_button.add_event_listener_with_callback("click", pin.as_ref().unchecked_ref())?;
        figure.append_child(&pin_button)?;
        // The tile's menu: pin, mute for me, a moderator's actions.
        let menu_button = document.create_element("button")?;
        menu_button.set_class_name("tile-menu");
        menu_button.set_attribute("type", "button")?;
        menu_button.set_attribute("aria-label", &format!("More for {name}"))?;
        menu_button.set_attribute("aria-haspopup", "menu")?;
        menu_button.set_text_content(Some("⋯"));
        let menu = Closure::<dyn FnMut()>::new(move || {
            crate::act(crate::ui::Action::TileMenu(participant, track));
        });
        menu_button.add_event_listener_with_callback("click", menu.as_ref().unchecked_ref())?;
        figure.append_child(&menu_button)?;

        // Pictures drawn, shown in `data-frames` (tests read it),
        // capture-to-screen latency in `data-latency-p50`/`-p95` (ms), the
        // frame rate in `data-fps` and a connection quality in `data-quality`.
        let drawn = Rc::new(Cell::new(0u32));
        let mut latencies: Vec<f64> = Vec::new();
        // Draw times of the last two seconds, for the frame rate.
        let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
        let (c, d, f) = (canvas.clone(), drawn.clone(), figure.clone());
        let who = name.to_string();
        let output =
            Closure::<dyn FnMut(web_sys::VideoFrame)>::new(move |frame: web_sys::VideoFrame| {
                let (w, h) = (frame.display_width(), frame.display_height());
                if c.width() != w || c.height() != h {
                    c.set_width(w);
                    c.set_height(h);
                }
                if let Ok(Some(ctx)) = c.get_context("2d")
                    && let Ok(ctx) = ctx.dyn_into::<web_sys::CanvasRenderingContext2d>()
                {
                    let _ = ctx.draw_image_with_video_frame(&frame, 0.0, 0.0);
                    d.set(d.get() + 1);
                    let _ = f.set_attribute("data-frames", &d.get().to_string());
                    let now = js_sys::Date::now();
                    if d.get() == 1 {
                        first_picture(now);
                    }
                    recent.push_back(now);
                    while recent.front().is_some_and(|t| now - t > 2000.0) {
                        recent.pop_front();
                    }
                    // The chunk carried the sender's capture time in µs, on
                    // 31 bits: compare on the same 31 bits.
                    let wrap = f64::from(1u32 << 31);
                    let lat_us = ((now * 1000.0) % wrap - frame.timestamp()).rem_euclid(wrap);
                    latencies.push(lat_us / 1000.0);
                    if latencies.len() > 300 {
                        latencies.remove(0);
                    }
                    if d.get().is_multiple_of(15) {
                        let mut sorted = latencies.clone();
                        sorted.sort_by(f64::total_cmp);
                        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
                        let _ = f.set_attribute("data-latency-p50", &crate::dom::fixed1(at(0.5)));
                        let _ = f.set_attribute("data-latency-p95", &crate::dom::fixed1(at(0.95)));
                        // Pictures a second over the last two seconds, and
                        // what the viewer would call the connection.
                        let fps = recent.len() as f64 / 2.0;
                        let _ = f.set_attribute("data-fps", &crate::dom::fixed1(fps));
                        let quality = if fps >= 15.0 && at(0.95) < 250.0 {
                            "good"
                        } else if fps >= 5.0 {
                            "fair"
                        } else {
                            "poor"
                        };
                        // The dot's colour says it to the eye; words to everyone.
                        if f.get_attribute("data-quality").as_deref() != Some(quality) {
                            let _ = f.set_attribute("data-quality", quality);
                            let _ =
                                f.set_attribute("title", &format!("{who}: {quality} connection"));
                            // The participant list says it too; rare enough
                            // (a change) to redraw for.
                            crate::ui::update(|v| {
                                v.quality.insert(participant, quality);
                            });
                        }
                    }
                }
                frame.close();
            });
        let error = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            web_sys::console::warn_2(&"video decoder error".into(), &e);
        });
        let callbacks: (js_sys::Function, js_sys::Function) = (
            error.as_ref().unchecked_ref::<js_sys::Function>().clone(),
            output.as_ref().unchecked_ref::<js_sys::Function>().clone(),
        );
        let decoder = web_sys::VideoDecoder::new(&web_sys::VideoDecoderInit::new(
            &callbacks.0,
            &callbacks.1,
        ))?;
        output.forget();
        error.forget();
        // A codec the browser said it cannot decode is not configured (that
        // would only close the decoder); the tile says so instead.
        let decodable = crate::codecs::known().is_none_or(|s| s.can_show(codec));
        if decodable {
            decoder.configure(&web_sys::VideoDecoderConfig::new(codec))?;
        } else {
            caption.set_text_content(Some(&format!("{name} ({codec}: not decodable here)")));
            figure.set_attribute("data-undecodable", codec)?;
        }
        Ok(Tile {
            decoder,
            callbacks,
            codec: decodable.then(|| codec.to_string()),
            element: figure,
            has_key: false,
            last_key_request_ms: f64::NEG_INFINITY,
            selective,
            encoding: None,
            asked: None,
            picture: None,
            _pin: pin,
            _menu: menu,
        })
    }

    /// The tile's `<figure>`.
    pub(crate) fn element(&self) -> &web_sys::Element {
        &self.element
    }

    /// Notes the simulcast encoding frames now come in (`data-encoding`).
    pub(crate) fn note_encoding(&mut self, encoding: u8) {
        if self.encoding != Some(encoding) {
            self.encoding = Some(encoding);
            let _ = self
                .element
                .set_attribute("data-encoding", &encoding.to_string());
        }
    }

    /// The tile's size on screen, CSS pixels.
    pub(crate) fn shown_size(&self) -> (f64, f64) {
        (
            f64::from(self.element.client_width()),
            f64::from(self.element.client_height()),
        )
    }

    /// Decodes one frame; says whether a key frame is needed to go on.
    pub(crate) fn decode(&mut self, frame: &MediaFrame) -> bool {
        let h = frame.header();
        if !h.key && !self.has_key {
            return true;
        }
        // An error closes a decoder (a picture whose reference was refused
        // or lost, say): a new one starts again from a key frame.
        if self.decoder.state() == web_sys::CodecState::Closed
            && let Some(codec) = &self.codec
            && let Ok(d) = web_sys::VideoDecoder::new(&web_sys::VideoDecoderInit::new(
                &self.callbacks.0,
                &self.callbacks.1,
            ))
            && d.configure(&web_sys::VideoDecoderConfig::new(codec))
                .is_ok()
        {
            self.decoder = d;
            self.has_key = false;
            if !h.key {
                return true;
            }
        }
        // Never configured (not decodable here).
        if self.decoder.state() != web_sys::CodecState::Configured {
            return false;
        }
        let payload = frame.payload();
        let data = js_sys::Uint8Array::from(payload.as_ref());
        let kind = if h.key {
            web_sys::EncodedVideoChunkType::Key
        } else {
            web_sys::EncodedVideoChunkType::Delta
        };
        let init = web_sys::EncodedVideoChunkInit::new_with_u8_array(
            &data,
            (h.capture_timestamp_us & 0x7fff_ffff) as i32,
            kind,
        );
        match web_sys::EncodedVideoChunk::new(&init).and_then(|c| self.decoder.decode(&c)) {
            Ok(()) => {
                self.has_key = true;
                false
            }
            Err(_) => {
                self.has_key = false;
                true
            }
        }
    }
}

/// Notes, once per page, how long after Connect the first remote picture
/// was drawn, in `#app[data-first-frame-ms]`.
fn first_picture(now_ms: f64) {
    let Some(app) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("app"))
    else {
        return;
    };
    if app.has_attribute("data-first-frame-ms") {
        return;
    }
    if let Some(at) = app
        .get_attribute("data-connect-at")
        .and_then(|a| a.parse::<f64>().ok())
    {
        let ms = (now_ms - at).round() as i64;
        let _ = app.set_attribute("data-first-frame-ms", &ms.to_string());
    }
}

impl Drop for Tile {
    fn drop(&mut self) {
        // The element leaves the page with the next render of the grid.
        let _ = self.decoder.close();
    }
}
