//! Reading a capture track frame by frame through a
//! MediaStreamTrackProcessor: what the camera, the microphone and the screen
//! share all start from. wasm32 only.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// What runs when a read completes.
type ReadCallback = Closure<dyn FnMut(JsValue)>;

/// Calls `each` with every frame `track` yields (a `VideoFrame` or an
/// `AudioData`, which `each` must close), until the track ends.
pub(crate) fn each_frame(
    track: &web_sys::MediaStreamTrack,
    mut each: impl FnMut(JsValue) + 'static,
) -> Result<(), JsValue> {
    let processor = web_sys::MediaStreamTrackProcessor::new(
        &web_sys::MediaStreamTrackProcessorInit::new(track),
    )?;
    let reader = processor
        .readable()
        .get_reader()
        .dyn_into::<web_sys::ReadableStreamDefaultReader>()?;
    // One callback for every read, which asks for the next: no per-frame closures.
    let next: Rc<RefCell<Option<ReadCallback>>> = Rc::new(RefCell::new(None));
    let (n, r) = (next.clone(), reader.clone());
    *next.borrow_mut() = Some(Closure::new(move |result: JsValue| {
        let done = js_sys::Reflect::get(&result, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            return;
        }
        if let Ok(frame) = js_sys::Reflect::get(&result, &"value".into()) {
            each(frame);
        }
        if let Some(cb) = n.borrow().as_ref() {
            let _ = r.read().then(cb);
        }
    }));
    if let Some(cb) = next.borrow().as_ref() {
        let _ = reader.read().then(cb);
    }
    // The callback lives as long as the page.
    std::mem::forget(next);
    Ok(())
}
