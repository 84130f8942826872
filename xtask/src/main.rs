//! Developer tasks: `cargo xtask setup | run | test | bench | soak | man`.

mod bench;
mod setup;
mod soak;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; quick when all is there).
    Setup,
    /// Set up, build, and run the agent on the shipped default policy for the whole host.
    Run {
        /// Policy file.
        #[arg(long, default_value = "examples/policy.yaml")]
        policy: String,
        /// Extra arguments for `enforcer run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit tests, then the end-to-end tests (as root) in the dev
    /// and release profiles.
    Test,
    /// Set up, then measure the data path against baselines in one run; prints ratios.
    Bench(bench::Args),
    /// Set up, then run the release agent under steady load with policy reloads for minutes;
    /// fails on any failed allowed request or on growth of its memory or descriptors.
    Soak(soak::Args),
    /// Set up, then write the man pages (`man/enforcer*.1`) and shell completions
    /// (`completions/`: bash, zsh, fish) generated from the agent's CLI definition.
    Man {
        /// Output directory.
        #[arg(long, default_value = "target/dist")]
        out: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Run { policy, args } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "enforcer"])?;
            run(&policy, &args)
        }
        Task::Test => test(),
        Task::Bench(args) => {
            // Before set-up, whose installs would fail with a less clear message.
            if unsafe { libc::geteuid() } != 0 {
                bail!("cargo xtask bench loads BPF programs and makes cgroups: run it as root");
            }
            setup::run()?;
            bench::run(args)
        }
        Task::Soak(args) => {
            if unsafe { libc::geteuid() } != 0 {
                bail!("cargo xtask soak loads BPF programs and makes cgroups: run it as root");
            }
            setup::run()?;
            soak::run(args)
        }
        Task::Man { out } => {
            // Building the agent's library builds the kernel programs: set-up first.
            setup::run()?;
            let out = workspace_root().join(out);
            let out = out.to_str().context("output directory is not UTF-8")?;
            cargo(&[
                "run",
                "-q",
                "-p",
                "enforcer",
                "--example",
                "cli_docs",
                "--",
                out,
            ])
        }
    }
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    lint()?;
    let mut totals = Totals::default();
    // Unit tests of every host crate (the kernel crate only builds for BPF).
    cargo_test(
        &[
            "test",
            "--workspace",
            "--exclude",
            "enforcer-ebpf",
            "--exclude",
            "enforcer-tests",
        ],
        &mut totals,
    )?;
    for profile in [&[][..], &["--release"][..]] {
        let mut build = vec!["build", "-p", "enforcer", "-p", "enforcer-tests", "--bins"];
        build.extend_from_slice(profile);
        cargo(&build)?;
        // End-to-end tests share the host's cgroups and BPF: one at a time.
        let mut run = vec!["test", "-p", "enforcer-tests"];
        run.extend_from_slice(profile);
        run.extend_from_slice(&["--", "--test-threads=1"]);
        if unsafe { libc::geteuid() } == 0 {
            cargo_test(&run, &mut totals)?;
        } else {
            // Build unprivileged, run only the test binaries as root.
            let mut sudo = vec!["--config", "target.'cfg(all())'.runner='sudo -E'"];
            sudo.extend_from_slice(&run);
            cargo_test(&sudo, &mut totals)?;
        }
    }
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// Test counts summed over every `cargo test` run.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// `cargo test` with its output passed through, adding its `test result:` counts to `totals`.
fn cargo_test(args: &[&str], totals: &mut Totals) -> anyhow::Result<()> {
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            totals.passed += count(summary, " passed");
            totals.failed += count(summary, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed",
            totals.passed,
            totals.failed.max(1)
        );
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The number before `label` in a libtest summary such as `ok. 12 passed; 0 failed; ...`.
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .trim()
                .strip_suffix(label.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Run the agent until it exits, then uninstall it: a stopped agent leaves its programs
/// attached and failing closed, which a developer's host should not be left in.
fn run(policy: &str, args: &[String]) -> anyhow::Result<()> {
    const AGENT: &str = "target/release/enforcer";
    let mut agent = Command::new(AGENT)
        .args(["run", "--policy", policy])
        .args(args)
        .current_dir(workspace_root())
        .spawn()
        .with_context(|| format!("start {AGENT}"))?;
    // Ctrl-C reaches the whole foreground process group: the agent stops on it; this process
    // must outlive it to uninstall.
    // SAFETY: plain syscall; no handler runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = agent.wait().context("wait for the agent")?;
    let pin_path = pin_path(args);
    let mut uninstall = Command::new(AGENT);
    uninstall.arg("uninstall").current_dir(workspace_root());
    if let Some(path) = &pin_path {
        uninstall.args(["--pin-path", path]);
    }
    let removed = uninstall.status().context("run enforcer uninstall")?;
    if !removed.success() {
        bail!("enforcer uninstall failed ({removed}): programs may still be attached");
    }
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    Ok(())
}

/// The `--pin-path` among the agent's arguments, if any.
fn pin_path(args: &[String]) -> Option<String> {
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--pin-path") {
            Some("") => args.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_string),
            None => None,
        })
}

/// Formatting and clippy, warnings denied, on the host crates and on the kernel crate (which
/// only builds for the BPF target, with the pinned nightly).
fn lint() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let nightly = format!("+{}", setup::EBPF_TOOLCHAIN);
    let status = Command::new("rustup")
        .args([
            "run",
            setup::EBPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "-p",
            "enforcer-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cargo {nightly} clippy -p enforcer-ebpf"))?;
    if !status.success() {
        bail!("cargo {nightly} clippy -p enforcer-ebpf failed: {status}");
    }
    Ok(())
}

/// Run cargo with `args` from the workspace root; fail if it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}
