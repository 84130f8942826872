//! enforcer: host-level API traffic enforcer. See README.md and DESIGN.md.
//!
//! The command line only: each subcommand parses its flags and calls the library; `run`
//! hands a checked [`app::Config`] to [`app::run`].

use std::{
    io::{self, IsTerminal as _},
    net::SocketAddr,
    path::Path,
};

use anyhow::bail;
use clap::Parser as _;
use tracing::info;

use enforcer::{
    app,
    cli::{Cli, Command, ExplainArgs, LogFormat, LogLevel, Output, RunArgs},
    metrics::{self, status::AgentFile},
    policy::{self, Policy},
    redirect,
};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file, format } => check(&file, format),
        Command::Explain(args) => explain(args),
        Command::Uninstall { pin_path } => uninstall(&pin_path),
        Command::Status {
            metrics_addr,
            runtime_dir,
            output,
        } => status(metrics_addr, &runtime_dir, output),
    };
    if let Err(e) = result {
        eprintln!("enforcer: error: {e:#}");
        std::process::exit(1);
    }
}

/// `--log-level` wins over `ENFORCER_LOG`, which wins over `info`. Colours only on a terminal:
/// journald and `kubectl logs` store what they get, escape codes included.
fn init_logging(format: LogFormat, level: Option<LogLevel>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level.as_str()),
        None => EnvFilter::try_from_env("ENFORCER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(file: &Path, format: Output) -> anyhow::Result<()> {
    let result = policy::check(file);
    if let Output::Json = format {
        return check_json(file, result);
    }
    match result {
        Ok(p) => {
            for w in p.warnings() {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} services, {} rules)",
                file.display(),
                p.services.len(),
                p.rules().len()
            );
            Ok(())
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                println!("{d}");
            }
            bail!("{} error(s) in {}", diagnostics.len(), file.display())
        }
    }
}

/// `check --format json`, documented in docs/policy.md ("Checking a policy").
fn check_json(file: &Path, result: Result<Policy, Vec<policy::Diagnostic>>) -> anyhow::Result<()> {
    let (services, rules, errors, warnings) = match &result {
        Ok(p) => (
            Some(p.services.len()),
            Some(p.rules().len()),
            &[][..],
            p.warnings(),
        ),
        Err(diagnostics) => (None, None, &diagnostics[..], &[][..]),
    };
    let as_json = |diagnostics: &[policy::Diagnostic]| -> Vec<serde_json::Value> {
        diagnostics
            .iter()
            .map(|d| {
                // Line 0: the file as a whole (it could not be read).
                let at = |n: u64| (n > 0).then_some(n);
                serde_json::json!({
                    "file": d.file.display().to_string(),
                    "line": at(d.line),
                    "column": at(d.column),
                    "message": d.message,
                })
            })
            .collect()
    };
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "valid": result.is_ok(),
        "services": services,
        "rules": rules,
        "errors": as_json(errors),
        "warnings": as_json(warnings),
    });
    println!("{report}");
    if !errors.is_empty() {
        bail!("{} error(s) in {}", errors.len(), file.display());
    }
    Ok(())
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.policy)?;
    let caller = policy::Caller {
        exe: args.exe,
        user: args.user,
        group: args.group,
        unit: args.unit,
        cgroup: args.cgroup,
        container: args.container,
    };
    let explanation = policy::explain(&policy, &caller.identity(), &args.method, &args.url)?;
    let text = explanation.to_string();
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn uninstall(pin_path: &Path) -> anyhow::Result<()> {
    let removed = redirect::uninstall(pin_path)?;
    info!(
        event = "uninstalled",
        pin_path = %pin_path.display(),
        links = removed.links,
        maps = removed.maps,
        "enforcer uninstalled"
    );
    Ok(())
}

fn status(addr: Option<SocketAddr>, runtime_dir: &Path, output: Output) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => AgentFile::find(runtime_dir)?,
    };
    match output {
        Output::Text => print!("{}", metrics::fetch_status(addr)?),
        Output::Json => println!("{}", metrics::fetch_status_json(addr)?),
    }
    Ok(())
}

/// `enforcer run`: the agent, on a runtime whose workers size themselves to the CPUs this
/// process may run on.
#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    app::run(app::Config::from_args(args)?).await
}
