//! Inert stand-ins for the page's entry points that the screens ([`ui`])
//! call. The native build exists for unit tests and has no page: the real
//! ones (in `devices`, `screens` and `session`) need the browser.

use crate::ui;

/// Does nothing: there is no meeting natively.
pub(crate) fn act(_action: ui::Action) {}

/// Does nothing: there is no server to connect to natively.
pub(crate) fn begin(_name: String, _meeting: String, _e2ee: bool) {}

/// Does nothing: there are no devices natively.
pub(crate) fn preview(_chosen: Option<(String, String)>) {}

/// None: there are no devices natively.
pub(crate) fn local_media() -> Option<web_sys::MediaStream> {
    None
}

/// Refuses: there is no session natively.
pub(crate) fn send_chat(_text: String) -> bool {
    false
}

/// Does nothing: there are no devices natively.
pub(crate) fn switch_devices(_camera: String, _mic: String) {}
