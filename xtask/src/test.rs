//! `cargo xtask test`: every check and test, as CI runs them.

use std::process::Command;

use crate::apt::{build_prerequisites, ensure_debian_packages, install_debian_packages};
use crate::process::{self, have_cargo, root, run_in, target_dir};

/// Flags of `cargo xtask test`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub(crate) struct Args {
    /// Skip the checks (codegen, image, fmt, clippy, wasm32
    /// builds, k8s): start at the workspace tests
    #[arg(long, verbatim_doc_comment)]
    pub(crate) quick: bool,
}

/// Runs the checks (unless `quick`), then the tests, in the order CI relies on.
pub(crate) fn run(quick: bool) -> Result<(), String> {
    build_prerequisites()?;
    if !quick {
        crate::codegen::run(true)?;
        // The release image first: a static build takes minutes, best
        // spent before the test binaries compete for the cores.
        crate::image::run()?;
        process::run("cargo", &["fmt", "--all", "--", "--check"])?;
        process::run(
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
        process::run(
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
        process::run(
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
        process::run(
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
        crate::k8s::run()?;
    }
    if have_cargo("nextest") {
        process::run(
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
        process::run("cargo", &["test", "--workspace", "--doc"])?;
    } else {
        process::run("cargo", &["test", "--workspace", "--no-fail-fast"])?;
    }
    // Benchmarks in smoke mode only: each runs once, to show it still works.
    process::run(
        "cargo",
        &["test", "--quiet", "-p", "convene-benches", "--benches"],
    )?;
    browser_tests()?;
    crate::conformance::run()?;
    Ok(())
}

/// Debian's Chromium, which Playwright drives; never a downloaded browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's Firefox ESR, which puppeteer-core drives over WebDriver BiDi.
const FIREFOX: &str = "/usr/bin/firefox-esr";
/// Debian's WebKitGTK driver (package webkit2gtk-driver, which brings
/// MiniBrowser); selenium-webdriver drives it.
const WEBKIT_DRIVER: &str = "/usr/bin/WebKitWebDriver";

/// Installs Chromium, Firefox ESR and WebKitGTK's driver (Debian packages)
/// and the pinned npm packages when missing, builds the binaries the pages
/// talk to, and runs Playwright: the WebKit test on its own, last.
fn browser_tests() -> Result<(), String> {
    // PulseAudio: Firefox's Web Audio needs a sound server (the tests start
    // one with a null sink). Xvfb: MiniBrowser needs an X display (the WebKit
    // test starts its own).
    let missing: Vec<&str> = [
        (CHROMIUM, "chromium"),
        (FIREFOX, "firefox-esr"),
        ("/usr/bin/pulseaudio", "pulseaudio"),
        (WEBKIT_DRIVER, "webkit2gtk-driver"),
        ("/usr/bin/Xvfb", "xvfb"),
    ]
    .iter()
    .filter(|(path, _)| !std::path::Path::new(path).exists())
    .map(|(_, package)| *package)
    .collect();
    if !missing.is_empty() {
        install_debian_packages(&missing)?;
    }
    // WebKitGTK's WebCodecs are GStreamer's: H.264 encoding through
    // openh264enc (plugins-bad) and decoding through avdec_h264 (libav).
    // apt brings both as recommendations of WebKitGTK, unless told not to.
    ensure_debian_packages(&["gstreamer1.0-plugins-bad", "gstreamer1.0-libav"])?;
    crate::web::run()?;
    let e2e = root().join("e2e");
    run_in(&e2e, "npm", &["ci", "--no-audit", "--no-fund"])?;
    process::run(
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
            // The E2EE spec starts a server with --test-fault.
            "--features",
            "convene-server/test-hooks",
        ],
    )?;
    // The browser client is a client too: the same client cases, in Chromium.
    process::run("cargo", &["build", "--quiet", "-p", "convene-conformance"])?;
    let launcher = e2e.join("conformance-client.js");
    crate::conformance::client(
        "the browser client",
        &["node", &launcher.to_string_lossy(), "{url}"],
    )?;
    println!(
        "\n$ npx playwright test --grep-invert @webkit   (Chromium {CHROMIUM}, Firefox {FIREFOX})"
    );
    let others = playwright(&e2e, &["--grep-invert", "@webkit"])?;
    println!(
        "\n$ npx playwright test --grep @webkit   (WebKit: MiniBrowser through {WEBKIT_DRIVER})"
    );
    let webkit = playwright(&e2e, &["--grep", "@webkit"])?;
    match (others, webkit) {
        (true, true) => Ok(()),
        (false, true) => Err("browser tests failed (Chromium/Firefox)".to_string()),
        (true, false) => Err("browser tests failed (WebKit)".to_string()),
        (false, false) => Err("browser tests failed (Chromium/Firefox and WebKit)".to_string()),
    }
}

/// Runs `npx playwright test ARGS` in `e2e`; whether every test passed.
fn playwright(e2e: &std::path::Path, args: &[&str]) -> Result<bool, String> {
    let status = Command::new("npx")
        .args(["playwright", "test"])
        .args(args)
        .current_dir(e2e)
        .env("CONVENE_BIN_DIR", target_dir().join("debug"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .map_err(|e| format!("cannot run npx (is Node.js installed?): {e}"))?;
    Ok(status.success())
}
