//! `cargo xtask bench --soak`: a meeting under the attacks of the security review.

use std::process::Command;

use crate::process::{self, free_port, last_json, wait_for_port};

/// Holds a meeting of `members` on a release server for `seconds` while
/// convene-attack attacks it, and prints loss, peak memory and newcomers let in.
pub(crate) fn run(seconds: u32, members: u32) -> Result<(), String> {
    let bin = process::build_release(&["convene-server", "convene-cli", "convene-testkit"])?;
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
