//! `cargo xtask bench` (part `identity`): what a binary's first use costs its callers.
//!
//! Time to first response, through the real redirect and the release agent, of 1 and of 32
//! parallel first connections from a freshly made 100 MB executable (the release probe with
//! 100 MB appended, so it runs and is a new file each time: its digest is not cached), against
//! the same from the probe itself, already hashed by an earlier call. Each figure is the median
//! over rounds of the slowest caller's time from spawning it to its full response (process
//! start included, alike for both). Every response must be a 200 of a rule that names the
//! binary by its `sha256`: a first connection is never decided without its identity.
//! Writes `target/bench/identity.json`.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use enforcer_tests::{Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, sha256_hex};
use serde_json::{Value, json};

use super::{fmt_value, median};

const PAD: usize = 100 << 20;
const ROUNDS: usize = 3;
const PARALLEL: [usize; 2] = [1, 32];

pub fn run(root: &Path) -> anyhow::Result<Value> {
    let probe = root.join("target/release/probe");
    let cgroup = Cgroup::new();
    let upstream = HttpUpstream::start("127.0.0.1:0");
    // Every round's fresh binary, made before the agent starts so the policy can name them.
    let fresh: Vec<Vec<Fresh>> = PARALLEL
        .iter()
        .map(|&n| {
            (0..ROUNDS)
                .map(|r| {
                    Fresh::make(
                        &probe,
                        &cgroup_scoped_temp(&cgroup, &format!("big-{n}-{r}")),
                    )
                })
                .collect::<anyhow::Result<_>>()
        })
        .collect::<anyhow::Result<_>>()?;
    let mut identities = format!("  known: {{sha256: {}}}\n", sha256_hex(&probe));
    for (i, f) in fresh.iter().flatten().enumerate() {
        identities.push_str(&format!("  fresh-{i}: {{sha256: {}}}\n", f.sha256));
    }
    let names: Vec<String> = (0..fresh.iter().flatten().count())
        .map(|i| format!("fresh-{i}"))
        .chain(["known".to_owned()])
        .collect();
    let policy = format!(
        "version: 1\nidentities:\n{identities}services:\n  api:\n    endpoints: [\"{}\"]\n\
         rules:\n  - id: by-digest\n    from: [{}]\n    to: api\n    methods: [GET]\n    paths: [\"/first/*\"]\n",
        upstream.addr(),
        names.join(", ")
    );
    let agent = Agent::spawn(&root.join("target/release/enforcer"), &cgroup, &policy, &[]);
    let to = upstream.addr().to_string();
    // The known binary is hashed by this first call.
    first_response(&cgroup, &probe, &to, 1)?;

    let mut rows = Vec::new();
    println!("\nidentity: time to first response (slowest caller, median of {ROUNDS} rounds)");
    for (i, &n) in PARALLEL.iter().enumerate() {
        let mut new = Vec::new();
        let mut known = Vec::new();
        for f in &fresh[i] {
            new.push(first_response(&cgroup, &f.path, &to, n)?);
            known.push(first_response(&cgroup, &probe, &to, n)?);
        }
        let (new_ms, known_ms) = (median(&new), median(&known));
        println!(
            "  {n:>2} parallel  new 100 MB binary {:>9} ms   known binary {:>9} ms   ratio {:.1}",
            fmt_value(new_ms),
            fmt_value(known_ms),
            new_ms / known_ms
        );
        rows.push(json!({
            "parallel": n,
            "new_binary_ms": new_ms,
            "known_binary_ms": known_ms,
            "new_rounds_ms": new,
            "known_rounds_ms": known,
        }));
    }
    drop(agent);
    Ok(json!({ "binary_bytes_appended": PAD, "rows": rows }))
}

/// A freshly written executable: a padded copy of the probe. Removed when dropped.
struct Fresh {
    path: PathBuf,
    sha256: String,
}

impl Fresh {
    fn make(probe: &Path, path: &Path) -> anyhow::Result<Self> {
        let mut bytes = fs::read(probe).with_context(|| format!("read {}", probe.display()))?;
        bytes.resize(bytes.len() + PAD, 0x5a);
        fs::write(path, &bytes)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            path: path.to_owned(),
            sha256: sha256_hex(path),
        })
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Milliseconds until the slowest of `n` parallel callers running `exe` has its response; each
/// must be allowed.
fn first_response(cgroup: &Cgroup, exe: &Path, to: &str, n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let times: Vec<anyhow::Result<Duration>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                scope.spawn(move || -> anyhow::Result<Duration> {
                    let mut child = cgroup
                        .command(exe)
                        .args(["send", to])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("spawn probe")?;
                    let request = format!(
                        "GET /first/{i} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"
                    );
                    child
                        .stdin
                        .take()
                        .context("stdin")?
                        .write_all(request.as_bytes())?;
                    let out = child.wait_with_output()?;
                    let elapsed = started.elapsed();
                    let report: Value = serde_json::from_slice(&out.stdout)?;
                    let response = report["response"].as_str().unwrap_or("");
                    ensure!(
                        response.starts_with("HTTP/1.1 200 "),
                        "{}: not allowed: {report}",
                        exe.display()
                    );
                    Ok(elapsed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller thread"))
            .collect()
    });
    let mut slowest = Duration::ZERO;
    for t in times {
        slowest = slowest.max(t?);
    }
    Ok(slowest.as_secs_f64() * 1000.0)
}
