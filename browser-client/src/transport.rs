//! How frames travel: WebTransport when the server offers it and the
//! browser has it, WebSocket otherwise (PROTOCOL.md §3). Over WebTransport
//! (§3.3) control frames go length-prefixed on one bidirectional stream, our
//! audio as datagrams, video one unidirectional stream per frame; frames
//! arrive the same three ways. wasm32 only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;
use convene_protocol::{MediaFrame, StreamDecoder, limits};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};

/// Longest wait for a WebTransport session before falling back.
const WT_TIMEOUT_MS: i32 = 5_000;

/// What to do with each frame that arrives, and once the link is gone.
pub(crate) struct Handlers {
    /// Called with every whole frame.
    pub(crate) frame: Box<dyn Fn(Bytes)>,
    /// Called once when the link closes.
    pub(crate) closed: Box<dyn Fn()>,
}

/// A WebTransport session and its writers.
pub(crate) struct Wt {
    session: web_sys::WebTransport,
    control: web_sys::WritableStreamDefaultWriter,
    datagrams: web_sys::WritableStreamDefaultWriter,
    /// The track whose frames go as datagrams (our microphone).
    audio_track: u32,
    /// Bytes given to media streams whose writing has not finished.
    unsent: Rc<Cell<u64>>,
}

impl Wt {
    /// Bytes of media frames handed to streams and not yet written out.
    pub(crate) fn unsent(&self) -> u64 {
        self.unsent.get()
    }

    /// The browser's statistics of the connection (`getStats()`, a promise
    /// of smoothedRtt, packetsSent, packetsLost …), where it has them.
    pub(crate) fn stats(&self) -> Option<js_sys::Promise> {
        let get = js_sys::Reflect::get(&self.session, &"getStats".into()).ok()?;
        let get = get.dyn_into::<js_sys::Function>().ok()?;
        get.call0(&self.session)
            .ok()?
            .dyn_into::<js_sys::Promise>()
            .ok()
    }

    /// Closes the session.
    pub(crate) fn close(&self) {
        self.session.close();
    }

    /// Sends one frame: control on the control stream, our audio as a
    /// datagram when it fits, anything else on a stream of its own.
    pub(crate) fn send(&self, frame: &Bytes) {
        use convene_protocol::frame::{FRAME_LAYERED, FRAME_MEDIA};
        // MEDIA and LAYERED frames (§6.6.2) travel alike; anything else is control.
        if !matches!(frame.first(), Some(&FRAME_MEDIA | &FRAME_LAYERED)) {
            let mut out = Vec::with_capacity(4 + frame.len());
            out.extend_from_slice(&convene_protocol::frame::length_prefix(frame.len()));
            out.extend_from_slice(frame);
            let _ = self
                .control
                .write_with_chunk(&js_sys::Uint8Array::from(out.as_slice()));
            return;
        }
        let audio = MediaFrame::parse_any(frame.clone())
            .is_ok_and(|m| m.header().track_id == self.audio_track);
        let fits = frame.len() as u32 <= self.session.datagrams().max_datagram_size();
        let chunk = js_sys::Uint8Array::from(frame.as_ref());
        if audio && fits {
            let _ = self.datagrams.write_with_chunk(&chunk);
            return;
        }
        let promise = self.session.create_unidirectional_stream();
        let (unsent, len) = (self.unsent.clone(), frame.len() as u64);
        unsent.set(unsent.get() + len);
        spawn_local(async move {
            // However the write ends, the frame no longer waits.
            let _done = Settle(unsent, len);
            let Ok(stream) = JsFuture::from(promise).await else {
                return;
            };
            let Ok(stream) = stream.dyn_into::<web_sys::WritableStream>() else {
                return;
            };
            if let Ok(w) = stream.get_writer() {
                let _ = JsFuture::from(w.write_with_chunk(&chunk)).await;
                let _ = JsFuture::from(w.close()).await;
            }
        });
    }
}

/// Takes a frame's bytes off the unsent count when dropped.
struct Settle(Rc<Cell<u64>>, u64);

impl Drop for Settle {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(self.1));
    }
}

/// Opens a WebTransport session to `url`, trusting a certificate with one of
/// `hashes` (SHA-256) when given, and its control stream; starts reading
/// what arrives into `handlers`. Fails after [`WT_TIMEOUT_MS`], or as soon as
/// the browser refuses, saying why and how soon
/// ("WebTransport failed after 0.2 s: …").
pub(crate) async fn open_webtransport(
    url: &str,
    hashes: &[Vec<u8>],
    audio_track: u32,
    handlers: Handlers,
) -> Result<Wt, String> {
    // An error's message, else its name; WebKit rejects with no error at all.
    let text = |e: JsValue| {
        if e.is_undefined() || e.is_null() {
            return "refused, with no reason given".to_string();
        }
        let field = |k: &str| {
            js_sys::Reflect::get(&e, &k.into())
                .ok()
                .and_then(|m| m.as_string())
                .filter(|m| !m.is_empty())
        };
        e.as_string()
            .filter(|m| !m.is_empty())
            .or_else(|| field("message"))
            .or_else(|| field("name"))
            .unwrap_or_else(|| format!("{e:?}"))
    };
    let options = web_sys::WebTransportOptions::new();
    if !hashes.is_empty() {
        let list: Vec<web_sys::WebTransportHash> = hashes
            .iter()
            .map(|h| {
                let hash = web_sys::WebTransportHash::new();
                hash.set_algorithm("sha-256");
                hash.set_value(&js_sys::Uint8Array::from(h.as_slice()));
                hash
            })
            .collect();
        options.set_server_certificate_hashes(&list);
    }
    let started = js_sys::Date::now();
    let failed = |why: String| {
        let secs = (js_sys::Date::now() - started) / 1000.0;
        format!(
            "WebTransport failed after {} s: {why}",
            crate::dom::fixed1(secs)
        )
    };
    let session =
        web_sys::WebTransport::new_with_options(url, &options).map_err(|e| failed(text(e)))?;
    // Whichever comes first: the session, its end, or the deadline. A
    // browser may end a session it never opened without settling `ready`
    // (WebKit does), so `closed` is watched too; and both get a handler
    // from the start, so neither rejection goes unhandled.
    let why = match opening(&session).await {
        Opening::Ready => None,
        Opening::TimedOut => Some(format!("no session within {} s", WT_TIMEOUT_MS / 1000)),
        Opening::Closed => Some("the session closed before it opened".to_string()),
        Opening::Failed(e) => Some(text(e)),
    };
    if let Some(why) = why {
        session.close();
        return Err(failed(why));
    }
    let bidi = JsFuture::from(session.create_bidirectional_stream())
        .await
        .map_err(|e| failed(text(e)))?;
    let writable: web_sys::WritableStream = bidi.writable().unchecked_into();
    let control = writable.get_writer().map_err(|e| failed(text(e)))?;
    let datagram_out: web_sys::WritableStream = session.datagrams().writable();
    let datagrams = datagram_out.get_writer().map_err(|e| failed(text(e)))?;

    let handlers = Rc::new(handlers);
    // The control stream: length-prefixed frames.
    let control_in: web_sys::ReadableStream = bidi.readable().unchecked_into();
    let h = handlers.clone();
    spawn_local(async move {
        let mut decoder = StreamDecoder::new(limits::max::MAX_FRAME_BYTES as usize);
        read_chunks(&control_in, |chunk| {
            decoder.push(&chunk);
            while let Ok(Some(frame)) = decoder.next_frame() {
                (h.frame)(frame);
            }
        })
        .await;
    });
    // Media on unidirectional streams, one frame each.
    let streams = session.incoming_unidirectional_streams();
    let h = handlers.clone();
    spawn_local(async move {
        read_values(&streams, |value| {
            let Ok(stream) = value.dyn_into::<web_sys::ReadableStream>() else {
                return;
            };
            let h = h.clone();
            spawn_local(async move {
                let mut whole = Vec::new();
                let mut too_long = false;
                let max = limits::max::MAX_FRAME_BYTES as usize;
                read_chunks(&stream, |chunk| {
                    // A frame longer than any allowed is dropped whole: keeping
                    // the chunks that fit would hand on a frame with a gap.
                    too_long |= whole.len() + chunk.len() > max;
                    if too_long {
                        whole = Vec::new();
                    } else {
                        whole.extend_from_slice(&chunk);
                    }
                })
                .await;
                if !whole.is_empty() {
                    (h.frame)(Bytes::from(whole));
                }
            });
        })
        .await;
    });
    // Media in datagrams.
    let datagram_in = session.datagrams().readable();
    let h = handlers.clone();
    spawn_local(async move {
        read_chunks(&datagram_in, |chunk| {
            // A bad datagram is discarded, never fatal (PROTOCOL.md §3.3).
            let frame = Bytes::from(chunk);
            if convene_protocol::MediaFrame::parse_any(frame.clone()).is_ok() {
                (h.frame)(frame);
            }
        })
        .await;
    });
    // The end of the session.
    let closed: js_sys::Promise = session.closed().unchecked_into();
    let h = handlers;
    spawn_local(async move {
        let _ = JsFuture::from(closed).await;
        (h.closed)();
    });
    Ok(Wt {
        session,
        control,
        datagrams,
        audio_track,
        unsent: Rc::new(Cell::new(0)),
    })
}

/// How opening a session ended.
enum Opening {
    /// `ready` resolved: the session is open.
    Ready,
    /// `closed` resolved first: ended cleanly before it opened.
    Closed,
    /// `ready` or `closed` rejected first, with this error.
    Failed(JsValue),
    /// Neither within [`WT_TIMEOUT_MS`].
    TimedOut,
}

/// Waits for the first of `session.ready`, `session.closed` and the
/// deadline.
async fn opening(session: &web_sys::WebTransport) -> Opening {
    let outcome: Rc<RefCell<Option<Opening>>> = Rc::default();
    let mut wake: Option<js_sys::Function> = None;
    let first = js_sys::Promise::new(&mut |resolve, _| wake = Some(resolve));
    let settle: Rc<dyn Fn(Opening)> = {
        let outcome = outcome.clone();
        Rc::new(move |o: Opening| {
            let mut slot = outcome.borrow_mut();
            if slot.is_none() {
                *slot = Some(o);
                if let Some(w) = &wake {
                    let _ = w.call0(&JsValue::NULL);
                }
            }
        })
    };
    let watch = |promise: js_sys::Promise, ok: Opening| {
        let settle = settle.clone();
        spawn_local(async move {
            settle(match JsFuture::from(promise).await {
                Ok(_) => ok,
                Err(e) => Opening::Failed(e),
            });
        });
    };
    watch(session.ready().unchecked_into(), Opening::Ready);
    watch(session.closed().unchecked_into(), Opening::Closed);
    let s = settle.clone();
    let expire = Closure::once_into_js(move || s(Opening::TimedOut));
    let window = web_sys::window();
    let timer = window.as_ref().and_then(|w| {
        w.set_timeout_with_callback_and_timeout_and_arguments_0(
            expire.unchecked_ref(),
            WT_TIMEOUT_MS,
        )
        .ok()
    });
    let _ = JsFuture::from(first).await;
    if let (Some(w), Some(id)) = (window, timer) {
        w.clear_timeout_with_handle(id);
    }
    outcome.borrow_mut().take().unwrap_or(Opening::TimedOut)
}

/// Reads `stream` to its end, handing each chunk of bytes to `each`.
async fn read_chunks(stream: &web_sys::ReadableStream, mut each: impl FnMut(Vec<u8>)) {
    read_values(stream, |v| {
        if let Ok(bytes) = v.dyn_into::<js_sys::Uint8Array>() {
            each(bytes.to_vec());
        }
    })
    .await;
}

/// Reads `stream` to its end, handing each value to `each`.
async fn read_values(stream: &web_sys::ReadableStream, mut each: impl FnMut(JsValue)) {
    let Ok(reader) = stream
        .get_reader()
        .dyn_into::<web_sys::ReadableStreamDefaultReader>()
    else {
        return;
    };
    loop {
        let Ok(result) = JsFuture::from(reader.read()).await else {
            return;
        };
        if done(&result) {
            return;
        }
        if let Ok(value) = js_sys::Reflect::get(&result, &"value".into()) {
            each(value);
        }
    }
}

fn done(result: &JsValue) -> bool {
    js_sys::Reflect::get(result, &"done".into())
        .map(|d| d.is_truthy())
        .unwrap_or(true)
}
