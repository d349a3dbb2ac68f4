//! End-to-end encryption (SFrame keys): the keyring started when a meeting
//! is joined with E2EE on, the key messages it exchanges through the room,
//! opening received media, and the safety code and counters shown. Also
//! the SFrame checks the tests run in the browser (`sframeVectors`,
//! `sframeBench`).

use convene_protocol::MediaFrame;
use convene_protocol::e2ee::{Keyring, Outcome};
use convene_protocol::v1::{self, client_message::Msg as C};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::dom::{by_id, now};
use crate::links::hex_bytes;
use crate::state::App;
use crate::ui;

/// Starts end-to-end encryption for a session just joined, when asked for:
/// a keyring with fresh keys from the browser's secure random source, and
/// our identity key announced to the room.
pub(crate) fn start(app: &mut App) {
    app.keyring = None;
    if !app.e2ee_wanted {
        ui::update(|v| v.e2ee = "Not end-to-end encrypted".into());
        return;
    }
    let mut seed = [0u8; 32];
    let random = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .map(|c| c.get_random_values_with_u8_array(&mut seed));
    if !matches!(random, Some(Ok(_))) {
        ui::update(|v| {
            v.e2ee = "Cannot encrypt: this browser gave no secure random numbers".into()
        });
        return;
    }
    let mut ring = Keyring::new(&app.meeting, app.session.participant_id(), seed);
    for id in app.roster.keys() {
        ring.participant_joined(*id);
    }
    let _ = app.session.send(now(), C::E2ee(ring.start()));
    app.keyring = Some(ring);
    show(app);
}

/// A key message from someone in the room, to the keyring.
pub(crate) fn on_message(app: &mut App, m: v1::E2eeMessage) {
    if let Some(ring) = app.keyring.as_mut() {
        match ring.receive(m.from_participant_id, &m.payload) {
            Ok(out) => outcome(app, out),
            Err(e) => web_sys::console::warn_1(&format!("E2EE: {e}").into()),
        }
    }
}

/// Sends what the keyring answered, asks for key frames it says are
/// needed, and shows the (possibly new) safety code.
pub(crate) fn outcome(app: &mut App, out: Outcome) {
    for m in out.send {
        let _ = app.session.send(now(), C::E2ee(m));
    }
    if let Some(sender) = out.new_key_from {
        let tracks: Vec<u32> = app
            .tiles
            .keys()
            .filter(|(pid, _)| *pid == sender)
            .map(|(_, t)| *t)
            .collect();
        for track_id in tracks {
            let _ = app.session.send(
                now(),
                C::KeyFrameRequest(v1::KeyFrameRequest {
                    participant_id: sender,
                    track_id,
                    ..Default::default()
                }),
            );
        }
    }
    show(app);
}

/// Shows the encryption state and safety code, and puts the counters on
/// `#app` for tests and curious users.
pub(crate) fn show(app: &mut App) {
    let Some(ring) = &app.keyring else {
        return;
    };
    app.safety_code = ring.safety_code();
    let members = ring.members();
    // Participants in the room without keys: they cannot see or hear us,
    // nor we them (for a moment after someone joins, until their key comes).
    let me = app.session.participant_id();
    let outside: Vec<String> = app
        .roster
        .iter()
        .filter(|(id, _)| **id != me && !members.contains(id))
        .map(|(_, (name, _))| name.clone())
        .collect();
    let mut text = format!(
        "🔒 End-to-end encrypted · safety code {} · {} with keys; compare the code with the others",
        app.safety_code,
        members.len() + 1
    );
    if !outside.is_empty() {
        text.push_str(&format!(
            " · not encrypted with you (they cannot see or hear you): {}",
            outside.join(", ")
        ));
    }
    if text != app.e2ee_text {
        app.e2ee_text = text.clone();
        ui::update(|v| v.e2ee = text);
    }
    if let Some(root) = by_id("app") {
        let s = ring.stats();
        let _ = root.set_attribute("data-e2ee", "on");
        let _ = root.set_attribute("data-safety-code", &app.safety_code);
        let _ = root.set_attribute("data-e2ee-decrypted", &s.decrypted.to_string());
        let _ = root.set_attribute("data-e2ee-rejected", &s.rejected.to_string());
        let _ = root.set_attribute("data-e2ee-members", &ring.members().len().to_string());
    }
}

/// A received frame with its payload decrypted, when E2EE is on; `None`
/// (counted, never decoded) when it does not decrypt.
pub(crate) fn open_media(app: &mut App, m: MediaFrame) -> Option<MediaFrame> {
    let Some(ring) = app.keyring.as_mut() else {
        return Some(m);
    };
    let opened = ring.open_media(&m);
    // The counters on the page: at every refusal, and now and then otherwise.
    if opened.is_err() || ring.stats().decrypted % 30 == 1 {
        show(app);
    }
    opened.ok()
}

/// Runs the RFC 9605 vectors (`spec/v1/vectors/sframe/sframe.json` and
/// `aes_ctr_hmac.json`, as text) through this build's SFrame; returns how
/// many passed, or what failed. For checking the wasm build in a browser.
#[wasm_bindgen(js_name = sframeVectors)]
pub fn sframe_vectors(sframe_json: &str, aead_json: &str) -> Result<u32, JsValue> {
    use convene_protocol::sframe::{AeadKey, CipherSuite, Header, KeyContext};
    let parse = |s: &str| -> Result<js_sys::Array, JsValue> {
        let v = js_sys::JSON::parse(s)?;
        let list = js_sys::Object::values(&v.dyn_into::<js_sys::Object>()?).get(0);
        list.dyn_into::<js_sys::Array>()
            .map_err(|_| JsValue::from_str("no vector list"))
    };
    let field =
        |v: &JsValue, k: &str| -> Result<JsValue, JsValue> { js_sys::Reflect::get(v, &k.into()) };
    let bytes = |v: &JsValue, k: &str| -> Result<Vec<u8>, JsValue> {
        let s = field(v, k)?.as_string().ok_or(format!("{k} is not text"))?;
        hex_bytes(&s).ok_or_else(|| format!("{k} is not hexadecimal").into())
    };
    let number = |v: &JsValue, k: &str| -> Result<u64, JsValue> {
        field(v, k)?
            .as_f64()
            .map(|f| f as u64)
            .ok_or_else(|| format!("{k} is not a number").into())
    };
    let suite_of = |v: &JsValue| -> Result<CipherSuite, JsValue> {
        CipherSuite::from_u16(number(v, "cipher_suite")? as u16)
            .ok_or_else(|| "unknown suite".into())
    };
    let mut passed = 0;
    for v in parse(sframe_json)?.iter() {
        let suite = suite_of(&v)?;
        let (kid, ctr) = (number(&v, "kid")?, number(&v, "ctr")?);
        let ctx = KeyContext::derive(suite, kid, &bytes(&v, "base_key")?);
        let (meta, pt, ct) = (bytes(&v, "metadata")?, bytes(&v, "pt")?, bytes(&v, "ct")?);
        if ctx.encrypt(ctr, &meta, &pt) != ct {
            return Err(format!("suite {suite:?}: ciphertext differs").into());
        }
        let (h, len) = Header::parse(&ct).map_err(|e| e.to_string())?;
        if ctx.decrypt(&ct, h, len, &meta).ok() != Some(pt) {
            return Err(format!("suite {suite:?}: decryption differs").into());
        }
        passed += 1;
    }
    for v in parse(aead_json)?.iter() {
        let suite = suite_of(&v)?;
        let key = AeadKey::new(suite, &bytes(&v, "key")?).map_err(|e| e.to_string())?;
        let nonce: [u8; 12] = bytes(&v, "nonce")?.try_into().map_err(|_| "nonce length")?;
        let (aad, pt, ct) = (bytes(&v, "aad")?, bytes(&v, "pt")?, bytes(&v, "ct")?);
        if key.seal(&nonce, &aad, &pt) != ct || key.open(&nonce, &aad, &ct).ok() != Some(pt) {
            return Err(format!("AEAD suite {suite:?} differs").into());
        }
        passed += 1;
    }
    Ok(passed)
}

/// Times SFrame in this build: `frames` frames of `size` bytes encrypted,
/// then decrypted, by the clients' keyring. Returns
/// `{encrypt_mb_s, decrypt_mb_s, encrypt_us, decrypt_us}` (per frame); used
/// to report wasm throughput, never asserted.
#[wasm_bindgen(js_name = sframeBench)]
pub fn sframe_bench(size: usize, frames: usize) -> Result<JsValue, JsValue> {
    let clock = web_sys::window()
        .and_then(|w| w.performance())
        .ok_or("no performance clock")?;
    let (mut a, mut b) = convene_protocol::fuzzing::keyed_pair();
    let meta = [0u8; 19];
    let payload = vec![0x5au8; size];
    let t0 = clock.now();
    let sealed: Vec<Vec<u8>> = (0..frames).map(|_| a.encrypt(&meta, &payload)).collect();
    let t1 = clock.now();
    for ct in &sealed {
        b.decrypt(1, &meta, ct).map_err(|e| e.to_string())?;
    }
    let t2 = clock.now();
    let mb = (size * frames) as f64 / 1e6;
    let out = js_sys::Object::new();
    for (k, v) in [
        ("encrypt_mb_s", mb / ((t1 - t0) / 1e3)),
        ("decrypt_mb_s", mb / ((t2 - t1) / 1e3)),
        ("encrypt_us", (t1 - t0) * 1e3 / frames as f64),
        ("decrypt_us", (t2 - t1) * 1e3 / frames as f64),
    ] {
        js_sys::Reflect::set(&out, &k.into(), &v.into())?;
    }
    Ok(out.into())
}
