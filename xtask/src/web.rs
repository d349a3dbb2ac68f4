//! `cargo xtask web`: the browser client, built into browser-client/dist.

use std::process::Command;

use crate::process::{self, root, target_dir};

/// The wasm-bindgen-cli release matching the `wasm-bindgen` crate (they must agree).
const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// Builds the browser client: the crate for wasm32 (size-optimised profile),
/// its JavaScript bindings with wasm-bindgen, and the static files, into
/// browser-client/dist, which the server serves.
pub(crate) fn run() -> Result<(), String> {
    process::run("rustup", &["target", "add", "wasm32-unknown-unknown"])?;
    process::run(
        "cargo",
        &[
            "build",
            "-p",
            "convene-web",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "wasm-release",
        ],
    )?;
    let tools = target_dir().join("tools");
    let bindgen = tools.join("bin/wasm-bindgen");
    let current = Command::new(&bindgen)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(WASM_BINDGEN_VERSION));
    if !current {
        let root = tools.to_string_lossy().into_owned();
        let args = [
            "install",
            "wasm-bindgen-cli",
            "--version",
            WASM_BINDGEN_VERSION,
            "--root",
            &root,
        ];
        // With its own lock file when the registry has every version it
        // pins; otherwise with the newest compatible dependencies.
        let mut locked = args.to_vec();
        locked.push("--locked");
        if process::run("cargo", &locked).is_err() {
            process::run("cargo", &args)?;
        }
    }
    let wasm = target_dir().join("wasm32-unknown-unknown/wasm-release/convene_web.wasm");
    let dist = root().join("browser-client/dist");
    let _ = std::fs::remove_dir_all(&dist);
    process::run(
        &bindgen.to_string_lossy(),
        &[
            "--target",
            "web",
            "--no-typescript",
            "--out-name",
            "convene_web",
            "--out-dir",
            &dist.to_string_lossy(),
            &wasm.to_string_lossy(),
        ],
    )?;
    let statics = root().join("browser-client/static");
    for entry in std::fs::read_dir(&statics).map_err(|e| format!("{}: {e}", statics.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        std::fs::copy(entry.path(), dist.join(entry.file_name()))
            .map_err(|e| format!("copying {}: {e}", entry.path().display()))?;
    }
    let raw = std::fs::metadata(dist.join("convene_web_bg.wasm"))
        .map(|m| m.len())
        .unwrap_or(0);
    let gz = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(dist.join("convene_web_bg.wasm"))
        .output()
        .map(|o| o.stdout.len())
        .unwrap_or(0);
    println!(
        "browser client: {} ({} KiB of wasm, {} KiB gzipped)",
        dist.display(),
        raw / 1024,
        gz / 1024
    );
    Ok(())
}
