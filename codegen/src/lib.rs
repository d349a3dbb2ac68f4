//! Reads `spec/` and writes the generated parts of `convene-protocol`, of
//! `convene-admin` and of `spec/PROTOCOL.md`.
//!
//! Each kind of output has its own `generate` function; [`run`] calls them all.
//! In [`Mode::Check`] nothing is written and every difference is reported, so
//! a test can fail on stale generated code and name the command that fixes it.

mod cases;
mod docs;
mod limits;
mod proto;
mod states;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The command that regenerates everything; printed when generated files are stale.
pub const REGENERATE: &str = "cargo xtask codegen";

/// Whether to write generated files or only compare them with what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write every file whose contents differ.
    Write,
    /// Write nothing; report each file whose contents differ.
    Check,
}

/// What can go wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The protobuf schemas do not compile.
    #[error("spec/v1/*.proto do not compile: {0}")]
    Proto(String),
    /// A TOML file of the spec is invalid.
    #[error("{path}: {message}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// rustfmt failed on generated code.
    #[error("rustfmt failed on generated {what}: {message}")]
    Rustfmt {
        /// Which output.
        what: String,
        /// rustfmt's complaint.
        message: String,
    },
    /// Generated files differ from what is committed (check mode).
    #[error(
        "generated files are stale: {}\nrun `{REGENERATE}` and commit the result",
        files.join(", ")
    )]
    Stale {
        /// The files that differ.
        files: Vec<String>,
    },
}

/// Paths of the spec and of the generated outputs, relative to a workspace root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The workspace root.
    pub root: PathBuf,
}

impl Layout {
    /// The layout of the workspace this crate was built in.
    pub fn this_workspace() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        Layout {
            root: manifest
                .parent()
                .expect("codegen sits in the workspace")
                .to_path_buf(),
        }
    }

    /// `spec/v1/`.
    pub fn spec_v1(&self) -> PathBuf {
        self.root.join("spec/v1")
    }

    /// `spec/PROTOCOL.md`.
    pub fn protocol_md(&self) -> PathBuf {
        self.root.join("spec/PROTOCOL.md")
    }

    /// `admin/src/generated/`.
    pub fn admin_generated(&self) -> PathBuf {
        self.root.join("admin/src/generated")
    }

    /// `protocol/src/generated/`.
    pub fn generated(&self) -> PathBuf {
        self.root.join("protocol/src/generated")
    }
}

/// Collects the files to write and compares or writes them at the end.
#[derive(Debug, Default)]
struct Outputs {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Outputs {
    fn add(&mut self, path: PathBuf, contents: impl Into<Vec<u8>>) {
        self.files.push((path, contents.into()));
    }

    fn finish(self, layout: &Layout, mode: Mode) -> Result<Vec<String>, CodegenError> {
        let mut changed = Vec::new();
        for (path, contents) in self.files {
            let old = std::fs::read(&path).ok();
            if old.as_deref() == Some(contents.as_slice()) {
                continue;
            }
            let shown = path
                .strip_prefix(&layout.root)
                .unwrap_or(&path)
                .display()
                .to_string();
            changed.push(shown);
            if mode == Mode::Write {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| CodegenError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                std::fs::write(&path, &contents).map_err(|source| CodegenError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        if mode == Mode::Check && !changed.is_empty() {
            return Err(CodegenError::Stale { files: changed });
        }
        Ok(changed)
    }
}

/// Generates everything. Returns the files that changed (written in
/// [`Mode::Write`]); in [`Mode::Check`] any change is an error.
pub fn run(layout: &Layout, mode: Mode) -> Result<Vec<String>, CodegenError> {
    let mut out = Outputs::default();
    let spec = proto::compile(layout)?;
    let generated = layout.generated();

    out.add(
        generated.join("convene.v1.rs"),
        proto::generate_rust(&spec)?,
    );
    out.add(
        generated.join("descriptor.bin"),
        spec.descriptor_set.clone(),
    );
    let (admin, admin_json) = proto::generate_admin(layout)?;
    out.add(layout.admin_generated().join("convene.admin.v1.rs"), admin);
    out.add(layout.admin_generated().join("json.rs"), admin_json);
    let errors = proto::error_codes(&spec)?;
    out.add(
        generated.join("errors.rs"),
        rustfmt("errors", &proto::generate_errors(&errors))?,
    );

    let limits = limits::load(layout, &errors)?;
    out.add(
        generated.join("limits.rs"),
        rustfmt("limits", &limits::generate(&limits))?,
    );

    let machines = states::load(layout, &errors)?;
    out.add(
        generated.join("states.rs"),
        rustfmt("states", &states::generate(&machines))?,
    );

    let md_path = layout.protocol_md();
    let md = read(&md_path)?;
    let sections = docs::sections(&md);
    let case_list = cases::load(layout, &spec, &errors, &sections)?;
    out.add(
        generated.join("cases.rs"),
        rustfmt("cases", &cases::generate(&case_list))?,
    );

    let mut md = md;
    md = docs::replace_block(&md, "error-codes", &proto::error_table(&errors))
        .map_err(|m| spec_err(&md_path, m))?;
    md = docs::replace_block(&md, "limits", &limits::table(&limits))
        .map_err(|m| spec_err(&md_path, m))?;
    md = docs::replace_block(&md, "track-kinds", &proto::enum_table(&spec, "TrackKind")?)
        .map_err(|m| spec_err(&md_path, m))?;
    md = docs::replace_block(&md, "messages", &proto::message_table(&spec)?)
        .map_err(|m| spec_err(&md_path, m))?;
    for m in &machines {
        md = docs::replace_block(&md, &format!("state-{}", m.name), &states::mermaid(m))
            .map_err(|msg| spec_err(&md_path, msg))?;
    }
    md = docs::replace_block(&md, "conformance-steps", &cases::steps_table())
        .map_err(|m| spec_err(&md_path, m))?;
    md = docs::replace_block(&md, "conformance-index", &cases::index(&case_list))
        .map_err(|m| spec_err(&md_path, m))?;
    out.add(md_path, md);

    out.finish(layout, mode)
}

fn spec_err(path: &Path, message: String) -> CodegenError {
    CodegenError::Spec {
        path: path.to_path_buf(),
        message,
    }
}

fn read(path: &Path) -> Result<String, CodegenError> {
    std::fs::read_to_string(path).map_err(|source| CodegenError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The header every generated Rust file starts with.
fn header(source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// @generated by `{REGENERATE}` from {source}. Do not edit: edit the spec and regenerate."
    );
    s
}

/// Formats generated Rust with the toolchain's rustfmt, so that `cargo fmt --check` agrees.
fn rustfmt(what: &str, code: &str) -> Result<String, CodegenError> {
    let fail = |message: String| CodegenError::Rustfmt {
        what: what.to_string(),
        message,
    };
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start rustfmt ({e}); install it with `rustup component add rustfmt`"
            ))
        })?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(code.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        return Err(fail(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    String::from_utf8(output.stdout).map_err(|e| fail(e.to_string()))
}

/// Renders a string as a Rust string literal.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// `snake_case` to `UpperCamelCase`.
fn camel(s: &str) -> String {
    s.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_of_snake_and_screaming_names() {
        assert_eq!(camel("awaiting_hello"), "AwaitingHello");
        assert_eq!(camel("MALFORMED_FRAME"), "MalformedFrame");
        assert_eq!(camel("x"), "X");
    }
}
