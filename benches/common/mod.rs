//! What the benchmarks share: where the project and its build output are, the Python with
//! `prometheus-client` that is the other side of their comparisons, and the `prom-multiproc`
//! binary.

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct Env {
    /// The project's root.
    pub root: PathBuf,
    /// `CARGO_TARGET_DIR` (relative to the root), or `target`.
    pub target: PathBuf,
    /// `PROMETHEUS_MULTIPROC_PYTHON` (default `.venv/bin/python`) if it imports
    /// `prometheus_client`, or why not.
    pub python: Result<PathBuf, String>,
}

impl Env {
    pub fn find() -> Env {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        let candidate = std::env::var_os("PROMETHEUS_MULTIPROC_PYTHON")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv/bin/python"));
        let python = match Command::new(&candidate)
            .args(["-c", "import prometheus_client.multiprocess"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => Ok(candidate),
            Ok(_) => Err(format!(
                "{} cannot import prometheus_client",
                candidate.display()
            )),
            Err(e) => Err(format!("no Python at {}: {e}", candidate.display())),
        };
        Env {
            root,
            target,
            python,
        }
    }
}

/// The `prom-multiproc` binary: `PROM_MULTIPROC_BIN`, or built (or found up to date) by cargo.
#[allow(dead_code)] // Not every benchmark runs the binary.
pub fn cli_binary(env: &Env) -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PROM_MULTIPROC_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let bin = env.target.join("release/prom-multiproc");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "prometheus-multiproc-cli",
        ])
        .current_dir(&env.root)
        .status();
    match status {
        Ok(s) if s.success() => Ok(bin),
        _ if bin.exists() => {
            println!(
                "warning: cargo build failed, timing the existing {}",
                bin.display()
            );
            Ok(bin)
        }
        Ok(s) => Err(format!("cargo build -p prometheus-multiproc-cli: {s}")),
        Err(e) => Err(format!("cannot run cargo: {e}")),
    }
}
