//! The Convene browser client, compiled to `wasm32-unknown-unknown` and served
//! by the server.
//!
//! It joins a meeting over WebTransport (WebSocket when that is not there or
//! fails) with the same sans-IO session machine as every other client
//! (`convene-protocol`), sends the camera and microphone (WebCodecs), shows
//! a tile per remote video track and plays remote sound. The screens are Yew
//! components ([`ui`]) drawn from one view model that the session code
//! updates.
//!
//! Where things are: `session` connects, drives the `ClientSession` and
//! reconnects; `events` handles what the session reports, one function per
//! event; `publish` sends our camera, microphone and screen, `path` sets the
//! camera's bitrate, `remote` shows and plays the others, `e2ee` holds the
//! SFrame keys; `devices` opens the join screen's camera and microphone;
//! `screens` turns the meeting into what [`ui`] shows and carries out its
//! buttons, [`stage`] decides where tiles go (paged grid, speaker view, pin); `state` is where all of it is kept. [`links`] reads meeting
//! links and [`retry`] decides about reconnecting.

pub mod h264;
pub mod links;
pub mod quality;
pub mod retry;
pub mod stage;
pub mod ui;

// The rest runs only in a browser. The media modules use WebCodecs and
// WebTransport, which web-sys offers only with `web_sys_unstable_apis`
// (set for wasm32 alone, in .cargo/config.toml), and everything else holds
// them; natively the crate builds for the unit tests of the modules above.
#[cfg(target_arch = "wasm32")]
mod audio;
#[cfg(target_arch = "wasm32")]
mod camera;
#[cfg(target_arch = "wasm32")]
mod capture;
#[cfg(target_arch = "wasm32")]
mod codecs;
#[cfg(target_arch = "wasm32")]
mod devices;
#[cfg(target_arch = "wasm32")]
mod dom;
#[cfg(target_arch = "wasm32")]
mod e2ee;
#[cfg(target_arch = "wasm32")]
mod events;
#[cfg(target_arch = "wasm32")]
mod path;
#[cfg(target_arch = "wasm32")]
mod publish;
#[cfg(target_arch = "wasm32")]
mod remote;
#[cfg(target_arch = "wasm32")]
mod screens;
#[cfg(target_arch = "wasm32")]
mod session;
#[cfg(target_arch = "wasm32")]
mod state;
#[cfg(target_arch = "wasm32")]
mod transport;
#[cfg(target_arch = "wasm32")]
mod video;

#[cfg(not(target_arch = "wasm32"))]
mod native;

// What the screens call on the page: the real thing in a browser, inert
// stand-ins natively.
#[cfg(not(target_arch = "wasm32"))]
use native::{act, begin, local_media, preview, send_chat, switch_devices};
#[cfg(target_arch = "wasm32")]
use {
    devices::{local_media, preview, switch as switch_devices},
    screens::{act, send_chat},
    session::begin,
};

#[cfg(target_arch = "wasm32")]
pub use e2ee::{sframe_bench, sframe_vectors};

/// Mounts the screens in `#app` and opens the camera and microphone for the
/// join screen's preview; with `?join=1` connects at once.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() -> Result<(), wasm_bindgen::JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let root = dom::by_id("app").ok_or("the page has no #app")?;
    // The "Loading…" line goes; Yew adds to what the root holds.
    root.set_inner_html("");
    yew::Renderer::<ui::Page>::with_root(root).render();
    // How many tiles a page holds follows the window.
    let resized = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(ui::resized);
    window.add_event_listener_with_callback(
        "resize",
        wasm_bindgen::JsCast::unchecked_ref(resized.as_ref()),
    )?;
    // Listens for the page's life.
    resized.forget();
    // The bars fade on a large stage while nothing moves (screens::activity).
    let moved = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(screens::activity);
    for event in ["pointermove", "pointerdown", "keydown", "focusin"] {
        window.add_event_listener_with_callback(
            event,
            wasm_bindgen::JsCast::unchecked_ref(moved.as_ref()),
        )?;
    }
    moved.forget();
    // The meeting screen's keyboard shortcuts (ui::SHORTCUTS).
    let keys = wasm_bindgen::closure::Closure::<dyn FnMut(web_sys::KeyboardEvent)>::new(
        |e: web_sys::KeyboardEvent| {
            if e.ctrl_key() || e.meta_key() || e.alt_key() || e.repeat() {
                return;
            }
            // Escape closes a panel even from the chat's box.
            if ui::read(|v| v.screen) != ui::Screen::Meeting
                || (dom::typing(&e) && e.key() != "Escape")
            {
                return;
            }
            if let Some(action) = ui::shortcut(&e.key()) {
                e.prevent_default();
                screens::act(action);
            }
        },
    );
    window.add_event_listener_with_callback(
        "keydown",
        wasm_bindgen::JsCast::unchecked_ref(keys.as_ref()),
    )?;
    keys.forget();
    // Before the camera opens and long before any encoder exists (see codecs).
    codecs::start_probe();
    preview(None);
    // `?join=1`: connect at once (for kiosks and the conformance runner).
    if window
        .location()
        .search()?
        .trim_start_matches('?')
        .split('&')
        .any(|kv| kv == "join=1")
    {
        let (name, meeting) = links::page_meeting();
        begin(name, meeting, links::e2ee_from_link());
    }
    Ok(())
}
