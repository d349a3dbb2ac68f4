//! Small helpers over the browser page: the session clock, elements by id,
//! and number formatting done by JS.

use convene_protocol::Timestamp;

/// The session clock: `performance.now()`, which never jumps with the
/// wall clock, in microseconds.
pub(crate) fn now() -> Timestamp {
    let ms = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now());
    Timestamp((ms * 1000.0) as u64)
}

/// `x` with one decimal, formatted by JS (which keeps float formatting
/// out of the wasm), for the counters the page shows in data attributes.
pub(crate) fn fixed1(x: f64) -> String {
    js_sys::Number::from(x)
        .to_fixed(1)
        .map(String::from)
        .unwrap_or_default()
}

/// The page's element with this id.
pub(crate) fn by_id(id: &str) -> Option<web_sys::Element> {
    web_sys::window()?.document()?.get_element_by_id(id)
}

/// True when a key event goes to something the user types in (a field, a
/// list box, an editable element), where letters are text, not shortcuts.
pub(crate) fn typing(e: &web_sys::KeyboardEvent) -> bool {
    use wasm_bindgen::JsCast;
    let Some(el) = e
        .target()
        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
    else {
        return false;
    };
    matches!(el.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT")
        || el
            .get_attribute("contenteditable")
            .is_some_and(|v| v != "false")
}
