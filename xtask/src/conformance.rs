//! `cargo xtask conformance`: the conformance runs against our server and our clients.

use std::path::Path;
use std::process::Command;

use crate::process::{self, free_port, root, start_dev_tls, target_dir, wait_for_port, wait_ready};

/// Runs the conformance binary against the server binary, as an outside
/// implementer would, and prints its per-case report.
pub(crate) fn run() -> Result<(), String> {
    process::run(
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
                "--capability",
                "sfu",
                "--capability",
                "dynacast",
                "--capability",
                "reactions",
                "--capability",
                "recording",
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
    webtransport(&bin, &secret)?;
    cluster(&bin, &secret)?;
    let reference = bin.join("convene-reference-client");
    client(
        "the reference client",
        &[&reference.to_string_lossy(), "{url}"],
    )?;
    // The native CLI is a client too: `convene stream` must pass the same cases.
    process::run("cargo", &["build", "--quiet", "-p", "convene-cli"])?;
    let cli = bin.join("convene");
    client(
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
pub(crate) fn client(name: &str, command: &[&str]) -> Result<(), String> {
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
fn webtransport(bin: &Path, secret: &str) -> Result<(), String> {
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
            "--capability",
            "sfu",
            "--capability",
            "dynacast",
            "--capability",
            "reactions",
            "--capability",
            "recording",
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

/// The server cases once more, with each case's clients spread over two
/// nodes of one cluster joined by a real nats-server (started with the
/// example configuration in deploy/cluster/).
fn cluster(bin: &Path, secret: &str) -> Result<(), String> {
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
            .args(["--capability", "waiting_room", "--capability", "sfu"])
            .args(["--capability", "reactions", "--capability", "recording"])
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
