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

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Project automation: every step a developer or CI needs
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "`cargo xtask help <COMMAND>` describes a command and its flags;\n\
                  `cargo xtask serve --help` shows the server's options."
)]
struct Cli {
    /// What to do; without one, this help.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The commands, one module each.
#[derive(Debug, PartialEq, Eq, Subcommand)]
// Flags given twice take the last value, as they always have.
#[command(args_override_self = true)]
enum Command {
    /// Regenerate protocol/src/generated/, admin/src/generated/ and the
    /// generated parts of spec/PROTOCOL.md (--check: fail if any is stale)
    ///
    /// Everything is generated from spec/; after editing it, run this and
    /// commit the result. `cargo xtask test` fails while anything is stale.
    #[command(verbatim_doc_comment)]
    Codegen(codegen::Args),
    /// Run every check and test: codegen staleness, the container image, fmt,
    /// clippy (the browser client's also for wasm32), the wasm32 build of
    /// convene-protocol, the Kubernetes manifests, the workspace tests, the
    /// benchmarks once each, the browser tests and the conformance runs
    /// (--quick: from the workspace tests on)
    ///
    /// In this order (CI runs it through .ci/run):
    ///  1. the Debian packages libclang-dev, systemd and nats-server, installed
    ///     with apt-get when missing (as root; otherwise it says what to run);
    ///  2. unless --quick: `cargo xtask codegen --check`; `cargo xtask image`
    ///     (first, while no tests compete for the cores); cargo fmt --check;
    ///     clippy on the workspace and on convene-cli without its default
    ///     features; the wasm32 build of convene-protocol; clippy on convene-web
    ///     for wasm32; `cargo xtask k8s`;
    ///  3. the workspace tests: cargo nextest when installed (then the doctests
    ///     with cargo test --doc), else cargo test;
    ///  4. every benchmark once, in smoke mode;
    ///  5. the browser tests: Debian's chromium, firefox-esr and pulseaudio
    ///     (installed when missing; no browser is downloaded), `cargo xtask web`,
    ///     npm ci in e2e/, the client conformance cases in Chromium, Playwright;
    ///  6. the conformance runs (see `cargo xtask help conformance`).
    #[command(verbatim_doc_comment)]
    Test(test::Args),
    /// Only the conformance runs: the server over WebSocket, over
    /// WebTransport and as two NATS nodes; the reference client and
    /// `convene stream` as clients
    ///
    /// The servers run with short timers, a waiting room and tokens required,
    /// and the cluster's nats-server with deploy/cluster/nats-server.conf.
    /// Installs libclang-dev, systemd and nats-server first when missing.
    #[command(verbatim_doc_comment)]
    Conformance,
    /// Build and run the server on http://127.0.0.1:8080 (ARGS go to
    /// convene-server; `cargo xtask serve --help` shows its options)
    ///
    /// Builds the browser client (`cargo xtask web`) and a release
    /// convene-server, then runs it in the foreground from the workspace root
    /// with ARGS exactly as given, `--help` included, e.g.
    ///     cargo xtask serve --listen 0.0.0.0:8080 --dev-tls
    #[command(verbatim_doc_comment)]
    Serve(serve::Args),
    /// Build the container image (deploy/Containerfile) with podman, from a
    /// static musl build of the server, and check it: export its filesystem,
    /// start the server from it, check /readyz and a meeting with media
    ///
    /// The image is localhost/convene-server:<version>, built from files made
    /// here (no registry pulls): the stripped server, the browser client, the
    /// CA roots and a non-root user. The check also fetches the browser client
    /// from the image's own files. Installs podman and musl-tools when missing.
    #[command(verbatim_doc_comment)]
    Image,
    /// Build the browser client into browser-client/dist (wasm32 build,
    /// then the pinned wasm-bindgen-cli, installed when missing)
    ///
    /// The server serves browser-client/dist; `serve`, `image` and the browser
    /// tests build it first.
    #[command(verbatim_doc_comment)]
    Web,
    /// Validate deploy/k8s strictly against the Kubernetes schemas
    /// (kubernetes-validate)
    ///
    /// Unknown fields are errors. kubernetes-validate comes from PyPI, into a
    /// virtualenv in the target directory.
    #[command(verbatim_doc_comment)]
    K8s,
    /// Run each cargo-fuzz target (or those named) for N seconds (default 60),
    /// then print executions per target (needs nightly; installs cargo-fuzz)
    ///
    /// New inputs go to fuzz/target/corpus/<target>; the committed seeds in
    /// fuzz/corpus/<target> are read too. A failure stops the run and is kept
    /// in fuzz/artifacts/<target>.
    #[command(verbatim_doc_comment)]
    Fuzz(fuzz::Args),
    /// The end-to-end fan-out benchmark, WebSocket and WebTransport side by
    /// side with their floors (TCP and UDP), R rounds alternated, release
    /// builds; prints server CPU per delivered frame, latency and memory per
    /// connection (defaults: 200 subscribers, 10 s, 3 rounds);
    /// --meeting: a large meeting with and without selective forwarding;
    /// --soak: a meeting under attack
    ///
    /// The fan-out benchmark: one publisher (30 fps video of 2,000 bytes,
    /// 50 fps audio of 100 bytes) to N subscribers on loopback, through a release
    /// convene-server with --dev-tls, over WebSocket and over WebTransport, each
    /// next to its floor measured in the same round: the same frames written to N
    /// plain TCP connections (`fanout floor`) and sent as UDP datagrams of at most
    /// 1,200 bytes (`fanout udp-floor`). Rounds alternate floor, WebSocket and
    /// WebTransport, because a shared host drifts; compare means, not single runs.
    ///
    /// The large meeting (--meeting): `convene load --shape meeting` with N
    /// members (default 1000; 3 speakers, everyone else comfort noise, 25
    /// three-encoding cameras, everyone last-7 and loudest-3) on a release
    /// server over WebSocket, with selective forwarding and again without,
    /// each round next to the TCP floor for N connections; prints server CPU
    /// per delivered frame against the floor, latency, the speakers' loss, and
    /// each member's received bitrate against the server's path estimates.
    ///
    /// The soak (--soak): a meeting of N members (default 50, 5 of them
    /// publishing audio and video) on a release server that requires tokens,
    /// over WebSocket, for S seconds (default 60), while `convene-attack` runs
    /// the attacks of the security review from many loopback addresses
    /// (connections that never say Hello, slowloris heads, first frames that
    /// claim a megabyte, members flooding E2EE messages and key-frame requests)
    /// and joins a fresh member with a token every second. Reports the members'
    /// audio loss (target: zero), the server's peak memory, and how many of the
    /// fresh members got in.
    #[command(
        verbatim_doc_comment,
        override_usage = "cargo xtask bench [--subscribers N] [--seconds S] [--rounds R] [--path-delay-ms D]\n       \
                          cargo xtask bench --meeting [--members N] [--seconds S] [--rounds R]\n       \
                          cargo xtask bench --soak [--seconds S] [--members N]"
    )]
    Bench(bench::Args),
}

/// Runs the command the arguments name; a failure is printed and exits 1.
fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Some(Command::Codegen(args)) => codegen::run(args.check),
        Some(Command::Test(args)) => test::run(args.quick),
        Some(Command::Conformance) => apt::build_prerequisites().and_then(|()| conformance::run()),
        Some(Command::K8s) => k8s::run(),
        Some(Command::Web) => web::run(),
        Some(Command::Image) => image::run(),
        Some(Command::Fuzz(args)) => fuzz::run(&args),
        Some(Command::Serve(args)) => serve::run(&args.args),
        Some(Command::Bench(args)) => bench::run(&args),
        None => Cli::command()
            .print_help()
            .map_err(|e| format!("cannot print the help: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench::Plan;

    /// Parses `cargo xtask <args>`.
    fn parse(args: &[&str]) -> Result<Option<Command>, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    /// The command `args` name, which must parse.
    fn command(args: &[&str]) -> Command {
        match parse(args) {
            Ok(Some(c)) => c,
            other => panic!("{args:?} did not parse to a command: {other:?}"),
        }
    }

    /// True when clap refuses `args` as a usage error (not a help request).
    fn refused(args: &[&str]) -> bool {
        parse(args).is_err_and(|e| e.use_stderr())
    }

    /// The bench plan `args` ask for.
    fn plan(args: &[&str]) -> Result<Plan, String> {
        match command(args) {
            Command::Bench(b) => b.plan(),
            other => panic!("{args:?} is not bench: {other:?}"),
        }
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_is_none_and_unknown_commands_are_refused() {
        assert!(matches!(parse(&[]), Ok(None)));
        assert!(refused(&["frobnicate"]));
        assert!(refused(&["--frobnicate"]));
    }

    #[test]
    fn codegen_writes_unless_check() {
        assert_eq!(
            command(&["codegen"]),
            Command::Codegen(codegen::Args { check: false })
        );
        assert_eq!(
            command(&["codegen", "--check"]),
            Command::Codegen(codegen::Args { check: true })
        );
        assert!(refused(&["codegen", "--chek"]));
        assert!(refused(&["codegen", "check"]));
    }

    #[test]
    fn test_is_full_unless_quick() {
        assert_eq!(
            command(&["test"]),
            Command::Test(test::Args { quick: false })
        );
        assert_eq!(
            command(&["test", "--quick"]),
            Command::Test(test::Args { quick: true })
        );
        assert!(refused(&["test", "--fast"]));
    }

    #[test]
    fn commands_without_flags_take_none() {
        assert_eq!(command(&["conformance"]), Command::Conformance);
        assert_eq!(command(&["image"]), Command::Image);
        assert_eq!(command(&["web"]), Command::Web);
        assert_eq!(command(&["k8s"]), Command::K8s);
        for name in ["conformance", "image", "web", "k8s"] {
            assert!(refused(&[name, "--quick"]), "{name} took a flag");
            assert!(refused(&[name, "extra"]), "{name} took an argument");
        }
    }

    #[test]
    fn serve_passes_every_argument_through() {
        let serve = |args: &[&str]| match command(args) {
            Command::Serve(s) => s.args,
            other => panic!("{args:?} is not serve: {other:?}"),
        };
        assert_eq!(serve(&["serve"]), Vec::<String>::new());
        assert_eq!(
            serve(&["serve", "--listen", "0.0.0.0:9", "--foo"]),
            ["--listen", "0.0.0.0:9", "--foo"]
        );
        assert_eq!(
            serve(&["serve", "--dev-tls", "--log", "debug"]),
            ["--dev-tls", "--log", "debug"]
        );
        // The server's help, not ours, as README.md says.
        assert_eq!(serve(&["serve", "--help"]), ["--help"]);
        assert_eq!(serve(&["serve", "-h"]), ["-h"]);
        assert_eq!(
            serve(&["serve", "--listen", "x", "--", "y"]),
            ["--listen", "x", "--", "y"]
        );
        // Only a `--` in first place is clap's own, and is dropped.
        assert_eq!(serve(&["serve", "--", "--foo"]), ["--foo"]);
    }

    #[test]
    fn fuzz_defaults_to_every_target_for_60_seconds() {
        assert_eq!(
            command(&["fuzz"]),
            Command::Fuzz(fuzz::Args {
                seconds: 60,
                only: None
            })
        );
        assert_eq!(
            command(&["fuzz", "--seconds", "600", "--only", "a,b"]),
            Command::Fuzz(fuzz::Args {
                seconds: 600,
                only: Some(vec!["a".into(), "b".into()])
            })
        );
        assert_eq!(
            command(&["fuzz", "--only", "frame"]),
            Command::Fuzz(fuzz::Args {
                seconds: 60,
                only: Some(vec!["frame".into()])
            })
        );
        // Given twice, the last value counts.
        assert_eq!(
            command(&["fuzz", "--seconds", "5", "--seconds", "7"]),
            Command::Fuzz(fuzz::Args {
                seconds: 7,
                only: None
            })
        );
        assert_eq!(
            command(&["fuzz", "--only", "a", "--only", "b"]),
            Command::Fuzz(fuzz::Args {
                seconds: 60,
                only: Some(vec!["b".into()])
            })
        );
        assert!(refused(&["fuzz", "--seconds", "0"]));
        assert!(refused(&["fuzz", "--seconds", "-1"]));
        assert!(refused(&["fuzz", "--seconds", "ten"]));
        assert!(refused(&["fuzz", "--seconds"]));
        assert!(refused(&["fuzz", "--only"]));
        assert!(refused(&["fuzz", "--target", "frame"]));
    }

    #[test]
    fn bench_defaults() {
        assert_eq!(
            plan(&["bench"]),
            Ok(Plan::Fanout {
                subscribers: 200,
                seconds: 10,
                rounds: 3,
                delay_ms: 0
            })
        );
        assert_eq!(
            plan(&[
                "bench",
                "--subscribers",
                "5",
                "--seconds",
                "1",
                "--rounds",
                "2",
                "--path-delay-ms",
                "40"
            ]),
            Ok(Plan::Fanout {
                subscribers: 5,
                seconds: 1,
                rounds: 2,
                delay_ms: 40
            })
        );
        assert_eq!(
            plan(&["bench", "--rounds", "1", "--rounds", "4"]),
            Ok(Plan::Fanout {
                subscribers: 200,
                seconds: 10,
                rounds: 4,
                delay_ms: 0
            })
        );
        // A delay of 0 means no relay; the counts must be at least 1.
        assert!(refused(&["bench", "--subscribers", "0"]));
        assert!(refused(&["bench", "--seconds", "0"]));
        assert!(refused(&["bench", "--rounds", "0"]));
        assert!(refused(&["bench", "--path-delay-ms", "-1"]));
        assert!(refused(&["bench", "--subscribers"]));
        assert!(refused(&["bench", "--publishers", "2"]));
    }

    #[test]
    fn bench_soak_defaults() {
        assert_eq!(
            plan(&["bench", "--soak"]),
            Ok(Plan::Soak {
                seconds: 60,
                members: 50
            })
        );
        assert_eq!(
            plan(&["bench", "--soak", "--seconds", "60"]),
            Ok(Plan::Soak {
                seconds: 60,
                members: 50
            })
        );
        assert_eq!(
            plan(&["bench", "--soak", "--seconds", "2", "--members", "2"]),
            Ok(Plan::Soak {
                seconds: 2,
                members: 2
            })
        );
        assert!(plan(&["bench", "--soak", "--seconds", "1"]).is_err());
        assert!(refused(&["bench", "--soak", "--members", "1"]));
        // The fan-out benchmark's flags are not the soak's, and back.
        assert!(refused(&["bench", "--soak", "--subscribers", "5"]));
        assert!(refused(&["bench", "--soak", "--rounds", "2"]));
        assert!(refused(&["bench", "--soak", "--path-delay-ms", "5"]));
        assert!(refused(&["bench", "--members", "10"]));
    }

    #[test]
    fn bench_meeting_defaults() {
        assert_eq!(
            plan(&["bench", "--meeting"]),
            Ok(Plan::Meeting {
                members: 1000,
                seconds: 10,
                rounds: 3
            })
        );
        assert_eq!(
            plan(&[
                "bench",
                "--meeting",
                "--members",
                "200",
                "--seconds",
                "5",
                "--rounds",
                "1"
            ]),
            Ok(Plan::Meeting {
                members: 200,
                seconds: 5,
                rounds: 1
            })
        );
        // The fan-out's flags are not the meeting's, and it is not the soak.
        assert!(refused(&["bench", "--meeting", "--subscribers", "5"]));
        assert!(refused(&["bench", "--meeting", "--path-delay-ms", "5"]));
        assert!(refused(&["bench", "--meeting", "--soak"]));
        assert!(refused(&["bench", "--meeting", "--members", "1"]));
    }

    #[test]
    fn help_is_a_request_not_an_error() {
        for args in [
            &["--help"][..],
            &["help"],
            &["help", "bench"],
            &["help", "serve"],
            &["bench", "--help"],
            &["fuzz", "--help"],
            &["test", "-h"],
        ] {
            let e = parse(args).expect_err("help stops parsing");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
    }

    #[test]
    fn long_help_keeps_the_facts() {
        let mut cli = Cli::command();
        let top = cli.render_long_help().to_string();
        for name in [
            "codegen",
            "test",
            "conformance",
            "serve",
            "image",
            "web",
            "k8s",
            "fuzz",
            "bench",
        ] {
            assert!(top.contains(&format!("\n  {name} ")), "{name} not listed");
        }
        let bench = cli
            .find_subcommand_mut("bench")
            .expect("bench")
            .render_long_help()
            .to_string();
        for fact in [
            "cargo xtask bench --soak [--seconds S] [--members N]",
            "--path-delay-ms <D>",
            "[default: 200]",
            "[default: 3]",
            "[default: 50]",
            "convene-attack",
            "1,200 bytes",
        ] {
            assert!(
                bench.contains(fact),
                "bench --help lacks {fact:?}:\n{bench}"
            );
        }
    }
}
