//! Shared helpers: where the workspace is, running programs, and waiting for servers.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace root, where every command runs unless told otherwise.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Cargo's build directory: `CARGO_TARGET_DIR` when set, else `target/` in the workspace.
pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Builds `packages` with the release profile (fat LTO) and returns the
/// directory their binaries are in: what the benchmark and the soak measure.
pub(crate) fn build_release(packages: &[&str]) -> Result<PathBuf, String> {
    println!("building release binaries (fat LTO: about 11 minutes from scratch on 2 cores)");
    let mut args = vec!["build", "--release"];
    for p in packages {
        args.extend(["-p", p]);
    }
    run("cargo", &args)?;
    Ok(target_dir().join("release"))
}

/// Runs a command in the workspace root, echoing it, and fails on a non-zero exit.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), String> {
    run_in(&root(), program, args)
}

/// Runs a command in `dir`, echoing it with its time, and fails on a
/// non-zero exit. Playwright's packages are told never to fetch a browser.
pub(crate) fn run_in(dir: &Path, program: &str, args: &[&str]) -> Result<(), String> {
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

/// True when `cargo <subcommand> --version` works.
pub(crate) fn have_cargo(subcommand: &str) -> bool {
    Command::new("cargo")
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A loopback port nothing listens on, for a server we are about to start.
pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Waits until something accepts TCP connections on loopback `port`.
pub(crate) fn wait_for_port(port: u16, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits until the server on `port` answers `/readyz` with 200.
pub(crate) fn wait_ready(port: u16, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The whole reply (status line, headers, body) to `GET path` on loopback.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    Some(String::from_utf8_lossy(&reply).into_owned())
}

/// The JSON object a tool printed on stdout (after any other lines).
pub(crate) fn last_json(stdout: &[u8]) -> Option<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find('{')?;
    serde_json::from_str(&text[start..]).ok()
}

/// Starts `command` (a convene-server) with `--dev-tls` and its log on
/// stdout, and returns it with the certificate hash it prints, which a
/// WebTransport client pins. The log goes on being drained in a thread.
pub(crate) fn start_dev_tls(mut command: Command) -> Result<(std::process::Child, String), String> {
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
    match hash_rx.recv_timeout(Duration::from_secs(30)) {
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
