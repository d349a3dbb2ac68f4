//! `cargo xtask fuzz`: the cargo-fuzz targets, each for a while, with a report.

use std::process::Command;
use std::time::Instant;

use clap::{ArgAction, value_parser};

use crate::process::{self, have_cargo, root};

/// The cargo-fuzz version `cargo xtask fuzz` installs when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Flags of `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub(crate) struct Args {
    /// Seconds each target runs, from 1
    #[arg(
        long,
        value_name = "N",
        default_value_t = 60,
        value_parser = value_parser!(u64).range(1..)
    )]
    pub(crate) seconds: u64,
    /// Only these targets, comma-separated, named as
    /// `cargo +nightly fuzz list` names them [default: all]
    // Set, not Append: given twice, the last list counts, as it always has.
    #[arg(
        long,
        value_name = "T,…",
        value_delimiter = ',',
        action = ArgAction::Set,
        verbatim_doc_comment
    )]
    pub(crate) only: Option<Vec<String>>,
}

/// Runs each fuzz target (or those in `only`) for `seconds`, installing
/// cargo-fuzz first when missing, and prints executions per target.
pub(crate) fn run(args: &Args) -> Result<(), String> {
    let (seconds, only) = (args.seconds, &args.only);
    if !have_cargo("fuzz") {
        println!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)");
        process::run(
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
    if let Some(only) = only
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
