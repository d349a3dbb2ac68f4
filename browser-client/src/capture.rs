//! Reading a capture track frame by frame: what the camera, the microphone
//! and the screen share all start from. Through a MediaStreamTrackProcessor
//! where the page has one (Chromium); elsewhere (Firefox, and WebKit, whose
//! MediaStreamTrackProcessor exists only in workers), pictures are taken
//! from a `<video>` playing the track (`new VideoFrame(video)`, at the
//! track's frame rate) and sound from an AudioWorklet (20 ms chunks made
//! into `AudioData`). Chosen by feature detection on the page's own global,
//! so a worker-only processor is never tried. wasm32 only.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// The property of an `AudioData` made from the worklet's samples that
/// holds their level in −dBov (PROTOCOL.md §6.6.2), measured before they
/// were wrapped, so nothing has to copy them out again.
pub(crate) const LEVEL_PROPERTY: &str = "conveneLevelDbov";

/// What runs when a read completes.
type ReadCallback = Closure<dyn FnMut(JsValue)>;

/// Calls `each` with every frame `track` yields (a `VideoFrame` or an
/// `AudioData`, which `each` must close), until the track ends.
pub(crate) fn each_frame(
    track: &web_sys::MediaStreamTrack,
    each: impl FnMut(JsValue) + 'static,
) -> Result<(), JsValue> {
    let has_processor =
        js_sys::Reflect::has(&js_sys::global(), &"MediaStreamTrackProcessor".into())
            .unwrap_or(false);
    if has_processor {
        through_processor(track, each)
    } else if track.kind() == "video" {
        from_video_element(track, each)
    } else {
        from_audio_worklet(track, each);
        Ok(())
    }
}

/// Microseconds on the page's monotonic clock, for frame timestamps.
fn now_us() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now() * 1000.0)
}

/// Pictures of a video track without a MediaStreamTrackProcessor: a detached
/// muted `<video>` plays the track and a timer at its frame rate takes
/// a `VideoFrame` of it.
fn from_video_element(
    track: &web_sys::MediaStreamTrack,
    mut each: impl FnMut(JsValue) + 'static,
) -> Result<(), JsValue> {
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let video: web_sys::HtmlVideoElement = document.create_element("video")?.dyn_into()?;
    video.set_muted(true);
    video.set_autoplay(true);
    video.set_attribute("playsinline", "")?;
    let stream = web_sys::MediaStream::new_with_tracks(&js_sys::Array::of1(track))?;
    video.set_src_object(Some(&stream));
    let _ = video.play();
    let fps = track
        .get_settings()
        .get_frame_rate()
        .filter(|f| *f >= 1.0)
        .unwrap_or(30.0)
        .min(60.0);
    let window = web_sys::window().ok_or("no window")?;
    let timer: Rc<RefCell<Option<i32>>> = Rc::default();
    let (t, track, w) = (timer.clone(), track.clone(), window.clone());
    let mut last_time = -1.0;
    let tick = Closure::<dyn FnMut()>::new(move || {
        if track.ready_state() == web_sys::MediaStreamTrackState::Ended {
            if let Some(id) = t.borrow_mut().take() {
                w.clear_interval_with_handle(id);
            }
            return;
        }
        // HAVE_CURRENT_DATA, and a picture we have not taken yet.
        if video.ready_state() < 2 || video.video_width() == 0 || video.current_time() == last_time
        {
            return;
        }
        last_time = video.current_time();
        let init = web_sys::VideoFrameInit::new();
        init.set_timestamp_f64(now_us());
        if let Ok(frame) =
            web_sys::VideoFrame::new_with_html_video_element_and_video_frame_init(&video, &init)
        {
            each(frame.into());
        }
    });
    let id = window.set_interval_with_callback_and_timeout_and_arguments_0(
        tick.as_ref().unchecked_ref(),
        (1000.0 / fps) as i32,
    )?;
    *timer.borrow_mut() = Some(id);
    // The timer lives as long as the track.
    tick.forget();
    Ok(())
}

/// Sound of an audio track without a MediaStreamTrackProcessor: the
/// `convene-capture` worklet (`/audio-worklet.js`) posts 20 ms of mono
/// samples at a time, each made into an `AudioData`.
fn from_audio_worklet(track: &web_sys::MediaStreamTrack, each: impl FnMut(JsValue) + 'static) {
    let track = track.clone();
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = start_worklet(&track, each).await {
            let why = js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
                .unwrap_or_else(|| format!("{e:?}"));
            web_sys::console::warn_1(&format!("cannot capture the microphone: {why}").into());
        }
    });
}

async fn start_worklet(
    track: &web_sys::MediaStreamTrack,
    mut each: impl FnMut(JsValue) + 'static,
) -> Result<(), JsValue> {
    // At the device's rate: Firefox refuses to connect a microphone to a
    // context of another rate.
    let ctx = web_sys::AudioContext::new()?;
    wasm_bindgen_futures::JsFuture::from(ctx.audio_worklet()?.add_module("/audio-worklet.js")?)
        .await?;
    let stream = web_sys::MediaStream::new_with_tracks(&js_sys::Array::of1(track))?;
    let source = ctx.create_media_stream_source(&stream)?;
    let node = web_sys::AudioWorkletNode::new(&ctx, "convene-capture")?;
    let rate = ctx.sample_rate();
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            let Ok(samples) = e.data().dyn_into::<js_sys::Float32Array>() else {
                return;
            };
            let init = web_sys::AudioDataInit::new(
                &samples,
                web_sys::AudioSampleFormat::F32Planar,
                1,
                samples.length(),
                rate,
                0,
            );
            let _ = js_sys::Reflect::set(&init, &"timestamp".into(), &now_us().into());
            if let Ok(data) = web_sys::AudioData::new(&init) {
                let level = convene_protocol::AudioLevel::measure(&samples.to_vec());
                let _ = js_sys::Reflect::set(
                    &data,
                    &LEVEL_PROPERTY.into(),
                    &f64::from(level.dbov).into(),
                );
                each(data.into());
            }
        });
    node.port()?
        .set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    source.connect_with_audio_node(&node)?;
    // Connected to the output (it writes silence) so the graph pulls it.
    node.connect_with_audio_node(&ctx.destination())?;
    let _ = wasm_bindgen_futures::JsFuture::from(ctx.resume()?).await;
    // The context and its nodes live as long as the page.
    std::mem::forget((ctx, source, node));
    Ok(())
}

/// Frames through a MediaStreamTrackProcessor's readable stream.
fn through_processor(
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
