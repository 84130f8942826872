//! `cargo xtask bench` (part `jwt`): what requiring a bearer JWT costs.
//!
//! - **Verification**, per request: `JwtVerifier::verify` for RS256, ES256 and EdDSA, without
//!   cache, with the agent's cache of verified tokens (a repeated token) and on a token's first
//!   use with the cache. xtask runs in the debug profile, so the timing is done by the release
//!   build of `enforcer/examples/jwt_bench.rs`, pinned to the CPU the HTTP part gives the
//!   agent: medians of 15 rounds interleaving every (algorithm, mode).
//! - **End to end**, through the real agent: keep-alive HTTP from wrk (in the agent's test
//!   cgroup, so redirected) to nginx, on a path whose rule requires a JWT (RS256 from a JWKS
//!   file, and a scope) vs a path whose rule requires nothing; one agent, one policy, and the
//!   same request bytes for both (the `Authorization` header is sent on both paths, so the
//!   difference is the check alone). wrk presents one token, so after its first request every
//!   request is a cache hit, as for a client reusing its access token. Load runs (throughput)
//!   and single-connection runs (latency), the two paths interleaved (order alternating) for
//!   `--http-rounds` rounds, medians and per-round ratios; CPUs, durations and connections as
//!   in the `http` part (`--http-*`). Before the rounds, requests without the header must all be
//!   refused, proving that the rule is enforced.
//!
//! Writes `target/bench/jwt.json`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use enforcer_tests::{Agent, Cgroup};
use serde_json::{Value, json};

use super::{
    http::{self, HttpArgs, WrkRun},
    median, min_max, pin, pin_process,
};

const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// The modes `jwt_bench` times, as it names them, and how this report names them.
const MODES: [(&str, &str); 3] = [
    ("uncached", "no cache"),
    ("cached", "cached (repeat)"),
    ("first_use", "first use, cached"),
];

const ISSUER: &str = "https://sso.bench.test";
const AUDIENCE: &str = "bench-api";
const SCOPE: &str = "bench:read";
/// The path whose rule requires nothing, and the one whose rule requires the JWT.
const PLAIN_PATH: &str = "/plain";
const JWT_PATH: &str = "/jwt";

/// Far beyond the seconds `jwt_bench` takes; only a hung one reaches it.
const LIMIT: Duration = Duration::from_secs(600);

pub fn run(args: &HttpArgs, root: &Path) -> anyhow::Result<Value> {
    let verify = verify(root, args.server_cpu())?;
    let end_to_end = end_to_end(args, root)?;
    Ok(json!({ "verify": verify, "end_to_end": end_to_end }))
}

fn bench_bin(root: &Path) -> std::path::PathBuf {
    root.join("target/release/examples/jwt_bench")
}

// === verification ===

fn verify(root: &Path, cpu: usize) -> anyhow::Result<Value> {
    let bin = bench_bin(root);
    let mut report = super::run_example_report(&bin, "jwt_bench", &[], cpu, LIMIT)?;
    let ns = |alg: &str, mode: &str, field: &str| -> anyhow::Result<f64> {
        report["algorithms"][alg][mode][field]
            .as_f64()
            .with_context(|| format!("jwt_bench: no `{field}` for {alg} {mode}"))
    };
    println!(
        "\nJWT verification per request: JwtVerifier::verify, release build, pinned to CPU \
         {cpu}; medians of {} rounds interleaving every algorithm and mode, each a batch of \
         {} ms (min..max of the rounds in brackets)",
        report["rounds"], report["batch_ms"]
    );
    println!(
        "{:>6}  {:>6}  {:>22}  {:>22}  {:>22}  {:>15}",
        "alg", "token", MODES[0].1, MODES[1].1, MODES[2].1, "no cache/cached"
    );
    for alg in ALGORITHMS {
        let mut cells = Vec::new();
        for (mode, _) in MODES {
            cells.push(format!(
                "{:>7.2} µs [{:.2}..{:.2}]",
                ns(alg, mode, "median_ns")? / 1e3,
                ns(alg, mode, "min_ns")? / 1e3,
                ns(alg, mode, "max_ns")? / 1e3,
            ));
        }
        println!(
            "{alg:>6}  {:>4} B  {:>22}  {:>22}  {:>22}  {:>14.0}x",
            report["algorithms"][alg]["token_bytes"],
            cells[0],
            cells[1],
            cells[2],
            ns(alg, "uncached", "median_ns")? / ns(alg, "cached", "median_ns")?,
        );
    }
    report["cpu"] = cpu.into();
    Ok(report)
}

// === end to end ===

/// The two configurations compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Plain,
    Jwt,
}

impl Route {
    const BOTH: [Route; 2] = [Route::Plain, Route::Jwt];

    fn path(self) -> &'static str {
        match self {
            Route::Plain => PLAIN_PATH,
            Route::Jwt => JWT_PATH,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Route::Plain => "no JWT rule",
            Route::Jwt => "JWT rule",
        }
    }
}

fn policy(wrk: &Path, upstream: std::net::SocketAddr, jwks: &Path, audit: &Path) -> String {
    format!(
        "version: 1\n\
         settings:\n  \
           # Records go to a file (not the agent's stdout); no rotation during the bench.\n  \
           audit: {{ file: \"{audit}\", maxBytes: 1099511627776 }}\n\
         identities:\n  \
           wrk: {{ exe: \"{wrk}\" }}\n\
         credentials:\n  \
           sso:\n    \
             kind: jwt\n    \
             issuer: {ISSUER}\n    \
             audience: {AUDIENCE}\n    \
             algorithms: [RS256]\n    \
             jwksFile: \"{jwks}\"\n\
         services:\n  \
           bench-nginx:\n    \
             endpoints: [\"{upstream}\"]\n\
         rules:\n  \
           - id: plain\n    \
             from: [wrk]\n    \
             to: bench-nginx\n    \
             methods: [GET]\n    \
             paths: [\"{PLAIN_PATH}\"]\n  \
           - id: jwt\n    \
             from: [wrk]\n    \
             to: bench-nginx\n    \
             methods: [GET]\n    \
             paths: [\"{JWT_PATH}\"]\n    \
             require: {{ credential: sso, scopes: [\"{SCOPE}\"] }}\n",
        audit = audit.display(),
        wrk = wrk.display(),
        jwks = jwks.display(),
    )
}

/// Per-round values of one metric for both paths.
#[derive(Default)]
struct Rounds {
    plain: Vec<f64>,
    jwt: Vec<f64>,
}

impl Rounds {
    fn push(&mut self, path: Route, v: f64) {
        match path {
            Route::Plain => self.plain.push(v),
            Route::Jwt => self.jwt.push(v),
        }
    }

    fn ratios(&self) -> Vec<f64> {
        self.jwt
            .iter()
            .zip(&self.plain)
            .map(|(j, p)| j / p)
            .collect()
    }

    fn to_json(&self, name: &str, unit: &str) -> Value {
        let (p, j) = (median(&self.plain), median(&self.jwt));
        json!({
            "metric": name, "unit": unit,
            "median": { "plain": p, "jwt": j },
            "jwt/plain": j / p,
            "jwt-plain": j - p,
            "rounds": { "plain": self.plain, "jwt": self.jwt },
            "jwt/plain_rounds": self.ratios(),
        })
    }
}

fn end_to_end(args: &HttpArgs, root: &Path) -> anyhow::Result<Value> {
    let started = Instant::now();
    let cpus = super::cpus();
    let (server_cpu, client_cpu, latency_cpu) = args.placement(cpus)?;
    let wrk = http::find_program("wrk")?;
    let nginx_bin = http::find_program("nginx")?;
    let enforcer = root.join("target/release/enforcer");
    let dir = http::TempDir::new("enforcer-bench-jwt")?;
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))
        .context("restrict the bench directory")?;

    // A key set and a token from the release example (xtask links no crypto).
    let out = super::run_bounded(
        "jwt_bench --mint",
        Command::new(bench_bin(root))
            .arg("--mint")
            .arg(&dir.path)
            .args([ISSUER, AUDIENCE, SCOPE]),
        LIMIT,
    )?;
    ensure!(
        out.status.success(),
        "jwt_bench --mint failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = dir.path.join("jwks.json");
    let token = fs::read_to_string(dir.path.join("token")).context("read the minted token")?;
    // The token goes in the wrk script, not on a command line (error messages print those).
    let with_token = dir.path.join("with-token.lua");
    fs::write(
        &with_token,
        format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {}\"\n{}",
            token.trim(),
            http::WRK_REPORT
        ),
    )
    .context("write the wrk script")?;
    let without_token = dir.path.join("without-token.lua");
    fs::write(&without_token, http::WRK_REPORT).context("write the wrk script")?;

    let nginx = http::start_nginx(&nginx_bin, &dir.path, server_cpu)?;
    let audit = dir.path.join("audit.jsonl");
    let policy = policy(&wrk, nginx.addr, &jwks, &audit);
    let cgroup = Cgroup::new();
    // As in the http part: started from a thread on the server CPU so tokio sizes itself for
    // one, then moved there thread by thread.
    pin(0, server_cpu).context("pin to --http-server-cpu")?;
    let mut agent = Agent::spawn(&enforcer, &cgroup, &policy, &[]);
    pin_process(agent.pid(), server_cpu).context("pin the agent")?;
    pin(0, client_cpu).context("pin to --http-client-cpu")?;

    let run = |path: Route, script: &Path, conns: u32, secs: u64, cpu: usize| {
        http::wrk(
            path.name(),
            &mut cgroup.command(&wrk),
            script,
            &format!("http://{}{}", nginx.addr, path.path()),
            conns,
            secs,
            cpu,
        )
    };
    let ok = |path: Route, r: WrkRun| -> anyhow::Result<WrkRun> {
        ensure!(
            r.status_errors == 0 && r.socket_errors == 0,
            "wrk ({}) with the token: {} answers not 2xx, errors {}",
            path.name(),
            r.status_errors,
            r.errors
        );
        Ok(r)
    };

    // The rule is enforced: without the token every request is refused (401); with it, both
    // paths answer 200.
    let refused = run(Route::Jwt, &without_token, 1, 1, client_cpu)?;
    ensure!(
        refused.status_errors == refused.requests,
        "without a token, {} of {} requests to {JWT_PATH} were answered 2xx: the JWT rule is \
         not enforced",
        refused.requests - refused.status_errors,
        refused.requests
    );
    let conns = args.http_connections;
    for path in Route::BOTH {
        ok(path, run(path, &with_token, conns, 1, client_cpu)?)?;
    }

    // Rounds are not run again when other work disturbs them (the http part does): on a
    // shared machine the paired per-round ratios and the other-work share say how far to
    // trust the medians.
    let ledger = http::Ledger::new(vec![nginx.pid, agent.pid()], cpus);
    let (mut other, mut steal) = (Vec::new(), Vec::new());
    let (mut rps, mut p50, mut p99) = (Rounds::default(), Rounds::default(), Rounds::default());
    let (mut one_rps, mut one_p50, mut one_p99) =
        (Rounds::default(), Rounds::default(), Rounds::default());
    for round in 0..args.http_rounds as usize {
        let before = ledger.sample();
        let order = if round % 2 == 0 {
            [Route::Plain, Route::Jwt]
        } else {
            [Route::Jwt, Route::Plain]
        };
        for path in order {
            let r = ok(
                path,
                run(path, &with_token, conns, args.http_secs, client_cpu)?,
            )?;
            rps.push(path, r.rps);
            p50.push(path, r.p50);
            p99.push(path, r.p99);
        }
        for path in order {
            let r = ok(
                path,
                run(path, &with_token, 1, args.http_latency_secs, latency_cpu)?,
            )?;
            one_rps.push(path, r.rps);
            one_p50.push(path, r.p50);
            one_p99.push(path, r.p99);
        }
        let (o, st) = ledger.shares(before, ledger.sample());
        other.push(o);
        steal.push(st);
        eprintln!(
            "jwt {}: {conns} conns {:.0} / {:.0} req/s, 1 conn p50 {:.0} / {:.0} us (no JWT \
             rule / JWT rule); other work {:.1}%, steal {:.1}% of the CPUs",
            round + 1,
            rps.plain[round],
            rps.jwt[round],
            one_p50.plain[round],
            one_p50.jwt[round],
            o * 100.0,
            st * 100.0,
        );
    }
    let (_, counters) = agent.stop();
    drop(nginx);
    let added = agent_added_latency(&audit)?;

    let metrics = [
        (format!("throughput, {conns} conns"), "req/s", &rps),
        (format!("latency p50, {conns} conns"), "us", &p50),
        (format!("latency p99, {conns} conns"), "us", &p99),
        ("rate, 1 conn".to_string(), "req/s", &one_rps),
        ("latency p50, 1 conn".to_string(), "us", &one_p50),
        ("latency p99, 1 conn".to_string(), "us", &one_p99),
    ];
    println!(
        "\nJWT end to end: wrk -t1 through the agent to nginx, GET {JWT_PATH} (rule requires an \
         RS256 JWT with scope {SCOPE}, one token: cache hits after the first request) vs GET \
         {PLAIN_PATH} (rule requires nothing), same Authorization header on both; {} rounds, \
         order alternating, medians; load: -c{conns} -d{}s, wrk on CPU {client_cpu}; single: \
         -c1 -d{}s, wrk on CPU {latency_cpu}; nginx and the agent on CPU {server_cpu}",
        args.http_rounds, args.http_secs, args.http_latency_secs
    );
    println!(
        "{:<30}  {:>11}  {:>11}  {:>9}  {:>12}  {:>14}",
        "metric", "no JWT rule", "JWT rule", "JWT/none", "JWT - none", "ratio rounds"
    );
    for (name, unit, r) in &metrics {
        let (p, j) = (median(&r.plain), median(&r.jwt));
        let (lo, hi) = min_max(&r.ratios());
        println!(
            "{:<30}  {:>11}  {:>11}  {:>9.3}  {:>+12.1}  {:>14}",
            format!("{name} ({unit})"),
            super::fmt_value(p),
            super::fmt_value(j),
            j / p,
            j - p,
            format!("{lo:.3}..{hi:.3}")
        );
    }
    println!(
        "    other work on the machine during the rounds: median {:.1}%, max {:.1}% of all CPU \
         time; steal median {:.1}%",
        median(&other) * 100.0,
        min_max(&other).1 * 100.0,
        median(&steal) * 100.0,
    );
    let pct = |v: &[f64], p: f64| http::percentile(v, p);
    println!(
        "    the agent's own time per request (audit `added_latency_us`, all runs): p50 {:.0} / \
         {:.0} us, p99 {:.0} / {:.0} us (no JWT rule / JWT rule; {} / {} records)",
        pct(&added.plain, 0.5),
        pct(&added.jwt, 0.5),
        pct(&added.plain, 0.99),
        pct(&added.jwt, 0.99),
        added.plain.len(),
        added.jwt.len(),
    );
    println!(
        "    refused without a token: {} of {} requests; agent counters: {counters}",
        refused.status_errors, refused.requests
    );
    Ok(json!({
        "placement": {
            "server_cpu": server_cpu, "client_cpu": client_cpu, "latency_cpu": latency_cpu,
        },
        "args": {
            "rounds": args.http_rounds,
            "secs": args.http_secs,
            "connections": conns,
            "latency_secs": args.http_latency_secs,
        },
        "measured_secs": started.elapsed().as_secs_f64(),
        "refused_without_token": { "requests": refused.requests,
                                   "refused": refused.status_errors },
        "metrics": metrics.iter().map(|(n, u, r)| r.to_json(n, u)).collect::<Vec<_>>(),
        "agent_added_latency_us": {
            "plain": { "p50": pct(&added.plain, 0.5), "p99": pct(&added.plain, 0.99),
                       "records": added.plain.len() },
            "jwt": { "p50": pct(&added.jwt, 0.5), "p99": pct(&added.jwt, 0.99),
                     "records": added.jwt.len() },
        },
        "agent_counters": counters,
        "other_work_share_per_round": other,
        "steal_share_per_round": steal,
        "policy": policy,
    }))
}

/// `added_latency_us` of every allowed request in the audit trail, by rule: the agent's own
/// time from a parsed request head to the request sent upstream, credential check included,
/// without the client's, the upstream's or the scheduler's share.
fn agent_added_latency(audit: &Path) -> anyhow::Result<Rounds> {
    let file = fs::File::open(audit).with_context(|| format!("open {}", audit.display()))?;
    let mut added = Rounds::default();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("read {}", audit.display()))?;
        let route = if line.contains(r#""decision":"allow","rule":"jwt""#) {
            Route::Jwt
        } else if line.contains(r#""decision":"allow","rule":"plain""#) {
            Route::Plain
        } else {
            continue;
        };
        if let Some(v) = line
            .split("\"added_latency_us\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse::<f64>().ok())
        {
            added.push(route, v);
        }
    }
    Ok(added)
}
