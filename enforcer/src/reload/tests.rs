use std::fs::{self, File, FileTimes};

use super::*;

/// A temp file removed on drop, even when the test fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A rewrite of the same size under the same inode with the old timestamps put back (what two
/// writes within one timestamp tick look like to `stat`) is a new version; the same content
/// written again is not; an unreadable file is one version until it can be read again.
#[test]
fn a_new_version_is_told_by_its_content_not_its_metadata() {
    let file = TempFile(
        std::env::temp_dir().join(format!("enforcer-reload-{}-version", std::process::id())),
    );
    let path = &file.0;
    fs::write(path, "version: 1 # a\n").unwrap();
    let mut seen = Some(digest("version: 1 # a\n"));
    assert!(new_version(path, &mut seen).is_none(), "as loaded");

    let modified = fs::metadata(path).unwrap().modified().unwrap();
    fs::write(path, "version: 1 # b\n").unwrap();
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(modified))
        .unwrap();
    assert_eq!(fs::metadata(path).unwrap().modified().unwrap(), modified);
    let text = new_version(path, &mut seen)
        .expect("a new version")
        .unwrap();
    assert_eq!(text, "version: 1 # b\n");
    assert!(new_version(path, &mut seen).is_none(), "seen once");

    fs::write(path, "version: 1 # b\n").unwrap();
    assert!(new_version(path, &mut seen).is_none(), "same content");

    fs::remove_file(path).unwrap();
    assert!(
        new_version(path, &mut seen)
            .expect("now unreadable")
            .is_err()
    );
    assert!(new_version(path, &mut seen).is_none(), "still unreadable");
    fs::write(path, "version: 1 # b\n").unwrap();
    assert!(
        new_version(path, &mut seen)
            .expect("readable again")
            .is_ok()
    );
}
