//! `cargo xtask serve`: the server, built for release, in the foreground.

use std::process::Command;

use crate::process::{self, root, target_dir};

/// Arguments of `cargo xtask serve`: all of them belong to convene-server.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
// No help flag of our own: `cargo xtask serve --help` has always shown the
// server's options, which README.md points to.
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// Arguments for convene-server, passed on unchanged
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub(crate) args: Vec<String>,
}

/// Builds the browser client and the server in release mode and runs the
/// server in the foreground with `args`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    crate::web::run()?;
    process::run("cargo", &["build", "--release", "-p", "convene-server"])?;
    let bin = target_dir().join("release").join("convene-server");
    let status = Command::new(&bin)
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("convene-server exited with {status}"))
    }
}
