use super::*;

#[test]
fn start_time_survives_odd_command_names() {
    // Fields 3.. after a comm containing spaces and parentheses; starttime (field 22) = 4242.
    let stat = "123 (a) b (c)) S 1 123 123 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10";
    assert_eq!(start_time_ticks(stat), Some(4242));
    assert_eq!(start_time_ticks("123 (x) S 1"), None);
}

#[test]
fn own_process_resolves() {
    let resolver = Resolver::new(PathBuf::from("/nonexistent-cgroup-root"));
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let start = start_time_ticks(&stat).unwrap();
    let meta = ConnMeta {
        tgid: std::process::id(),
        // A connect "now": well after this process started.
        connect_boot_ns: (start + 1000) * resolver.ns_per_tick,
        comm: *b"tester\0\0\0\0\0\0\0\0\0\0",
        ..Default::default()
    };
    let id = resolver.resolve(&meta);
    assert_eq!(id.unresolved, None);
    let process = id.process.expect("process attributes");
    assert_eq!(process.exe, std::env::current_exe().unwrap());
    let want = hex(&Sha256::digest(fs::read(&process.exe).unwrap()));
    assert_eq!(&*process.sha256, want);
    assert_eq!(id.comm, "tester");
}

#[test]
fn a_process_younger_than_the_connect_is_not_the_caller() {
    let resolver = Resolver::new(PathBuf::from("/"));
    let meta = ConnMeta {
        tgid: std::process::id(),
        // The connect happened at boot: this process started long after, so the pid was reused.
        connect_boot_ns: 0,
        ..Default::default()
    };
    let id = resolver.resolve(&meta);
    assert_eq!(id.unresolved, Some(Unresolved::PidReused));
    assert!(id.process.is_none());
}

#[test]
fn exited_process_is_reported() {
    let resolver = Resolver::new(PathBuf::from("/"));
    let meta = ConnMeta {
        tgid: u32::MAX - 1,
        connect_boot_ns: u64::MAX / 2,
        ..Default::default()
    };
    assert_eq!(
        resolver.resolve(&meta).unresolved,
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
