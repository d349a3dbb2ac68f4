//! Sound. Out: the microphone's samples from a MediaStreamTrackProcessor,
//! Opus from a WebCodecs AudioEncoder. In: each remote audio track decoded
//! (Opus through an AudioDecoder; G.711 µ-law, what `convene stream --audio
//! tone` sends, here) and played through an AudioWorklet that keeps a small
//! jitter buffer (`static/audio-worklet.js`). wasm32 only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use convene_protocol::{AudioLevel, MediaFrame};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// The codec string the browser client publishes.
pub(crate) const CODEC: &str = "opus";

thread_local! {
    /// The page's one AudioContext, made on the Connect click (browsers let
    /// a page play sound after a gesture), and whether its worklet is loaded.
    static OUTPUT: RefCell<Option<(web_sys::AudioContext, Rc<Cell<bool>>)>> = const { RefCell::new(None) };
}

/// Creates the page's AudioContext and loads the player worklet; call from
/// a user gesture.
pub(crate) fn open_output() {
    OUTPUT.with(|o| {
        if o.borrow().is_some() {
            return;
        }
        let Ok(ctx) = web_sys::AudioContext::new() else {
            return;
        };
        let ready = Rc::new(Cell::new(false));
        if let Ok(p) = ctx
            .audio_worklet()
            .and_then(|w| w.add_module("/audio-worklet.js"))
        {
            let r = ready.clone();
            let loaded = Closure::<dyn FnMut(JsValue)>::new(move |_| r.set(true));
            let failed = Closure::<dyn FnMut(JsValue)>::new(|e: JsValue| {
                web_sys::console::warn_2(&"cannot load the audio worklet".into(), &e);
            });
            let _ = p.then2(&loaded, &failed);
            loaded.forget();
            failed.forget();
        }
        let _ = ctx.resume();
        *o.borrow_mut() = Some((ctx, ready));
    });
}

/// The microphone being sent.
pub(crate) struct Mic {
    /// Cleared while muted (and until the server has accepted the track):
    /// samples are read and dropped, nothing is sent.
    pub(crate) on: Rc<Cell<bool>>,
    /// Takes sound to the encoder, from whichever microphone is in use.
    feed: crate::camera::Feed,
}

impl Mic {
    /// Sends another microphone's `track` through the same encoder (the
    /// old track must be stopped first).
    pub(crate) fn switch(&self, track: &web_sys::MediaStreamTrack) -> Result<(), JsValue> {
        crate::camera::attach(track, &self.feed)
    }
}

/// Starts encoding the microphone `track` as Opus and calls `sink` with
/// every encoded packet (20 ms each) and the loudest level of the sound
/// that went into it since the packet before (PROTOCOL.md §6.6.2).
pub(crate) fn start_mic(
    track: &web_sys::MediaStreamTrack,
    sink: impl FnMut(Vec<u8>, AudioLevel) + 'static,
) -> Result<Mic, JsValue> {
    // Off until the server confirms the track (TrackPublished).
    let on = Rc::new(Cell::new(false));
    let sink = Rc::new(RefCell::new(sink));
    let o = on.clone();
    // The loudest level measured since the last packet went out, in −dBov.
    let loudest = Rc::new(Cell::new(AudioLevel::SILENT.dbov));
    let l = loudest.clone();
    let output = Closure::<dyn FnMut(web_sys::EncodedAudioChunk)>::new(
        move |chunk: web_sys::EncodedAudioChunk| {
            let mut data = vec![0u8; chunk.byte_length() as usize];
            if o.get() && chunk.copy_to_with_u8_slice(&mut data).is_ok() {
                let level = AudioLevel {
                    voice: false,
                    dbov: l.replace(AudioLevel::SILENT.dbov),
                };
                (sink.borrow_mut())(data, level);
            }
        },
    );
    let error = Closure::<dyn FnMut(JsValue)>::new(|e: JsValue| {
        web_sys::console::warn_2(&"audio encoder error".into(), &e);
    });
    let encoder = web_sys::AudioEncoder::new(&web_sys::AudioEncoderInit::new(
        error.as_ref().unchecked_ref(),
        output.as_ref().unchecked_ref(),
    ))?;
    output.forget();
    error.forget();
    // The channels and rate the encoder is configured for: another
    // microphone may differ, and then it is configured again.
    let mut configured: Option<(u32, u32)> = None;
    let o = on.clone();
    let feed: crate::camera::Feed = Rc::new(RefCell::new(move |data: JsValue| {
        if let Ok(data) = data.dyn_into::<web_sys::AudioData>() {
            let form = (data.number_of_channels().min(2), data.sample_rate() as u32);
            if configured != Some(form) {
                let config = web_sys::AudioEncoderConfig::new(CODEC, form.0, form.1);
                config.set_bitrate(32_000);
                configured = encoder.configure(&config).is_ok().then_some(form);
            }
            if o.get() && configured.is_some() && encoder.encode_queue_size() < 10 {
                let level = level_of(&data);
                loudest.set(loudest.get().min(level.dbov));
                let _ = encoder.encode(&data);
            }
            data.close();
        }
    }));
    crate::camera::attach(track, &feed)?;
    Ok(Mic { on, feed })
}

/// The level of `data`: as measured when the worklet's samples were made
/// into it (`capture`), else read from its first plane in the browser's own
/// sample format. `AudioData.copyTo` is avoided where the worklet feeds us:
/// in WebKitGTK any call of it corrupts the web process, which then aborts
/// ("double free or corruption").
fn level_of(data: &web_sys::AudioData) -> AudioLevel {
    use web_sys::AudioSampleFormat as F;
    if let Some(dbov) = js_sys::Reflect::get(data, &crate::capture::LEVEL_PROPERTY.into())
        .ok()
        .and_then(|v| v.as_f64())
    {
        return AudioLevel {
            voice: false,
            dbov: dbov.clamp(0.0, 127.0) as u8,
        };
    }
    let options = web_sys::AudioDataCopyToOptions::new(0);
    let Ok(bytes) = data.allocation_size(&options) else {
        return AudioLevel::SILENT;
    };
    match data.format() {
        Some(F::F32 | F::F32Planar) => {
            let samples = js_sys::Float32Array::new_with_length(bytes / 4);
            if data.copy_to_with_buffer_source(&samples, &options).is_err() {
                return AudioLevel::SILENT;
            }
            AudioLevel::measure(&samples.to_vec())
        }
        Some(F::S16 | F::S16Planar) => {
            let samples = js_sys::Int16Array::new_with_length(bytes / 2);
            if data.copy_to_with_buffer_source(&samples, &options).is_err() {
                return AudioLevel::SILENT;
            }
            let floats: Vec<f32> = samples
                .to_vec()
                .into_iter()
                .map(|s| f32::from(s) / 32_768.0)
                .collect();
            AudioLevel::measure(&floats)
        }
        // Other formats are rare; no level is better than a wrong one.
        _ => AudioLevel::SILENT,
    }
}

/// One remote audio track being played.
pub(crate) struct Player {
    decoder: Option<web_sys::AudioDecoder>,
    /// The worklet node, once the worklet has loaded.
    node: Rc<RefCell<Option<web_sys::AudioWorkletNode>>>,
    /// Frames decoded so far.
    pub(crate) decoded: Rc<Cell<u32>>,
    /// Recent loudness (RMS, 0 to 1), for the active speaker.
    pub(crate) level: Rc<Cell<f32>>,
    /// Samples the worklet says it has played.
    pub(crate) played: Rc<Cell<u32>>,
}

impl Player {
    /// A player for a track in `codec` (`opus` or `PCMU`).
    pub(crate) fn new(codec: &str) -> Result<Player, JsValue> {
        let node: Rc<RefCell<Option<web_sys::AudioWorkletNode>>> = Rc::new(RefCell::new(None));
        let decoded = Rc::new(Cell::new(0u32));
        let level = Rc::new(Cell::new(0f32));
        let played = Rc::new(Cell::new(0u32));
        let decoder = if codec.eq_ignore_ascii_case("PCMU") {
            None
        } else {
            let (nd, dc, lv, pl) = (node.clone(), decoded.clone(), level.clone(), played.clone());
            let output =
                Closure::<dyn FnMut(web_sys::AudioData)>::new(move |data: web_sys::AudioData| {
                    // The first channel, as 32-bit floats.
                    let plane = js_sys::Float32Array::new_with_length(data.number_of_frames());
                    let options = web_sys::AudioDataCopyToOptions::new(0);
                    options.set_format(web_sys::AudioSampleFormat::F32Planar);
                    let copied = data.copy_to_with_buffer_source(&plane, &options);
                    let rate = data.sample_rate();
                    data.close();
                    if copied.is_ok() {
                        dc.set(dc.get() + 1);
                        deliver(&nd, &lv, &pl, &plane.to_vec(), rate);
                    }
                });
            let error = Closure::<dyn FnMut(JsValue)>::new(|e: JsValue| {
                web_sys::console::warn_2(&"audio decoder error".into(), &e);
            });
            let decoder = web_sys::AudioDecoder::new(&web_sys::AudioDecoderInit::new(
                error.as_ref().unchecked_ref(),
                output.as_ref().unchecked_ref(),
            ))?;
            output.forget();
            error.forget();
            decoder.configure(&web_sys::AudioDecoderConfig::new(codec, 1, 48_000))?;
            Some(decoder)
        };
        Ok(Player {
            decoder,
            node,
            decoded,
            level,
            played,
        })
    }

    /// Decodes and queues one frame for playing.
    pub(crate) fn play(&mut self, frame: &MediaFrame) {
        let payload = frame.payload();
        match &self.decoder {
            None => {
                let samples: Vec<f32> = payload
                    .iter()
                    .map(|b| f32::from(ulaw(*b)) / 32_768.0)
                    .collect();
                self.decoded.set(self.decoded.get() + 1);
                deliver(&self.node, &self.level, &self.played, &samples, 8_000.0);
            }
            Some(d) => {
                if d.state() == web_sys::CodecState::Closed {
                    return;
                }
                let data = js_sys::Uint8Array::from(payload.as_ref());
                let init = web_sys::EncodedAudioChunkInit::new_with_u8_array(
                    &data,
                    (frame.header().capture_timestamp_us & 0x7fff_ffff) as i32,
                    web_sys::EncodedAudioChunkType::Key,
                );
                if let Ok(c) = web_sys::EncodedAudioChunk::new(&init) {
                    let _ = d.decode(&c);
                }
            }
        }
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        if let Some(d) = &self.decoder {
            let _ = d.close();
        }
        if let Some(n) = self.node.borrow().as_ref() {
            let _ = n.disconnect();
        }
    }
}

/// Measures, resamples to the output's rate and posts samples to the worklet.
fn deliver(
    node: &Rc<RefCell<Option<web_sys::AudioWorkletNode>>>,
    level: &Rc<Cell<f32>>,
    played: &Rc<Cell<u32>>,
    samples: &[f32],
    rate: f32,
) {
    let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt();
    level.set(level.get().mul_add(0.7, rms * 0.3));
    let Some((ctx, ready)) = OUTPUT.with(|o| o.borrow().clone()) else {
        return;
    };
    if node.borrow().is_none() {
        if !ready.get() {
            return;
        }
        match web_sys::AudioWorkletNode::new(&ctx, "convene-player") {
            Ok(n) => {
                if let Ok(dest) = ctx.destination().dyn_into::<web_sys::AudioNode>() {
                    let _ = n.connect_with_audio_node(&dest);
                }
                if let Ok(port) = n.port() {
                    let p = played.clone();
                    let heard = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
                        move |e: web_sys::MessageEvent| {
                            if let Some(n) = e.data().as_f64() {
                                p.set(n as u32);
                            }
                        },
                    );
                    port.set_onmessage(Some(heard.as_ref().unchecked_ref()));
                    heard.forget();
                }
                *node.borrow_mut() = Some(n);
            }
            Err(e) => {
                web_sys::console::warn_2(&"cannot create the audio player".into(), &e);
                return;
            }
        }
    }
    let out_rate = ctx.sample_rate();
    let resampled = resample(samples, rate, out_rate);
    if let Some(n) = node.borrow().as_ref()
        && let Ok(port) = n.port()
    {
        let _ = port.post_message(&js_sys::Float32Array::from(resampled.as_slice()));
    }
}

/// Linear resampling from `from` Hz to `to` Hz.
pub(crate) fn resample(samples: &[f32], from: f32, to: f32) -> Vec<f32> {
    if (from - to).abs() < 0.5 || samples.is_empty() {
        return samples.to_vec();
    }
    let n = ((samples.len() as f64) * f64::from(to) / f64::from(from)).round() as usize;
    let step = f64::from(from) / f64::from(to);
    (0..n)
        .map(|i| {
            let x = i as f64 * step;
            let j = x.floor() as usize;
            let t = (x - j as f64) as f32;
            let a = samples[j.min(samples.len() - 1)];
            let b = samples[(j + 1).min(samples.len() - 1)];
            a + (b - a) * t
        })
        .collect()
}

/// G.711 µ-law to a 16-bit sample.
pub(crate) fn ulaw(byte: u8) -> i16 {
    let b = !byte;
    let exponent = i32::from((b >> 4) & 0x07);
    let magnitude = ((((i32::from(b & 0x0F)) << 3) + 0x84) << exponent) - 0x84;
    if b & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}
