//! The repository stands on its own: no tracked file reads a path outside it. A user's clone has
//! nothing beside it (no shared folder next to it), so a build, test or bench that names such a
//! path passes here and fails there. No privileges needed.
//!
//! What counts as naming a path outside:
//! - an absolute path under the root where this project's checkouts and the folders beside them
//!   live (see [`foreign_roots`]) or under the directory holding this checkout. System paths a host tool must read or
//!   hide (`/proc`, `/sys`, `/usr/bin/curl`, `/home` for `ProtectHome=`) are not such roots, and
//!   HTTP paths in test data (`/v1/admin`) are not under them either;
//! - a relative path that climbs above the repository root, resolved from where it is read:
//!   `include_str!`/`include_bytes!`/`#[path]` from the file's directory, a path joined to
//!   `CARGO_MANIFEST_DIR` (or any other relative path in Rust, which cargo resolves from the
//!   package directory) from the file's package, a relative path in any other file from the
//!   file's directory. `/a/../b` is a URL path, not a climb; a climb that lands on a system path
//!   (`../../dev/null`, a path-traversal payload) names that system path.

use std::{
    fs,
    path::{Component, Path, PathBuf},
    process::Command,
};

use regex::Regex;

/// Top-level directories of the host that hold system files, not projects.
const SYSTEM_ROOTS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "opt", "proc", "run", "sbin", "sys",
    "tmp", "usr", "var",
];

/// Roots under which checkouts and the folders beside them live. Spelled in pieces so that this
/// file does not name them itself.
fn foreign_roots(root: &Path) -> Vec<String> {
    let mut roots = vec![format!("/{}", "work")];
    // The directory holding this checkout, unless it is `/` or a system root (a clone in /tmp).
    if let Some(parent) = root.parent() {
        let first = parent.components().nth(1);
        let system = matches!(first, Some(Component::Normal(c))
            if SYSTEM_ROOTS.contains(&c.to_string_lossy().as_ref()) && parent.components().count() == 2);
        if parent != Path::new("/") && !system {
            roots.push(parent.to_string_lossy().into_owned());
        }
    }
    roots.sort();
    roots.dedup();
    roots
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The tracked files, relative to the root: `git ls-files`, or where git or the `.git` folder
/// is missing (a source tarball), every file under the root but `target/` and `.git/`.
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    let git = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output();
    if let Ok(out) = git
        && out.status.success()
    {
        return out
            .stdout
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| PathBuf::from(String::from_utf8(name.to_vec()).unwrap()))
            .collect();
    }
    fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(root.join(dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                if rel != Path::new("target") && rel != Path::new(".git") {
                    walk(root, &rel, files);
                }
            } else {
                files.push(rel);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, Path::new(""), &mut files);
    files
}

/// Where `rel`, read from `base` (both relative to the repository root), lands: `Ok` inside the
/// repository, `Err` with the lexical result when it climbs above the root and does not land on
/// a system path.
fn resolve(base: &Path, rel: &str) -> Result<(), String> {
    let mut parts: Vec<String> = base
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut above = 0usize;
    let rest: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in rest.iter().enumerate() {
        match *part {
            "." => {}
            ".." if parts.pop().is_none() => above += 1,
            ".." => {}
            _ if above > 0 => {
                // Climbed out: a system path (a traversal to `/` and down) is a host path.
                return if SYSTEM_ROOTS.contains(part) {
                    Ok(())
                } else {
                    Err(format!(
                        "{}/{}",
                        "../".repeat(above).trim_end_matches('/'),
                        rest[i..].join("/")
                    ))
                };
            }
            _ => parts.push(part.to_string()),
        }
    }
    if above > 0 {
        Err("../".repeat(above))
    } else {
        Ok(())
    }
}

/// The package directory a file belongs to: its nearest ancestor with a `Cargo.toml`.
fn package_of(root: &Path, file: &Path) -> PathBuf {
    let mut dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    loop {
        if root.join(&dir).join("Cargo.toml").is_file() || dir.as_os_str().is_empty() {
            return dir;
        }
        dir.pop();
    }
}

/// Every way `text` (the content of `file`) names a path outside the repository.
fn outside_paths(root: &Path, file: &Path, text: &str, foreign: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    for prefix in foreign {
        let absolute = Regex::new(&format!(
            r"(^|[^A-Za-z0-9_.~/-]){}(/|\b)",
            regex::escape(prefix)
        ))
        .unwrap();
        for m in absolute.find_iter(text) {
            found.push(format!(
                "{}:{}: absolute path under {prefix}",
                file.display(),
                line_of(m.start())
            ));
        }
    }
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let package = package_of(root, file);
    let mut check = |base: &Path, at: usize, rel: &str| {
        if let Err(to) = resolve(base, rel) {
            found.push(format!(
                "{}:{}: `{rel}` climbs out of the repository ({to})",
                file.display(),
                line_of(at)
            ));
        }
    };
    if file.extension().is_some_and(|e| e == "rs") {
        let include =
            Regex::new(r#"(include_str!|include_bytes!|#\[path\s*=)\s*\(?\s*"([^"]*)""#).unwrap();
        let mut seen = Vec::new();
        for c in include.captures_iter(text) {
            let m = c.get(2).unwrap();
            seen.push(m.start());
            check(&dir, m.start(), m.as_str());
        }
        // A path joined to the package directory, to the end of its statement: `concat!(env!(
        // "CARGO_MANIFEST_DIR"), "/../x")`, `Path::new(env!("CARGO_MANIFEST_DIR")).join("../x")`.
        let literal = Regex::new(r#""([A-Za-z0-9_.~/-]*)""#).unwrap();
        for m in text.match_indices("CARGO_MANIFEST_DIR\"") {
            let start = m.0 + m.1.len();
            let end = text[start..].find(';').map_or(text.len(), |e| start + e);
            let mut joined = String::new();
            for c in literal.captures_iter(&text[start..end]) {
                let lit = c.get(1).unwrap();
                seen.push(start + lit.start());
                joined.push('/');
                joined.push_str(lit.as_str());
            }
            check(&package, start, joined.trim_start_matches('/'));
        }
        // A quote after a backslash is inside another literal (a script or a test's own input).
        let relative = Regex::new(r#"(?:^|[^\\])"(\.\.(?:/[^"\s]*)?)""#).unwrap();
        for c in relative.captures_iter(text) {
            let m = c.get(1).unwrap();
            if !seen.contains(&m.start()) {
                check(&package, m.start(), m.as_str());
            }
        }
    } else {
        let relative = Regex::new(r"(?:^|[^A-Za-z0-9_.~/-])(\.\.(?:/[A-Za-z0-9_.~/-]*)?)").unwrap();
        for c in relative.captures_iter(text) {
            let m = c.get(1).unwrap();
            // `...` is an ellipsis; `..` must end the path or be followed by `/`.
            if text[m.end()..].starts_with('.') {
                continue;
            }
            check(&dir, m.start(), m.as_str());
        }
    }
    found
}

#[test]
fn no_tracked_file_reads_a_path_outside_the_repository() {
    let root = repository_root();
    let foreign = foreign_roots(&root);
    let files = tracked_files(&root);
    assert!(
        files.iter().any(|f| f == Path::new("Cargo.toml")),
        "found no Cargo.toml among the files of {}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        // A tracked file deleted in the work tree, or a binary one, names no path.
        let Ok(text) = fs::read_to_string(root.join(file)) else {
            continue;
        };
        found.extend(outside_paths(&root, file, &text, &foreign));
    }
    assert!(
        found.is_empty(),
        "paths outside the repository:\n{}",
        found.join("\n")
    );
}

/// The check itself: each way of naming an outside path is caught, and the look-alikes are not.
#[test]
fn the_check_tells_outside_paths_from_look_alikes() {
    let root = repository_root();
    let foreign = foreign_roots(&root);
    let shared = ["..", "..", "shared", "corpora"].join("/");
    let work = ["", "work", "shared", "x"].join("/");
    let hits = |file: &str, text: &str| outside_paths(&root, Path::new(file), text, &foreign).len();
    // Outside.
    let manifest_join = format!("Path::new(env!(\"CARGO_MANIFEST_DIR\")).join(\"{shared}\");");
    assert_eq!(
        hits("enforcer/src/credentials/tests/w.rs", &manifest_join),
        1
    );
    let manifest_concat = format!("concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/{shared}\");");
    assert_eq!(hits("enforcer/src/http/tests.rs", &manifest_concat), 1);
    assert_eq!(
        hits("tests/tests/a.rs", &format!("fs::read(\"{shared}/x\")")),
        1
    );
    assert_eq!(hits("enforcer/src/a.rs", "include_str!(\"../../../x\")"), 1);
    assert_eq!(hits("docs/a.md", "see [x](../../x)"), 1);
    assert_eq!(hits("xtask/src/a.rs", &format!("Path::new(\"{work}\")")), 1);
    assert_eq!(hits("README.md", &format!("cat {work}")), 1);
    // Inside, or not a path outside.
    let inside = "concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../examples/policy.yaml\");";
    assert_eq!(hits("tests/tests/cli.rs", inside), 0);
    assert_eq!(
        hits(
            "enforcer/src/policy/tests.rs",
            "include_str!(\"../../../docs/policy.md\")"
        ),
        0
    );
    assert_eq!(
        hits(
            "enforcer/Cargo.toml",
            "enforcer-ebpf = { path = \"../enforcer-ebpf\" }"
        ),
        0
    );
    assert_eq!(
        hits("docs/policy.md", "[example](../examples/policy.yaml)"),
        0
    );
    assert_eq!(hits("enforcer/src/a.rs", "(\"/a/b/../../c\", \"/c\")"), 0);
    assert_eq!(hits("enforcer/src/a.rs", "kid(\"../../dev/null\")"), 0);
    assert_eq!(
        hits(
            "enforcer/src/a.rs",
            "\"/proc/self/exe\" \"/sys/fs/cgroup\" \"/usr/bin/curl\""
        ),
        0
    );
    assert_eq!(
        hits("examples/policy.yaml", "# `curl -X POST .../admin`"),
        0
    );
}
