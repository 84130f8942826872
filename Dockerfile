# syntax=docker/dockerfile:1
# The enforcer agent image (deploy/kubernetes/daemonset.yaml runs it):
#   docker build -t enforcer:0.1.0 --build-arg ENFORCER_COMMIT="$(git rev-parse --short HEAD)" \
#     --build-arg SOURCE_URL="$(git remote get-url origin)" .
# .git is not in the build context (.dockerignore): the commit comes in as a build argument,
# for `enforcer --version`, the enforcer_build_info metric and the image's labels.
# Toolchains are the ones the repository pins; tests/tests/deploy.rs checks they stay in step
# with rust-toolchain.toml, enforcer/build.rs and xtask/src/setup.rs.

# === build ===
# Bookworm, like the runtime stage: the binary links the glibc it will run with.
FROM rust:1.99.1-slim-bookworm AS build
# The kernel programs: a nightly with rust-src (build-std=core for bpfel-unknown-none), and
# bpf-linker 0.10.4, which loads that nightly's own libLLVM (later releases need a system
# LLVM Debian does not ship).
ARG EBPF_TOOLCHAIN=nightly-2026-06-30
ARG BPF_LINKER_VERSION=0.10.4
RUN rustup toolchain install "${EBPF_TOOLCHAIN}" --profile minimal --component rust-src \
 && cargo "+${EBPF_TOOLCHAIN}" install "bpf-linker@${BPF_LINKER_VERSION}" --locked \
 && rm -rf /usr/local/cargo/registry
WORKDIR /src
# User space: exactly the toolchain rust-toolchain.toml pins (rustup may not install it on
# its own, RUSTUP_AUTO_INSTALL=0).
COPY rust-toolchain.toml ./
RUN rustup toolchain install
COPY . .
ARG ENFORCER_COMMIT=unknown
# enforcer/build.rs builds the kernel crate with the nightly above. The binary is copied out
# of the cache-mounted target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ENFORCER_COMMIT="${ENFORCER_COMMIT}" cargo build --release --locked -p enforcer \
 && install -D -m 0755 target/release/enforcer /out/enforcer

# === runtime ===
# Slim Debian: the agent needs only glibc. util-linux (essential in Debian, so present) gives
# the DaemonSet nsenter and setpriv. The agent runs as root with a reduced capability set
# given by its orchestrator (see deploy/).
FROM debian:bookworm-slim
# OCI annotations (image-spec annotations.md). Keep the version in step with
# enforcer/Cargo.toml (tests/tests/deploy.rs checks).
ARG VERSION=0.1.0
ARG ENFORCER_COMMIT=unknown
ARG SOURCE_URL
LABEL org.opencontainers.image.title="enforcer" \
      org.opencontainers.image.description="eBPF-based host-level API traffic enforcer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${ENFORCER_COMMIT}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/enforcer /usr/local/bin/enforcer
# The shipped default policy; mount your own over /etc/enforcer (a ConfigMap in Kubernetes).
COPY examples/policy.yaml /etc/enforcer/policy.yaml
ENTRYPOINT ["/usr/local/bin/enforcer"]
CMD ["--log-format", "json", "run", "--policy", "/etc/enforcer/policy.yaml"]
