//! Builds and matches control messages described by the case tables, by
//! reflection over the protocol's descriptor set: the runner needs no code
//! per message type, so a new message in the spec needs no new runner code.

use std::collections::HashMap;

use bytes::Bytes;
use convene_protocol::DESCRIPTOR_SET;
use convene_protocol::cases::{Field, Msg, Value as CaseValue};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

/// A captured variable.
#[derive(Debug, Clone, PartialEq)]
pub enum Var {
    /// An integer field.
    Int(u64),
    /// A string field.
    Str(String),
}

/// Variables captured during a case.
pub type Vars = HashMap<String, Var>;

/// The envelopes, by reflection.
#[derive(Debug, Clone)]
pub struct Schema {
    /// `ClientMessage`.
    pub client: MessageDescriptor,
    /// `ServerMessage`.
    pub server: MessageDescriptor,
}

impl Schema {
    /// Loads the descriptor set compiled into `convene-protocol`.
    pub fn load() -> Self {
        let pool =
            DescriptorPool::decode(DESCRIPTOR_SET).expect("the embedded descriptor set decodes");
        Schema {
            client: pool
                .get_message_by_name("convene.v1.ClientMessage")
                .expect("ClientMessage"),
            server: pool
                .get_message_by_name("convene.v1.ServerMessage")
                .expect("ServerMessage"),
        }
    }
}

/// Rewrites meeting ids so runs against a shared server do not meet.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Captured variables.
    pub vars: &'a Vars,
    /// Appended to every meeting id given by a case.
    pub meeting_suffix: &'a str,
}

/// Encodes `msg` as the envelope `env` with `request_id` (0 for server messages).
pub fn build(
    env: &MessageDescriptor,
    msg: &Msg,
    request_id: u32,
    ctx: &Context<'_>,
) -> Result<Bytes, String> {
    let mut e = DynamicMessage::new(env.clone());
    let field = env
        .get_field_by_name(msg.name)
        .ok_or_else(|| format!("no message {}", msg.name))?;
    let Kind::Message(inner) = field.kind() else {
        return Err(format!("{} is not a message", msg.name));
    };
    let inner = build_fields(&inner, msg.fields, ctx)?;
    e.set_field(&field, Value::Message(inner));
    if request_id != 0
        && let Some(rid) = env.get_field_by_name("request_id")
    {
        e.set_field(&rid, Value::U32(request_id));
    }
    let mut out = vec![convene_protocol::frame::FRAME_CONTROL];
    e.encode(&mut out).map_err(|err| err.to_string())?;
    Ok(out.into())
}

fn build_fields(
    desc: &MessageDescriptor,
    fields: &[Field],
    ctx: &Context<'_>,
) -> Result<DynamicMessage, String> {
    let mut m = DynamicMessage::new(desc.clone());
    for f in fields {
        let fd = desc
            .get_field_by_name(f.name)
            .ok_or_else(|| format!("{} has no field {}", desc.name(), f.name))?;
        let v = match &f.value {
            CaseValue::List(items) => Value::List(
                items
                    .iter()
                    .map(|i| to_value(&fd, i, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            other => to_value(&fd, other, ctx)?,
        };
        m.set_field(&fd, v);
    }
    Ok(m)
}

/// The value of one element of `fd` described by `v`.
pub fn to_value(fd: &FieldDescriptor, v: &CaseValue, ctx: &Context<'_>) -> Result<Value, String> {
    let int = |n: u64| -> Result<Value, String> {
        Ok(match fd.kind() {
            Kind::Uint32 | Kind::Fixed32 => Value::U32(n as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(n),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(n as i32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(n as i64),
            Kind::Enum(_) => Value::EnumNumber(n as i32),
            k => return Err(format!("{}: an integer does not fit {k:?}", fd.name())),
        })
    };
    let string = |s: String| -> Value {
        if fd.name() == "meeting_id" {
            Value::String(format!("{s}{}", ctx.meeting_suffix))
        } else {
            Value::String(s)
        }
    };
    match v {
        CaseValue::Int(i) => int(*i as u64),
        CaseValue::Bool(b) => Ok(Value::Bool(*b)),
        CaseValue::Str(s) => Ok(string(s.to_string())),
        CaseValue::Enum(name) => match fd.kind() {
            Kind::Enum(e) => e
                .get_value_by_name(name)
                .map(|x| Value::EnumNumber(x.number()))
                .ok_or_else(|| format!("{} has no value {name}", e.name())),
            _ => Err(format!("{} is not an enum", fd.name())),
        },
        CaseValue::Bytes(h) => hex::decode(h)
            .map(|b| Value::Bytes(b.into()))
            .map_err(|e| e.to_string()),
        CaseValue::Repeat(s, n) => match fd.kind() {
            Kind::String => Ok(Value::String(s.repeat(*n as usize))),
            Kind::Bytes => {
                let unit = hex::decode(s).map_err(|e| e.to_string())?;
                Ok(Value::Bytes(unit.repeat(*n as usize).into()))
            }
            _ => Err(format!(
                "{}: repeat needs a string or bytes field",
                fd.name()
            )),
        },
        CaseValue::Var(name) => match ctx.vars.get(*name) {
            Some(Var::Int(n)) => int(*n),
            // A captured string is already in its final form.
            Some(Var::Str(s)) => Ok(Value::String(s.clone())),
            None => Err(format!("variable ${name} was never captured")),
        },
        CaseValue::Msg(fields) => match fd.kind() {
            Kind::Message(m) => Ok(Value::Message(build_fields(&m, fields, ctx)?)),
            _ => Err(format!("{} is not a message", fd.name())),
        },
        CaseValue::List(_) => Err(format!("{}: a list inside a list", fd.name())),
    }
}

/// The oneof member set in a decoded envelope, e.g. `welcome`.
pub fn message_name(env: &DynamicMessage) -> Option<String> {
    env.descriptor()
        .fields()
        .filter(|f| f.containing_oneof().is_some())
        .find(|f| env.has_field(f))
        .map(|f| f.name().to_string())
}

/// Whether `env` carries `msg` with every field given matching.
pub fn matches(env: &DynamicMessage, msg: &Msg, ctx: &Context<'_>) -> Result<bool, String> {
    let Some(fd) = env.descriptor().get_field_by_name(msg.name) else {
        return Err(format!("no message {}", msg.name));
    };
    if !env.has_field(&fd) {
        return Ok(false);
    }
    let inner = env.get_field(&fd);
    let Value::Message(inner) = inner.as_ref() else {
        return Ok(false);
    };
    match_fields(inner, msg.fields, ctx)
}

fn match_fields(m: &DynamicMessage, fields: &[Field], ctx: &Context<'_>) -> Result<bool, String> {
    for f in fields {
        let fd = m
            .descriptor()
            .get_field_by_name(f.name)
            .ok_or_else(|| format!("{} has no field {}", m.descriptor().name(), f.name))?;
        let actual = m.get_field(&fd);
        let ok = match (&f.value, actual.as_ref()) {
            (CaseValue::List(items), Value::List(got)) => {
                let mut all = true;
                for want in items.iter() {
                    let mut found = false;
                    for g in got {
                        if match_value(&fd, want, g, ctx)? {
                            found = true;
                            break;
                        }
                    }
                    all &= found;
                }
                all
            }
            (want, got) => match_value(&fd, want, got, ctx)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn match_value(
    fd: &FieldDescriptor,
    want: &CaseValue,
    got: &Value,
    ctx: &Context<'_>,
) -> Result<bool, String> {
    match (want, got) {
        (CaseValue::Msg(fields), Value::Message(m)) => match_fields(m, fields, ctx),
        (want, got) => Ok(&to_value(fd, want, ctx)? == got),
    }
}

/// Reads the value at `path` (e.g. `welcome.participant_id`) from an envelope.
pub fn capture(env: &DynamicMessage, path: &str) -> Option<Var> {
    let mut cur = env.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let fd = cur.descriptor().get_field_by_name(p)?;
        let v = cur.get_field(&fd).into_owned();
        if i + 1 == parts.len() {
            return match v {
                Value::U32(n) => Some(Var::Int(n as u64)),
                Value::U64(n) => Some(Var::Int(n)),
                Value::I32(n) => Some(Var::Int(n as u64)),
                Value::I64(n) => Some(Var::Int(n as u64)),
                Value::EnumNumber(n) => Some(Var::Int(n as u64)),
                Value::String(s) => Some(Var::Str(s)),
                _ => None,
            };
        }
        match v {
            Value::Message(m) => cur = m,
            _ => return None,
        }
    }
    None
}
