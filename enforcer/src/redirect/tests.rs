use std::net::Ipv4Addr;

use super::*;

fn dest(prefix: &str, ports: (u16, u16)) -> (Destination, FailMode) {
    (destination(prefix, ports), FailMode::Closed)
}

fn open(prefix: &str, ports: (u16, u16)) -> (Destination, FailMode) {
    (destination(prefix, ports), FailMode::Open)
}

fn destination(prefix: &str, ports: (u16, u16)) -> Destination {
    let (ip, len) = prefix.split_once('/').unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    let extra = if ip.is_ipv4() { 96 } else { 0 };
    let addr = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Destination {
        prefix: Prefix {
            addr,
            len: len.parse::<u8>().unwrap() + extra,
        },
        ports: Ports {
            first: ports.0,
            last: ports.1,
        },
    }
}

fn ranges(r: &PortRanges) -> Vec<(u16, u16)> {
    r.ranges[..r.len as usize]
        .iter()
        .map(|p| (p.first, p.last))
        .collect()
}

#[test]
fn longer_prefixes_inherit_covering_ports() {
    let entries = protected_entries(
        &[
            dest("10.0.0.0/8", (80, 80)),
            dest("10.1.0.0/16", (443, 443)),
            dest("10.1.0.0/16", (444, 450)),
            dest("10.1.0.0/16", (79, 81)),
        ],
        &HostAddrs::default(),
    )
    .unwrap();
    assert_eq!(entries.len(), 2);
    let by_len = |len: u32| {
        entries
            .iter()
            .find(|(k, _)| k.prefix_len() == len)
            .map(|(_, r)| ranges(r))
            .unwrap()
    };
    assert_eq!(by_len(104), vec![(80, 80)]);
    assert_eq!(by_len(112), vec![(79, 81), (443, 450)]);
}

/// (first, last, fails open) of each range.
fn modes(r: &PortRanges) -> Vec<(u16, u16, bool)> {
    r.ranges[..r.len as usize]
        .iter()
        .enumerate()
        .map(|(i, p)| (p.first, p.last, r.fail_open & (1 << i) != 0))
        .collect()
}

#[test]
fn fail_modes_follow_ranges_and_closed_wins_overlaps() {
    let entries = protected_entries(
        &[
            open("10.0.0.0/8", (8000, 8099)),
            dest("10.1.0.0/16", (8050, 8059)),
            open("10.1.0.0/16", (9000, 9000)),
            dest("10.1.0.0/16", (9001, 9001)),
        ],
        &HostAddrs::default(),
    )
    .unwrap();
    let by_len = |len: u32| {
        entries
            .iter()
            .find(|(k, _)| k.prefix_len() == len)
            .map(|(_, r)| modes(r))
            .unwrap()
    };
    assert_eq!(by_len(104), vec![(8000, 8099, true)]);
    assert_eq!(
        by_len(112),
        vec![
            (8000, 8049, true),
            (8050, 8059, false),
            (8060, 8099, true),
            (9000, 9000, true),
            (9001, 9001, false),
        ]
    );
    let (_, r) = &entries[1];
    assert_eq!(r.lookup(8055), Some(enforcer_common::FailMode::Closed));
    assert_eq!(r.lookup(8099), Some(enforcer_common::FailMode::Open));
    assert_eq!(r.lookup(8100), None);
}

#[test]
fn local_services_are_protected_at_this_host() {
    let host = HostAddrs::new(["10.200.0.1".parse().unwrap()]);
    let entries = protected_entries(
        &[
            dest("127.0.0.1/32", (8080, 8080)),
            open("::1/128", (9000, 9001)),
            dest("10.200.0.1/32", (7000, 7000)),
            dest("10.200.0.0/24", (6000, 6000)),
            dest("192.0.2.1/32", (80, 80)),
        ],
        &host,
    )
    .unwrap();
    let this_host: Vec<_> = entries
        .iter()
        .filter(|(k, _)| k.prefix_len() == 128 && k.data() == THIS_HOST)
        .map(|(_, r)| modes(r))
        .collect();
    assert_eq!(
        this_host,
        vec![vec![
            (6000, 6000, false),
            (7000, 7000, false),
            (8080, 8080, false),
            (9000, 9001, true),
        ]],
        "a remote address's ports stay at its own entry only"
    );
    assert_eq!(entries.len(), 6, "every exact entry is kept too");
    let without_host_addr = protected_entries(
        &[dest("10.200.0.1/32", (7000, 7000))],
        &HostAddrs::default(),
    )
    .unwrap();
    assert_eq!(without_host_addr.len(), 1, "not a host address: not local");
}

#[test]
fn subtracting_port_ranges() {
    let p = |first, last| Ports { first, last };
    assert_eq!(subtract(vec![p(1, 65535)], &[p(1, 1)]), vec![p(2, 65535)]);
    assert_eq!(
        subtract(vec![p(1, 65535)], &[p(65535, 65535)]),
        vec![p(1, 65534)]
    );
    assert_eq!(subtract(vec![p(5, 9)], &[p(1, 20)]), vec![]);
    assert_eq!(
        subtract(vec![p(1, 10), p(20, 30)], &[p(3, 4), p(8, 22)]),
        vec![p(1, 2), p(5, 7), p(23, 30)]
    );
}

#[test]
fn too_many_port_ranges_is_an_error() {
    let many: Vec<_> = (0..=MAX_PORT_RANGES as u16)
        .map(|i| dest("10.0.0.1/32", (1000 + 2 * i, 1000 + 2 * i)))
        .collect();
    let Err(err) = protected_entries(&many, &HostAddrs::default()) else {
        panic!("accepted {} ranges", many.len());
    };
    assert_eq!(
        err.to_string(),
        "destination 10.0.0.1/32: more than 16 distinct port ranges apply; merge some"
    );
}

#[test]
fn words_keep_network_byte_order() {
    let words = ip6_words(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
    assert_eq!(words[3].to_ne_bytes(), [10, 1, 2, 3]);
    assert_eq!(
        words,
        enforcer_common::v4_mapped_from_be(u32::from_ne_bytes([10, 1, 2, 3]))
    );
    let ip: Ipv6Addr = "fd00::1234:5678".parse().unwrap();
    assert_eq!(ip6_from_words(ip6_words(ip)), ip);
}

#[test]
fn original_destination_unmaps_ipv4() {
    let meta = ConnMeta {
        orig_ip: ip6_words(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        orig_port_be: 8080u16.to_be(),
        ..Default::default()
    };
    assert_eq!(
        original_destination(&meta),
        "192.0.2.1:8080".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn client_key_maps_ipv4_peers() {
    let k4 = client_key("127.0.0.1:40000".parse().unwrap(), 7);
    let k6 = client_key("[::ffff:127.0.0.1]:40000".parse().unwrap(), 7);
    assert_eq!(k4, k6, "a dual-stack client and an IPv4 client key alike");
    assert_eq!(k4.port, 40000);
    assert_ne!(
        k4,
        client_key("127.0.0.1:40000".parse().unwrap(), 8),
        "the same address in another network namespace is another client"
    );
}

#[test]
fn finds_cgroup2_in_hybrid_and_unified_layouts() {
    let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    assert_eq!(
        cgroup2_root_in(hybrid),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let unified =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
    assert_eq!(
        cgroup2_root_in(unified),
        Some(PathBuf::from("/sys/fs/cgroup"))
    );
    let escaped = "30 23 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
    assert_eq!(cgroup2_root_in(escaped), Some(PathBuf::from("/mnt/my cg")));
    assert_eq!(
        cgroup2_root_in("31 23 0:28 / /sys rw - sysfs sysfs rw\n"),
        None
    );
}
