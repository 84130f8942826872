//! Each detector on synthetic records: when an episode begins, that it is reported once, what
//! the record and the counter say, and that the tables stay bounded.

use std::sync::Arc;

use prometheus::{Encoder as _, TextEncoder};

use super::*;
use crate::audit::{Caller, CredentialUse};

/// A record from a caller matching `identities`, decided `decision` with `reason`.
fn record(identities: &[&str], decision: Verdict, reason: &'static str) -> Record {
    Record {
        time: 1.0,
        request_id: "req-1".into(),
        decision,
        rule: (decision == Verdict::Allow).then(|| "read".into()),
        mode: "enforce",
        reason,
        detail: None,
        caller: Arc::new(Caller {
            tgid: 1,
            pid: 1,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            comm: "worker".into(),
            exe: Some("/usr/bin/worker".into()),
            sha256: Some("aa".into()),
            exe_untrusted: None,
            traced: None,
            unresolved: None,
            cgroup_id: 7,
            cgroup: None,
            unit: None,
            container: None,
        }),
        identities: identities.iter().map(|&n| Arc::from(n)).collect(),
        service: "api".into(),
        client: "127.0.0.1:40000".into(),
        destination: "127.0.0.1:80".into(),
        method: Some("GET".into()),
        path: Some("/".into()),
        status: Some(200),
        request_bytes: 0,
        response_bytes: 0,
        added_latency_us: 1,
        credential: None,
        injected: None,
        retried: false,
        auth_failure: None,
        upstream_error: None,
    }
}

fn allowed(identity: &str) -> Record {
    record(&[identity], Verdict::Allow, "rule")
}

fn burst(window: u64, factor: u32, min_count: u64) -> Burst {
    Burst {
        window: Duration::from_secs(window),
        factor_percent: factor * 100,
        min_count,
    }
}

/// Only the detectors a test names.
fn only() -> Anomalies {
    Anomalies {
        request_burst: None,
        auth_failure_burst: None,
        deny_spike: None,
        new_endpoint: None,
        token_reuse: false,
        binary_changed: false,
        evasion_attempt: false,
    }
}

/// `enforcer_anomalies_total` lines as the text format has them.
fn counted(registry: &Registry) -> Vec<String> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("enforcer_anomalies_total{"))
        .map(str::to_owned)
        .collect()
}

fn kinds(found: &[AnomalyRecord]) -> Vec<(&str, &str)> {
    found.iter().map(|r| (r.kind, &*r.identity)).collect()
}

#[test]
fn a_window_is_judged_against_the_baseline_before_it() {
    // Windows of 2 ticks, at least 10 and above 2x the baseline.
    let b = burst(2, 2, 10);
    let mut rate = Rate::default();
    let mut begun = Vec::new();
    // Per tick: a quiet start (baseline 4), a burst over two windows, quiet, a second burst.
    let ticks = [
        2, 2, 2, 2, 20, 20, 30, 10, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 50, 0,
    ];
    for (i, count) in ticks.into_iter().enumerate() {
        if let Some(w) = rate.tick(count, &b) {
            begun.push((
                i,
                w.count,
                w.threshold,
                (w.baseline * 1000.0).round() / 1000.0,
            ));
        }
    }
    // The second window of the first burst (40 again) is the same episode; the quiet windows
    // after it bring the baseline down from 16.96 to 8.247 (x 0.8 per window towards 4).
    assert_eq!(begun, [(5, 40, 10, 4.0), (19, 50, 17, 8.247)]);
}

#[test]
fn thresholds_are_at_least_min_count_and_above_factor_times_baseline() {
    let b = burst(1, 3, 10);
    for (baseline, want) in [(0.0, 10), (3.0, 10), (3.4, 11), (10.0, 31), (0.5, 10)] {
        assert_eq!(threshold(&b, baseline), want, "baseline {baseline}");
    }
}

#[test]
fn a_request_burst_is_one_record_and_one_count_per_episode() {
    let config = Anomalies {
        request_burst: Some(burst(1, 2, 5)),
        ..only()
    };
    let d = Detectors::new(&config);
    let registry = Registry::new();
    d.register(&registry).unwrap();
    let now = Instant::now();
    for _ in 0..3 {
        d.observe(&allowed("billing"));
    }
    assert_eq!(d.tick(&config, now), []);
    for _ in 0..12 {
        d.observe(&allowed("billing"));
    }
    let found = d.tick(&config, now);
    assert_eq!(kinds(&found), [("request_burst", "billing")]);
    let r = &found[0];
    assert_eq!(
        (&r.observed, &r.threshold, &r.baseline, r.window_s),
        (
            &Measure::Count(12),
            &Some(Measure::Count(7)),
            &Some(Measure::Level(3.0)),
            Some(1.0)
        )
    );
    assert_eq!(
        r.explanation,
        "billing: 12 requests in 1 s, at least the threshold of 7 (minCount 5, or above 2x its \
         baseline of 3.0 per window)"
    );
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["record"], "anomaly");
    assert_eq!(json["kind"], "request_burst");
    assert_eq!(json["observed"], 12);
    assert_eq!(json["baseline"], 3.0);
    // Still bursting: the same episode.
    for _ in 0..20 {
        d.observe(&allowed("billing"));
    }
    assert_eq!(d.tick(&config, now), []);
    assert_eq!(
        counted(&registry),
        ["enforcer_anomalies_total{identity=\"billing\",kind=\"request_burst\"} 1"]
    );
}

#[test]
fn auth_failures_and_denials_count_per_identity() {
    let config = Anomalies {
        auth_failure_burst: Some(burst(1, 3, 3)),
        deny_spike: Some(burst(1, 3, 4)),
        ..only()
    };
    let d = Detectors::new(&config);
    let registry = Registry::new();
    d.register(&registry).unwrap();
    // Three failed authentications are also three denials; an insufficient scope is a denial
    // only; a malformed request neither.
    for reason in [
        "credential missing",
        "credential invalid",
        "credential not bound to caller",
        "insufficient scope",
    ] {
        d.observe(&record(&["billing", "ops"], Verdict::Deny, reason));
    }
    d.observe(&record(&["billing"], Verdict::Reject, "malformed request"));
    // Below its thresholds, another identity.
    d.observe(&record(&[], Verdict::Deny, "credential invalid"));
    let found = d.tick(&config, Instant::now());
    assert_eq!(
        kinds(&found),
        [("auth_failure_burst", "billing"), ("deny_spike", "billing")]
    );
    assert_eq!(
        counted(&registry),
        [
            "enforcer_anomalies_total{identity=\"billing\",kind=\"auth_failure_burst\"} 1",
            "enforcer_anomalies_total{identity=\"billing\",kind=\"deny_spike\"} 1",
        ]
    );
}

#[test]
fn endpoints_are_learned_then_new_ones_reported_once() {
    let config = Anomalies {
        new_endpoint: Some(Duration::from_secs(60)),
        ..only()
    };
    let d = Detectors::new(&config);
    let start = Instant::now();
    d.observe(&allowed("billing"));
    d.observe(&record(&["billing"], Verdict::Deny, "no matching rule"));
    assert_eq!(d.tick(&config, start), []);
    // Learning is over a minute after the identity's first request.
    assert_eq!(d.tick(&config, start + Duration::from_secs(61)), []);
    d.observe(&allowed("billing"));
    d.observe(&record(&["billing"], Verdict::Deny, "no matching rule"));
    let mut write = record(&["billing"], Verdict::Allow, "rule");
    write.rule = Some("write".into());
    d.observe(&write);
    d.observe(&write);
    // Another identity learns on its own clock.
    d.observe(&write.clone_for("ops"));
    let found = d.tick(&config, start + Duration::from_secs(62));
    assert_eq!(kinds(&found), [("new_endpoint", "billing")]);
    let r = &found[0];
    assert_eq!(
        (r.service.as_deref(), r.endpoint.as_deref(), r.window_s),
        (Some("api"), Some("write"), Some(60.0))
    );
    assert_eq!(
        r.explanation,
        "billing called api endpoint write for the first time, after its learning window of 60 s"
    );
}

#[test]
fn a_token_from_a_second_identity_is_reported_once() {
    let config = Anomalies {
        token_reuse: true,
        ..only()
    };
    let d = Detectors::new(&config);
    let with_token = |identity: &str, fingerprint: &str| {
        let mut r = allowed(identity);
        r.credential = Some(CredentialUse {
            name: "sso".into(),
            subject: Some("svc-billing".into()),
            fingerprint: fingerprint.into(),
        });
        r
    };
    d.observe(&with_token("billing", "fp1"));
    d.observe(&with_token("billing", "fp1"));
    d.observe(&with_token("ops", "fp2"));
    assert_eq!(d.tick(&config, Instant::now()), []);
    for identity in ["ops", "ops", "billing", "unidentified"] {
        d.observe(&with_token(identity, "fp1"));
    }
    let found = d.tick(&config, Instant::now());
    assert_eq!(
        kinds(&found),
        [("token_reuse", "ops"), ("token_reuse", "unidentified")]
    );
    assert_eq!(found[0].baseline, Some(Measure::Text("billing".into())));
    assert_eq!(found[0].fingerprint.as_deref(), Some("fp1"));
    assert_eq!(
        found[0].explanation,
        "credential sso (fingerprint fp1), first presented by billing, was presented by ops"
    );
}

#[test]
fn a_changed_digest_under_the_same_identity_is_reported_once() {
    let config = Anomalies {
        binary_changed: true,
        ..only()
    };
    let d = Detectors::new(&config);
    let with_digest = |identity: &[&str], digest: &str| {
        let mut r = allowed("x");
        r.identities = identity.iter().map(|&n| Arc::from(n)).collect();
        let mut caller = (*r.caller).clone();
        caller.sha256 = Some(digest.into());
        r.caller = Arc::new(caller);
        r
    };
    d.observe(&with_digest(&["billing"], "aa"));
    d.observe(&with_digest(&[], "bb"));
    assert_eq!(d.tick(&config, Instant::now()), []);
    d.observe(&with_digest(&["billing"], "cc"));
    d.observe(&with_digest(&["billing"], "cc"));
    let found = d.tick(&config, Instant::now());
    assert_eq!(kinds(&found), [("binary_changed", "billing")]);
    let r = &found[0];
    assert_eq!(
        (&r.observed, &r.baseline, r.exe.as_deref()),
        (
            &Measure::Text("cc".into()),
            &Some(Measure::Text("aa".into())),
            Some("/usr/bin/worker")
        )
    );
}

/// Requests refused as evasions are one record per episode: ticks in a row that each see
/// one; a quiet tick ends it. Other refusals are not evasions.
#[test]
fn evasion_attempts_are_reported_once_per_episode() {
    let config = Anomalies {
        evasion_attempt: true,
        ..only()
    };
    let d = Detectors::new(&config);
    d.observe(&record(&["billing"], Verdict::Deny, "no matching rule"));
    d.observe(&record(&["billing"], Verdict::Reject, "malformed request"));
    assert_eq!(d.tick(&config, Instant::now()), []);
    d.observe(&record(&["billing"], Verdict::Deny, "lookalike header"));
    d.observe(&record(&["billing"], Verdict::Reject, "unexpected upgrade"));
    d.observe(&record(&[], Verdict::Deny, "method override"));
    let found = d.tick(&config, Instant::now());
    let mut found_kinds = kinds(&found);
    found_kinds.sort();
    assert_eq!(
        found_kinds,
        [
            ("evasion_attempt", "billing"),
            ("evasion_attempt", "unidentified")
        ]
    );
    let billing = found.iter().find(|r| &*r.identity == "billing").unwrap();
    assert_eq!(billing.observed, Measure::Count(2));
    assert_eq!(
        billing.explanation,
        "billing: 2 requests refused as evasion attempts in 1 s, the latest for `unexpected upgrade`"
    );
    // The same episode while attempts go on; a new one after a quiet tick.
    d.observe(&record(&["billing"], Verdict::Deny, "host not allowed"));
    assert_eq!(d.tick(&config, Instant::now()), []);
    assert_eq!(d.tick(&config, Instant::now()), []);
    d.observe(&record(
        &["billing"],
        Verdict::Deny,
        "lookalike query parameter",
    ));
    assert_eq!(
        kinds(&d.tick(&config, Instant::now())),
        [("evasion_attempt", "billing")]
    );
}

#[test]
fn detectors_turned_off_see_nothing() {
    let d = Detectors::new(&only());
    let mut r = allowed("billing");
    r.credential = Some(CredentialUse {
        name: "sso".into(),
        subject: None,
        fingerprint: "fp".into(),
    });
    for _ in 0..1000 {
        d.observe(&r);
    }
    assert_eq!(
        d.tick(&only(), Instant::now() + Duration::from_secs(3600)),
        []
    );
    assert!(lock(&d.tokens).map.is_empty());
    assert!(lock(&d.pairs).map.is_empty());
}

#[test]
fn tables_forget_their_oldest_entry_when_full() {
    let mut t = Bounded::new(3);
    for key in 0..5 {
        t.insert(key, ());
    }
    let mut keys: Vec<_> = t.map.keys().copied().collect();
    keys.sort_unstable();
    assert_eq!(keys, [2, 3, 4]);
    assert_eq!(t.order, [2, 3, 4]);
}

#[test]
fn identities_beyond_the_cap_are_not_tracked() {
    let d = Detectors::new(&only());
    for n in 0..MAX_IDENTITIES + 10 {
        d.observe(&allowed(&format!("id-{n}")));
    }
    assert_eq!(read(&d.identities).len(), MAX_IDENTITIES);
}

impl Record {
    /// The same record from a caller matching only `identity`.
    fn clone_for(&self, identity: &str) -> Record {
        Record {
            request_id: self.request_id.clone(),
            rule: self.rule.clone(),
            detail: self.detail.clone(),
            caller: self.caller.clone(),
            identities: Arc::from([Arc::from(identity)]),
            service: self.service.clone(),
            client: self.client.clone(),
            destination: self.destination.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            credential: None,
            injected: None,
            ..*self
        }
    }
}
