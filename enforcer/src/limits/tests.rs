use std::{path::Path, time::Duration};

use super::*;

const SEC: u64 = 1_000_000_000;

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

#[test]
fn rates_parse_with_a_second_of_burst() {
    for (text, interval, burst) in [
        ("100/s", SEC / 100, 100),
        ("1/s", SEC, 1),
        ("600/m", SEC / 10, 10),
        ("30/m", 2 * SEC, 1),
        ("3600/h", SEC, 1),
        ("7200/h", SEC / 2, 2),
    ] {
        let r = rate(text);
        assert_eq!((r.interval_ns(), r.burst), (interval, burst), "{text}");
    }
    assert_eq!(rate("10/s").to_string(), "10/s (burst 10)");
    assert_eq!(rate("10/m").with_burst(0).burst, 1);
    for bad in [
        "", "10", "0/s", "10/d", "-1/s", "+1/s", "1.5/s", "/s", "10/ s", " 10/s",
    ] {
        assert_eq!(bad.parse::<Rate>(), Err(BadRate), "{bad:?}");
    }
}

#[test]
fn bucket_allows_its_burst_then_refills_at_the_rate() {
    let b = Bucket::new(rate("10/s").with_burst(3));
    let t0 = 5 * SEC;
    for _ in 0..3 {
        assert_eq!(b.take(t0), Ok(()));
    }
    // Empty: the next token comes one interval (100 ms) later.
    assert_eq!(b.take(t0), Err(Duration::from_millis(100)));
    assert_eq!(
        b.take(t0 + 40_000_000),
        Err(Duration::from_millis(60)),
        "the wait shrinks as time passes"
    );
    assert_eq!(b.take(t0 + SEC / 10), Ok(()));
    assert_eq!(b.take(t0 + SEC / 10), Err(Duration::from_millis(100)));
    // A refused request takes nothing: after a long pause the full burst is back, no more.
    let later = t0 + 10 * SEC;
    for _ in 0..3 {
        assert_eq!(b.take(later), Ok(()));
    }
    assert!(b.take(later).is_err());
}

#[test]
fn bucket_is_shared_across_threads_without_losing_tokens() {
    let b = Arc::new(Bucket::new(rate("1000/s").with_burst(1000)));
    let now = SEC;
    let taken: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                s.spawn(move || (0..500).filter(|_| b.take(now).is_ok()).count())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(taken, 1000);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
}

fn policy(limits: &str, rule_limits: &str) -> Policy {
    let text = format!(
        "version: 1
settings:
  limits: {limits}
identities:
  a: {{user: root}}
  b: {{user: \"1\"}}
services:
  api: {{endpoints: [\"10.0.0.1:80\"]}}
rules:
  - id: r
    from: [a]
    to: api
    methods: [GET]
    paths: [\"/**\"]
    limits: {rule_limits}
"
    );
    Policy::parse(Path::new("test.yaml"), &text).unwrap()
}

#[test]
fn connections_are_counted_overall_and_per_identity() {
    let limiter = Limiter::with_default_max_connections(3);
    let p = policy("{maxConnectionsPerIdentity: 2}", "{}");
    assert_eq!(limiter.max_connections(&p), 3, "default applies");
    let a: Arc<str> = "a".into();
    let ids_a = limiter.identity(&p, Some(&a));
    let none = limiter.identity(&p, None);
    let conns: Vec<_> = (0..3).map(|_| limiter.admit(&p).unwrap()).collect();
    assert!(limiter.admit(&p).is_none(), "over maxConnections");
    drop(conns);
    let again: Vec<_> = (0..3).filter_map(|_| limiter.admit(&p)).collect();
    assert_eq!(again.len(), 3, "permits give their place back");
    drop(again);

    let first = ids_a.admit().unwrap();
    let _second = ids_a.admit().unwrap();
    assert!(ids_a.admit().is_none(), "over the identity's limit");
    // Unidentified callers have their own (shared) count.
    let _other = none.admit().unwrap();
    drop(first);
    assert!(ids_a.admit().is_some());

    let p = policy("{maxConnections: 1}", "{}");
    assert_eq!(limiter.max_connections(&p), 1);
    // `a` keeps its open connection across the reload: at the new default of 1, no more.
    assert!(limiter.identity(&p, Some(&a)).admit().is_none());
    let b: Arc<str> = "b".into();
    assert!(
        limiter.identity(&p, Some(&b)).admit().is_some(),
        "the default identity limit is at least 1"
    );
}

/// Without `maxConnectionsPerIdentity`, an identity holds at most a quarter of
/// `maxConnections` and the unidentified together a sixteenth, whichever way the overall limit
/// is set; an explicit limit applies to both.
#[test]
fn identities_share_the_connections_by_default() {
    let cases = [
        // (limiter default, limits, identified, unidentified)
        (10_112, "{}", 2528, 632),
        (3, "{}", 1, 1),
        (100, "{maxConnections: 40}", 10, 2),
        (
            100,
            "{maxConnections: 40, maxConnectionsPerIdentity: 30}",
            30,
            30,
        ),
    ];
    for (default, limits, identified, unidentified) in cases {
        let limiter = Limiter::with_default_max_connections(default);
        let p = policy(limits, "{}");
        assert_eq!(
            limiter.max_connections_per_identity(&p, true),
            identified,
            "{limits}"
        );
        assert_eq!(
            limiter.max_connections_per_identity(&p, false),
            unidentified,
            "{limits}"
        );
    }

    let limiter = Limiter::with_default_max_connections(100);
    let p = policy("{maxConnections: 40}", "{}");
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let held: Vec<_> = std::iter::from_fn(|| limiter.identity(&p, Some(&a)).admit())
        .take(40)
        .collect();
    assert_eq!(held.len(), 10, "identity `a` stops at its share");
    let none: Vec<_> = std::iter::from_fn(|| limiter.identity(&p, None).admit())
        .take(40)
        .collect();
    assert_eq!(none.len(), 2, "the unidentified share one smaller count");
    assert!(
        limiter.identity(&p, Some(&b)).admit().is_some(),
        "another identity is still admitted"
    );
}

#[test]
fn reload_keeps_the_state_of_unchanged_limits() {
    let limiter = Limiter::with_default_max_connections(100);
    let a: Arc<str> = "a".into();
    let p1 = policy(
        "{maxConnectionsPerIdentity: 1, ratePerIdentity: 1/h}",
        "{rate: 1/h}",
    );
    let now = now_ns();
    let held = limiter.identity(&p1, Some(&a)).admit().unwrap();
    assert_eq!(limiter.identity(&p1, Some(&a)).take(now), Ok(()));
    assert_eq!(limiter.take_rule(&p1, &p1.rules()[0], now), Ok(()));

    // Same limits, new policy: the buckets stay empty and the connection still counts.
    let p2 = policy(
        "{maxConnectionsPerIdentity: 1, ratePerIdentity: 1/h}",
        "{rate: 1/h}",
    );
    assert!(p2.generation() > p1.generation());
    let ids = limiter.identity(&p2, Some(&a));
    assert!(ids.take(now).is_err());
    assert!(ids.admit().is_none());
    assert!(limiter.take_rule(&p2, &p2.rules()[0], now).is_err());
    // A connection still on the old policy sees the limits in force.
    assert!(limiter.identity(&p1, Some(&a)).take(now).is_err());

    // Changed rates start full; the open count carries over whatever the limit.
    let p3 = policy(
        "{maxConnectionsPerIdentity: 2, ratePerIdentity: 2/h}",
        "{rate: 2/h}",
    );
    let ids = limiter.identity(&p3, Some(&a));
    assert_eq!(ids.take(now), Ok(()));
    assert_eq!(limiter.take_rule(&p3, &p3.rules()[0], now), Ok(()));
    let _second = ids.admit().unwrap();
    assert!(ids.admit().is_none(), "the held connection still counts");
    drop(held);
    assert!(ids.admit().is_some());
}
