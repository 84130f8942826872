//! Packaging and operator artefacts (`deploy/`, `Dockerfile`), checked offline with the tools
//! and schemas they are written for: systemd-analyze, promtool, the Kubernetes and
//! prometheus-operator schemas (vendored in tests/schemas), and the real agent run with exactly
//! the systemd unit's capabilities.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, enforcer_binary, privileged, sha256_hex,
};
use regex::Regex;
use serde_json::Value;

/// A metric: name, type, and labels with their values where the set is closed (an empty list:
/// any value).
type Metric = (
    &'static str,
    Type,
    &'static [(&'static str, &'static [&'static str])],
);

/// Every metric the agent exports. Alerts and dashboard may use nothing else.
/// The deprecated `enforcer_audit_records_dropped_total` and
/// `enforcer_audit_write_failures_total` (docs/metrics.md) are left out: nothing here may use
/// them.
const METRICS: &[Metric] = &[
    (
        "enforcer_build_info",
        Type::Gauge,
        &[("version", &[]), ("commit", &[])],
    ),
    (
        "enforcer_requests_total",
        Type::Counter,
        &[
            ("decision", &["allow", "deny", "would_deny", "reject"]),
            ("rule", &[]),
            ("identity", &[]),
            ("service", &[]),
        ],
    ),
    (
        "enforcer_added_latency_seconds",
        Type::Histogram,
        &[("service", &[])],
    ),
    (
        "enforcer_upstream_errors_total",
        Type::Counter,
        &[("service", &[]), ("kind", &[])],
    ),
    ("enforcer_connections_active", Type::Gauge, &[]),
    ("enforcer_connections_total", Type::Counter, &[]),
    (
        "enforcer_connections_rejected_total",
        Type::Counter,
        &[("reason", &[])],
    ),
    (
        "enforcer_auth_failures_total",
        Type::Counter,
        &[("reason", &[]), ("identity", &[])],
    ),
    (
        "enforcer_policy_reloads_total",
        Type::Counter,
        &[("result", &["success", "failure"])],
    ),
    (
        "enforcer_policy_info",
        Type::Gauge,
        &[("hash", &[]), ("version", &[]), ("source", &[])],
    ),
    (
        "enforcer_kernel_connects_total",
        Type::Counter,
        &[(
            "result",
            &[
                "redirected",
                "passed",
                "agent_passed",
                "lookup_miss",
                "map_full",
                "no_listener",
                "failed_closed",
                "failed_open",
            ],
        )],
    ),
    ("enforcer_policy_last_reload_successful", Type::Gauge, &[]),
    (
        "enforcer_policy_last_reload_timestamp_seconds",
        Type::Gauge,
        &[("result", &["success", "attempt"])],
    ),
    (
        "enforcer_audit_records_lost_total",
        Type::Counter,
        &[("reason", &["queue_full", "write_error"])],
    ),
    (
        "enforcer_credential_source_last_success_timestamp_seconds",
        Type::Gauge,
        CREDENTIAL_SOURCE,
    ),
    (
        "enforcer_credential_source_last_attempt_successful",
        Type::Gauge,
        CREDENTIAL_SOURCE,
    ),
    (
        "enforcer_credential_source_failures_total",
        Type::Counter,
        &[
            CREDENTIAL_SOURCE[0],
            CREDENTIAL_SOURCE[1],
            (
                "reason",
                &[
                    "resolve",
                    "connect",
                    "tls",
                    "timeout",
                    "http_status",
                    "parse",
                    "io",
                ],
            ),
        ],
    ),
    ("process_cpu_seconds_total", Type::Counter, &[]),
    ("process_resident_memory_bytes", Type::Gauge, &[]),
    ("process_virtual_memory_bytes", Type::Gauge, &[]),
    ("process_open_fds", Type::Gauge, &[]),
    ("process_max_fds", Type::Gauge, &[]),
    ("process_start_time_seconds", Type::Gauge, &[]),
    ("process_threads", Type::Gauge, &[]),
    (
        "enforcer_anomalies_total",
        Type::Counter,
        &[
            (
                "kind",
                &[
                    "request_burst",
                    "auth_failure_burst",
                    "new_endpoint",
                    "token_reuse",
                    "deny_spike",
                    "binary_changed",
                    "evasion_attempt",
                ],
            ),
            ("identity", &[]),
        ],
    ),
];

/// The labels of the credential source families.
const CREDENTIAL_SOURCE: &[(&str, &[&str])] = &[
    ("kind", &["jwks_url", "jwks_file", "oauth2", "inject_file"]),
    ("name", &[]),
];

/// Labels Prometheus itself adds to every series scraped (`node`: by the ServiceMonitor).
const TARGET_LABELS: [&str; 3] = ["instance", "job", "node"];

#[derive(Clone, Copy, PartialEq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// Kernel capability numbers (linux/capability.h) of the capabilities deploy/ grants.
const CAPABILITIES: [(&str, u32); 8] = [
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (`cargo xtask setup` installs it)"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory of this test's own, removed on drop (so also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("enforcer-deploy-{}-{tag}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// === systemd ===

const UNIT: &str = "deploy/systemd/enforcer.service";

/// The unit with its binary path pointed at the agent built for these tests, in `dir`
/// (systemd-analyze looks up the unit by file name).
fn templated_unit(dir: &Scratch, edit: impl Fn(String) -> String) -> PathBuf {
    let unit = read(UNIT).replace(
        "/usr/local/bin/enforcer",
        &enforcer_binary().display().to_string(),
    );
    let path = dir.0.join("enforcer.service");
    fs::write(&path, edit(unit)).unwrap();
    path
}

/// `systemd-analyze verify` exits 0 even when it ignores a line it cannot parse, so anything
/// it prints about the unit counts as a failure.
fn verify(unit: &Path) -> String {
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .current_dir(unit.parent().unwrap()));
    assert!(
        out.status.success() || !out.stderr.is_empty(),
        "systemd-analyze verify failed silently: {out:?}"
    );
    text(&out.stderr) + &text(&out.stdout)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let (dir, broken_dir) = (Scratch::new("verify"), Scratch::new("broken"));
    let unit = templated_unit(&dir, |u| u);
    assert_eq!(
        verify(&unit),
        "",
        "systemd-analyze verify {}",
        unit.display()
    );
    // The check can fail: a misspelt value is reported.
    let broken = templated_unit(&broken_dir, |u| {
        u.replace("ProtectSystem=strict", "ProtectSystem=strikt")
    });
    assert!(
        verify(&broken).contains("Failed to parse protect system value"),
        "a broken unit passed verify"
    );
}

#[test]
fn systemd_unit_exposure_is_low() {
    let dir = Scratch::new("security");
    let unit = templated_unit(&dir, |u| u);
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .current_dir(unit.parent().unwrap()));
    let report = text(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for enforcer.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}{}", text(&out.stderr)));
    eprintln!("systemd-analyze security: exposure {score} (0 = fully sandboxed, 10 = none)");
    // Root with five capabilities, host network and the whole /proc cannot go much lower; a
    // change that loses sandboxing raises it.
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{report}");
}

/// The values of every `KEY=` line of the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    read(UNIT)
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_unit_starts_after_name_resolution_and_is_watched() {
    let words = |key| -> BTreeSet<String> {
        unit_values(key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect()
    };
    // ExecStartPre resolves the policy's host names.
    for target in ["network-online.target", "nss-lookup.target"] {
        assert!(words("After").contains(target), "After={target}");
        assert!(words("Wants").contains(target), "Wants={target}");
    }
    assert_eq!(unit_values("Type"), ["notify"]);
    assert_eq!(unit_values("NotifyAccess"), ["main"]);
    assert_eq!(unit_values("Restart"), ["always"]);
    let watchdog = unit_values("WatchdogSec");
    let secs: u64 = watchdog[0].strip_suffix('s').unwrap().parse().unwrap();
    // The agent feeds it from its heartbeat task, every half interval.
    assert!(secs >= 2, "WatchdogSec={secs}s");
    // systemd sets RUNTIME_DIRECTORY, which the agent and `enforcer status` read.
    assert_eq!(unit_values("RuntimeDirectory"), ["enforcer"]);
    assert_eq!(
        Path::new(enforcer::metrics::status::DEFAULT_RUNTIME_DIR),
        Path::new("/run/enforcer")
    );
}

/// The unit's `CapabilityBoundingSet=`.
fn unit_capabilities() -> BTreeSet<String> {
    let unit = read(UNIT);
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn unit_and_daemonset_grant_the_same_capabilities() {
    let unit = unit_capabilities();
    let container = &daemonset()["spec"]["template"]["spec"]["containers"][0];
    let added: BTreeSet<String> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    // The DaemonSet adds CAP_SYS_RESOURCE (no LimitMEMLOCK= there), and CAP_SYS_ADMIN and
    // CAP_SETPCAP for its command, which drops them before the agent starts (tested below).
    let mut expected = unit.clone();
    expected.extend([
        "CAP_SYS_RESOURCE".into(),
        "CAP_SYS_ADMIN".into(),
        "CAP_SETPCAP".into(),
    ]);
    assert_eq!(added, expected);
    for cap in &added {
        assert!(
            CAPABILITIES.iter().any(|(name, _)| name == cap),
            "unknown capability {cap}"
        );
    }
}

/// Every flag the unit, the DaemonSet and the image pass to the agent is one it accepts (by its
/// `--help`), and each runs `enforcer [global flags] run ...`.
#[test]
fn unit_daemonset_and_image_pass_only_flags_the_agent_accepts() {
    let help = |args: &[&str]| text(&run(Command::new(enforcer_binary()).args(args)).stdout);
    let (global, run_flags) = (help(&["--help"]), help(&["run", "--help"]));
    let unit = read(UNIT).replace("\\\n", " ");
    let exec_start: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    let daemonset_args: Vec<String> =
        daemonset()["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
    let cmd = read("Dockerfile")
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .map(|c| serde_json::from_str::<Vec<String>>(c).unwrap())
        .unwrap();
    for (what, args) in [
        ("unit", exec_start),
        ("DaemonSet", daemonset_args),
        ("image", cmd),
    ] {
        let at = args
            .iter()
            .position(|a| a == "run")
            .unwrap_or_else(|| panic!("{what} does not run `enforcer run`: {args:?}"));
        for (i, flag) in args.iter().enumerate().filter(|(_, a)| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            let (known, help) = if i < at {
                (&global, "enforcer --help")
            } else {
                (&run_flags, "enforcer run --help")
            };
            assert!(
                known.contains(&format!("{name} ")),
                "{what} passes {name}, which `{help}` does not list"
            );
        }
    }
}

/// The bit mask of capabilities named `CAP_*`.
fn mask<'a>(caps: impl IntoIterator<Item = &'a String>) -> u64 {
    caps.into_iter().fold(0, |mask, cap| {
        let (_, bit) = CAPABILITIES
            .iter()
            .find(|(name, _)| name == cap)
            .unwrap_or_else(|| panic!("unknown capability {cap}"));
        mask | 1 << bit
    })
}

/// A capability set of process `pid` (`field`: CapEff, CapBnd, ... of /proc/<pid>/status).
fn capability_set(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// setpriv's `--bounding-set` value keeping only `caps`.
fn setpriv_only<'a>(caps: impl IntoIterator<Item = &'a String>) -> String {
    std::iter::once("-all".to_string())
        .chain(
            caps.into_iter()
                .map(|c| format!("+{}", c[4..].to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// The strongest check short of systemd itself (not PID 1 on these machines, so
/// `systemd-run` cannot be used): the real agent, in the unit's mount sandbox as far as it can
/// be had without systemd, and run as root with exactly the unit's capability set and
/// no_new_privs, attaches, and identifies a caller of another user running a binary only its
/// owner may read (CAP_SYS_PTRACE for /proc/<pid>/exe, CAP_DAC_READ_SEARCH for the digest).
#[test]
fn the_agent_runs_in_the_units_sandbox_with_its_capabilities() {
    if !privileged() {
        return;
    }
    let caps = unit_capabilities();
    let bounding = setpriv_only(&caps);
    let cgroup = Cgroup::new();
    let wrapper = cgroup_scoped_temp(&cgroup, "enforcer-sandboxed.sh");
    fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
# Re-run in a private mount namespace.
[ -n "$ENFORCER_SANDBOXED" ] || ENFORCER_SANDBOXED=1 exec unshare --mount -- "$0" "$@"
set -e
mount --make-rprivate /
# bpffs, as systemd mounts it at boot (ReadWritePaths=/sys/fs/bpf keeps it writable); an
# instance of this test's own, so pins die with the namespace instead of outliving the test.
mount -t bpf bpf /sys/fs/bpf
# PrivateTmp=yes gives the service a writable /tmp of its own.
mountpoint -q /tmp || mount --bind /tmp /tmp
# ProtectHome=yes.
for home in /home /root; do
    if [ -d "$home" ]; then mount -t tmpfs -o ro,mode=0755 tmpfs "$home"; fi
done
# ProtectSystem=strict, ProtectKernelTunables=yes, ProtectControlGroups=yes.
mount -o remount,bind,ro /
for m in $(cut -d' ' -f2 /proc/self/mounts | grep '^/sys' | grep -vx /sys/fs/bpf); do
    mount -o remount,bind,ro "$m"
done
exec setpriv --bounding-set={bounding} --inh-caps=-all --ambient-caps=-all --no-new-privs -- {agent} "$@"
"#,
            agent = enforcer_binary().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();

    // A copy of curl owned by nobody that only nobody may read and run.
    let (nobody_uid, nobody_gid) = (65534, 65534);
    let client = cgroup_scoped_temp(&cgroup, "private-curl");
    fs::copy("/usr/bin/curl", &client).unwrap();
    std::os::unix::fs::chown(&client, Some(nobody_uid), Some(nobody_gid)).unwrap();
    fs::set_permissions(&client, fs::Permissions::from_mode(0o500)).unwrap();
    let digest = sha256_hex(&client);

    let upstream = HttpUpstream::start("127.0.0.1:0");
    let u = upstream.addr();
    let policy = format!(
        r#"version: 1
settings:
  mode: enforce
identities:
  private-curl:
    exe: {exe}
    sha256: {digest}
    user: nobody
services:
  api:
    endpoints: ["{u}"]
rules:
  - id: private-curl-reads
    from: [private-curl]
    to: api
    methods: [GET]
    paths: ["/public/**"]
"#,
        exe = client.display()
    );
    let agent = Agent::spawn(&wrapper, &cgroup, &policy, &[]);

    // The sandbox is in place: the agent's system is read-only.
    let mountinfo = fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid())).unwrap();
    let root_options = mountinfo
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[4] == "/").then(|| fields[5].to_string())
        })
        .unwrap();
    assert!(
        root_options.starts_with("ro"),
        "agent's / is {root_options}"
    );

    let effective = capability_set(agent.pid(), "CapEff");
    let expected = mask(&caps);
    assert_eq!(
        effective,
        expected,
        "the agent runs with other capabilities than the unit's: {:#x}",
        effective ^ expected
    );

    let out = cgroup
        .command_as(&client, Some((nobody_uid, nobody_gid)))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} ",
        ])
        .arg(format!("http://{u}/public/a"))
        .arg(format!("http://{u}/admin"))
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "200 403 ",
        "agent log:\n{}",
        agent.log_text()
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "the denied request reached the upstream");
    assert_eq!(requests[0].target, "/public/a");
}

/// The DaemonSet's command, run as its container would be (only the DaemonSet's capabilities,
/// a cgroup namespace of its own), with this host's cgroup namespace in place of
/// /proc/1/ns/cgroup: the agent sees callers' cgroups as the host does, so a systemd-unit
/// identity matches, and holds neither CAP_SYS_ADMIN nor CAP_SETPCAP. Without the nsenter
/// prefix the same caller is not recognised: the prefix is what makes container and unit
/// identities work in Kubernetes.
#[test]
fn daemonset_command_joins_the_host_cgroup_namespace_and_drops_sys_admin() {
    if !privileged() {
        return;
    }
    let container = daemonset()["spec"]["template"]["spec"]["containers"][0].clone();
    let host_namespace = format!("/proc/{}/ns/cgroup", std::process::id());
    let agent = enforcer_binary().display().to_string();
    let command: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_str()
                .unwrap()
                .replace("/proc/1/ns/cgroup", &host_namespace)
                .replace("/usr/local/bin/enforcer", &agent)
        })
        .collect();
    assert_eq!(command[0], "nsenter");
    assert_eq!(command.last(), Some(&agent));
    let granted: BTreeSet<String> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    // A container cannot get what the machine's own bounding set lacks (CAP_SYS_RESOURCE on
    // these VMs): grant what there is.
    let host = capability_set(std::process::id(), "CapBnd");
    let grantable: BTreeSet<String> = granted
        .iter()
        .filter(|c| host & mask([*c]) != 0)
        .cloned()
        .collect();
    for missing in granted.difference(&grantable) {
        eprintln!("this machine cannot grant {missing}: the container runs without it here");
    }
    let dropped = mask(&["CAP_SYS_ADMIN".to_string(), "CAP_SETPCAP".to_string()]);

    let (status, effective, bounding) = contained_agent_call(&command, &grantable);
    assert_eq!(
        status, "200",
        "a caller in deploy-bot.service was not recognised"
    );
    let expected = format!("{:#x}", mask(&grantable) & !dropped);
    assert_eq!(format!("{effective:#x}"), expected, "agent's effective set");
    assert_eq!(format!("{bounding:#x}"), expected, "agent's bounding set");

    // Only the setpriv part: the agent stays in the container's cgroup namespace.
    let setpriv_at = command.iter().position(|c| c == "setpriv").unwrap();
    let (status, _, _) = contained_agent_call(&command[setpriv_at..], &grantable);
    assert_eq!(
        status, "403",
        "recognised the caller without the host's cgroup namespace"
    );
}

/// Start the agent through `command` in a "container" (bounding set `caps`, a cgroup
/// namespace of its own), have curl in a `deploy-bot.service` cgroup call a service only that
/// unit may call, and return curl's status and the agent's effective and bounding sets.
fn contained_agent_call(command: &[String], caps: &BTreeSet<String>) -> (String, u64, u64) {
    let cgroup = Cgroup::new();
    let bot = cgroup.child("deploy-bot.service");
    let wrapper = cgroup_scoped_temp(&cgroup, "enforcer-contained.sh");
    fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
# The container: only its capabilities, and a cgroup namespace of its own.
[ -n "$ENFORCER_CONTAINED" ] || ENFORCER_CONTAINED=1 exec setpriv --bounding-set={bounding} --inh-caps=-all --ambient-caps=-all -- unshare --cgroup -- "$0" "$@"
exec {command} "$@"
"#,
            bounding = setpriv_only(caps),
            command = command.join(" "),
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let u = upstream.addr();
    let policy = format!(
        r#"version: 1
settings:
  mode: enforce
identities:
  deploy-bot:
    systemdUnit: deploy-bot.service
services:
  api:
    endpoints: ["{u}"]
rules:
  - id: deploy-bot-purges
    from: [deploy-bot]
    to: api
    methods: [GET]
    paths: ["/purge"]
"#
    );
    let agent = Agent::spawn(&wrapper, &cgroup, &policy, &[]);
    let out = bot
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{u}/purge"))
        .output()
        .unwrap();
    (
        text(&out.stdout),
        capability_set(agent.pid(), "CapEff"),
        capability_set(agent.pid(), "CapBnd"),
    )
}

// === Kubernetes ===

fn daemonset() -> Value {
    yaml("deploy/kubernetes/daemonset.yaml")
}

/// Validators of each kind deploy/kubernetes uses, on the vendored schemas, offline.
struct Schemas {
    registry: jsonschema::Registry<'static>,
}

impl Schemas {
    fn load() -> Self {
        let definitions: Value =
            serde_json::from_str(&read("tests/schemas/kubernetes/_definitions.json")).unwrap();
        let id = definitions["$id"].as_str().unwrap().to_string();
        let registry = jsonschema::Registry::new()
            .add(id, definitions)
            .unwrap()
            .prepare()
            .unwrap();
        Self { registry }
    }

    fn schema_file(kind: &str) -> &'static str {
        match kind {
            "ConfigMap" => "tests/schemas/kubernetes/configmap-v1.json",
            "DaemonSet" => "tests/schemas/kubernetes/daemonset-apps-v1.json",
            "Namespace" => "tests/schemas/kubernetes/namespace-v1.json",
            "Service" => "tests/schemas/kubernetes/service-v1.json",
            "ServiceAccount" => "tests/schemas/kubernetes/serviceaccount-v1.json",
            "ServiceMonitor" => "tests/schemas/servicemonitor-v1.json",
            "PrometheusRule" => "tests/schemas/prometheusrule-v1.json",
            other => panic!("no schema vendored for kind {other}"),
        }
    }

    /// Every schema violation of `doc`, as `path: message`.
    fn errors(&self, doc: &Value) -> Vec<String> {
        let kind = doc["kind"].as_str().expect("kind");
        let schema: Value = serde_json::from_str(&read(Self::schema_file(kind))).unwrap();
        let validator = jsonschema::options()
            .offline()
            .with_registry(&self.registry)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema of {kind}: {e}"));
        validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

/// Each manifest of deploy/kubernetes, by file name, as kustomization.yaml lists them.
fn manifests() -> BTreeMap<String, Value> {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let on_disk: BTreeSet<String> = fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk, "kustomization.yaml lists other files");
    on_disk
        .into_iter()
        .map(|name| {
            let doc = yaml(&format!("deploy/kubernetes/{name}"));
            (name, doc)
        })
        .collect()
}

#[test]
fn kubernetes_manifests_match_their_schemas() {
    let schemas = Schemas::load();
    let manifests = manifests();
    let kinds: BTreeSet<&str> = manifests
        .values()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ])
    );
    for (name, doc) in &manifests {
        let errors = schemas.errors(doc);
        assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
    }
}

#[test]
fn kubernetes_schemas_refuse_unknown_fields() {
    let schemas = Schemas::load();
    let mut doc = daemonset();
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        Value::Bool(true);
    let errors = schemas.errors(&doc);
    assert!(
        errors.iter().any(|e| e.contains("readOnlyRootFileSystem")),
        "{errors:?}"
    );
    let mut monitor = yaml("deploy/kubernetes/servicemonitor.yaml");
    monitor["spec"]["endpoints"][0]["interval"] = Value::String("15 seconds".into());
    let errors = schemas.errors(&monitor);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/spec/endpoints/0/interval")),
        "{errors:?}"
    );
}

/// `--name=value` of the agent's arguments.
fn arg<'a>(args: &'a [&str], name: &str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
        .unwrap_or_else(|| panic!("no --{name}= in {args:?}"))
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("no volume mount {volume}"))
}

/// The pieces that must agree with each other and with the agent's flags.
#[test]
fn daemonset_service_and_monitor_are_wired_together() {
    let m = manifests();
    let ds = &m["daemonset.yaml"];
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();

    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["hostPID"], true);
    assert_eq!(container["securityContext"]["privileged"], false);

    // Policy: the ConfigMap's key, in a mounted directory (no subPath, or updates never
    // arrive), named by --policy.
    let policy = mount_path(container, "policy");
    assert!(
        policy.get("subPath").is_none(),
        "subPath mounts never see ConfigMap updates"
    );
    let cm = &m["policy-configmap.yaml"];
    let key = cm["data"].as_object().unwrap().keys().next().unwrap();
    assert_eq!(
        arg(&args, "policy"),
        format!("{}/{key}", policy["mountPath"].as_str().unwrap())
    );
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "policy")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);

    // Host paths the agent's flags point into.
    assert_eq!(
        arg(&args, "cgroup"),
        mount_path(container, "cgroup")["mountPath"]
    );
    assert_eq!(
        arg(&args, "state-dir"),
        mount_path(container, "state")["mountPath"]
    );
    let bpffs = mount_path(container, "bpffs")["mountPath"]
        .as_str()
        .unwrap();
    assert!(arg(&args, "pin-path").starts_with(&format!("{bpffs}/")));
    // `kubectl exec ds/enforcer -- enforcer status` reads agent.json from the default runtime
    // directory, which must be writable under a read-only root file system.
    assert!(!args.iter().any(|a| a.starts_with("--runtime-dir")));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let run = mount_path(container, "run");
    assert_eq!(
        run["mountPath"],
        enforcer::metrics::status::DEFAULT_RUNTIME_DIR
    );
    assert!(run.get("readOnly").is_none_or(|r| r == false));
    let run_volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "run")
        .unwrap();
    assert!(run_volume["emptyDir"].is_object(), "{run_volume}");

    // Health and metrics: on the pod IP (the node's, with hostNetwork), on the named port that
    // probes, annotations, Service and ServiceMonitor all use.
    let metrics_addr = arg(&args, "metrics-addr");
    let (host, port) = metrics_addr.rsplit_once(':').unwrap();
    assert_eq!(host, "$(POD_IP)");
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP env");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let port: u64 = port.parse().unwrap();
    let ports = container["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"], port);
    let port_name = ports[0]["name"].as_str().unwrap();
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], port_name, "{probe}");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let service = &m["service.yaml"];
    let pod_labels = pod["metadata"]["labels"].as_object().unwrap();
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selects {k}={v}");
    }
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "DaemonSet selects {k}={v}");
    }
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"], port);
    assert_eq!(service_port["targetPort"], port_name);

    let monitor = &m["servicemonitor.yaml"];
    let service_labels = service["metadata"]["labels"].as_object().unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "ServiceMonitor selects {k}={v}"
        );
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service_port["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    // The alert rules expect job="enforcer".
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(service_labels[job_label], "enforcer");

    let namespace = m["namespace.yaml"]["metadata"]["name"].clone();
    for (name, doc) in &m {
        if name != "namespace.yaml" {
            assert_eq!(doc["metadata"]["namespace"], namespace, "{name}");
        }
    }
    assert_eq!(
        spec["serviceAccountName"],
        m["serviceaccount.yaml"]["metadata"]["name"]
    );
}

#[test]
fn configmap_policy_passes_enforcer_check() {
    let cm = yaml("deploy/kubernetes/policy-configmap.yaml");
    let policy = cm["data"]["policy.yaml"].as_str().unwrap();
    let dir = Scratch::new("policy");
    let file = dir.0.join("policy.yaml");
    fs::write(&file, policy).unwrap();
    let out = run(Command::new(enforcer_binary()).arg("check").arg(&file));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// === Prometheus and Grafana ===

fn promtool(args: &[&str], dir: &Path) {
    let out = run(Command::new("promtool").args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo("deploy/prometheus");
    promtool(&["check", "rules", "alerts.yaml"], &dir);
    promtool(&["test", "rules", "alerts_test.yaml"], &dir);
}

/// The PrometheusRule carries exactly the rules promtool checks and tests.
#[test]
fn prometheusrule_holds_the_tested_alert_rules() {
    let rule = yaml("deploy/kubernetes/prometheusrule.yaml");
    assert_eq!(rule["spec"], yaml("deploy/prometheus/alerts.yaml"));
}

/// Every alert rule is seen firing by at least one unit test.
#[test]
fn every_alert_has_a_unit_test() {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    let alerts: BTreeSet<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    let tests = yaml("deploy/prometheus/alerts_test.yaml");
    let fired: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap().to_string())
        .collect();
    assert!(!alerts.is_empty());
    assert_eq!(alerts, fired, "alerts vs alerts a test sees firing");
}

/// The alert expressions, by alert name.
fn alert_exprs() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every PromQL query of the dashboard (panels, variables, annotations), by where it is.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/enforcer.json"))
        .expect("deploy/grafana/enforcer.json is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap();
            exprs.push((
                format!("panel {title:?}"),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(SELECTOR, label): check the selector.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(s, _)| s.to_string())
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            exprs.push((format!("variable {}", variable["name"]), selector));
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        exprs.push((
            format!("annotation {}", annotation["name"]),
            annotation["expr"].as_str().unwrap().to_string(),
        ));
    }
    assert!(!exprs.is_empty());
    exprs
}

/// A label matcher: label, operator (`=`, `!=`, `=~`, `!~`), value.
type Matcher = (String, String, String);

/// Metric names in `expr`, each with its label matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let selector = Regex::new(r"\b((?:enforcer|process)_[a-z0-9_]+)\b(\{[^}]*\})?").unwrap();
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    selector
        .captures_iter(expr)
        .map(|c| {
            let matchers = c.get(2).map_or(Vec::new(), |m| {
                matcher
                    .captures_iter(m.as_str())
                    .map(|m| (m[1].to_string(), m[2].to_string(), m[3].to_string()))
                    .collect()
            });
            (c[1].to_string(), matchers)
        })
        .collect()
}

/// Labels named in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_left
/// (...)` and `group_right (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let clause =
        Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)").unwrap();
    clause
        .captures_iter(expr)
        .flat_map(|c| {
            c[1].split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The metric `name` refers to (a histogram's series carry suffixes), or an explanation.
fn metric(name: &str) -> Result<&'static Metric, String> {
    if let Some(m) = METRICS.iter().find(|(n, _, _)| *n == name) {
        if m.1 == Type::Histogram {
            return Err(format!(
                "{name} is a histogram: use _bucket, _sum or _count"
            ));
        }
        return Ok(m);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            METRICS
                .iter()
                .find(|(n, t, _)| *n == base && *t == Type::Histogram)
        })
        .ok_or_else(|| format!("{name} is not an exported metric"))
}

/// Problems with the metric names and labels `expr` uses.
fn metric_problems(expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut labels_in_scope: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    for (name, matchers) in selectors(expr) {
        let (_, kind, labels) = match metric(&name) {
            Ok(m) => m,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        labels_in_scope.extend(labels.iter().map(|(l, _)| *l));
        if *kind == Type::Histogram {
            labels_in_scope.insert("le");
        }
        for (label, op, value) in matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some((_, values)) = labels.iter().find(|(l, _)| *l == label) else {
                problems.push(format!("{name} has no label {label}"));
                continue;
            };
            if values.is_empty() || value.contains('$') {
                continue;
            }
            // A regex matcher here is always a plain alternation of values.
            let alternatives: Vec<&str> = if op.ends_with('~') {
                value.split('|').collect()
            } else {
                vec![value.as_str()]
            };
            for v in alternatives {
                if !values.contains(&v) {
                    problems.push(format!("{name}{{{label}}} never has the value {v:?}"));
                }
            }
        }
    }
    for label in grouping_labels(expr) {
        if !labels_in_scope.contains(label.as_str()) {
            problems.push(format!("no metric here has the label {label}"));
        }
    }
    problems
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics_and_labels() {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in alert_exprs()
        .into_iter()
        .map(|(a, e)| (format!("alert {a}"), e))
        .chain(dashboard_exprs())
    {
        for p in metric_problems(&expr) {
            problems.push(format!("{place}: {p}"));
        }
        used.extend(
            selectors(&expr)
                .into_iter()
                .filter_map(|(n, _)| metric(&n).ok().map(|m| m.0)),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The dashboard (and alerts) leave no exported metric unused.
    let all: BTreeSet<&str> = METRICS.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(used, all);
    // The checker itself catches what it is for.
    assert_eq!(
        metric_problems(
            r#"sum by (decision, pod) (rate(enforcer_requests_total{decision="denied"}[5m])) + enforcer_latency_seconds + enforcer_added_latency_seconds"#
        ),
        [
            "enforcer_requests_total{decision} never has the value \"denied\"",
            "enforcer_latency_seconds is not an exported metric",
            "enforcer_added_latency_seconds is a histogram: use _bucket, _sum or _count",
            "no metric here has the label pod",
        ]
    );
}

/// Every dashboard query parses as PromQL: promtool checks them as recording rules, with
/// Grafana's variables replaced by values Prometheus accepts.
#[test]
fn dashboard_queries_are_valid_promql() {
    let rules: String = dashboard_exprs()
        .iter()
        .enumerate()
        .map(|(i, (place, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            format!(
                "      # {place}\n      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            )
        })
        .collect();
    let dir = Scratch::new("promql");
    fs::write(
        dir.0.join("dashboard.yaml"),
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    promtool(&["check", "rules", "dashboard.yaml"], &dir.0);
}

#[test]
fn dashboard_has_the_panels_operators_need() {
    let exprs = dashboard_exprs();
    let has = |needle: &str| exprs.iter().any(|(_, e)| e.contains(needle));
    for needle in [
        "sum by (decision) (rate(enforcer_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(enforcer_added_latency_seconds_bucket",
        "histogram_quantile(0.5,",
        "enforcer_auth_failures_total",
        "enforcer_anomalies_total",
        "sum by (result) (rate(enforcer_kernel_connects_total",
        "enforcer_policy_reloads_total",
    ] {
        assert!(has(needle), "no dashboard query contains {needle}");
    }
}

// === Dockerfile ===

/// A `KEY: &str = "value"` constant in a Rust source file.
fn rust_const(path: &str, name: &str) -> String {
    let source = read(path);
    let re = Regex::new(&format!(r#"const {name}: &str = "([^"]+)";"#)).unwrap();
    re.captures(&source)
        .unwrap_or_else(|| panic!("no const {name} in {path}"))[1]
        .to_string()
}

#[test]
fn dockerfile_pins_the_repository_toolchains_and_copies_existing_files() {
    let dockerfile = read("Dockerfile");
    let channel = read("rust-toolchain.toml")
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .map(|c| c.trim_matches('"').to_string())
        .expect("channel in rust-toolchain.toml");
    let nightly = rust_const("xtask/src/setup.rs", "EBPF_TOOLCHAIN");
    assert_eq!(nightly, rust_const("enforcer/build.rs", "EBPF_TOOLCHAIN"));
    let linker = rust_const("xtask/src/setup.rs", "BPF_LINKER_VERSION");

    let froms: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        froms,
        [
            format!("rust:{channel}-slim-bookworm AS build").as_str(),
            "debian:bookworm-slim"
        ]
    );
    assert!(dockerfile.contains(&format!("ARG EBPF_TOOLCHAIN={nightly}\n")));
    assert!(dockerfile.contains(&format!("ARG BPF_LINKER_VERSION={linker}\n")));
    assert!(dockerfile.contains("--component rust-src"));

    // Files copied from the build context exist and are not excluded by .dockerignore.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut copied = 0;
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        if words[0].starts_with("--from=") {
            assert_eq!(words[0], "--from=build", "{line}");
            continue;
        }
        for source in &words[..words.len() - 1] {
            if *source != "." {
                assert!(repo(source).exists(), "{line}: {source} does not exist");
            }
            assert!(
                !ignored.iter().any(|i| source.starts_with(i.as_str())),
                "{line}: {source} is in .dockerignore"
            );
            copied += 1;
        }
    }
    assert_eq!(copied, 3, "rust-toolchain.toml, the workspace, the policy");
    assert!(dockerfile.contains("COPY --from=build /out/enforcer /usr/local/bin/enforcer"));
    assert!(dockerfile.contains("install -D -m 0755 target/release/enforcer /out/enforcer"));
    // The commit reaches the build (no .git in the context) and the labels.
    assert!(dockerfile.contains("ENFORCER_COMMIT=\"${ENFORCER_COMMIT}\" cargo build"));
    let runtime = dockerfile
        .split("FROM debian:bookworm-slim")
        .nth(1)
        .unwrap();
    let version = read("enforcer/Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap();
    assert!(runtime.contains(&format!("ARG VERSION={version}\n")));
    for (label, value) in [
        ("title", "\"enforcer\""),
        ("version", "\"${VERSION}\""),
        ("revision", "\"${ENFORCER_COMMIT}\""),
        ("source", "\"${SOURCE_URL}\""),
        ("licenses", "\"Apache-2.0\""),
    ] {
        let line = format!("org.opencontainers.image.{label}={value}");
        assert!(runtime.contains(&line), "no {line} in the runtime stage");
    }
    for arg in ["ENFORCER_COMMIT", "SOURCE_URL"] {
        assert!(runtime.contains(&format!("ARG {arg}")), "ARG {arg}");
    }
    // The image's default policy is one `enforcer check` accepts.
    let out = run(Command::new(enforcer_binary())
        .arg("check")
        .arg(repo("examples/policy.yaml")));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

// === Policy schema ===

/// The policy JSON Schema (docs/policy.schema.json), compiled offline.
fn policy_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read("docs/policy.schema.json")).unwrap();
    jsonschema::options()
        .offline()
        .build(&schema)
        .unwrap_or_else(|e| panic!("docs/policy.schema.json: {e}"))
}

/// Every whole policy the documentation shows: each file of examples/, and each fenced yaml
/// block of docs/*.md and README.md with a top-level `version:` (the others are fragments).
fn documented_policies() -> Vec<(String, String)> {
    let mut policies = Vec::new();
    for entry in fs::read_dir(repo("examples")).unwrap() {
        let name = format!("examples/{}", entry.unwrap().file_name().to_string_lossy());
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            policies.push((name.clone(), read(&name)));
        }
    }
    let mut pages = vec!["README.md".to_string()];
    for entry in fs::read_dir(repo("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    for page in pages {
        let text = read(&page);
        let mut lines = text.lines().enumerate();
        while let Some((at, line)) = lines.next() {
            if line.trim_end() != "```yaml" {
                continue;
            }
            let block: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim_end() != "```")
                .collect();
            if block.iter().any(|l| l.starts_with("version:")) {
                policies.push((format!("{page}:{}", at + 1), block.join("\n")));
            }
        }
    }
    policies
}

#[test]
fn every_documented_policy_validates_against_the_schema() {
    let schema = policy_schema();
    let policies = documented_policies();
    let names: Vec<&str> = policies.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"examples/policy.yaml"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("docs/policy.md:")),
        "no whole policy found in docs/policy.md: {names:?}"
    );
    for (name, text) in &policies {
        let doc: Value = serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors: Vec<String> = schema
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} does not match the schema:\n{errors:#?}"
        );
    }
    // The check can fail: a misspelt field is refused, as the agent refuses it.
    let (_, example) = &policies[0];
    let mut doc: Value = serde_saphyr::from_str(example).unwrap();
    doc["setings"] = serde_json::json!({});
    assert!(!schema.is_valid(&doc), "the schema accepts unknown fields");
}

#[test]
fn the_shipped_policy_names_its_schema_for_editors() {
    let example = read("examples/policy.yaml");
    let first = example.lines().next().unwrap();
    let schema = first
        .strip_prefix("# yaml-language-server: $schema=")
        .unwrap_or_else(|| panic!("examples/policy.yaml starts with {first:?}"));
    // Relative to the file, so it works in any checkout.
    let path = repo("examples").join(schema);
    assert_eq!(
        fs::canonicalize(path).unwrap(),
        fs::canonicalize(repo("docs/policy.schema.json")).unwrap()
    );
}
