use super::*;

/// Long enough for any test binary's hash.
const WAIT: Duration = Duration::from_secs(60);

/// An exec stamps map in which every process has `stamp`.
fn stamps(stamp: Option<u64>) -> ExecStamps {
    Box::new(move |_| stamp)
}

/// A record of a connect made by this test process now.
fn own_connect(resolver: &Resolver) -> ConnMeta {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let start = start_time_ticks(&stat).unwrap();
    ConnMeta {
        tgid: std::process::id(),
        connect_boot_ns: (start + 1000) * resolver.ns_per_tick,
        exec_stamp: 7,
        ..Default::default()
    }
}

#[test]
fn an_exec_after_the_connect_voids_the_identity() {
    let resolver = Resolver::new(PathBuf::from("/"), stamps(Some(8)));
    let id = resolver.resolve(&own_connect(&resolver), WAIT);
    assert_eq!(id.unresolved, Some(Unresolved::ExecAfterConnect));
    assert!(id.process.is_none());

    let resolver = Resolver::new(PathBuf::from("/"), stamps(None));
    let id = resolver.resolve(&own_connect(&resolver), WAIT);
    assert_eq!(id.unresolved, Some(Unresolved::ProcessExited), "stamp gone");

    let resolver = Resolver::new(PathBuf::from("/"), stamps(Some(7)));
    let id = resolver.resolve(&own_connect(&resolver), WAIT);
    assert_eq!(id.unresolved, None);
    let process = id.process.expect("process");
    assert!(process.exe_trusted, "our own path names our own file");
    assert_eq!(id.traced, Some(false));
}

#[test]
fn one_binary_is_hashed_once_for_many_callers() {
    let resolver = Resolver::new(PathBuf::from("/"), stamps(Some(7)));
    let meta = own_connect(&resolver);
    let digests: Vec<Arc<str>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    resolver
                        .resolve(&meta, WAIT)
                        .process
                        .unwrap()
                        .sha256
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        digests.iter().all(|d| Arc::ptr_eq(d, &digests[0])),
        "one digest, shared"
    );
    assert_eq!(lock(&resolver.digests).len(), 1);
}

#[test]
fn a_hash_not_ready_in_time_leaves_only_the_digest_unknown() {
    let resolver = Resolver::new(PathBuf::from("/"), stamps(Some(7)));
    let meta = own_connect(&resolver);
    let id = resolver.resolve(&meta, Duration::ZERO);
    assert_eq!(id.unresolved, Some(Unresolved::HashTimeout));
    let process = id.process.expect("process");
    assert_eq!(
        &*process.sha256, "",
        "no digest: no sha256 identity matches"
    );
    assert!(process.exe_trusted);
    // The hash went on: a later caller gets it.
    let id = resolver.resolve(&meta, WAIT);
    assert_eq!(id.unresolved, None);
    assert_eq!(id.process.unwrap().sha256.len(), 64);
}

#[test]
fn a_path_is_believed_only_if_it_names_the_same_file() {
    let exe = std::env::current_exe().unwrap();
    let md = fs::metadata(&exe).unwrap();
    assert!(names_file(&exe, &md));
    assert!(!names_file(Path::new("/proc/self/status"), &md));
    assert!(!names_file(Path::new("/nonexistent/binary"), &md));
}

#[test]
fn tracer_pid_from_status() {
    let status = "Name:\tcurl\nState:\tS (sleeping)\nTracerPid:\t4321\nUid:\t0\t0\t0\t0\n";
    assert_eq!(parse_tracer_pid(status), Some(4321));
    assert_eq!(parse_tracer_pid("TracerPid:\t0\n"), Some(0));
    assert_eq!(parse_tracer_pid("Name:\tx\n"), None);
}

#[test]
fn start_time_survives_odd_command_names() {
    // Fields 3.. after a comm containing spaces and parentheses; starttime (field 22) = 4242.
    let stat = "123 (a) b (c)) S 1 123 123 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10";
    assert_eq!(start_time_ticks(stat), Some(4242));
    assert_eq!(start_time_ticks("123 (x) S 1"), None);
}

#[test]
fn own_process_resolves() {
    let resolver = Resolver::new(PathBuf::from("/nonexistent-cgroup-root"), stamps(Some(0)));
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let start = start_time_ticks(&stat).unwrap();
    let meta = ConnMeta {
        tgid: std::process::id(),
        // A connect "now": well after this process started.
        connect_boot_ns: (start + 1000) * resolver.ns_per_tick,
        comm: *b"tester\0\0\0\0\0\0\0\0\0\0",
        ..Default::default()
    };
    let id = resolver.resolve(&meta, WAIT);
    assert_eq!(id.unresolved, None);
    let process = id.process.expect("process attributes");
    assert_eq!(process.exe, std::env::current_exe().unwrap());
    let want = hex(&Sha256::digest(fs::read(&process.exe).unwrap()));
    assert_eq!(&*process.sha256, want);
    assert_eq!(id.comm, "tester");
}

#[test]
fn a_process_younger_than_the_connect_is_not_the_caller() {
    let resolver = Resolver::new(PathBuf::from("/"), stamps(Some(0)));
    let meta = ConnMeta {
        tgid: std::process::id(),
        // The connect happened at boot: this process started long after, so the pid was reused.
        connect_boot_ns: 0,
        ..Default::default()
    };
    let id = resolver.resolve(&meta, WAIT);
    assert_eq!(id.unresolved, Some(Unresolved::PidReused));
    assert!(id.process.is_none());
}

#[test]
fn exited_process_is_reported() {
    let resolver = Resolver::new(PathBuf::from("/"), stamps(Some(0)));
    let meta = ConnMeta {
        tgid: u32::MAX - 1,
        connect_boot_ns: u64::MAX / 2,
        ..Default::default()
    };
    assert_eq!(
        resolver.resolve(&meta, WAIT).unresolved,
        Some(Unresolved::ProcessExited)
    );
}

#[test]
fn units_and_containers_from_cgroup_paths() {
    let id = "4f3b2a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        (
            "/system.slice/deploy-bot.service",
            Some("deploy-bot.service"),
            None,
        ),
        (
            "/user.slice/user-1000.slice/session-3.scope",
            Some("session-3.scope"),
            None,
        ),
        (&format!("/docker/{id}"), None, Some(id)),
        (
            &format!("/system.slice/docker-{id}.scope"),
            Some(&format!("docker-{id}.scope")),
            Some(id),
        ),
        (
            &format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            Some(&format!("cri-containerd-{id}.scope")),
            Some(id),
        ),
        ("/", None, None),
        ("/enforcer-test-1", None, None),
    ];
    for (path, unit, container) in cases {
        assert_eq!(systemd_unit(path), *unit, "{path}");
        assert_eq!(container_id(path), *container, "{path}");
    }
}
