//! The command line: `enforcer run | check | explain | status | uninstall`. In the library, not
//! in `main.rs`, so that the man page and shell completions are generated from these very
//! definitions (`cargo xtask man`, `examples/cli_docs.rs`).

use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    path::PathBuf,
};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    metrics::{self, status},
    redirect,
};

/// `--version`: the crate version and the commit it was built from (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ENFORCER_COMMIT"),
    ")"
);

#[derive(Parser)]
// A later flag overrides an earlier one: a wrapper can append its own `--listen`.
#[command(
    version = VERSION,
    about = "eBPF-based host-level API traffic enforcer",
    args_override_self = true
)]
pub struct Cli {
    /// Log format of the agent's own logs (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Least severity of the agent's own logs. Given, it overrides `ENFORCER_LOG`; without
    /// it, `ENFORCER_LOG` (a tracing filter such as `info,enforcer::proxy=debug`) applies,
    /// else `info`.
    #[arg(long, global = true, value_enum)]
    pub log_level: Option<LogLevel>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as a tracing filter directive.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// What `check` and `status` print.
#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    /// For people: `FILE:LINE:COLUMN: message` lines, the status table.
    Text,
    /// For scripts: one JSON document on stdout (docs/policy.md, docs/metrics.md).
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Redirect connects toward protected destinations through this agent.
    Run(RunArgs),
    /// Check a policy file; print every error as FILE:LINE:COLUMN: reason.
    Check {
        /// Policy file (YAML).
        file: PathBuf,
        /// `json`: `{"file", "valid", "services", "rules", "errors": [{"file", "line",
        /// "column", "message"}]}` on stdout; the exit code is the same.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        format: Output,
    },
    /// Print what a policy decides for a request from a described process, and why.
    Explain(ExplainArgs),
    /// Detach and remove every program, link and map the agent pinned. Stopping the agent
    /// leaves them attached (protected destinations then follow their `failMode`) so that a
    /// restart opens no gap; this is how to remove the enforcer from a host.
    Uninstall {
        /// The agent's `--pin-path`.
        #[arg(long, default_value = redirect::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Print a running agent's state: programs, policy, services, traffic (from its
    /// metrics endpoint's /status).
    Status {
        /// The agent's --metrics-addr. Default: the address the agent running with this
        /// --runtime-dir wrote into it.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// The agent's --runtime-dir.
        #[arg(long, env = "RUNTIME_DIRECTORY", default_value = status::DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// `json`: the agent's /status document as it serves it.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Policy file (YAML).
    #[arg(long)]
    pub policy: PathBuf,
    /// The calling executable (its SHA-256 is computed if it can be read).
    #[arg(long)]
    pub exe: Option<PathBuf>,
    /// User name or uid (default: the user running this command).
    #[arg(long)]
    pub user: Option<String>,
    /// Group name or gid (default: the user's primary group).
    #[arg(long)]
    pub group: Option<String>,
    /// systemd unit the caller runs in.
    #[arg(long)]
    pub unit: Option<String>,
    /// cgroup v2 path of the caller.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Container id of the caller.
    #[arg(long)]
    pub container: Option<String>,
    /// HTTP method.
    pub method: String,
    /// URL, e.g. http://payments.internal:8080/v1/invoices/42
    pub url: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Policy file (YAML).
    #[arg(long)]
    pub policy: PathBuf,
    /// cgroup v2 directory whose processes (and descendants) are enforced.
    /// Default: the cgroup v2 root, i.e. the whole host.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// IPv4 loopback address the kernel redirects to. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:17001")]
    pub listen: SocketAddrV4,
    /// IPv6 listener. Default: [::1] on the IPv4 listener's port; without one, connects to
    /// protected IPv6 destinations are refused.
    #[arg(long)]
    pub listen6: Option<SocketAddrV6>,
    /// Deprecated: set `settings.limits.connectTimeout` in the policy. Seconds to wait for an
    /// original destination to accept; given, it overrides the policy's value.
    #[arg(long)]
    pub connect_timeout: Option<f64>,
    /// Seconds SIGTERM waits for requests in flight before exiting. Listeners close at once;
    /// idle connections close at once; a request in flight finishes (its response says
    /// `connection: close`). A second SIGTERM or SIGINT ends the wait.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Where the agent keeps state that must outlive it: the per-host key that fingerprints
    /// tokens in records (so a token's fingerprint is stable across restarts), and the
    /// bind-on-first-use bindings.
    #[arg(long, default_value = "/var/lib/enforcer")]
    pub state_dir: PathBuf,
    /// Directory on a BPF file system where programs' links and maps are pinned, so they
    /// outlive the agent and a restarted agent adopts them. bpffs is mounted at /sys/fs/bpf if
    /// nothing is. Agents enforcing different cgroups need different pin paths.
    #[arg(long, default_value = redirect::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Where to serve /metrics (Prometheus), /healthz, /readyz and /status; `off` for no
    /// endpoint and no metrics recording. Loopback by default: /status names the policy file
    /// and services.
    #[arg(long, default_value = metrics::DEFAULT_ADDR)]
    pub metrics_addr: metrics::Endpoint,
    /// Where the agent writes `agent.json` (its pid and bound metrics address) while it runs,
    /// for `enforcer status` to find it. systemd's `RuntimeDirectory=` sets the variable.
    #[arg(long, env = "RUNTIME_DIRECTORY", default_value = status::DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
}
