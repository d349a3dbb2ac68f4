//! `cargo xtask k8s`: deploy/k8s checked strictly against the Kubernetes schemas.

use crate::process::{self, root, target_dir};

/// The kubernetes-validate release (PyPI) that checks deploy/k8s.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.34.1";
/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.34.0";

/// Validates every manifest in deploy/k8s against the Kubernetes schemas,
/// strictly (unknown fields are errors), with kubernetes-validate installed
/// from PyPI into a virtualenv next to the build directory.
pub(crate) fn run() -> Result<(), String> {
    let venv = target_dir().join("python-venv");
    let bin = venv.join("bin/kubernetes-validate");
    if !bin.exists() {
        process::run("python3", &["-m", "venv", &venv.to_string_lossy()])?;
        let pip = venv.join("bin/pip");
        process::run(
            &pip.to_string_lossy(),
            &["install", "--quiet", KUBERNETES_VALIDATE],
        )?;
    }
    let dir = root().join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        // Kustomize's own file is not a Kubernetes resource.
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut args = vec![
        "--strict".to_string(),
        "--quiet".to_string(),
        "-k".to_string(),
        KUBERNETES_VERSION.to_string(),
    ];
    args.extend(files.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    process::run(&bin.to_string_lossy(), &args)?;
    println!(
        "kubernetes-validate: {} manifest files in deploy/k8s valid against Kubernetes {KUBERNETES_VERSION}",
        files.len()
    );
    Ok(())
}
