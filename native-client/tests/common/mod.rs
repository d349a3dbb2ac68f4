//! What the CLI's integration tests share: a server on loopback and the
//! flags that point `convene` at it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convene_server::config::Config;

/// A server on `127.0.0.1:port` (0: any free port), with `--dev-tls` when `tls`.
pub async fn server_on(port: u16, tls: bool) -> convene_server::Server {
    let config = Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        dev_tls: tls,
        ..Config::default()
    };
    convene_server::start(config).await.expect("server starts")
}

/// `--server` (and, with TLS, `--cert-sha256`) for `s`.
pub fn server_args(s: &convene_server::Server) -> Vec<String> {
    match &s.cert_sha256 {
        Some(h) => vec![
            "--server".into(),
            format!("https://127.0.0.1:{}", s.addr.port()),
            "--cert-sha256".into(),
            h.clone(),
        ],
        None => vec!["--server".into(), format!("http://{}", s.addr)],
    }
}

/// Generous: two cores may be busy with other tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// A running `convene` whose stderr lines are collected as they come.
pub struct Running {
    pub child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(sub: &str, args: &[String]) -> Running {
        Running::start_with_env(sub, args, &[])
    }

    /// Starts `convene SUB ARGS` with these environment variables set.
    pub fn start_with_env(sub: &str, args: &[String], env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_convene"))
            .envs(env.iter().copied())
            .arg(sub)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("convene starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Running { child, stderr }
    }

    /// Waits (off the runtime) until a stderr line contains `needle`.
    pub async fn wait_for_line(&self, needle: &str) {
        self.wait_for_lines(needle, 1).await;
    }

    /// Waits (off the runtime) until `count` stderr lines contain `needle`.
    pub async fn wait_for_lines(&self, needle: &str, count: usize) {
        let lines = self.stderr.clone();
        let needle = needle.to_string();
        tokio::task::spawn_blocking(move || {
            let until = Instant::now() + DEADLINE;
            loop {
                if lines
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| l.contains(&needle))
                    .count()
                    >= count
                {
                    return;
                }
                assert!(
                    Instant::now() < until,
                    "not {count} lines with `{needle}` on stderr within {DEADLINE:?}: {:?}",
                    lines.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
    }

    /// Asks the process to stop, as a service manager would (SIGTERM).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for exit; returns success, stdout and the stderr lines.
    pub async fn finish(mut self) -> (bool, String, Vec<String>) {
        let stderr = self.stderr.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || {
            let until = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    let mut out = String::new();
                    std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out)
                        .unwrap();
                    return (status.success(), out);
                }
                if Instant::now() > until {
                    let _ = self.child.kill();
                    panic!("convene did not exit within {DEADLINE:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        // The reader thread may still be draining the pipe.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = stderr.lock().unwrap().clone();
        (ok, out, lines)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn json(ok: bool, out: &str, err: &[String]) -> serde_json::Value {
    assert!(ok, "convene failed: {err:?}\n{out}");
    serde_json::from_str(out).unwrap_or_else(|e| panic!("--json prints JSON ({e}): {out}"))
}

pub fn track<'a>(report: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    report["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} track in {report}"))
}

pub fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Runs `convene args` to its end, without an admin token from the
/// environment: whether it succeeded, its output and its errors.
pub async fn convene(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("CONVENE_ADMIN_TOKEN")
        .output()
        .await
        .expect("convene runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Rust client with `config` joined to `meeting` on `s` over WebSocket as
/// `name`, subscribed to everything; and the Joined it got.
pub async fn joined_client(
    s: &convene_server::Server,
    meeting: &str,
    name: &str,
    config: convene_protocol::ClientSessionConfig,
) -> (convene_client::Client, convene_protocol::v1::Joined) {
    use convene_protocol::ClientEvent;
    let endpoint = convene_client::Endpoint::new(&format!("http://{}", s.addr)).unwrap();
    let mut c = convene_client::Client::connect(
        &endpoint,
        convene_client::TransportChoice::WebSocket,
        config,
    )
    .await
    .expect("connects");
    tokio::time::timeout(DEADLINE, async {
        loop {
            match c.next_event().await {
                Some(ClientEvent::Welcome(_)) => {
                    c.join(meeting, name, true).expect("joins");
                }
                Some(ClientEvent::Joined(j)) => return j,
                Some(ClientEvent::Closed) | None => panic!("the session ended before Joined"),
                _ => {}
            }
        }
    })
    .await
    .map(|j| (c, j))
    .expect("joined in time")
}
