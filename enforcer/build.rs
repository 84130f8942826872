//! Builds the kernel programs (enforcer-ebpf) for bpfel-unknown-none with the pinned nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.

/// The nightly that builds the kernel crate. It must be ≥ 1.98 (aya-ebpf's rust-version) and
/// built on the LLVM that bpf-linker 0.10.4 links against (rustc's own libLLVM 22).
/// Keep in step with xtask/src/setup.rs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-30";

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "enforcer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../enforcer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
