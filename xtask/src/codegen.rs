//! `cargo xtask codegen`: the generated Rust code and spec sections, from `spec/`.

use crate::process::root;

/// Flags of `cargo xtask codegen`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub(crate) struct Args {
    /// Write nothing; fail if any generated file is stale
    #[arg(long)]
    pub(crate) check: bool,
}

/// Regenerates every generated file, or with `check` only reports stale ones.
pub(crate) fn run(check: bool) -> Result<(), String> {
    let layout = convene_codegen::Layout { root: root() };
    let mode = if check {
        convene_codegen::Mode::Check
    } else {
        convene_codegen::Mode::Write
    };
    let changed = convene_codegen::run(&layout, mode).map_err(|e| e.to_string())?;
    if changed.is_empty() {
        println!("codegen: everything up to date");
    } else {
        for f in changed {
            println!("codegen: wrote {f}");
        }
    }
    Ok(())
}
