//! `cargo xtask image`: the container image, built with podman and checked from its own files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::ensure_debian_packages;
use crate::process::{self, free_port, http_get, root, target_dir, wait_ready};

/// The static target the image's server is built for.
const MUSL: &str = "x86_64-unknown-linux-musl";

/// The image's name.
fn image_name() -> String {
    format!("localhost/convene-server:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the container image from files we produce (no registry pulls),
/// then checks it the way this sandbox allows: containers cannot run here,
/// so its filesystem is exported and the server started from that root.
pub(crate) fn run() -> Result<(), String> {
    ensure_debian_packages(&["podman", "musl-tools"])?;
    // The image serves the browser client too.
    crate::web::run()?;
    process::run("rustup", &["target", "add", MUSL])?;
    // Stripped: the image carries the program, not its debug tables.
    println!(
        "\n$ CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --target {MUSL} -p convene-server"
    );
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            MUSL,
            "-p",
            "convene-server",
        ])
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the static build of convene-server failed ({status})"
        ));
    }
    let binary = target_dir().join(MUSL).join("release/convene-server");
    // The build context: exactly what the image holds.
    let ctx = target_dir().join("image-context");
    let _ = std::fs::remove_dir_all(&ctx);
    let io = |e: std::io::Error| format!("preparing {}: {e}", ctx.display());
    std::fs::create_dir_all(ctx.join("etc/ssl/certs")).map_err(io)?;
    std::fs::create_dir_all(ctx.join("web")).map_err(io)?;
    std::fs::copy(&binary, ctx.join("convene-server")).map_err(io)?;
    std::fs::write(
        ctx.join("etc/passwd"),
        "root:x:0:0:root:/:/sbin/nologin\nconvene:x:65532:65532:convene:/:/sbin/nologin\n",
    )
    .map_err(io)?;
    std::fs::write(ctx.join("etc/group"), "root:x:0:\nconvene:x:65532:\n").map_err(io)?;
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        ctx.join("etc/ssl/certs/ca-certificates.crt"),
    )
    .map_err(|e| format!("the CA roots (Debian package ca-certificates): {e}"))?;
    let dist = root().join("browser-client/dist");
    if dist.is_dir() {
        process::run(
            "cp",
            &[
                "-r",
                &format!("{}/.", dist.display()),
                &ctx.join("web").to_string_lossy(),
            ],
        )?;
    } else {
        return Err(format!(
            "{} is missing: `cargo xtask web` builds it",
            dist.display()
        ));
    }
    let name = image_name();
    process::run(
        "podman",
        &[
            "build",
            "--quiet",
            "--tag",
            &name,
            "--file",
            &root().join("deploy/Containerfile").to_string_lossy(),
            &ctx.to_string_lossy(),
        ],
    )?;
    check_image(&name)
}

/// Exports the image's filesystem and runs its server from there on
/// loopback: `/readyz`, then `convene load` joining and exchanging media.
fn check_image(name: &str) -> Result<(), String> {
    let rootfs = target_dir().join("image-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let container = format!("convene-image-check-{}", std::process::id());
    process::run("podman", &["create", "--name", &container, name])?;
    let tar = target_dir().join("image-rootfs.tar");
    let exported = process::run(
        "podman",
        &["export", "--output", &tar.to_string_lossy(), &container],
    );
    let _ = Command::new("podman").args(["rm", &container]).output();
    exported?;
    process::run(
        "tar",
        &[
            "-xf",
            &tar.to_string_lossy(),
            "-C",
            &rootfs.to_string_lossy(),
        ],
    )?;
    let files: Vec<String> = walk(&rootfs)
        .into_iter()
        .map(|p| {
            p.strip_prefix(&rootfs)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    println!(
        "image filesystem: {} files: {}",
        files.len(),
        files.join(", ")
    );
    let server = rootfs.join("usr/local/bin/convene-server");
    let ldd = Command::new("file").arg(&server).output();
    if let Ok(o) = ldd {
        print!("{}", String::from_utf8_lossy(&o.stdout));
    }
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(&server)
        .args(["--listen", &listen, "--log", "warn"])
        .arg("--web-dir")
        .arg(rootfs.join("web"))
        .spawn()
        .map_err(|e| format!("cannot start the image's server: {e}"))?;
    let result = (|| {
        if !wait_ready(port, std::time::Duration::from_secs(30)) {
            return Err("the image's server did not become ready within 30 s".to_string());
        }
        // The browser client comes from the image's own /web.
        for (path, needle) in [
            ("/meeting/image/check", "convene_web.js"),
            ("/convene_web_bg.wasm", "application/wasm"),
        ] {
            let reply = http_get(port, path).unwrap_or_default();
            if !reply.starts_with("HTTP/1.1 200") || !reply.contains(needle) {
                let head: String = reply.chars().take(300).collect();
                return Err(format!(
                    "the image does not serve the browser client: GET {path} answered {head:?}"
                ));
            }
        }
        process::run("cargo", &["build", "--quiet", "-p", "convene-cli"])?;
        let convene = target_dir().join("debug/convene");
        process::run(
            &convene.to_string_lossy(),
            &[
                "load",
                "--server",
                &format!("http://{listen}"),
                "-n",
                "4",
                "--duration",
                "1",
                "--ramp-up",
                "0.2",
                "--max-loss",
                "0",
            ],
        )
    })();
    let _ = child.kill();
    let _ = child.wait();
    result?;
    println!(
        "image {name}: built, exported, served /readyz, the browser client and a meeting with media from its own files"
    );
    Ok(())
}

/// Every file under `dir`, sorted, for the report of what the image holds.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
