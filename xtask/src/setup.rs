//! `cargo xtask setup`: make a fresh machine of this project's kind ready to build and test.
//!
//! Each step checks first and does nothing when its tool is already there, so a second run
//! takes well under a second.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Builds the kernel crate. Keep in step with `EBPF_TOOLCHAIN` in enforcer/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-06-30";
/// bpf-linker 0.10.4 loads rustc's own libLLVM; later releases need a system LLVM this
/// distribution does not have (see DESIGN.md).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// Debian packages the tests and benchmarks run: bpftool proves nothing is left attached,
/// curl is a real client, haproxy the peer proxy the benchmarks compare with, nginx the
/// benchmarks' HTTP upstream and wrk their load generator; promtool (Debian `prometheus`) checks
/// and unit-tests the alert rules in deploy/, systemd-analyze verifies the systemd unit, and
/// setpriv runs the agent with exactly the unit's capabilities, groff checks the generated man
/// pages (`examples/cli_docs.rs`), and the attestation tests trace a caller with strace and
/// bring up a private network namespace's loopback with ip. (On a host booted with systemd,
/// Debian starts the haproxy, nginx and prometheus services on install; the tests and
/// benchmarks run their own instances on ports of their own and do not need them.)
const DEBIAN_PACKAGES: [(&str, &str); 11] = [
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    ("groff-base", "groff"),
    ("haproxy", "haproxy"),
    ("iproute2", "ip"),
    ("nginx", "nginx"),
    ("prometheus", "promtool"),
    ("strace", "strace"),
    ("systemd", "systemd-analyze"),
    ("util-linux", "setpriv"),
    ("wrk", "wrk"),
];

pub fn run() -> anyhow::Result<()> {
    ebpf_toolchain()?;
    bpf_linker()?;
    debian_packages()
}

fn ebpf_toolchain() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.contains("rust-src") && installed.contains("clippy") {
        return Ok(());
    }
    eprintln!("setup: installing {EBPF_TOOLCHAIN} with rust-src and clippy");
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about 3 minutes)");
    exec(Command::new("cargo").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, bin)| !on_path(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {missing:?}: run `cargo xtask setup` as root, or apt-get install them"
        );
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update").stdout(Stdio::null()))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null()),
    )
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| std::path::Path::new(d).join(bin).is_file())
    })
}

fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
