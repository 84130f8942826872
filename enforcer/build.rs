//! Builds the kernel programs (enforcer-ebpf) for bpfel-unknown-none with the pinned nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`. Also stamps the
//! build with its commit (`ENFORCER_COMMIT`, for `--version` and `enforcer_build_info`).

use std::{path::Path, process::Command};

/// The nightly that builds the kernel crate. It must be ≥ 1.98 (aya-ebpf's rust-version) and
/// built on the LLVM that bpf-linker 0.10.4 links against (rustc's own libLLVM 22).
/// Keep in step with xtask/src/setup.rs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-30";

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-env=ENFORCER_COMMIT={}", commit());
    let ebpf = aya_build::Package {
        name: "enforcer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../enforcer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}

/// `git rev-parse --short HEAD`, with `-dirty` when tracked files differ from it; without a
/// work tree (a container build from a copied tree, a tarball) the `ENFORCER_COMMIT` the
/// builder passes; else `unknown`. Never fails the build.
fn commit() -> String {
    println!("cargo::rerun-if-env-changed=ENFORCER_COMMIT");
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return std::env::var("ENFORCER_COMMIT").unwrap_or_else(|_| "unknown".into());
    };
    // Rebuilt when HEAD moves (checkout, commit) or the index changes (add, stash, reset); an
    // edit not yet staged shows as `-dirty` from the next of those or a clean build on.
    let mut watched = vec!["HEAD".to_owned(), "index".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            println!(
                "cargo::rerun-if-changed={}",
                Path::new(dir).join(path).display()
            );
        }
    }
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => head,
        _ => format!("{head}-dirty"),
    }
}
