//! Fingerprints: stable per host, keyed, and the key file kept private.

use std::{fs, os::unix::fs::PermissionsExt as _};

use super::{cache::scratch, *};

#[test]
fn the_key_is_created_once_and_kept() {
    let dir = scratch("fp");
    let path = dir.0.join("fingerprint.key");
    let a = Fingerprinter::load_or_create(&path).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
    let b = Fingerprinter::load_or_create(&path).unwrap();
    let fa = a.fingerprint(b"token");
    assert_eq!(fa, b.fingerprint(b"token"), "stable across restarts");
    assert_eq!(fa.as_str().len(), 16);
    assert!(
        fa.as_str()
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_ne!(fa, a.fingerprint(b"token2"));
    // Another host's key: another fingerprint.
    assert_ne!(
        fa,
        Fingerprinter::ephemeral().unwrap().fingerprint(b"token")
    );
    // No temporary file left behind.
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn a_known_key_gives_a_known_fingerprint() {
    // HMAC-SHA256(key = 32 × 0x0b, "token"), first 8 bytes.
    let fp = Fingerprinter::from_key(&[0x0b; 32]).fingerprint(b"token");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x0b; 32]),
        b"token",
    );
    let hex: String = tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(fp.as_str(), hex);
}

#[test]
fn unsafe_key_files_are_refused() {
    let dir = scratch("fp-bad");
    let open = dir.0.join("open.key");
    fs::write(&open, [1u8; 32]).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        Fingerprinter::load_or_create(&open)
            .unwrap_err()
            .to_string(),
        format!(
            "fingerprint key {}: mode 0644 lets other users read or change it (expected 0600)",
            open.display()
        )
    );
    let short = dir.0.join("short.key");
    fs::write(&short, [1u8; 16]).unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        Fingerprinter::load_or_create(&short)
            .unwrap_err()
            .to_string(),
        format!(
            "fingerprint key {}: 16 bytes instead of 32",
            short.display()
        )
    );
    let theirs = dir.0.join("theirs.key");
    fs::write(&theirs, [1u8; 32]).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
    // Giving a file away takes root; as another user, that case is not tried.
    match std::os::unix::fs::chown(&theirs, Some(65534), None) {
        Ok(()) => assert_eq!(
            Fingerprinter::load_or_create(&theirs)
                .unwrap_err()
                .to_string(),
            format!(
                "fingerprint key {}: owned by uid 65534, not by the agent (uid {})",
                theirs.display(),
                nix::unistd::geteuid()
            )
        ),
        Err(e) => eprintln!("not testing a key file owned by another user: chown: {e}"),
    }
    let link = dir.0.join("link.key");
    std::os::unix::fs::symlink(&short, &link).unwrap();
    assert!(matches!(
        Fingerprinter::load_or_create(&link),
        Err(FingerprintError::Read { .. })
    ));
    assert!(matches!(
        Fingerprinter::load_or_create(&dir.0),
        Err(FingerprintError::NotAFile { .. } | FingerprintError::Permissions { .. })
    ));
}
