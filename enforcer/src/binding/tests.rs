use std::fs;

use super::*;

fn store_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("enforcer-bindings-{}-{name}", std::process::id()));
    let _ = fs::remove_file(&p);
    p
}

fn sub(s: &str) -> BindingKey {
    BindingKey::Subject(s.into())
}

#[test]
fn the_first_caller_owns_a_key_across_reopening() {
    let path = store_path("reopen");
    let store = Bindings::open(&path, 10).unwrap();
    assert_eq!(
        store.check("sso", &sub("svc"), "exe=/a uid=0"),
        Outcome::Bound
    );
    assert_eq!(
        store.check("sso", &sub("svc"), "exe=/a uid=0"),
        Outcome::Owner
    );
    assert_eq!(
        store.check("sso", &sub("svc"), "exe=/b uid=0"),
        Outcome::Other
    );
    // Keys are per credential.
    assert_eq!(
        store.check("other", &sub("svc"), "exe=/b uid=0"),
        Outcome::Bound
    );
    drop(store);

    let store = Bindings::open(&path, 10).unwrap();
    assert_eq!(store.len(), 2);
    assert!(store.is_bound("sso", &sub("svc")));
    assert_eq!(
        store.check("sso", &sub("svc"), "exe=/b uid=0"),
        Outcome::Other
    );
    assert_eq!(
        store.check("sso", &sub("svc"), "exe=/a uid=0"),
        Outcome::Owner
    );
    fs::remove_file(path).unwrap();
}

#[test]
fn a_full_store_refuses_new_bindings_and_keeps_old_ones() {
    let path = store_path("full");
    let store = Bindings::open(&path, 1).unwrap();
    assert_eq!(store.check("sso", &sub("a"), "x"), Outcome::Bound);
    assert_eq!(store.check("sso", &sub("b"), "x"), Outcome::Full);
    assert_eq!(store.check("sso", &sub("a"), "x"), Outcome::Owner);
    assert!(!store.is_bound("sso", &sub("b")));
    fs::remove_file(path).unwrap();
}

#[test]
fn the_file_holds_no_token() {
    let path = store_path("no-token");
    let store = Bindings::open(&path, 10).unwrap();
    let key_file = store_path("fingerprint-key");
    let fp = crate::credentials::Fingerprinter::load_or_create(&key_file)
        .unwrap()
        .fingerprint(b"the-secret-token");
    assert_eq!(
        store.check("k", &BindingKey::Token(fp), "x"),
        Outcome::Bound
    );
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("{{\"credential\":\"k\",\"key\":\"tok:{fp}\",\"owner\":\"x\"}}\n")
    );
    assert!(!text.contains("the-secret-token"));
    fs::remove_file(path).unwrap();
    fs::remove_file(key_file).unwrap();
}

#[test]
fn a_corrupt_store_is_an_error_naming_the_line() {
    let path = store_path("corrupt");
    fs::write(
        &path,
        "{\"credential\":\"k\",\"key\":\"sub:a\",\"owner\":\"x\"}\nnot json\n",
    )
    .unwrap();
    let Err(err) = Bindings::open(&path, 10) else {
        panic!("opened a corrupt store");
    };
    assert_eq!(
        err.to_string(),
        format!("binding store {}: line 2 is not a binding", path.display())
    );
    fs::remove_file(path).unwrap();
}
