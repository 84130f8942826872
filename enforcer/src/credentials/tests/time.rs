//! RFC 3339 dates and the display of times.

use crate::credentials::{UnixTime, parse_rfc3339};

#[test]
fn rfc3339() {
    let ok = [
        ("1970-01-01T00:00:00Z", 0),
        ("2025-01-31T00:00:00Z", 1_738_281_600),
        ("2025-01-31t00:00:00z", 1_738_281_600),
        ("2025-01-31T01:30:00+01:30", 1_738_281_600),
        ("2025-01-30T22:00:00-02:00", 1_738_281_600),
        ("2025-01-31T00:00:00.999Z", 1_738_281_600),
        ("2024-02-29T12:00:00Z", 1_709_208_000),
        ("2016-12-31T23:59:60Z", 1_483_228_800),
        ("1969-12-31T23:59:59Z", -1),
    ];
    for (s, secs) in ok {
        assert_eq!(parse_rfc3339(s), Ok(UnixTime::from_secs(secs)), "{s}");
    }
    let form = "expected an RFC 3339 date-time such as `2025-01-31T00:00:00Z`";
    let bad = [
        ("2025-01-31", form),
        ("2025-01-31 00:00:00Z", form),
        ("2025-01-31T00:00:00", form),
        ("2025-01-31T00:00:00.Z", form),
        ("2025-01-31T00:00:00+0100", form),
        ("2025-1-31T00:00:00Z", form),
        ("2025-13-01T00:00:00Z", "month out of range"),
        ("2023-02-29T00:00:00Z", "day out of range for its month"),
        ("2025-04-31T00:00:00Z", "day out of range for its month"),
        ("2025-01-31T24:00:00Z", "time of day out of range"),
        ("2025-01-31T00:00:00+24:00", "offset out of range"),
    ];
    for (s, why) in bad {
        assert_eq!(parse_rfc3339(s), Err(why), "{s}");
    }
}

#[test]
fn display_is_rfc3339_utc() {
    for s in [
        "1970-01-01T00:00:00Z",
        "2024-02-29T12:00:00Z",
        "2099-12-31T23:59:59Z",
        "1969-07-20T20:17:40Z",
    ] {
        assert_eq!(parse_rfc3339(s).unwrap().to_string(), s);
    }
}
