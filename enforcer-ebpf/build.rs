use which::which;

/// Rebuild the programs when bpf-linker changes: it is their linker, and cargo does not know.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
