//! The camera's bitrate follows the path: once a second the round trip,
//! the loss and the transport's backlog are sampled into the rate
//! controller (PROTOCOL.md §6.5, §9.2), and the encoder gets its target.
//! The numbers are put on `#app` for the path tests.

use std::cell::RefCell;
use std::rc::Rc;

use convene_protocol::v1::{self, client_message::Msg as C};
use wasm_bindgen::JsValue;

use crate::dom::{by_id, fixed1, now};
use crate::events::pump;
use crate::session::Link;
use crate::state::App;

/// Looks at the path once a second: the round trip (the browser's
/// WebTransport statistics where it has them, `getStats()`; otherwise our
/// own Ping, sent here, answered ahead of media), the share of packets lost
/// since the last look (`getStats()` only) and the media the transport has
/// not sent yet; the camera's bitrate follows (PROTOCOL.md §6.5, §9.2).
pub(crate) fn sample_path(a: &Rc<RefCell<App>>) {
    let (stats, ping_rtt, backlog) = {
        let mut app = a.borrow_mut();
        let (stats, backlog) = match &app.link {
            Some(Link::WebTransport(wt)) => (wt.stats(), wt.unsent()),
            Some(Link::WebSocket(ws)) => (None, u64::from(ws.buffered_amount())),
            None => (None, 0),
        };
        let t = now();
        let _ = app.session.send(
            t,
            C::Ping(v1::Ping {
                timestamp_us: t.as_micros(),
            }),
        );
        pump(&mut app);
        (stats, app.session.rtt(), backlog)
    };
    let a = a.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let read = match stats {
            Some(p) => wasm_bindgen_futures::JsFuture::from(p).await.ok(),
            None => None,
        };
        let number = |s: &JsValue, k: &str| {
            js_sys::Reflect::get(s, &k.into())
                .ok()
                .and_then(|v| v.as_f64())
        };
        let mut app = a.borrow_mut();
        let mut rtt = ping_rtt;
        let mut loss = None;
        if let Some(s) = &read {
            if let Some(ms) = number(s, "smoothedRtt").filter(|ms| *ms > 0.0) {
                rtt = Some(std::time::Duration::from_secs_f64(ms / 1000.0));
            }
            if let (Some(sent), Some(lost)) = (number(s, "packetsSent"), number(s, "packetsLost")) {
                if let Some((sent0, lost0)) = app.path_counters
                    && sent > sent0
                {
                    loss = Some(((lost - lost0) / (sent - sent0)).clamp(0.0, 1.0));
                }
                app.path_counters = Some((sent, lost));
            }
        }
        app.rate.on_path(now(), rtt, loss, backlog);
        if let Some(root) = by_id("app") {
            if let Some(r) = rtt {
                let _ = root.set_attribute("data-rtt-ms", &fixed1(r.as_secs_f64() * 1000.0));
            }
            if let Some(l) = loss {
                let _ = root.set_attribute("data-loss-pct", &fixed1(l * 100.0));
            }
            let _ = root.set_attribute("data-backlog-bytes", &backlog.to_string());
            let state = match app.rate.path_state() {
                Some(convene_protocol::rate::PathState::Congested) => "congested",
                Some(convene_protocol::rate::PathState::Hold) => "hold",
                _ => "clean",
            };
            let _ = root.set_attribute("data-path", state);
        }
        apply_rate(&mut app);
    });
}

/// Gives the camera's encoder the controller's bitrate and shows it in
/// `#app[data-video-kbps]`.
pub(crate) fn apply_rate(app: &mut App) {
    let target = app.rate.target();
    if let Some(c) = &app.camera
        && c.bitrate.get() != target
    {
        c.bitrate.set(target);
    }
    if let Some(root) = by_id("app") {
        let _ = root.set_attribute("data-video-kbps", &(target / 1000).to_string());
    }
}
