//! Project automation, run as `cargo xtask <command>`.
//!
//! Every step a developer or CI needs lives here, so that nothing depends on a
//! tool someone installed by hand.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const HELP: &str = "\
cargo xtask <command>

Commands:
  codegen            regenerate protocol/src/generated/, admin/src/generated/ and the generated parts of spec/PROTOCOL.md
  codegen --check    fail if any generated file is stale
  test               run every check and test: codegen staleness, the container image,
                     fmt, clippy (the browser client's also for wasm32), the wasm32 build of
                     convene-protocol, the Kubernetes manifests, the workspace tests, the
                     browser tests and the conformance runs
  test --quick       only the workspace tests
  conformance        only the conformance runs: the server over WebSocket, over
                     WebTransport and as two NATS nodes; the reference client and
                     `convene stream` as clients
  serve [ARGS...]    build and run the server on http://127.0.0.1:8080 (ARGS go to convene-server;
                     see `cargo xtask serve --help`)
  image              build the container image (deploy/Containerfile) with podman, from a
                     static musl build of the server, and check it: export its filesystem,
                     start the server from it, check /readyz and a meeting with media
  web                build the browser client into browser-client/dist (wasm32 build,
                     then the pinned wasm-bindgen-cli, installed when missing)
  k8s                validate deploy/k8s strictly against the Kubernetes schemas (kubernetes-validate)
  fuzz [--seconds N] [--only T,…]
                     run each cargo-fuzz target (or those named) for N seconds (default 60),
                     then print executions per target (needs nightly; installs cargo-fuzz)
  bench [--subscribers N] [--seconds S] [--rounds R]
                     the end-to-end fan-out benchmark, WebSocket and WebTransport side by
                     side with their floors (TCP and UDP), R rounds alternated, release
                     builds; prints server CPU per delivered frame, latency and memory per
                     connection (defaults: 200 subscribers, 10 s, 3 rounds)
  help               this text
";

/// The cargo-fuzz version `cargo xtask fuzz` installs when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("codegen") => codegen(args.iter().any(|a| a == "--check")),
        Some("test") => test(args.iter().any(|a| a == "--quick")),
        Some("conformance") => build_prerequisites().and_then(|()| conformance()),
        Some("k8s") => kubernetes_manifests(),
        Some("web") => web(),
        Some("image") => image(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`; see `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn codegen(check: bool) -> Result<(), String> {
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

/// Runs a command in the workspace root, echoing it, and fails on a non-zero exit.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    run_in(&root(), program, args)
}

/// True when `cargo <subcommand> --version` works.
fn have_cargo(subcommand: &str) -> bool {
    Command::new("cargo")
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn test(quick: bool) -> Result<(), String> {
    build_prerequisites()?;
    if !quick {
        codegen(true)?;
        // The release image first: a static build takes minutes, best
        // spent before the test binaries compete for the cores.
        image()?;
        run("cargo", &["fmt", "--all", "--", "--check"])?;
        run(
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?;
        // The CLI without its camera backend (no libclang needed) must build too.
        run(
            "cargo",
            &[
                "clippy",
                "-p",
                "convene-cli",
                "--no-default-features",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?;
        run(
            "cargo",
            &[
                "build",
                "-p",
                "convene-protocol",
                "--target",
                "wasm32-unknown-unknown",
            ],
        )?;
        // The browser client's WebCodecs code exists only in its wasm32 build.
        run(
            "cargo",
            &[
                "clippy",
                "-p",
                "convene-web",
                "--target",
                "wasm32-unknown-unknown",
                "--",
                "-D",
                "warnings",
            ],
        )?;
        kubernetes_manifests()?;
    }
    if have_cargo("nextest") {
        run(
            "cargo",
            &[
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--failure-output",
                "final",
            ],
        )?;
        // nextest does not run doctests.
        run("cargo", &["test", "--workspace", "--doc"])?;
    } else {
        run("cargo", &["test", "--workspace", "--no-fail-fast"])?;
    }
    // Benchmarks in smoke mode only: each runs once, to show it still works.
    run(
        "cargo",
        &["test", "--quiet", "-p", "convene-benches", "--benches"],
    )?;
    browser_tests()?;
    conformance()?;
    Ok(())
}

/// Debian packages the build and tests need: the camera backend's V4L2
/// bindings are generated by bindgen, which loads libclang; the systemd unit
/// in deploy/ is checked with systemd-analyze; the cluster tests start a
/// real nats-server.
const BUILD_PACKAGES: &[&str] = &["libclang-dev", "systemd", "nats-server"];

/// Installs [`BUILD_PACKAGES`] when dpkg says they are missing. On a system
/// without dpkg it does nothing: the build's own error then names what is missing.
fn build_prerequisites() -> Result<(), String> {
    ensure_debian_packages(BUILD_PACKAGES)
}

/// Installs those of `packages` that dpkg says are missing (nothing on a
/// system without dpkg).
fn ensure_debian_packages(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    install_debian_packages(&missing)
}

/// The kubernetes-validate release (PyPI) that checks deploy/k8s, and the
/// Kubernetes version it checks against.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.34.1";
const KUBERNETES_VERSION: &str = "1.34.0";

/// Validates every manifest in deploy/k8s against the Kubernetes schemas,
/// strictly (unknown fields are errors), with kubernetes-validate installed
/// from PyPI into a virtualenv next to the build directory.
fn kubernetes_manifests() -> Result<(), String> {
    let venv = target_dir().join("python-venv");
    let bin = venv.join("bin/kubernetes-validate");
    if !bin.exists() {
        run("python3", &["-m", "venv", &venv.to_string_lossy()])?;
        let pip = venv.join("bin/pip");
        run(
            &pip.to_string_lossy(),
            &["install", "--quiet", KUBERNETES_VALIDATE],
        )?;
    }
    let dir = root().join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        // Kustomize's own file is not a Kubernetes resource.
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut args = vec![
        "--strict".to_string(),
        "--quiet".to_string(),
        "-k".to_string(),
        KUBERNETES_VERSION.to_string(),
    ];
    args.extend(files.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&bin.to_string_lossy(), &args)?;
    println!(
        "kubernetes-validate: {} manifest files in deploy/k8s valid against Kubernetes {KUBERNETES_VERSION}",
        files.len()
    );
    Ok(())
}

/// The wasm-bindgen-cli release matching the `wasm-bindgen` crate (they must agree).
const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// Builds the browser client: the crate for wasm32 (size-optimised profile),
/// its JavaScript bindings with wasm-bindgen, and the static files, into
/// browser-client/dist, which the server serves.
fn web() -> Result<(), String> {
    run("rustup", &["target", "add", "wasm32-unknown-unknown"])?;
    run(
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
        if run("cargo", &locked).is_err() {
            run("cargo", &args)?;
        }
    }
    let wasm = target_dir().join("wasm32-unknown-unknown/wasm-release/convene_web.wasm");
    let dist = root().join("browser-client/dist");
    let _ = std::fs::remove_dir_all(&dist);
    run(
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

/// The static target the image's server is built for.
const MUSL: &str = "x86_64-unknown-linux-musl";

/// The image's name.
fn image_name() -> String {
    format!("localhost/convene-server:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the container image from files we produce (no registry pulls),
/// then checks it the way this sandbox allows: containers cannot run here,
/// so its filesystem is exported and the server started from that root.
fn image() -> Result<(), String> {
    ensure_debian_packages(&["podman", "musl-tools"])?;
    // The image serves the browser client too.
    web()?;
    run("rustup", &["target", "add", MUSL])?;
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
        run(
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
    run(
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
/// loopback: `/healthz`, then `convene load` joining and exchanging media.
fn check_image(name: &str) -> Result<(), String> {
    let rootfs = target_dir().join("image-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let container = format!("convene-image-check-{}", std::process::id());
    run("podman", &["create", "--name", &container, name])?;
    let tar = target_dir().join("image-rootfs.tar");
    let exported = run(
        "podman",
        &["export", "--output", &tar.to_string_lossy(), &container],
    );
    let _ = Command::new("podman").args(["rm", &container]).output();
    exported?;
    run(
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
        run("cargo", &["build", "--quiet", "-p", "convene-cli"])?;
        let convene = target_dir().join("debug/convene");
        run(
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

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
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

/// Debian's Chromium, which Playwright drives; never a downloaded browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's Firefox ESR, which puppeteer-core drives over WebDriver BiDi.
const FIREFOX: &str = "/usr/bin/firefox-esr";

/// Installs Chromium and Firefox ESR (Debian packages) and the pinned npm
/// packages when missing, builds the binaries the pages talk to, and runs
/// Playwright.
fn browser_tests() -> Result<(), String> {
    // PulseAudio: Firefox's Web Audio needs a sound server (the tests start one with a null sink).
    let missing: Vec<&str> = [
        (CHROMIUM, "chromium"),
        (FIREFOX, "firefox-esr"),
        ("/usr/bin/pulseaudio", "pulseaudio"),
    ]
    .iter()
    .filter(|(path, _)| !std::path::Path::new(path).exists())
    .map(|(_, package)| *package)
    .collect();
    if !missing.is_empty() {
        install_debian_packages(&missing)?;
    }
    web()?;
    let e2e = root().join("e2e");
    run_in(&e2e, "npm", &["ci", "--no-audit", "--no-fund"])?;
    run(
        "cargo",
        &[
            "build",
            "--quiet",
            "-p",
            "convene-server",
            "-p",
            "convene-cli",
            // convene-relay, which impairs a browser's path in the path tests.
            "-p",
            "convene-testkit",
        ],
    )?;
    // The browser client is a client too: the same client cases, in Chromium.
    run("cargo", &["build", "--quiet", "-p", "convene-conformance"])?;
    let launcher = e2e.join("conformance-client.js");
    conformance_client(
        "the browser client",
        &["node", &launcher.to_string_lossy(), "{url}"],
    )?;
    println!("\n$ npx playwright test   (Chromium {CHROMIUM}, Firefox {FIREFOX})");
    let status = Command::new("npx")
        .args(["playwright", "test"])
        .current_dir(&e2e)
        .env("CONVENE_BIN_DIR", target_dir().join("debug"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .map_err(|e| format!("cannot run npx (is Node.js installed?): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("browser tests failed".to_string())
    }
}

/// `apt-get install -y` as root; otherwise says what to run.
fn install_debian_packages(packages: &[&str]) -> Result<(), String> {
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root_user {
        return Err(format!(
            "the tests need the Debian packages {}; install them with: sudo apt-get install -y {}",
            packages.join(", "),
            packages.join(" ")
        ));
    }
    println!("\n$ apt-get install -y {}", packages.join(" "));
    let mut args = vec!["install", "-y"];
    args.extend_from_slice(packages);
    if run("apt-get", &args).is_ok() {
        return Ok(());
    }
    // A fresh machine may have no package lists yet.
    run("apt-get", &["update"])?;
    run("apt-get", &args)
}

/// Runs a command in `dir`, echoing it with its time, and fails on a
/// non-zero exit. Playwright's packages are told never to fetch a browser.
fn run_in(dir: &std::path::Path, program: &str, args: &[&str]) -> Result<(), String> {
    if dir == root() {
        println!("\n$ {program} {}", args.join(" "));
    } else {
        println!("\n$ (cd {}) {program} {}", dir.display(), args.join(" "));
    }
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    println!(
        "({program} {} took {:.1} s)",
        args.first().unwrap_or(&""),
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

/// Builds the server in release mode and runs it in the foreground.
fn serve(args: &[String]) -> Result<(), String> {
    web()?;
    run("cargo", &["build", "--release", "-p", "convene-server"])?;
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

/// Runs the conformance binary against the server binary, as an outside
/// implementer would, and prints its per-case report.
fn conformance() -> Result<(), String> {
    run(
        "cargo",
        &[
            "build",
            "--quiet",
            "-p",
            "convene-server",
            "-p",
            "convene-conformance",
        ],
    )?;
    let bin = target_dir().join("debug");
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    // Tokens on: the runner signs one per client, which also lets it play
    // the moderator and check the authentication cases.
    let secret = format!(
        "conformance-secret-{:08x}-{:016x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    println!(
        "\n$ convene-server --listen {listen} (short timers, tokens required) & convene-conformance server --url http://{listen} --auth-secret …"
    );
    let mut server = Command::new(bin.join("convene-server"))
        .args(CONFORMANCE_SERVER)
        .env("CONVENE_AUTH_SECRET", &secret)
        .args(["--listen", &listen, "--log", "warn"])
        .spawn()
        .map_err(|e| format!("cannot start convene-server: {e}"))?;
    let ready = wait_for_port(port, std::time::Duration::from_secs(30));
    let result = if !ready {
        Err("convene-server did not start listening within 30 s".to_string())
    } else {
        let status = Command::new(bin.join("convene-conformance"))
            .args([
                "server",
                "--url",
                &format!("http://{listen}"),
                "--capability",
                "waiting_room",
            ])
            .env("CONVENE_AUTH_SECRET", &secret)
            .status()
            .map_err(|e| format!("cannot start convene-conformance: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err("conformance cases failed".to_string())
        }
    };
    let _ = server.kill();
    let _ = server.wait();
    result?;
    conformance_webtransport(&bin, &secret)?;
    conformance_cluster(&bin, &secret)?;
    let reference = bin.join("convene-reference-client");
    conformance_client(
        "the reference client",
        &[&reference.to_string_lossy(), "{url}"],
    )?;
    // The native CLI is a client too: `convene stream` must pass the same cases.
    run("cargo", &["build", "--quiet", "-p", "convene-cli"])?;
    let cli = bin.join("convene");
    conformance_client(
        "convene stream",
        &[
            &cli.to_string_lossy(),
            "stream",
            "--server",
            "{url}",
            "--meeting-id",
            "conformance",
            "--source",
            "test-pattern",
            "--resolution",
            "160x96",
            "--fps",
            "10",
        ],
    )
}

/// Runs the client conformance cases against the client `command` starts
/// (`{url}` in it is the runner's URL), which reconnects and publishes video.
fn conformance_client(name: &str, command: &[&str]) -> Result<(), String> {
    println!(
        "\n$ convene-conformance client --capability reconnect --capability publishes_video -- {}",
        command.join(" ")
    );
    let status = Command::new(target_dir().join("debug/convene-conformance"))
        .args([
            "client",
            "--capability",
            "reconnect",
            "--capability",
            "publishes_video",
            "--",
        ])
        .args(command)
        .status()
        .map_err(|e| format!("cannot start convene-conformance: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("client conformance cases failed for {name}"))
    }
}

/// Settings of the servers the conformance cases run against: short timers
/// (the runner reads them from Welcome, so the timer cases finish quickly) and
/// a waiting room for the meetings the waiting-room cases use.
const CONFORMANCE_SERVER: &[&str] = &[
    "--handshake-timeout-ms",
    "2000",
    "--heartbeat-interval-ms",
    "1000",
    "--idle-timeout-ms",
    "3000",
    "--waiting-room",
    "conf-wait*",
];

/// The server cases again over WebTransport: a `--dev-tls` server, whose
/// certificate hash the runner pins (read from the server's log).
fn conformance_webtransport(bin: &std::path::Path, secret: &str) -> Result<(), String> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    println!(
        "\n$ convene-server --listen {listen} --dev-tls (short timers, tokens required) & convene-conformance server --transport wt --url https://{listen} --cert-sha256 …"
    );
    let mut command = Command::new(bin.join("convene-server"));
    command
        .args(CONFORMANCE_SERVER)
        .env("CONVENE_AUTH_SECRET", secret)
        .args(["--listen", &listen]);
    let (mut server, hash) = start_dev_tls(command)?;
    let status = Command::new(bin.join("convene-conformance"))
        .args([
            "server",
            "--transport",
            "wt",
            "--url",
            &format!("https://{listen}"),
            "--cert-sha256",
            &hash,
            "--capability",
            "waiting_room",
        ])
        .env("CONVENE_AUTH_SECRET", secret)
        .status();
    let _ = server.kill();
    let _ = server.wait();
    match status {
        Err(e) => Err(format!("cannot start convene-conformance: {e}")),
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err("conformance cases failed over WebTransport".to_string()),
    }
}

/// Starts `command` (a convene-server) with `--dev-tls` and its log on
/// stdout, and returns it with the certificate hash it prints, which a
/// WebTransport client pins. The log goes on being drained in a thread.
fn start_dev_tls(mut command: Command) -> Result<(std::process::Child, String), String> {
    use std::io::BufRead;
    let mut server = command
        .args(["--dev-tls", "--log", "info", "--log-format", "human"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start convene-server: {e}"))?;
    let Some(stdout) = server.stdout.take() else {
        let _ = server.kill();
        let _ = server.wait();
        return Err("no stdout from convene-server".to_string());
    };
    let (hash_tx, hash_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if !sent && let Some(h) = line.split("sha256=").nth(1) {
                let h: String = h.chars().take_while(char::is_ascii_hexdigit).collect();
                let _ = hash_tx.send(h);
                sent = true;
            }
        }
    });
    match hash_rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(hash) => Ok((server, hash)),
        Err(_) => {
            let _ = server.kill();
            let _ = server.wait();
            Err(
                "convene-server --dev-tls did not print its certificate hash within 30 s"
                    .to_string(),
            )
        }
    }
}

/// The server cases once more, with each case's clients spread over two
/// nodes of one cluster joined by a real nats-server (started with the
/// example configuration in deploy/cluster/).
fn conformance_cluster(bin: &std::path::Path, secret: &str) -> Result<(), String> {
    let nats_port = free_port()?;
    let conf = root().join("deploy/cluster/nats-server.conf");
    let nats_bin = ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .ok_or("nats-server is not installed (apt-get install -y nats-server)")?;
    let mut nats = Command::new(nats_bin)
        .arg("-c")
        .arg(&conf)
        .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nats-server: {e}"))?;
    let bus = format!("nats://127.0.0.1:{nats_port}");
    let mut nodes = Vec::new();
    let mut urls = Vec::new();
    for id in ["1", "2"] {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        match Command::new(bin.join("convene-server"))
            .args(CONFORMANCE_SERVER)
            .env("CONVENE_AUTH_SECRET", secret)
            .args(["--listen", &listen, "--log", "warn"])
            .args(["--bus", &bus, "--node-id", id])
            .spawn()
        {
            Ok(c) => nodes.push(c),
            Err(e) => {
                let _ = nats.kill();
                return Err(format!("cannot start convene-server: {e}"));
            }
        }
        urls.push((port, format!("http://{listen}")));
    }
    println!(
        "\n$ nats-server -c deploy/cluster/nats-server.conf -p {nats_port} & convene-server --bus {bus} --node-id 1 & … --node-id 2 & convene-conformance server --url {} --url {}",
        urls[0].1, urls[1].1
    );
    let result = if !urls
        .iter()
        .all(|(port, _)| wait_ready(*port, std::time::Duration::from_secs(30)))
    {
        Err("the cluster nodes did not report ready within 30 s".to_string())
    } else {
        let status = Command::new(bin.join("convene-conformance"))
            .args(["server", "--url", &urls[0].1, "--url", &urls[1].1])
            .args(["--capability", "waiting_room"])
            .env("CONVENE_AUTH_SECRET", secret)
            .status()
            .map_err(|e| format!("cannot start convene-conformance: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err("conformance cases failed over two cluster nodes".to_string())
        }
    };
    for mut n in nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    let _ = nats.kill();
    let _ = nats.wait();
    result
}

/// Waits until the server on `port` answers `/readyz` with 200.
fn wait_ready(port: u16, limit: std::time::Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The whole reply (status line, headers, body) to `GET path` on loopback.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    Some(String::from_utf8_lossy(&reply).into_owned())
}

/// What `cargo xtask bench --help` prints.
const BENCH_HELP: &str = "\
cargo xtask bench [--subscribers N] [--seconds S] [--rounds R] [--path-delay-ms D]

The end-to-end fan-out benchmark: one publisher (30 fps video of 2,000 bytes,
50 fps audio of 100 bytes) to N subscribers on loopback, through a release
convene-server with --dev-tls, over WebSocket and over WebTransport, each
next to its floor measured in the same round: the same frames written to N
plain TCP connections (`fanout floor`) and sent as UDP datagrams of at most
1,200 bytes (`fanout udp-floor`). Rounds alternate floor, WebSocket and
WebTransport, because a shared host drifts; compare means, not single runs.

  --subscribers N   subscribers (default 200)
  --seconds S       seconds measured per run (default 10)
  --rounds R        rounds (default 3)
  --path-delay-ms D WebTransport through `convene-relay --delay-ms D` (D ms
                    added each way, so a round trip of about 2 x D ms, as on a
                    real path; the relay's own CPU is not counted). WebSocket
                    stays direct: there is no TCP relay. Default: no relay.

cargo xtask bench --soak [--seconds S] [--members N]

The soak: a meeting of N members (default 50, 5 of them publishing audio and
video) on a release server that requires tokens, over WebSocket, for S
seconds (default 60), while `convene-attack` runs the attacks of the
security review from many loopback addresses (connections that never say
Hello, slowloris heads, first frames that claim a megabyte, members flooding
E2EE messages and key-frame requests) and joins a fresh member with a token
every second. Reports the members' audio loss (target: zero), the server's
peak memory, and how many of the fresh members got in.
";

/// `cargo xtask bench --soak`: a meeting under attack (see BENCH_HELP).
fn soak(args: &[String]) -> Result<(), String> {
    let (mut seconds, mut members) = (60u32, 50u32);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let target = match flag.as_str() {
            "--seconds" => &mut seconds,
            "--members" => &mut members,
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench --soak; see `cargo xtask bench --help`"
                ));
            }
        };
        let value = it.next().ok_or_else(|| format!("{flag} takes a number"))?;
        *target = value
            .parse()
            .ok()
            .filter(|n| *n >= 2)
            .ok_or_else(|| format!("{flag} takes a whole number from 2, not `{value}`"))?;
    }
    println!("building release binaries (fat LTO: about 11 minutes from scratch on 2 cores)");
    run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "convene-server",
            "-p",
            "convene-cli",
            "-p",
            "convene-testkit",
        ],
    )?;
    let bin = target_dir().join("release");
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let secret = format!(
        "soak-secret-{:016x}-padding-to-32-bytes",
        std::process::id()
    );
    let mut server = Command::new(bin.join("convene-server"))
        .args(["--listen", &listen, "--log", "error"])
        .env("CONVENE_AUTH_SECRET", &secret)
        .spawn()
        .map_err(|e| format!("cannot start convene-server: {e}"))?;
    if !wait_for_port(port, std::time::Duration::from_secs(30)) {
        let _ = server.kill();
        return Err("convene-server did not start listening within 30 s".into());
    }
    let token = Command::new(bin.join("convene"))
        .args(["token", "--meeting", "*", "--user", "soak", "--ttl", "7200"])
        .env("CONVENE_AUTH_SECRET", &secret)
        .output()
        .map_err(|e| format!("cannot run convene token: {e}"))?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    if token.is_empty() {
        let _ = server.kill();
        return Err("convene token printed no token".into());
    }
    let pid = server.id();
    let rss = move || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let rss_before = rss();
    println!(
        "soak: {members} members (5 publishing) for {seconds} s on {listen}, attacks from 24 loopback addresses"
    );
    // The attacks start as the members do, and last as long.
    let mut load = Command::new(bin.join("convene"))
        .args([
            "load",
            "--server",
            &format!("http://{listen}"),
            "--token",
            &token,
            "--meeting",
            "soak",
            "-n",
            &members.to_string(),
            "--publishers",
            "5",
            "--ramp-up",
            "5",
            "--duration",
            &seconds.to_string(),
            "--server-pid",
            &pid.to_string(),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start convene load: {e}"))?;
    let attack = Command::new(bin.join("convene-attack"))
        .args([
            "--server",
            &listen,
            "--token",
            &token,
            "--meeting",
            "soak",
            "--seconds",
            &(seconds + 10).to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start convene-attack: {e}"))?;
    let mut peak = rss_before;
    let load_out = loop {
        peak = peak.max(rss());
        if let Ok(Some(_)) = load.try_wait() {
            break load.wait_with_output().map_err(|e| e.to_string())?;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let attack_out = attack.wait_with_output().map_err(|e| e.to_string())?;
    peak = peak.max(rss());
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://{listen}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    let report = last_json(&load_out.stdout).ok_or("convene load printed no report")?;
    let attacks = last_json(&attack_out.stdout).ok_or("convene-attack printed no summary")?;
    let metric = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    println!("\nsoak results ({seconds} s, {members} members under attack)");
    println!(
        "  members      joined {} of {}, ended early {}",
        report["joined"], report["participants"], report["ended_early"]
    );
    println!(
        "  audio loss   {:.3} % (all media {:.3} %), latency p50 {} / p99 {} ms",
        report["audio_loss_percent"].as_f64().unwrap_or(f64::NAN),
        report["loss_percent"].as_f64().unwrap_or(f64::NAN),
        report["latency_ms"]["p50"],
        report["latency_ms"]["p99"]
    );
    println!(
        "  newcomers    {} of {} joined with a valid token during the attack (slowest {} ms)",
        attacks["probes_joined"], attacks["probes"], attacks["probe_join_ms_max"]
    );
    println!(
        "  attacks      {} connections opened, {} refused at once; {} E2EE messages and {} key-frame requests sent",
        attacks["attack_connections_opened"],
        attacks["attack_connections_refused"],
        attacks["relay_messages_sent"],
        attacks["key_frame_requests_sent"]
    );
    println!(
        "  server       RSS {} MiB before, {} MiB at most; {} handshaking connections closed to make room",
        rss_before / 1024,
        peak / 1024,
        metric("convene_handshaking_evicted")
    );
    Ok(())
}

/// One transport's figures from one `convene load --json` run.
#[derive(Debug, Default, Clone, Copy)]
struct LoadRun {
    us_per_frame: f64,
    p50_ms: f64,
    p99_ms: f64,
    kib_per_connection: f64,
    loss_percent: f64,
}

impl LoadRun {
    /// The run as one line of the summary, against the floor named `floor_name`.
    fn line(&self, transport: &str, floor: f64, floor_name: &str) -> String {
        format!(
            "  {transport:<14} {:6.2} µs per delivered frame ({:.1}x {floor_name} floor), p50 {:.1} ms, p99 {:.1} ms, {:.0} KiB per connection, loss {:.3} %",
            self.us_per_frame,
            self.us_per_frame / floor,
            self.p50_ms,
            self.p99_ms,
            self.kib_per_connection,
            self.loss_percent
        )
    }
}

/// Runs the fan-out benchmark over both transports with their floors and
/// prints a summary (see [`BENCH_HELP`]).
fn bench(args: &[String]) -> Result<(), String> {
    if args.first().is_some_and(|a| a == "--soak") {
        return soak(&args[1..]);
    }
    let (mut subscribers, mut seconds, mut rounds) = (200u32, 10u32, 3u32);
    let mut delay_ms = 0u32;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let target = match flag.as_str() {
            "--subscribers" => &mut subscribers,
            "--seconds" => &mut seconds,
            "--rounds" => &mut rounds,
            "--path-delay-ms" => &mut delay_ms,
            "--help" | "-h" => {
                print!("{BENCH_HELP}");
                return Ok(());
            }
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench; see `cargo xtask bench --help`"
                ));
            }
        };
        let value = it.next().ok_or_else(|| format!("{flag} takes a number"))?;
        // A delay of 0 means no relay; the counts must be at least 1.
        let least = u32::from(flag != "--path-delay-ms");
        *target =
            value.parse().ok().filter(|n| *n >= least).ok_or_else(|| {
                format!("{flag} takes a whole number from {least}, not `{value}`")
            })?;
    }
    println!("building release binaries (fat LTO: about 11 minutes from scratch on 2 cores)");
    run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "convene-server",
            "-p",
            "convene-cli",
            "-p",
            "convene-benches",
            "-p",
            "convene-testkit",
        ],
    )?;
    let bin = target_dir().join("release");
    if delay_ms > 0 {
        println!(
            "WebTransport through convene-relay adding {delay_ms} ms each way; WebSocket direct"
        );
    }
    let (n, secs) = (subscribers.to_string(), seconds.to_string());
    let mut floors = Vec::new();
    let mut runs: Vec<(LoadRun, LoadRun)> = Vec::new();
    for round in 1..=rounds {
        println!("\nround {round} of {rounds}: 1 -> {subscribers}, {seconds} s per run");
        let floor = |mode: &str| -> Result<f64, String> {
            let out = Command::new(bin.join("fanout"))
                .args([mode, "--subscribers", &n, "--seconds", &secs, "--json"])
                .current_dir(root())
                .output()
                .map_err(|e| format!("cannot start fanout: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "fanout {mode} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let v = last_json(&out.stdout).ok_or(format!("fanout {mode} printed no JSON"))?;
            v["us_per_frame"]
                .as_f64()
                .ok_or(format!("fanout {mode}: no us_per_frame in its JSON"))
        };
        let tcp = floor("floor")?;
        println!("  TCP floor      {tcp:6.2} µs per delivered frame");
        let udp = floor("udp-floor")?;
        println!("  UDP floor      {udp:6.2} µs per delivered frame");
        floors.push((tcp, udp));
        let ws = bench_load(&bin, "ws", subscribers, seconds, 0)?;
        println!("{}", ws.line("WebSocket", tcp, "TCP"));
        let wt = bench_load(&bin, "wt", subscribers, seconds, delay_ms)?;
        println!("{}", wt.line("WebTransport", udp, "UDP"));
        runs.push((ws, wt));
    }
    let mean = |xs: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = xs.collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let tcp = mean(&mut floors.iter().map(|f| f.0));
    let udp = mean(&mut floors.iter().map(|f| f.1));
    let ws = mean(&mut runs.iter().map(|r| r.0.us_per_frame));
    let wt = mean(&mut runs.iter().map(|r| r.1.us_per_frame));
    println!(
        "\nmeans over {rounds} rounds, 1 -> {subscribers}:\n  WebSocket      {ws:6.2} µs per delivered frame, TCP floor {tcp:.2} µs: {:.2}x\n  WebTransport   {wt:6.2} µs per delivered frame, UDP floor {udp:.2} µs: {:.2}x",
        ws / tcp,
        wt / udp
    );
    Ok(())
}

/// One `convene load --json` run against a fresh `--dev-tls` server, through
/// a relay adding `delay_ms` each way when it is not 0.
fn bench_load(
    bin: &std::path::Path,
    transport: &str,
    subscribers: u32,
    seconds: u32,
    delay_ms: u32,
) -> Result<LoadRun, String> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(bin.join("convene-server"));
    command.args(["--listen", &listen]);
    let (mut server, hash) = start_dev_tls(command)?;
    let mut load = Command::new(bin.join("convene"));
    load.args([
        "load",
        "--server",
        &format!("https://{listen}"),
        "--cert-sha256",
        &hash,
        "--transport",
        transport,
        "-n",
        &(subscribers + 1).to_string(),
        "--ramp-up",
        "5",
        "--duration",
        &seconds.to_string(),
        "--server-pid",
        &server.id().to_string(),
        "--json",
    ])
    .stderr(std::process::Stdio::inherit());
    let mut relay = None;
    if delay_ms > 0 {
        match start_relay(bin, &listen, delay_ms) {
            Ok((child, port)) => {
                relay = Some(child);
                load.args(["--webtransport-port", &port.to_string()]);
            }
            Err(e) => {
                let _ = server.kill();
                let _ = server.wait();
                return Err(e);
            }
        }
    }
    let out = load.output();
    for child in [Some(&mut server), relay.as_mut()].into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out.map_err(|e| format!("cannot start convene load: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "convene load over {transport} failed ({})",
            out.status
        ));
    }
    let v =
        last_json(&out.stdout).ok_or(format!("convene load over {transport} printed no JSON"))?;
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    Ok(LoadRun {
        us_per_frame: num(&v["server_cpu_us_per_frame"]),
        p50_ms: num(&v["latency_ms"]["p50"]),
        p99_ms: num(&v["latency_ms"]["p99"]),
        kib_per_connection: num(&v["server_kib_per_connection"]),
        loss_percent: num(&v["loss_percent"]),
    })
}

/// Starts `convene-relay` in front of the server's UDP port `server` (the
/// same address as its HTTPS listener); returns it and the port it listens on.
fn start_relay(
    bin: &std::path::Path,
    server: &str,
    delay_ms: u32,
) -> Result<(std::process::Child, u16), String> {
    use std::io::BufRead;
    let mut relay = Command::new(bin.join("convene-relay"))
        .args(["--to", server, "--delay-ms", &delay_ms.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start convene-relay: {e}"))?;
    let first = relay.stdout.take().and_then(|out| {
        std::io::BufReader::new(out)
            .lines()
            .next()
            .and_then(Result::ok)
    });
    // "relay 127.0.0.1:PORT -> SERVER"
    let port = first.as_deref().and_then(|l| {
        l.strip_prefix("relay ")?
            .split_whitespace()
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    });
    match port {
        Some(port) => Ok((relay, port)),
        None => {
            let _ = relay.kill();
            let _ = relay.wait();
            Err(format!(
                "convene-relay did not say where it listens (it printed {first:?})"
            ))
        }
    }
}

/// The JSON object a tool printed on stdout (after any other lines).
fn last_json(stdout: &[u8]) -> Option<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find('{')?;
    serde_json::from_str(&text[start..]).ok()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn wait_for_port(port: u16, limit: std::time::Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

fn fuzz(args: &[String]) -> Result<(), String> {
    let usage = "usage: cargo xtask fuzz [--seconds N] [--only TARGET[,TARGET…]]";
    let mut seconds = 60u64;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--seconds" => {
                seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        format!("--seconds takes a whole number of seconds above 0, not `{value}`")
                    })?
            }
            "--only" => only = Some(value.split(',').map(str::to_string).collect()),
            _ => return Err(format!("unknown option `{flag}`; {usage}")),
        }
    }
    if !have_cargo("fuzz") {
        println!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)");
        run(
            "cargo",
            &[
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ],
        )?;
    }
    let fuzz_dir = root().join("fuzz");
    let out = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .map_err(|e| format!("cannot run cargo fuzz list: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo +nightly fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let all: Vec<&str> = listed.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(only) = &only
        && let Some(unknown) = only.iter().find(|o| !all.contains(&o.as_str()))
    {
        return Err(format!(
            "no fuzz target `{unknown}`; the targets are: {}",
            all.join(", ")
        ));
    }
    let targets: Vec<&str> = all
        .into_iter()
        .filter(|t| only.as_ref().is_none_or(|o| o.iter().any(|x| x == t)))
        .collect();
    let mut report = Vec::new();
    for target in targets {
        // New inputs go to a scratch corpus; the committed seeds stay small
        // and are read as a second corpus directory.
        let scratch = format!("target/corpus/{target}");
        std::fs::create_dir_all(fuzz_dir.join(&scratch))
            .map_err(|e| format!("cannot create {scratch}: {e}"))?;
        let seeds = format!("corpus/{target}");
        let max_time = format!("-max_total_time={seconds}");
        println!("\n== fuzzing {target} for {seconds} s");
        let started = Instant::now();
        // libFuzzer reports on stderr; it is shown as it comes and kept for
        // the final statistics.
        let mut child = Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                &scratch,
                &seeds,
                "--",
                &max_time,
                "-print_final_stats=1",
            ])
            .current_dir(&fuzz_dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let mut stats = Vec::new();
        if let Some(err) = child.stderr.take() {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if line.starts_with("stat::") {
                    stats.push(line);
                }
            }
        }
        let status = child
            .wait()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        if !status.success() {
            return Err(format!(
                "fuzz target {target} found a failure; see fuzz/artifacts/{target}"
            ));
        }
        let stat = |name: &str| {
            stats
                .iter()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map_or("?".to_string(), |v| v.trim().to_string())
        };
        report.push(format!(
            "{target:<16} {seconds:>6} s  {:>12} executions  {:>8} per second  peak {} MB  ({:.0} s with the build)",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            stat("peak_rss_mb"),
            started.elapsed().as_secs_f64(),
        ));
    }
    println!("\n== fuzzing done, no failure found");
    for line in report {
        println!("{line}");
    }
    Ok(())
}
