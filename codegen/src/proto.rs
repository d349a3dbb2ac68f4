//! The protobuf schemas: Rust types through prost-build (fed by protox, so no
//! system `protoc`), the error-code metadata read from custom options, and
//! the tables of PROTOCOL.md that come from the schemas.

use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, Kind, Value};

use crate::{CodegenError, Layout, camel, header, lit, read, rustfmt};

/// The compiled schemas.
pub(crate) struct Spec {
    pub(crate) pool: DescriptorPool,
    pub(crate) descriptor_set: Vec<u8>,
    files: Vec<String>,
}

/// One error code with its normative metadata.
pub(crate) struct ErrorCodeInfo {
    /// SCREAMING name without the `ERROR_CODE_` prefix.
    pub(crate) name: String,
    pub(crate) number: i32,
    pub(crate) fatal: bool,
    /// Transient: a client may open a new session after a backoff (§8.2).
    pub(crate) retry: bool,
    pub(crate) section: String,
    pub(crate) doc: String,
}

pub(crate) fn compile(layout: &Layout) -> Result<Spec, CodegenError> {
    let dir = layout.spec_v1();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|source| CodegenError::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".proto") && n != ADMIN_PROTO)
        .collect();
    files.sort();
    let mut compiler =
        protox::Compiler::new([&dir]).map_err(|e| CodegenError::Proto(e.to_string()))?;
    compiler.include_source_info(true).include_imports(false);
    compiler
        .open_files(&files)
        .map_err(|e| CodegenError::Proto(format!("{e:?}")))?;
    let pool = compiler.descriptor_pool();
    // The descriptor set shipped to users has no source info: it is smaller
    // and does not change when a comment does.
    let mut bare = protox::Compiler::new([&dir]).map_err(|e| CodegenError::Proto(e.to_string()))?;
    bare.include_source_info(false).include_imports(true);
    bare.open_files(&files)
        .map_err(|e| CodegenError::Proto(format!("{e:?}")))?;
    Ok(Spec {
        pool,
        descriptor_set: bare.encode_file_descriptor_set(),
        files,
    })
}

/// The operator's API: its own package, not part of the client protocol.
pub(crate) const ADMIN_PROTO: &str = "admin.proto";

/// The admin API's messages, server trait and client, through tonic-prost-build,
/// and the dispatch of its JSON face.
pub(crate) fn generate_admin(layout: &Layout) -> Result<(String, String), CodegenError> {
    use prost::Message as _;
    let dir = layout.spec_v1();
    let mut compiler =
        protox::Compiler::new([&dir]).map_err(|e| CodegenError::Proto(e.to_string()))?;
    compiler.include_source_info(true).include_imports(false);
    compiler
        .open_files([ADMIN_PROTO])
        .map_err(|e| CodegenError::Proto(format!("{e:?}")))?;
    let fds =
        prost_types::FileDescriptorSet::decode(compiler.encode_file_descriptor_set().as_slice())
            .map_err(|e| CodegenError::Proto(e.to_string()))?;
    let mut builder = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        // The JSON face (PROTOCOL.md §13): the proto3 JSON mapping through
        // serde, so the field names come from the schema and are not written twice.
        .type_attribute(
            ".",
            "#[derive(::serde::Serialize, ::serde::Deserialize)]\n\
             #[serde(rename_all = \"camelCase\", default, deny_unknown_fields)]",
        );
    for file in &fds.file {
        let package = file.package();
        for message in &file.message_type {
            for field in &message.field {
                let path = format!(".{package}.{}.{}", message.name(), field.name());
                for attr in json_field_attributes(field) {
                    builder = builder.field_attribute(&path, attr);
                }
            }
        }
    }
    let json = generate_admin_json(&fds)?;
    let out = std::env::temp_dir().join(format!("convene-codegen-admin-{}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|source| CodegenError::Io {
        path: out.clone(),
        source,
    })?;
    builder
        .out_dir(&out)
        .compile_fds(fds)
        .map_err(|e| CodegenError::Proto(format!("{ADMIN_PROTO}: {e}")))?;
    let path = out.join("convene.admin.v1.rs");
    let body = read(&path)?;
    let _ = std::fs::remove_dir_all(&out);
    let code = format!("{}{}", header(&format!("spec/v1/{ADMIN_PROTO}")), body);
    Ok((
        rustfmt("admin API", &code)?,
        rustfmt("admin API JSON", &json)?,
    ))
}

/// The serde attributes of one field for the proto3 JSON mapping: 64-bit
/// integers as strings, the proto name accepted besides the camelCase one,
/// an absent message left out rather than written as null.
fn json_field_attributes(field: &prost_types::FieldDescriptorProto) -> Vec<String> {
    use prost_types::field_descriptor_proto::{Label, Type};
    let mut attrs = Vec::new();
    let repeated = field.label() == Label::Repeated;
    let optional = field.proto3_optional();
    match field.r#type() {
        Type::Uint64 | Type::Fixed64 if optional => {
            attrs.push(
                "#[serde(default, with = \"crate::json::opt_u64_string\", skip_serializing_if = \"Option::is_none\")]"
                    .to_string(),
            );
        }
        Type::Uint64 | Type::Fixed64 if !repeated => {
            attrs.push("#[serde(with = \"crate::json::u64_string\")]".to_string());
        }
        Type::Int64 | Type::Sint64 | Type::Sfixed64 if !repeated => {
            attrs.push("#[serde(with = \"crate::json::i64_string\")]".to_string());
        }
        Type::Message if !repeated => {
            attrs.push("#[serde(skip_serializing_if = \"Option::is_none\")]".to_string());
        }
        _ => {}
    }
    if field.name().contains('_') {
        attrs.push(format!("#[serde(alias = {:?})]", field.name()));
    }
    attrs
}

/// `UpperCamelCase` to `snake_case`, as prost names service methods.
fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON face's dispatch: one arm per rpc of the service, calling the
/// same trait method gRPC calls.
fn generate_admin_json(fds: &prost_types::FileDescriptorSet) -> Result<String, CodegenError> {
    let file = fds
        .file
        .iter()
        .find(|f| f.name() == ADMIN_PROTO)
        .ok_or_else(|| CodegenError::Proto(format!("{ADMIN_PROTO}: not compiled")))?;
    let service = match file.service.as_slice() {
        [one] => one,
        _ => {
            return Err(CodegenError::Proto(format!(
                "{ADMIN_PROTO}: the JSON face expects exactly one service"
            )));
        }
    };
    let package = format!(".{}.", file.package());
    let local = |t: &str| t.strip_prefix(&package).unwrap_or(t).replace('.', "::");
    let server = format!("{}_server", snake(service.name()));
    let mut s = header(&format!("spec/v1/{ADMIN_PROTO}"));
    let _ = writeln!(
        s,
        "/// The rpcs of `{}`, in the order of the schema.\npub const METHODS: &[&str] = &[",
        service.name()
    );
    for m in &service.method {
        let _ = writeln!(s, "{},", lit(m.name()));
    }
    let _ = writeln!(s, "];\n");
    let _ = writeln!(
        s,
        "/// Calls `method` of `service` with `request` read from `body` (proto3 JSON; \
         empty for all defaults) and writes the answer as proto3 JSON. `None` when the \
         service has no such method.\n\
         pub async fn call<T: super::{server}::{svc}>(service: &T, method: &str, \
         request: tonic::Request<()>, body: &[u8]) -> Option<Result<Vec<u8>, tonic::Status>> {{\n\
         Some(match method {{",
        svc = service.name()
    );
    for m in &service.method {
        let _ = writeln!(
            s,
            "{name} => crate::json::call_one::<super::{input}, super::{output}, _, _>(request, body, \
             |r| service.{method}(r)).await,",
            name = lit(m.name()),
            input = local(m.input_type()),
            output = local(m.output_type()),
            method = snake(m.name()),
        );
    }
    let _ = writeln!(s, "_ => return None,\n}})\n}}");
    Ok(s)
}

pub(crate) fn generate_rust(spec: &Spec) -> Result<String, CodegenError> {
    let out = std::env::temp_dir().join(format!("convene-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|source| CodegenError::Io {
        path: out.clone(),
        source,
    })?;
    let fds = prost_types_fds(spec)?;
    let mut config = prost_build::Config::new();
    config
        .out_dir(&out)
        // Payloads are shared, not copied, on their way through the server.
        .bytes(["."])
        .compile_fds(fds)
        .map_err(|e| CodegenError::Proto(e.to_string()))?;
    let path = out.join("convene.v1.rs");
    let body = read(&path)?;
    let _ = std::fs::remove_dir_all(&out);
    let code = format!(
        "{}{}",
        header(&format!("spec/v1/{{{}}}", spec.files.join(","))),
        body
    );
    rustfmt("protobuf types", &code)
}

fn prost_types_fds(spec: &Spec) -> Result<prost_types::FileDescriptorSet, CodegenError> {
    // prost-build wants only the files it should generate plus their imports;
    // google/protobuf/descriptor.proto is needed only for the custom options.
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet::decode(spec.pool.encode_to_vec().as_slice())
        .map_err(|e| CodegenError::Proto(e.to_string()))?;
    set.file.retain(|f| !f.name().starts_with("google/"));
    for f in &mut set.file {
        f.dependency.retain(|d| !d.starts_with("google/"));
    }
    Ok(set)
}

/// Leading comment of the element at `path` in its file, joined into one line.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    let Some(info) = &file.file_descriptor_proto().source_code_info else {
        return String::new();
    };
    info.location
        .iter()
        .find(|l| l.path == path)
        .and_then(|l| l.leading_comments.clone())
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn error_codes(spec: &Spec) -> Result<Vec<ErrorCodeInfo>, CodegenError> {
    let en = spec
        .pool
        .get_enum_by_name("convene.v1.ErrorCode")
        .ok_or_else(|| CodegenError::Proto("enum convene.v1.ErrorCode is missing".into()))?;
    let fatal_ext = spec
        .pool
        .get_extension_by_name("convene.v1.fatal")
        .ok_or_else(|| CodegenError::Proto("extension convene.v1.fatal is missing".into()))?;
    let retry_ext = spec
        .pool
        .get_extension_by_name("convene.v1.retry")
        .ok_or_else(|| CodegenError::Proto("extension convene.v1.retry is missing".into()))?;
    let section_ext = spec
        .pool
        .get_extension_by_name("convene.v1.section")
        .ok_or_else(|| CodegenError::Proto("extension convene.v1.section is missing".into()))?;
    let file = en.parent_file();
    let mut out = Vec::new();
    for v in en.values() {
        let opts = v.options();
        let fatal = matches!(opts.get_extension(&fatal_ext).as_ref(), Value::Bool(true));
        let retry = matches!(opts.get_extension(&retry_ext).as_ref(), Value::Bool(true));
        let section = match opts.get_extension(&section_ext).as_ref() {
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        let name = v
            .name()
            .strip_prefix("ERROR_CODE_")
            .ok_or_else(|| {
                CodegenError::Proto(format!("{} lacks the ERROR_CODE_ prefix", v.name()))
            })?
            .to_string();
        if retry && !fatal {
            return Err(CodegenError::Proto(format!(
                "error code {name} is marked (retry) but not (fatal): a non-fatal error ends no session"
            )));
        }
        if v.number() != 0 && section.is_empty() {
            return Err(CodegenError::Proto(format!(
                "error code {name} has no (section) option"
            )));
        }
        out.push(ErrorCodeInfo {
            name,
            number: v.number(),
            fatal,
            retry,
            section,
            doc: comment(&file, v.path()),
        });
    }
    Ok(out)
}

pub(crate) fn generate_errors(codes: &[ErrorCodeInfo]) -> String {
    let mut s = header("spec/v1/errors.proto (options and comments)");
    s.push_str("use super::ErrorCode;\n\nimpl ErrorCode {\n");
    s.push_str(
        "/// Every error code, in wire-number order.\npub const ALL: &'static [ErrorCode] = &[\n",
    );
    for c in codes {
        let _ = writeln!(s, "ErrorCode::{},", camel(&c.name));
    }
    s.push_str("];\n\n/// True when this error closes the connection (PROTOCOL.md §8.1).\npub const fn is_fatal(self) -> bool {\nmatches!(self,\n");
    let fatal: Vec<String> = codes
        .iter()
        .filter(|c| c.fatal)
        .map(|c| format!("ErrorCode::{}", camel(&c.name)))
        .collect();
    s.push_str(&fatal.join(" | "));
    s.push_str(")\n}\n\n/// True when this fatal error is transient: a client whose session it\n/// ended may open a new one after a backoff (PROTOCOL.md §8.2).\npub const fn is_retryable(self) -> bool {\nmatches!(self,\n");
    let retry: Vec<String> = codes
        .iter()
        .filter(|c| c.retry)
        .map(|c| format!("ErrorCode::{}", camel(&c.name)))
        .collect();
    s.push_str(&retry.join(" | "));
    s.push_str(")\n}\n\n/// The PROTOCOL.md section that defines when this error is raised.\npub const fn section(self) -> &'static str {\nmatch self {\n");
    for c in codes {
        let _ = writeln!(s, "ErrorCode::{} => {},", camel(&c.name), lit(&c.section));
    }
    s.push_str("}\n}\n\n/// The short name used in the spec, e.g. `MALFORMED_FRAME`.\npub const fn name(self) -> &'static str {\nmatch self {\n");
    for c in codes {
        let _ = writeln!(s, "ErrorCode::{} => {},", camel(&c.name), lit(&c.name));
    }
    s.push_str("}\n}\n\n/// What the error means, from the spec.\npub const fn description(self) -> &'static str {\nmatch self {\n");
    for c in codes {
        let _ = writeln!(s, "ErrorCode::{} => {},", camel(&c.name), lit(&c.doc));
    }
    s.push_str("}\n}\n\n/// The error code with this short spec name, e.g. `MALFORMED_FRAME`.\npub fn from_name(name: &str) -> Option<Self> {\nmatch name {\n");
    for c in codes {
        let _ = writeln!(
            s,
            "{} => Some(ErrorCode::{}),",
            lit(&c.name),
            camel(&c.name)
        );
    }
    s.push_str("_ => None,\n}\n}\n}\n");
    s
}

pub(crate) fn error_table(codes: &[ErrorCodeInfo]) -> String {
    let mut s = String::from(
        "| Code | Name | Fatal | Retry | Section | Meaning |\n|---:|---|---|---|---|---|\n",
    );
    for c in codes.iter().filter(|c| c.number != 0) {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} | §{} | {} |",
            c.number,
            c.name,
            if c.fatal { "yes" } else { "no" },
            if c.retry { "yes" } else { "no" },
            c.section,
            c.doc
        );
    }
    s
}

pub(crate) fn enum_table(spec: &Spec, name: &str) -> Result<String, CodegenError> {
    let en = spec
        .pool
        .get_enum_by_name(&format!("convene.v1.{name}"))
        .ok_or_else(|| CodegenError::Proto(format!("enum {name} is missing")))?;
    let file = en.parent_file();
    let mut s = String::from("| Value | Name | Meaning |\n|---:|---|---|\n");
    for v in en.values() {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} |",
            v.number(),
            v.name(),
            comment(&file, v.path())
        );
    }
    Ok(s)
}

/// The tables of control messages in each direction, from the envelopes' oneofs.
pub(crate) fn message_table(spec: &Spec) -> Result<String, CodegenError> {
    let mut s = String::new();
    for (env, title) in [
        ("ClientMessage", "Client to server"),
        ("ServerMessage", "Server to client"),
    ] {
        let m = spec
            .pool
            .get_message_by_name(&format!("convene.v1.{env}"))
            .ok_or_else(|| CodegenError::Proto(format!("message {env} is missing")))?;
        let _ = writeln!(
            s,
            "{title} (`{env}`):\n\n| Field | Name | Message | Section | Meaning |\n|---:|---|---|---|---|"
        );
        for f in m.fields().filter(|f| f.containing_oneof().is_some()) {
            let Kind::Message(inner) = f.kind() else {
                continue;
            };
            let section = comment(&m.parent_file(), f.path());
            let doc = comment(&inner.parent_file(), inner.path());
            let _ = writeln!(
                s,
                "| {} | `{}` | `{}` | {} | {} |",
                f.number(),
                f.name(),
                inner.name(),
                section,
                doc
            );
        }
        s.push('\n');
    }
    Ok(s.trim_end().to_string() + "\n")
}
