//! `cargo xtask bench`: the end-to-end fan-out benchmark, each transport next
//! to its floor; the large meeting (`--meeting`) with and without selective
//! forwarding, next to its floor; the soak (`--soak`).

use std::path::Path;
use std::process::Command;

use clap::value_parser;

use crate::process::{self, free_port, http_get, last_json, root, start_dev_tls, wait_ready};

/// Flags of `cargo xtask bench`, and of `cargo xtask bench --soak`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub(crate) struct Args {
    /// Run the soak instead (takes only --seconds and --members)
    #[arg(
        long,
        group = "with_members",
        conflicts_with_all = ["subscribers", "rounds", "path_delay_ms"]
    )]
    pub(crate) soak: bool,
    /// Run the large meeting instead (takes --members, --seconds, --rounds)
    #[arg(
        long,
        group = "with_members",
        conflicts_with_all = ["subscribers", "path_delay_ms", "soak"]
    )]
    pub(crate) meeting: bool,
    /// Subscribers
    #[arg(
        long,
        value_name = "N",
        default_value_t = 200,
        value_parser = value_parser!(u32).range(1..)
    )]
    pub(crate) subscribers: u32,
    /// Seconds measured per run [default: 10];
    /// with --soak, seconds the soak lasts, from 2 [default: 60]
    // No default_value: the two modes differ (see `Args::plan`).
    #[arg(
        long,
        value_name = "S",
        value_parser = value_parser!(u32).range(1..),
        verbatim_doc_comment
    )]
    pub(crate) seconds: Option<u32>,
    /// Rounds
    #[arg(
        long,
        value_name = "R",
        default_value_t = 3,
        value_parser = value_parser!(u32).range(1..)
    )]
    pub(crate) rounds: u32,
    /// WebTransport through `convene-relay --delay-ms D` (D ms
    /// added each way, so a round trip of about 2 x D ms, as on a
    /// real path; the relay's own CPU is not counted). WebSocket
    /// stays direct: there is no TCP relay. 0: no relay
    #[arg(long, value_name = "D", default_value_t = 0, verbatim_doc_comment)]
    pub(crate) path_delay_ms: u32,
    /// With --soak: members, 5 of them publishing, from 2 [default: 50];
    /// with --meeting: members, 25 of them with cameras [default: 1000]
    #[arg(
        long,
        value_name = "N",
        requires = "with_members",
        value_parser = value_parser!(u32).range(2..),
        verbatim_doc_comment
    )]
    pub(crate) members: Option<u32>,
}

/// What `cargo xtask bench` is to run, with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The fan-out benchmark.
    Fanout {
        /// Subscribers to the one publisher.
        subscribers: u32,
        /// Seconds measured per run.
        seconds: u32,
        /// Rounds of floor, WebSocket and WebTransport.
        rounds: u32,
        /// Milliseconds the relay adds each way on the WebTransport path (0: no relay).
        delay_ms: u32,
    },
    /// The large meeting, with and without selective forwarding.
    Meeting {
        /// Members of the meeting.
        members: u32,
        /// Seconds measured per run.
        seconds: u32,
        /// Rounds of floor, selective and plain forwarding.
        rounds: u32,
    },
    /// The soak: a meeting under attack.
    Soak {
        /// Seconds the soak lasts.
        seconds: u32,
        /// Members of the meeting.
        members: u32,
    },
}

impl Args {
    /// The run these flags ask for; the two modes default `--seconds` differently.
    pub(crate) fn plan(&self) -> Result<Plan, String> {
        if self.soak {
            let seconds = self.seconds.unwrap_or(60);
            if seconds < 2 {
                return Err(format!(
                    "--seconds takes a whole number from 2 with --soak, not `{seconds}`"
                ));
            }
            Ok(Plan::Soak {
                seconds,
                members: self.members.unwrap_or(50),
            })
        } else if self.meeting {
            Ok(Plan::Meeting {
                members: self.members.unwrap_or(1000),
                seconds: self.seconds.unwrap_or(10),
                rounds: self.rounds,
            })
        } else {
            Ok(Plan::Fanout {
                subscribers: self.subscribers,
                seconds: self.seconds.unwrap_or(10),
                rounds: self.rounds,
                delay_ms: self.path_delay_ms,
            })
        }
    }
}

/// Runs the fan-out benchmark, or the soak when `--soak` is given.
pub(crate) fn run(args: &Args) -> Result<(), String> {
    match args.plan()? {
        Plan::Soak { seconds, members } => crate::soak::run(seconds, members),
        Plan::Meeting {
            members,
            seconds,
            rounds,
        } => meeting(members, seconds, rounds),
        Plan::Fanout {
            subscribers,
            seconds,
            rounds,
            delay_ms,
        } => fanout(subscribers, seconds, rounds, delay_ms),
    }
}

/// Runs the fan-out benchmark over both transports with their floors and
/// prints a summary.
fn fanout(subscribers: u32, seconds: u32, rounds: u32, delay_ms: u32) -> Result<(), String> {
    let bin = process::build_release(&[
        "convene-server",
        "convene-cli",
        "convene-benches",
        "convene-testkit",
    ])?;
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

/// The large meeting of `convene load --shape meeting`: per round, the TCP
/// floor for as many connections, the meeting with selective forwarding and
/// the same meeting without; prints each next to the floor, and what members
/// received against what the server's transport estimated their paths carry.
fn meeting(members: u32, seconds: u32, rounds: u32) -> Result<(), String> {
    let bin = process::build_release(&["convene-server", "convene-cli", "convene-benches"])?;
    let (n, secs) = (members.to_string(), seconds.to_string());
    let mut floors = Vec::new();
    let mut runs: Vec<(MeetingRun, MeetingRun)> = Vec::new();
    for round in 1..=rounds {
        println!("\nround {round} of {rounds}: a meeting of {members}, {seconds} s per run");
        let out = Command::new(bin.join("fanout"))
            .args(["floor", "--subscribers", &n, "--seconds", &secs, "--json"])
            .current_dir(root())
            .output()
            .map_err(|e| format!("cannot start fanout: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "fanout floor failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let floor = last_json(&out.stdout)
            .and_then(|v| v["us_per_frame"].as_f64())
            .ok_or("fanout floor printed no us_per_frame")?;
        println!("  TCP floor      {floor:6.2} µs per delivered frame");
        floors.push(floor);
        let selective = meeting_run(&bin, members, seconds, true)?;
        println!("{}", selective.line("selective", floor));
        let plain = meeting_run(&bin, members, seconds, false)?;
        println!("{}", plain.line("everything", floor));
        runs.push((selective, plain));
    }
    let mean = |xs: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = xs.collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let floor = mean(&mut floors.iter().copied());
    let sel = mean(&mut runs.iter().map(|r| r.0.us_per_frame));
    let all = mean(&mut runs.iter().map(|r| r.1.us_per_frame));
    println!(
        "\nmeans over {rounds} rounds, a meeting of {members}:\n  selective      {sel:6.2} µs per delivered frame, TCP floor {floor:.2} µs: {:.2}x\n  everything     {all:6.2} µs per delivered frame: {:.2}x",
        sel / floor,
        all / floor
    );
    Ok(())
}

/// One meeting's figures from one `convene load --shape meeting --json` run.
#[derive(Debug, Clone)]
struct MeetingRun {
    us_per_frame: f64,
    frames_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    speech_loss_percent: f64,
    /// What a member received, kbit/s: median and highest.
    receive_kbps: (f64, f64),
    /// The server's path estimates (sampled every 500 ms per connection),
    /// as the histogram's buckets: the median's and the lowest one used.
    estimate: (String, String),
}

impl MeetingRun {
    fn line(&self, forwarding: &str, floor: f64) -> String {
        format!(
            "  {forwarding:<14} {:6.2} µs per delivered frame ({:.2}x floor), {:.0} frames/s, p50 {:.1} ms, p99 {:.1} ms, speech lost {:.3} %,\n                 per member {:.2} Mbit/s (max {:.2}) against path estimates of {} (median), {} (lowest)",
            self.us_per_frame,
            self.us_per_frame / floor,
            self.frames_per_second,
            self.p50_ms,
            self.p99_ms,
            self.speech_loss_percent,
            self.receive_kbps.0 / 1000.0,
            self.receive_kbps.1 / 1000.0,
            self.estimate.0,
            self.estimate.1
        )
    }
}

/// One large meeting against a fresh server (plain WebSocket on loopback).
fn meeting_run(
    bin: &Path,
    members: u32,
    seconds: u32,
    selective: bool,
) -> Result<MeetingRun, String> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut server = Command::new(bin.join("convene-server"))
        .args(["--listen", &listen, "--log", "error"])
        // Every member comes from 127.0.0.1.
        .args(["--max-connections-per-ip", &(members + 16).to_string()])
        .spawn()
        .map_err(|e| format!("cannot start convene-server: {e}"))?;
    let stop = |server: &mut std::process::Child| {
        let _ = server.kill();
        let _ = server.wait();
    };
    if !wait_ready(port, std::time::Duration::from_secs(30)) {
        stop(&mut server);
        return Err("convene-server did not answer /readyz within 30 s".into());
    }
    let mut load = Command::new(bin.join("convene"));
    load.args([
        "load",
        "--server",
        &format!("http://{listen}"),
        "--shape",
        "meeting",
    ])
    .args(["-n", &members.to_string(), "--ramp-up", "5"])
    .args(["--duration", &seconds.to_string()])
    .args(["--server-pid", &server.id().to_string(), "--json"])
    .stderr(std::process::Stdio::inherit());
    if !selective {
        load.arg("--without-sfu");
    }
    let out = load.output();
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    stop(&mut server);
    let out = out.map_err(|e| format!("cannot start convene load: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "convene load --shape meeting failed ({})",
            out.status
        ));
    }
    let v = last_json(&out.stdout).ok_or("convene load --shape meeting printed no JSON")?;
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    Ok(MeetingRun {
        us_per_frame: num(&v["server_cpu_us_per_frame"]),
        frames_per_second: num(&v["frames_per_second"]),
        p50_ms: num(&v["latency_ms"]["p50"]),
        p99_ms: num(&v["latency_ms"]["p99"]),
        speech_loss_percent: num(&v["meeting"]["speech_loss_percent"]),
        receive_kbps: (
            num(&v["meeting"]["receive_kbps"]["p50"]),
            num(&v["meeting"]["receive_kbps"]["max"]),
        ),
        estimate: estimates(&metrics, "convene_path_estimate_kbps_bucket"),
    })
}

/// The median's bucket and the lowest bucket used of a Prometheus
/// histogram of kbit/s in `metrics`, in words ("16–64 Mbit/s").
fn estimates(metrics: &str, name: &str) -> (String, String) {
    // (upper bound, cumulative count), in order.
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        let none = "none sampled".to_string();
        return (none.clone(), none);
    }
    let range = |i: usize| {
        let mbit = |k: f64| format!("{}", k / 1000.0);
        let lo = if i == 0 { 0.0 } else { buckets[i - 1].0 };
        if buckets[i].0.is_infinite() {
            format!("over {} Mbit/s", mbit(lo))
        } else {
            format!("{}–{} Mbit/s", mbit(lo), mbit(buckets[i].0))
        }
    };
    let median = buckets.iter().position(|b| b.1 >= total / 2.0).unwrap_or(0);
    let lowest = buckets.iter().position(|b| b.1 > 0.0).unwrap_or(0);
    (range(median), range(lowest))
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

/// One `convene load --json` run against a fresh `--dev-tls` server, through
/// a relay adding `delay_ms` each way when it is not 0.
fn bench_load(
    bin: &Path,
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
    bin: &Path,
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
