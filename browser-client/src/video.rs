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
    element: web_sys::Element,
    /// Nothing decodes until a key frame arrives.
    has_key: bool,
    /// When a key frame was last asked for, in ms on the page clock.
    pub(crate) last_key_request_ms: f64,
}

impl Tile {
    /// A tile for `participant`'s track `track` under `#tiles`, decoding `codec`.
    pub(crate) fn new(
        participant: u32,
        track: u32,
        name: &str,
        codec: &str,
    ) -> Result<Tile, JsValue> {
        let document = web_sys::window()
            .and_then(|w| w.document())
            .ok_or("no document")?;
        let tiles = document.get_element_by_id("tiles").ok_or("no #tiles")?;
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
        tiles.append_child(&figure)?;

        // Pictures drawn, shown in `data-frames` (tests read it).
        let drawn = Rc::new(Cell::new(0u32));
        let (c, d, f) = (canvas.clone(), drawn.clone(), figure.clone());
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
                }
                frame.close();
            });
        let error = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            web_sys::console::warn_2(&"video decoder error".into(), &e);
        });
        let decoder = web_sys::VideoDecoder::new(&web_sys::VideoDecoderInit::new(
            error.as_ref().unchecked_ref(),
            output.as_ref().unchecked_ref(),
        ))?;
        output.forget();
        error.forget();
        decoder.configure(&web_sys::VideoDecoderConfig::new(codec))?;
        Ok(Tile {
            decoder,
            element: figure,
            has_key: false,
            last_key_request_ms: f64::NEG_INFINITY,
        })
    }

    /// Decodes one frame; says whether a key frame is needed to go on.
    pub(crate) fn decode(&mut self, frame: &MediaFrame) -> bool {
        let h = frame.header();
        if !h.key && !self.has_key {
            return true;
        }
        if self.decoder.state() == web_sys::CodecState::Closed {
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

impl Drop for Tile {
    fn drop(&mut self) {
        let _ = self.decoder.close();
        self.element.remove();
    }
}
