//! `spec/v1/limits.toml`: every limit and timer with its number and error code.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::proto::ErrorCodeInfo;
use crate::{CodegenError, Layout, camel, header, lit, read};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    #[serde(rename = "limit")]
    limits: Vec<Limit>,
    #[serde(rename = "timer")]
    timers: Vec<Limit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    name: String,
    #[serde(default)]
    unit: Option<String>,
    default: u32,
    max: u32,
    error: String,
    doc: String,
}

pub(crate) fn load(layout: &Layout, errors: &[ErrorCodeInfo]) -> Result<Limits, CodegenError> {
    let path = layout.spec_v1().join("limits.toml");
    let text = read(&path)?;
    let spec_err = |message: String| CodegenError::Spec {
        path: path.clone(),
        message,
    };
    let limits: Limits = toml::from_str(&text).map_err(|e| spec_err(e.to_string()))?;
    for l in limits.limits.iter().chain(&limits.timers) {
        if !errors.iter().any(|e| e.name == l.error) {
            return Err(spec_err(format!(
                "{}: unknown error code {}",
                l.name, l.error
            )));
        }
        if l.default > l.max {
            return Err(spec_err(format!("{}: default exceeds max", l.name)));
        }
    }
    Ok(limits)
}

pub(crate) fn generate(limits: &Limits) -> String {
    let mut s = header("spec/v1/limits.toml");
    s.push_str("use crate::ErrorCode;\n\n");
    s.push_str("/// The protocol maximum of each limit: no server may advertise more (PROTOCOL.md §7).\npub mod max {\n");
    for l in limits.limits.iter().chain(&limits.timers) {
        let _ = writeln!(
            s,
            "/// {}\npub const {}: u32 = {};",
            l.doc,
            l.name.to_uppercase(),
            l.max
        );
    }
    s.push_str("}\n\n/// The value a server enforces when its operator configures nothing (PROTOCOL.md §7).\npub mod default {\n");
    for l in limits.limits.iter().chain(&limits.timers) {
        let _ = writeln!(
            s,
            "/// {}\npub const {}: u32 = {};",
            l.doc,
            l.name.to_uppercase(),
            l.default
        );
    }
    s.push_str("}\n\n/// The error code that enforces each limit.\npub mod error {\nuse super::ErrorCode;\n");
    for l in limits.limits.iter().chain(&limits.timers) {
        let _ = writeln!(
            s,
            "/// Raised when `{}` is exceeded.\npub const {}: ErrorCode = ErrorCode::{};",
            l.name,
            l.name.to_uppercase(),
            camel(&l.error)
        );
    }
    s.push_str("}\n\n/// Name, default, maximum and error of every limit and timer, for reports and documentation.\npub const TABLE: &[(&str, u32, u32, ErrorCode)] = &[\n");
    for l in limits.limits.iter().chain(&limits.timers) {
        let _ = writeln!(
            s,
            "({}, {}, {}, ErrorCode::{}),",
            lit(&l.name),
            l.default,
            l.max,
            camel(&l.error)
        );
    }
    s.push_str("];\n");
    s
}

pub(crate) fn table(limits: &Limits) -> String {
    let mut s = String::from(
        "| Limit | Default | Maximum | Unit | Error | Meaning |\n|---|---:|---:|---|---|---|\n",
    );
    for l in &limits.limits {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | `{}` | {} |",
            l.name,
            l.default,
            l.max,
            l.unit.as_deref().unwrap_or(""),
            l.error,
            l.doc
        );
    }
    s.push_str(
        "\n| Timer | Default (ms) | Maximum (ms) | Error | Meaning |\n|---|---:|---:|---|---|\n",
    );
    for l in &limits.timers {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | `{}` | {} |",
            l.name, l.default, l.max, l.error, l.doc
        );
    }
    s
}
