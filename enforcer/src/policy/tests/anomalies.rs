//! `settings.anomalies`: defaults, every field, turning detectors off, and each error.

use super::*;

const HEAD: &str = "version: 1
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
settings:
  anomalies:
";

fn anomalies(body: &str) -> Anomalies {
    policy(&format!("{HEAD}{body}")).settings.anomalies
}

#[test]
fn defaults_apply_to_what_is_left_out() {
    let none = policy("version: 1\nservices: {api: {endpoints: [\"10.0.0.1:80\"]}}\n");
    assert_eq!(none.settings.anomalies, Anomalies::default());
    assert_eq!(anomalies("    tokenReuse: {}\n"), Anomalies::default());
}

#[test]
fn every_field_is_read() {
    let a = anomalies(
        "    requestBurst: {window: 1s, factor: 2.5, minCount: 7}
    authFailureBurst: {minCount: 3}
    denySpike: {window: 2m}
    newEndpoint: {learning: 1500ms}
",
    );
    assert_eq!(
        a,
        Anomalies {
            request_burst: Some(Burst {
                window: Duration::from_secs(1),
                factor_percent: 250,
                min_count: 7,
            }),
            auth_failure_burst: Some(Burst {
                min_count: 3,
                ..Anomalies::AUTH_FAILURE_BURST
            }),
            deny_spike: Some(Burst {
                window: Duration::from_secs(120),
                ..Anomalies::DENY_SPIKE
            }),
            new_endpoint: Some(Duration::from_millis(1500)),
            ..Anomalies::default()
        }
    );
    assert_eq!(a.request_burst.unwrap().factor(), 2.5);
}

#[test]
fn detectors_turn_off() {
    let a = anomalies(
        "    requestBurst: {enabled: false}
    authFailureBurst: {enabled: false, minCount: 3}
    denySpike: {enabled: false}
    newEndpoint: {enabled: false}
    tokenReuse: {enabled: false}
    binaryChanged: {enabled: false}
    evasionAttempt: {enabled: false}
",
    );
    assert_eq!(
        a,
        Anomalies {
            request_burst: None,
            auth_failure_burst: None,
            deny_spike: None,
            new_endpoint: None,
            token_reuse: false,
            binary_changed: false,
            evasion_attempt: false,
        }
    );
}

#[test]
fn bad_values_say_why() {
    let cases = [
        (
            "    requestBurst: {window: 1500ms}\n",
            "test.yaml:6:28: bad `requestBurst.window` `1500ms`: a whole number of seconds \
             from `1s` to `1h`",
        ),
        (
            "    denySpike: {window: 2h}\n",
            "test.yaml:6:25: bad `denySpike.window` `2h`: a whole number of seconds from `1s` \
             to `1h`",
        ),
        (
            "    denySpike: {window: soon}\n",
            "test.yaml:6:25: bad `denySpike.window` `soon`: expected a positive whole number \
             and a unit: `500ms`, `10s`, `2m`, `1h`",
        ),
        (
            "    authFailureBurst: {factor: 0.5}\n",
            "test.yaml:6:32: bad `authFailureBurst.factor` `0.5`: a number from 1 to 1000",
        ),
        (
            "    requestBurst: {minCount: 0}\n",
            "test.yaml:6:30: `requestBurst.minCount` must be at least 1",
        ),
        (
            "    newEndpoint: {learning: 0s}\n",
            "test.yaml:6:29: bad `newEndpoint.learning` `0s`: expected a positive whole number \
             and a unit: `500ms`, `10s`, `2m`, `1h`",
        ),
        (
            "    tokenReuse: {threshold: 2}\n",
            "test.yaml:6:18: unknown field `threshold`, expected one of enabled",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(diagnostics(&format!("{HEAD}{body}")), want, "{body}");
    }
}
