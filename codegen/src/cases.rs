//! `spec/v1/conformance/*.toml`: declarative conformance cases, checked
//! against the schemas and PROTOCOL.md, and written out as static Rust tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use prost_reflect::{Kind, MessageDescriptor};
use serde::Deserialize;

use crate::proto::{ErrorCodeInfo, Spec};
use crate::{CodegenError, Layout, camel, header, lit, read};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(rename = "case")]
    cases: Vec<CaseToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseToml {
    id: String,
    title: String,
    section: String,
    target: String,
    #[serde(default)]
    transports: Option<Vec<String>>,
    #[serde(default)]
    requires: Vec<String>,
    steps: Vec<toml::Table>,
}

/// A case ready to be written out.
pub(crate) struct Case {
    id: String,
    title: String,
    section: String,
    target: String,
    transports: Vec<String>,
    requires: Vec<String>,
    file: String,
    steps: Vec<String>,
}

/// Every step a case may use: its name, the parameters it takes, and what
/// it means. The table in PROTOCOL.md §12 is written from this list, and a
/// case file that uses anything else is refused.
const STEPS: &[(&str, &[&str], &str)] = &[
    ("connect", &[], "Open a transport connection; send nothing"),
    (
        "accept",
        &[],
        "(client cases) Wait for the client under test to connect",
    ),
    (
        "handshake",
        &["join", "name", "subscribe_all", "features"],
        "Connect, send `Hello{versions=[1]}` (with `features`, a list of feature names, in `Hello.features`), expect `Welcome` and capture `$<actor>.id`; with `join`, send `Join` (display name `name`, default the actor's name; `subscribe_all`, default false) and expect `Joined`",
    ),
    ("send", &["msg", "request_id"], "Send one control message"),
    (
        "flood",
        &["msg", "count"],
        "Send the same control message `count` times without waiting",
    ),
    (
        "send_media",
        &[
            "track",
            "seq",
            "key",
            "sender",
            "size",
            "count",
            "interval_ms",
            "encoding",
            "temporal",
            "level",
            "switch_point",
        ],
        "Send `count` media frames (default 1) with consecutive sequence numbers from `seq` and a `size`-byte payload, `interval_ms` apart (default 0); `sender` sets the header's sender field; with `encoding`, `temporal`, `level` (−dBov, voice set) or `switch_point`, each is a LAYERED frame (§6.6.2)",
    ),
    (
        "send_raw",
        &["hex"],
        "Send the given bytes as one frame (one WebSocket message, or one length-prefixed frame on the control stream)",
    ),
    (
        "send_prefix",
        &["length"],
        "Send only the header of a frame of `length` bytes (the WebSocket frame header, or the control stream's length prefix), none of its body",
    ),
    (
        "send_text",
        &["text"],
        "Send a WebSocket text message (WebSocket only)",
    ),
    (
        "expect",
        &["msg", "capture"],
        "Wait for a control message matching every field given; other messages are skipped; `capture` stores fields in variables",
    ),
    (
        "expect_error",
        &["code", "request_id"],
        "Wait for an `Error` with that code",
    ),
    (
        "expect_media",
        &["from", "track", "key", "size", "encoding", "layered"],
        "Wait for a media frame matching the fields given; `encoding` (a LAYERED frame of that encoding) and `layered` (true: LAYERED, false: MEDIA) check the wrapper of §6.6.2",
    ),
    (
        "expect_no",
        &["what"],
        "After a `Ping`/`Pong` round trip on the actor's connection and on every other actor's, the actor has received no `media` or no message of that name since its previous expectation",
    ),
    (
        "expect_close",
        &["code"],
        "Wait for the connection to close, after an `Error` with `code` when given",
    ),
    (
        "sleep_ms",
        &[],
        "Wait that many milliseconds, for timer cases (takes a number, not an actor)",
    ),
    (
        "silence",
        &[],
        "The actor stops sending anything, `Pong` included",
    ),
    (
        "exceed_track_limit",
        &[],
        "Publish one track more than the server's `max_tracks_per_participant` (read from `Welcome`), expecting `TrackPublished` for each but the last, and `TOO_MANY_TRACKS` for the last",
    ),
];

/// The keys of a case, for the table in PROTOCOL.md §12.
const CASE_KEYS: &[(&str, &str)] = &[
    ("id", "Unique name, `<file>.<what>`"),
    ("title", "What the case shows, in a sentence"),
    ("section", "The PROTOCOL.md section it checks"),
    (
        "target",
        "`server` (the runner plays clients) or `client` (the runner plays the server)",
    ),
    (
        "transports",
        "Optional: the transports it applies to (`ws`, `wt`); default all",
    ),
    (
        "requires",
        "Optional: capabilities the implementation under test must declare (e.g. `auth`, `waiting_room`, `reconnect`, `publishes_video`); without them the case is skipped",
    ),
    (
        "steps",
        "The steps, in order, each a table with exactly one step name (below)",
    ),
];

fn is_action(k: &str) -> bool {
    STEPS.iter().any(|(a, _, _)| *a == k)
}

fn is_param(k: &str) -> bool {
    STEPS.iter().any(|(_, ps, _)| ps.contains(&k))
}

/// The tables of PROTOCOL.md §12: a case's keys and every step.
pub(crate) fn steps_table() -> String {
    let mut s = String::from("| Case key | Meaning |\n|---|---|\n");
    for (k, doc) in CASE_KEYS {
        let _ = writeln!(s, "| `{k}` | {doc} |");
    }
    s.push_str("\n| Step | Meaning |\n|---|---|\n");
    for (a, params, doc) in STEPS {
        let params = if params.is_empty() {
            String::new()
        } else {
            format!(
                " (+ {})",
                params
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(s, "| `{a}`{params} | {doc} |");
    }
    s
}

/// Capabilities a case may require of the implementation under test.
const REQUIREMENTS: &[&str] = &[
    "moderation",
    "waiting_room",
    "auth",
    "shutdown",
    "reconnect",
    "publishes_video",
    "sfu",
    "dynacast",
    "reactions",
    "recording",
];

pub(crate) fn load(
    layout: &Layout,
    spec: &Spec,
    errors: &[ErrorCodeInfo],
    sections: &[String],
) -> Result<Vec<Case>, CodegenError> {
    let dir = layout.spec_v1().join("conformance");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|source| CodegenError::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let client = msg_desc(spec, "ClientMessage")?;
    let server = msg_desc(spec, "ServerMessage")?;
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for path in paths {
        let text = read(&path)?;
        let err = |message: String| CodegenError::Spec {
            path: path.clone(),
            message,
        };
        let file: CaseFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for c in file.cases {
            if !ids.insert(c.id.clone()) {
                return Err(err(format!("case id `{}` is used twice", c.id)));
            }
            if !sections.contains(&c.section) {
                return Err(err(format!(
                    "case `{}` checks §{}, which PROTOCOL.md does not have",
                    c.id, c.section
                )));
            }
            let (sends, expects) = match c.target.as_str() {
                "server" => (&client, &server),
                "client" => (&server, &client),
                t => {
                    return Err(err(format!(
                        "case `{}`: target `{t}` is not server or client",
                        c.id
                    )));
                }
            };
            let transports = c
                .transports
                .clone()
                .unwrap_or_else(|| vec!["ws".into(), "wt".into()]);
            for t in &transports {
                if t != "ws" && t != "wt" {
                    return Err(err(format!("case `{}`: unknown transport `{t}`", c.id)));
                }
            }
            for r in &c.requires {
                if !REQUIREMENTS.contains(&r.as_str()) {
                    return Err(err(format!("case `{}`: unknown requirement `{r}`", c.id)));
                }
            }
            let mut steps = Vec::new();
            for (i, st) in c.steps.iter().enumerate() {
                let s = step(st, sends, expects, errors)
                    .map_err(|m| err(format!("case `{}`, step {}: {m}", c.id, i + 1)))?;
                steps.push(s);
            }
            out.push(Case {
                id: c.id,
                title: c.title,
                section: c.section,
                target: c.target,
                transports,
                requires: c.requires,
                file: file_name.clone(),
                steps,
            });
        }
    }
    Ok(out)
}

fn msg_desc(spec: &Spec, name: &str) -> Result<MessageDescriptor, CodegenError> {
    spec.pool
        .get_message_by_name(&format!("convene.v1.{name}"))
        .ok_or_else(|| CodegenError::Proto(format!("message {name} is missing")))
}

/// Turns one TOML step into a Rust expression of type `Step`.
fn step(
    t: &toml::Table,
    sends: &MessageDescriptor,
    expects: &MessageDescriptor,
    errors: &[ErrorCodeInfo],
) -> Result<String, String> {
    let actions: Vec<&str> = t
        .keys()
        .map(String::as_str)
        .filter(|k| is_action(k))
        .collect();
    for k in t.keys() {
        if !is_action(k) && !is_param(k) {
            return Err(format!("unknown key `{k}`"));
        }
    }
    let [action] = actions.as_slice() else {
        return Err(format!(
            "a step needs exactly one action, found {actions:?}"
        ));
    };
    let action = *action;
    let actor = if action == "sleep_ms" {
        String::new()
    } else {
        t[action]
            .as_str()
            .ok_or_else(|| format!("`{action}` names an actor, a string"))?
            .to_string()
    };
    let allowed: &[&str] = STEPS
        .iter()
        .find(|(a, _, _)| *a == action)
        .map_or(&[], |(_, ps, _)| ps);
    for k in t.keys() {
        if k != action && !allowed.contains(&k.as_str()) {
            return Err(format!("`{k}` does not apply to `{action}`"));
        }
    }
    let str_param = |k: &str| t.get(k).and_then(|v| v.as_str());
    let int_param = |k: &str| -> Result<Option<i64>, String> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if *i >= 0 && *i <= u32::MAX as i64 => Ok(Some(*i)),
            Some(v) => Err(format!(
                "`{k}` must be a non-negative 32-bit integer, not {v}"
            )),
        }
    };
    let var_or_int = |k: &str| -> Result<String, String> {
        match t.get(k) {
            None => Ok("None".into()),
            Some(toml::Value::Integer(i)) => Ok(format!("Some(Value::Int({i}))")),
            Some(toml::Value::String(s)) if s.starts_with('$') => {
                Ok(format!("Some(Value::Var({}))", lit(&s[1..])))
            }
            Some(v) => Err(format!("`{k}` must be an integer or a $variable, not {v}")),
        }
    };
    let error_code = |k: &str| -> Result<Option<String>, String> {
        match str_param(k) {
            None => Ok(None),
            Some(c) if errors.iter().any(|e| e.name == c) => {
                Ok(Some(format!("ErrorCode::{}", camel(c))))
            }
            Some(c) => Err(format!("unknown error code `{c}`")),
        }
    };
    let body = match action {
        "connect" => "Action::Connect".to_string(),
        "accept" => "Action::Accept".to_string(),
        "silence" => "Action::Silence".to_string(),
        "exceed_track_limit" => "Action::ExceedTrackLimit".to_string(),
        "sleep_ms" => format!(
            "Action::SleepMs({})",
            t["sleep_ms"]
                .as_integer()
                .ok_or("`sleep_ms` takes milliseconds")?
        ),
        "handshake" => {
            let features = match t.get("features") {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(lit).ok_or("`features` lists strings"))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("`features` is a list of feature names".into()),
            };
            format!(
                "Action::Handshake {{ join: {}, name: {}, subscribe_all: {}, features: &[{}] }}",
                str_param("join").map_or("None".into(), |j| format!("Some({})", lit(j))),
                lit(str_param("name").unwrap_or(&actor)),
                t.get("subscribe_all")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
                features.join(", ")
            )
        }
        "send" | "flood" => {
            let msg = envelope(t.get("msg").ok_or("`msg` is required")?, sends)?;
            if action == "send" {
                format!(
                    "Action::Send {{ msg: {msg}, request_id: {} }}",
                    int_param("request_id")?.unwrap_or(0)
                )
            } else {
                format!(
                    "Action::Flood {{ msg: {msg}, count: {} }}",
                    int_param("count")?.ok_or("`count` is required")?
                )
            }
        }
        "send_media" => {
            let layered = ["encoding", "temporal", "level", "switch_point"]
                .iter()
                .any(|k| t.contains_key(*k));
            let layer = if layered {
                format!(
                    "Some(Layer {{ encoding: {}, temporal: {}, switch_point: {}, level: {} }})",
                    int_param("encoding")?.unwrap_or(0),
                    int_param("temporal")?.unwrap_or(0),
                    t.get("switch_point")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    int_param("level")?.map_or("None".into(), |l| format!(
                        "Some(AudioLevel {{ voice: true, dbov: {l} }})"
                    ))
                )
            } else {
                "None".into()
            };
            format!(
                "Action::SendMedia {{ track: {}, seq: {}, key: {}, sender: {}, size: {}, count: {}, interval_ms: {}, layer: {layer} }}",
                var_or_int("track")?.replace("None", "Some(Value::Int(1))"),
                int_param("seq")?.unwrap_or(1),
                t.get("key").and_then(|v| v.as_bool()).unwrap_or(false),
                var_or_int("sender")?,
                int_param("size")?.unwrap_or(100),
                int_param("count")?.unwrap_or(1),
                int_param("interval_ms")?.unwrap_or(0)
            )
        }
        "send_raw" => {
            let h = str_param("hex").ok_or("`hex` is required")?;
            if h.len() % 2 != 0 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("`{h}` is not hex"));
            }
            format!("Action::SendRaw {{ hex: {} }}", lit(h))
        }
        "send_prefix" => format!(
            "Action::SendPrefix {{ length: {} }}",
            int_param("length")?.ok_or("`length` is required")?
        ),
        "send_text" => format!(
            "Action::SendText {{ text: {} }}",
            lit(str_param("text").ok_or("`text` is required")?)
        ),
        "expect" => {
            let msg = envelope(t.get("msg").ok_or("`msg` is required")?, expects)?;
            let mut caps = Vec::new();
            if let Some(c) = t.get("capture") {
                let c = c
                    .as_table()
                    .ok_or("`capture` maps variable names to field paths")?;
                for (var, path) in c {
                    let path = path.as_str().ok_or("a capture path is a string")?;
                    check_path(expects, path)?;
                    caps.push(format!("({}, {})", lit(var), lit(path)));
                }
            }
            format!(
                "Action::Expect {{ msg: {msg}, capture: &[{}] }}",
                caps.join(", ")
            )
        }
        "expect_error" => format!(
            "Action::ExpectError {{ code: {}, request_id: {} }}",
            error_code("code")?.ok_or("`code` is required")?,
            int_param("request_id")?.map_or("None".into(), |r| format!("Some({r})"))
        ),
        "expect_media" => format!(
            "Action::ExpectMedia {{ from: {}, track: {}, key: {}, size: {}, encoding: {}, layered: {} }}",
            var_or_int("from")?,
            var_or_int("track")?,
            t.get("key")
                .and_then(|v| v.as_bool())
                .map_or("None".into(), |k| format!("Some({k})")),
            int_param("size")?.map_or("None".into(), |s| format!("Some({s})")),
            int_param("encoding")?.map_or("None".into(), |s| format!("Some({s})")),
            t.get("layered")
                .and_then(|v| v.as_bool())
                .map_or("None".into(), |k| format!("Some({k})"))
        ),
        "expect_no" => {
            let what = str_param("what").ok_or("`what` is required")?;
            let is_message = expects
                .get_field_by_name(what)
                .is_some_and(|f| f.containing_oneof().is_some());
            if what != "media" && !is_message {
                return Err(format!(
                    "`what` must be `media` or a message name, not `{what}`"
                ));
            }
            format!("Action::ExpectNo {{ what: {} }}", lit(what))
        }
        "expect_close" => format!(
            "Action::ExpectClose {{ code: {} }}",
            error_code("code")?.map_or("None".into(), |c| format!("Some({c})"))
        ),
        _ => unreachable!("every action is handled"),
    };
    Ok(format!("Step {{ actor: {}, action: {body} }}", lit(&actor)))
}

fn check_path(env: &MessageDescriptor, path: &str) -> Result<(), String> {
    let mut desc = env.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let f = desc.get_field_by_name(p).ok_or_else(|| {
            format!(
                "capture path `{path}`: `{}` has no field `{p}`",
                desc.name()
            )
        })?;
        match f.kind() {
            Kind::Message(m) => desc = m,
            _ if i + 1 == parts.len() => return Ok(()),
            _ => return Err(format!("capture path `{path}` goes through a scalar")),
        }
    }
    Err(format!(
        "capture path `{path}` ends at a message, not a value"
    ))
}

/// `{ hello = { versions = [1] } }` → a `Msg` expression, validated against the envelope.
fn envelope(v: &toml::Value, env: &MessageDescriptor) -> Result<String, String> {
    let t = v.as_table().ok_or("`msg` is a table with one message")?;
    let [(name, body)] = t.iter().collect::<Vec<_>>()[..] else {
        return Err("`msg` must hold exactly one message".into());
    };
    let f = env
        .get_field_by_name(name)
        .filter(|f| f.containing_oneof().is_some())
        .ok_or_else(|| format!("`{name}` is not a message of {}", env.name()))?;
    let Kind::Message(inner) = f.kind() else {
        return Err(format!("`{name}` is not a message"));
    };
    let fields = fields(body, &inner)?;
    Ok(format!("Msg {{ name: {}, fields: {fields} }}", lit(name)))
}

fn fields(v: &toml::Value, desc: &MessageDescriptor) -> Result<String, String> {
    let t = v
        .as_table()
        .ok_or_else(|| format!("{} takes a table of fields", desc.name()))?;
    let mut out = Vec::new();
    let sorted: BTreeMap<_, _> = t.iter().collect();
    for (k, v) in sorted {
        let f = desc
            .get_field_by_name(k)
            .ok_or_else(|| format!("{} has no field `{k}`", desc.name()))?;
        let val = if f.is_list() {
            let arr = v
                .as_array()
                .ok_or_else(|| format!("`{k}` is repeated: give a list"))?;
            let items = arr
                .iter()
                .map(|x| value(x, &f.kind(), k))
                .collect::<Result<Vec<_>, _>>()?;
            format!("Value::List(&[{}])", items.join(", "))
        } else {
            value(v, &f.kind(), k)?
        };
        out.push(format!("Field {{ name: {}, value: {val} }}", lit(k)));
    }
    Ok(format!("&[{}]", out.join(", ")))
}

fn value(v: &toml::Value, kind: &Kind, field: &str) -> Result<String, String> {
    if let toml::Value::String(s) = v
        && let Some(var) = s.strip_prefix('$')
    {
        return Ok(format!("Value::Var({})", lit(var)));
    }
    if let toml::Value::Table(t) = v
        && let (Some(r), Some(n)) = (t.get("repeat"), t.get("times"))
    {
        let r = r.as_str().ok_or("`repeat` takes a string")?;
        let n = n.as_integer().ok_or("`times` takes an integer")?;
        return match kind {
            Kind::String | Kind::Bytes => Ok(format!("Value::Repeat({}, {n})", lit(r))),
            _ => Err(format!("`{field}`: repeat applies to strings and bytes")),
        };
    }
    match (kind, v) {
        (Kind::Message(m), toml::Value::Table(_)) => Ok(format!("Value::Msg({})", fields(v, m)?)),
        (Kind::Enum(e), toml::Value::String(s)) => {
            if e.get_value_by_name(s).is_none() {
                return Err(format!("`{field}`: {} has no value `{s}`", e.name()));
            }
            Ok(format!("Value::Enum({})", lit(s)))
        }
        (Kind::Bool, toml::Value::Boolean(b)) => Ok(format!("Value::Bool({b})")),
        (Kind::String, toml::Value::String(s)) => Ok(format!("Value::Str({})", lit(s))),
        (Kind::Bytes, toml::Value::String(s)) => {
            if s.len() % 2 != 0 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("`{field}`: bytes are written as hex"));
            }
            Ok(format!("Value::Bytes({})", lit(s)))
        }
        (
            Kind::Uint32
            | Kind::Uint64
            | Kind::Int32
            | Kind::Int64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64,
            toml::Value::Integer(i),
        ) => Ok(format!("Value::Int({i})")),
        (k, v) => Err(format!("`{field}`: {v} does not fit a field of kind {k:?}")),
    }
}

pub(crate) fn generate(cases: &[Case]) -> String {
    let mut s = header("spec/v1/conformance/*.toml");
    s.push_str("use crate::ErrorCode;\nuse crate::cases::*;\n\n");
    let _ = writeln!(
        s,
        "/// Every conformance case of the spec, in file order.\npub static CASES: &[Case] = &["
    );
    for c in cases {
        let transports: Vec<String> = c
            .transports
            .iter()
            .map(|t| format!("Transport::{}", camel(t)))
            .collect();
        let requires: Vec<String> = c.requires.iter().map(|r| lit(r)).collect();
        let _ = writeln!(
            s,
            "Case {{ id: {}, title: {}, section: {}, file: {}, target: Target::{}, transports: &[{}], requires: &[{}], steps: &[{}] }},",
            lit(&c.id),
            lit(&c.title),
            lit(&c.section),
            lit(&c.file),
            camel(&c.target),
            transports.join(", "),
            requires.join(", "),
            c.steps.join(",\n")
        );
    }
    s.push_str("];\n");
    s
}

/// The index of cases by section, for PROTOCOL.md.
pub(crate) fn index(cases: &[Case]) -> String {
    let mut s = String::from("| Case | Target | Section | Checks |\n|---|---|---|---|\n");
    for c in cases {
        let _ = writeln!(
            s,
            "| `{}` | {} | §{} | {} |",
            c.id, c.target, c.section, c.title
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_steps_and_parameters_are_known_and_all_are_documented() {
        assert!(is_action("send_prefix") && is_param("length"));
        assert!(is_action("exceed_track_limit") && is_param("count"));
        assert!(!is_action("teleport") && !is_param("teleport"));
        let table = steps_table();
        for (action, params, _) in STEPS {
            assert!(table.contains(&format!("| `{action}`")), "{action}");
            for p in *params {
                assert!(table.contains(&format!("`{p}`")), "{action} {p}");
            }
        }
        for (key, _) in CASE_KEYS {
            assert!(table.contains(&format!("| `{key}` |")), "{key}");
        }
    }
}
