//! The files in `deploy/` are checked against the real thing: the systemd
//! unit with `systemd-analyze verify` (warnings fail too), the example
//! configuration with the server's own loader, and the Grafana dashboard
//! against the metrics the server actually exports.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Client, server};
use convene_protocol::v1::{self, client_message::Msg as C};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/convene-server.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/convene-server"));
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening}");
    }
    // Verify a copy that starts the binary built here (verify checks it exists).
    let dir = std::env::temp_dir().join(format!("convene-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("convene-server.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/convene-server",
            env!("CARGO_BIN_EXE_convene-server"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs (Debian package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // systemd ignores bad lines with a warning and still exits 0.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze warned:\n{stderr}"
    );
}

#[test]
fn the_example_configuration_loads() {
    let printed = print_config("deploy/convene.toml", &[]);
    assert!(printed.contains("listen = \"0.0.0.0:443\""), "{printed}");
    assert!(
        printed.contains("max_participants_per_room = 500"),
        "{printed}"
    );
}

#[test]
fn the_example_cluster_node_configuration_loads() {
    let printed = print_config(
        "deploy/cluster/convene-node.toml",
        &[
            ("CONVENE_NODE_ID", "2"),
            ("CONVENE_BUS_PASSWORD", "from-the-environment"),
        ],
    );
    assert!(
        printed.contains("bus = \"nats://nats-1.internal:4222,nats://nats-2.internal:4222\""),
        "{printed}"
    );
    assert!(printed.contains("node_id = 2"), "{printed}");
    assert!(
        !printed.contains("from-the-environment"),
        "the NATS password is never printed: {printed}"
    );
}

/// What `convene-server --config <path> --print-config` prints, with `env`
/// set; fails the test when the server refuses the file.
fn print_config(path: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_convene-server"))
        .arg("--config")
        .arg(repo(path))
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Metric names a Prometheus query may use for what the server exports:
/// counters with `_total`, histograms with `_bucket`, `_sum`, `_count`.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut parts = line.split_whitespace();
        if (parts.next(), parts.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_only_metrics_the_server_exports() {
    let s = server(|_| {}).await;
    // Traffic, so that labelled families have series: connections, media,
    // a protocol error, a handshake error; drops get a zero series.
    let mut a = Client::joined(&s, "dash", true).await;
    let mut b = Client::joined(&s, "dash", true).await;
    b.send(common::publish(1, v1::TrackKind::Audio)).await;
    a.expect(|m| {
        matches!(
            m,
            convene_protocol::v1::server_message::Msg::TrackPublished(_)
        )
    })
    .await;
    b.send_raw(bytes::Bytes::from_static(&[0x07, 1, 2, 3]))
        .await;
    let mut c = Client::connect(&s).await;
    c.send(C::Hello(v1::Hello::default())).await;
    let _ = c.expect_close().await;
    s.state
        .metrics
        .drops
        .get_or_create(&convene_server::metrics::ReasonLabel {
            reason: "audio".into(),
        })
        .inc_by(0);
    let (status, metrics) = common::http_get(&s, "/metrics").await;
    assert_eq!(status, 200);
    let names = exported(&metrics);

    let text = std::fs::read_to_string(repo("deploy/grafana/convene.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 8,
        "a dashboard with {} panels",
        panels.len()
    );
    let mut used = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("convene_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                used.insert(name);
            }
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics the server does not export: {missing:?}\nexported: {names:?}"
    );
    // And it shows the ones an operator needs most.
    for must in [
        "convene_connections",
        "convene_participants",
        "convene_frames_dropped_total",
        "convene_fanout_seconds_bucket",
        "convene_protocol_errors_total",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
    s.shutdown().await;
}

#[test]
fn the_kubernetes_kustomization_lists_every_manifest_and_its_files_exist() {
    let dir = repo("deploy/k8s");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    // The entries of `resources:` and the `files:` of the generators.
    let listed: BTreeSet<String> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|e| !e.contains(':'))
        .map(|e| e.split('=').next_back().unwrap_or(e).trim().to_string())
        .collect();
    for entry in &listed {
        assert!(
            dir.join(entry).exists(),
            "kustomization.yaml names {entry}, which is not in deploy/k8s"
        );
    }
    for f in std::fs::read_dir(&dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        if name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "deploy/k8s/{name} is not in kustomization.yaml, so `kubectl apply -k` would leave it out"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("nats-server.conf")).unwrap(),
        std::fs::read_to_string(repo("deploy/cluster/nats-server.conf")).unwrap(),
        "deploy/k8s/nats-server.conf is a copy of deploy/cluster/nats-server.conf"
    );
}

#[test]
fn the_kubernetes_node_configuration_loads_with_a_pod_index_as_node_id() {
    // The first pod of the StatefulSet.
    let printed = print_config("deploy/k8s/convene.toml", &[("CONVENE_NODE_ID", "0")]);
    assert!(printed.contains("node_id = 0"), "{printed}");
    assert!(printed.contains("bus = \"nats://nats:4222\""), "{printed}");
    // The drain deadline fits in the pod's termination grace period (30 s)
    // after the preStop pause (5 s).
    let manifest = std::fs::read_to_string(repo("deploy/k8s/convene.yaml")).unwrap();
    assert!(manifest.contains("terminationGracePeriodSeconds: 30"));
    assert!(manifest.contains("seconds: 5"));
    assert!(printed.contains("shutdown_grace_ms = 20000"), "{printed}");
}
