//! Project automation, run as `cargo xtask <command>`.
//!
//! Every step a developer or CI needs lives here, so that nothing depends on a
//! tool someone installed by hand.

mod apt;
mod bench;
mod codegen;
mod conformance;
mod fuzz;
mod image;
mod k8s;
mod process;
mod serve;
mod soak;
mod test;
mod web;

use std::env;
use std::process::ExitCode;

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

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(args.iter().any(|a| a == "--check")),
        Some("test") => test::run(args.iter().any(|a| a == "--quick")),
        Some("conformance") => apt::build_prerequisites().and_then(|()| conformance::run()),
        Some("k8s") => k8s::run(),
        Some("web") => web::run(),
        Some("image") => image::run(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("serve") => serve::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
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
