//! `spec/v1/states/*.toml`: state machines as data, turned into Rust enums,
//! a total transition function and Mermaid diagrams.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::proto::ErrorCodeInfo;
use crate::{CodegenError, Layout, camel, header, lit, read};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineFile {
    name: String,
    title: String,
    section: String,
    initial: String,
    default_error: String,
    #[serde(rename = "state")]
    states: Vec<Named>,
    #[serde(rename = "event")]
    events: Vec<Named>,
    #[serde(rename = "transition", default)]
    transitions: Vec<TransitionRule>,
    #[serde(rename = "illegal", default)]
    illegal: Vec<IllegalRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
    doc: String,
    /// An event from the implementation itself (a timer, the room, its own
    /// action), never from the peer: it is never answered on the wire.
    #[serde(default)]
    internal: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionRule {
    from: Vec<String>,
    event: Vec<String>,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IllegalRule {
    from: Vec<String>,
    event: Vec<String>,
    error: String,
}

/// The outcome of one (state, event) pair.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    To(String),
    Error(String),
}

/// A machine with its full (state, event) table resolved.
pub(crate) struct Machine {
    pub(crate) name: String,
    title: String,
    section: String,
    initial: String,
    states: Vec<Named>,
    events: Vec<Named>,
    /// (state, event) -> outcome, for every pair.
    table: BTreeMap<(usize, usize), Outcome>,
    /// Transitions as written, for the diagram: (from, event, to).
    edges: Vec<(String, String, String)>,
}

pub(crate) fn load(
    layout: &Layout,
    errors: &[ErrorCodeInfo],
) -> Result<Vec<Machine>, CodegenError> {
    let dir = layout.spec_v1().join("states");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|source| CodegenError::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = read(&path)?;
        let file: MachineFile = toml::from_str(&text).map_err(|e| CodegenError::Spec {
            path: path.clone(),
            message: e.to_string(),
        })?;
        out.push(resolve(file, errors).map_err(|message| CodegenError::Spec {
            path: path.clone(),
            message,
        })?);
    }
    Ok(out)
}

fn expand(names: &[String], all: &[Named], what: &str) -> Result<Vec<usize>, String> {
    if names.iter().any(|n| n == "*") {
        return Ok((0..all.len()).collect());
    }
    names
        .iter()
        .map(|n| {
            all.iter()
                .position(|x| &x.name == n)
                .ok_or_else(|| format!("unknown {what} `{n}`"))
        })
        .collect()
}

fn resolve(f: MachineFile, errors: &[ErrorCodeInfo]) -> Result<Machine, String> {
    let known_error = |e: &str| {
        errors
            .iter()
            .any(|x| x.name == e)
            .then_some(())
            .ok_or_else(|| format!("unknown error code `{e}`"))
    };
    known_error(&f.default_error)?;
    if !f.states.iter().any(|s| s.name == f.initial) {
        return Err(format!("initial state `{}` is not a state", f.initial));
    }
    let mut table = BTreeMap::new();
    let mut edges = Vec::new();
    for t in &f.transitions {
        let froms = expand(&t.from, &f.states, "state")?;
        let evs = expand(&t.event, &f.events, "event")?;
        if t.to != "=" && !f.states.iter().any(|s| s.name == t.to) {
            return Err(format!("unknown target state `{}`", t.to));
        }
        for &s in &froms {
            let to = if t.to == "=" {
                f.states[s].name.clone()
            } else {
                t.to.clone()
            };
            for &e in &evs {
                if table.insert((s, e), Outcome::To(to.clone())).is_some() {
                    return Err(format!(
                        "two transitions for state `{}` and event `{}`",
                        f.states[s].name, f.events[e].name
                    ));
                }
            }
            let label = if t.event.iter().any(|e| e == "*") {
                "*".to_string()
            } else {
                t.event.join(", ")
            };
            edges.push((f.states[s].name.clone(), label, to));
        }
    }
    for r in &f.illegal {
        known_error(&r.error)?;
        for s in expand(&r.from, &f.states, "state")? {
            for e in expand(&r.event, &f.events, "event")? {
                table
                    .entry((s, e))
                    .or_insert_with(|| Outcome::Error(r.error.clone()));
            }
        }
    }
    for s in 0..f.states.len() {
        for e in 0..f.events.len() {
            table
                .entry((s, e))
                .or_insert_with(|| Outcome::Error(f.default_error.clone()));
        }
    }
    Ok(Machine {
        name: f.name,
        title: f.title,
        section: f.section,
        initial: f.initial,
        states: f.states,
        events: f.events,
        table,
        edges,
    })
}

pub(crate) fn generate(machines: &[Machine]) -> String {
    let mut s = header("spec/v1/states/*.toml");
    for m in machines {
        let _ = writeln!(
            s,
            "/// {} (PROTOCOL.md §{}).\npub mod {} {{\nuse crate::ErrorCode;\n",
            m.title, m.section, m.name
        );
        enum_items(&mut s, "State", "A state of the machine.", &m.states);
        enum_items(
            &mut s,
            "Event",
            "An event the machine reacts to.",
            &m.events,
        );
        let _ = writeln!(
            s,
            "/// The state a new machine starts in.\npub const INITIAL: State = State::{};\n",
            camel(&m.initial)
        );
        s.push_str("/// The next state after `event` in `state`, or the error the spec assigns to an illegal event.\npub const fn next(state: State, event: Event) -> Result<State, ErrorCode> {\nmatch (state, event) {\n");
        for ((si, ei), outcome) in &m.table {
            let rhs = match outcome {
                Outcome::To(t) => format!("Ok(State::{})", camel(t)),
                Outcome::Error(e) => format!("Err(ErrorCode::{})", camel(e)),
            };
            let _ = writeln!(
                s,
                "(State::{}, Event::{}) => {rhs},",
                camel(&m.states[*si].name),
                camel(&m.events[*ei].name)
            );
        }
        s.push_str("}\n}\n}\n\n");
    }
    s
}

fn enum_items(s: &mut String, ty: &str, doc: &str, items: &[Named]) {
    let _ = writeln!(
        s,
        "/// {doc}\n#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\npub enum {ty} {{"
    );
    for i in items {
        let _ = writeln!(s, "/// {}\n{},", i.doc, camel(&i.name));
    }
    let _ = writeln!(
        s,
        "}}\n\nimpl {ty} {{\n/// Every value, in spec order.\npub const ALL: &'static [{ty}] = &["
    );
    for i in items {
        let _ = writeln!(s, "{ty}::{},", camel(&i.name));
    }
    s.push_str("];\n\n/// The name used in the spec.\npub const fn name(self) -> &'static str {\nmatch self {\n");
    for i in items {
        let _ = writeln!(s, "{ty}::{} => {},", camel(&i.name), lit(&i.name));
    }
    s.push_str("}\n}\n}\n\n");
}

pub(crate) fn mermaid(m: &Machine) -> String {
    let mut s = String::from("```mermaid\nstateDiagram-v2\n");
    let _ = writeln!(s, "    [*] --> {}", m.initial);
    for (from, label, to) in &m.edges {
        let _ = writeln!(s, "    {from} --> {to}: {label}");
    }
    s.push_str("```\n\nWhat the peer may send that is illegal in a state, and the error it is answered with:\n\n| State | Events | Error |\n|---|---|---|\n");
    for (si, st) in m.states.iter().enumerate() {
        let mut by_err: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (ei, ev) in m.events.iter().enumerate() {
            if ev.internal {
                continue;
            }
            if let Some(Outcome::Error(e)) = m.table.get(&(si, ei)) {
                by_err.entry(e).or_default().push(&ev.name);
            }
        }
        for (err, evs) in by_err {
            let _ = writeln!(s, "| `{}` | {} | `{}` |", st.name, evs.join(", "), err);
        }
    }
    let internal: Vec<String> = m
        .events
        .iter()
        .filter(|e| e.internal)
        .map(|e| format!("`{}`", e.name))
        .collect();
    if !internal.is_empty() {
        let _ = writeln!(
            s,
            "\nThe events {} come from the implementation itself (its timers, its room, its own actions), never from the peer, so nothing is ever answered for them; in a state without a transition for one, it cannot happen.",
            internal.join(", ")
        );
    }
    s
}
