use std::{fs, path::PathBuf};

use crate::credentials::{InjectError, Injection};

fn file(name: &str, content: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("enforcer-inject-{}-{name}", std::process::id()));
    fs::write(&p, content).unwrap();
    p
}

#[test]
fn one_final_line_break_is_not_part_of_the_value() {
    for (name, content) in [
        ("lf", &b"Bearer abc\n"[..]),
        ("crlf", b"Bearer abc\r\n"),
        ("none", b"Bearer abc"),
    ] {
        let path = file(name, content);
        let injection = Injection::load("Authorization", &path).unwrap();
        assert_eq!(injection.header(), "authorization");
        assert_eq!(injection.value().unwrap().expose(), b"Bearer abc", "{name}");
        assert_eq!(format!("{:?}", injection.value().unwrap()), "<redacted>");
        assert!(!format!("{injection:?}").contains("abc"), "{injection:?}");
        fs::remove_file(path).unwrap();
    }
}

#[test]
fn values_that_are_not_header_values_are_refused() {
    // (case, file content, the error for the file's path)
    type Case<'a> = (&'a str, &'a [u8], fn(PathBuf) -> InjectError);
    let cases: [Case; 5] = [
        ("empty", b"\n", |path| InjectError::Empty { path }),
        ("two-lines", b"a\nb\n", |path| {
            InjectError::NotAHeaderValue { path }
        }),
        ("control", b"a\x01b", |path| InjectError::NotAHeaderValue {
            path,
        }),
        ("padded", b" abc", |path| InjectError::NotAHeaderValue {
            path,
        }),
        ("long", &[b'a'; 8 * 1024 + 1], |path| InjectError::TooLong {
            path,
        }),
    ];
    for (name, content, want) in cases {
        let path = file(name, content);
        assert_eq!(
            Injection::load("x-api-key", &path).unwrap_err(),
            want(path.clone()),
            "{name}"
        );
        fs::remove_file(path).unwrap();
    }
}

#[test]
fn a_changed_file_is_reread_and_a_bad_change_keeps_the_last_value() {
    let path = file("rotate", b"one\n");
    let injection = Injection::load("x-api-key", &path).unwrap();
    assert_eq!(injection.refresh_if_changed(), None, "unchanged");
    fs::write(&path, b"two-longer\n").unwrap();
    assert_eq!(injection.refresh_if_changed(), Some(Ok(())));
    assert_eq!(injection.value().unwrap().expose(), b"two-longer");
    fs::write(&path, b"bad\x7fvalue").unwrap();
    assert_eq!(
        injection.refresh_if_changed(),
        Some(Err(InjectError::NotAHeaderValue { path: path.clone() }))
    );
    assert_eq!(injection.value().unwrap().expose(), b"two-longer");
    fs::remove_file(path).unwrap();
}
