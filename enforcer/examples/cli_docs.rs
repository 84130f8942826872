//! The man pages and shell completions of `enforcer`, generated from its clap definitions
//! (`enforcer::cli`), so they never drift from the binary:
//!
//!     cargo run -p enforcer --example cli_docs -- DIR     (`cargo xtask man` writes target/dist)
//!
//! writes `DIR/man/enforcer.1` and one page per subcommand (`enforcer-run.1`, ...), and
//! `DIR/completions/` `enforcer.bash`, `_enforcer` (zsh) and `enforcer.fish`; it prints each
//! path written.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: cli_docs DIR");
        std::process::exit(2);
    };
    for path in write(Path::new(&dir))? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Write every page and completion script under `dir`; returns their paths.
fn write(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let cmd = enforcer::cli::Cli::command();
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut written: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    written.sort();
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd.clone(),
            "enforcer",
            &completions,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The generated files in a directory of the test's own (`tag`): tests run in parallel.
    fn generated(tag: &str) -> (Scratch, Vec<PathBuf>) {
        let pid = std::process::id();
        let dir = Scratch(std::env::temp_dir().join(format!("enforcer-cli-docs-{pid}-{tag}")));
        let _ = fs::remove_dir_all(&dir.0);
        let written = write(&dir.0).unwrap();
        (dir, written)
    }

    fn name(path: &Path) -> &str {
        path.file_name().unwrap().to_str().unwrap()
    }

    #[test]
    fn a_page_for_the_command_and_each_subcommand_and_three_completions() {
        let (_dir, written) = generated("list");
        let names: Vec<&str> = written.iter().map(|p| name(p)).collect();
        assert_eq!(
            names,
            [
                "enforcer-check.1",
                "enforcer-explain.1",
                "enforcer-run.1",
                "enforcer-status.1",
                "enforcer-uninstall.1",
                "enforcer.1",
                "enforcer.bash",
                "_enforcer",
                "enforcer.fish",
            ]
        );
    }

    #[test]
    fn the_bash_completion_parses_and_completes_subcommands_and_flags() {
        let (_dir, written) = generated("bash");
        let bash = written.iter().find(|p| name(p) == "enforcer.bash").unwrap();
        let out = Command::new("bash").arg("-n").arg(bash).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Sourced, it registers the completion and offers the subcommands.
        let script = format!(
            "source {}; complete -p enforcer; COMP_WORDS=(enforcer st); COMP_CWORD=1; \
             _enforcer enforcer st enforcer; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(" -F _enforcer enforcer\n"), "{stdout}");
        assert!(stdout.lines().any(|l| l == "status"), "{stdout}");
    }

    #[test]
    fn the_man_pages_render_without_warnings_and_name_the_flags() {
        let (_dir, written) = generated("man");
        for page in written.iter().filter(|p| name(p).ends_with(".1")) {
            let roff = fs::read_to_string(page).unwrap();
            assert!(
                roff.starts_with(".ie \\n(.g .ds Aq \\(aq"),
                "{}",
                page.display()
            );
            assert!(roff.contains("\n.TH "), "{}: no title", page.display());
            assert!(roff.contains("\n.SH NAME\n"), "{}: no NAME", page.display());
            // groff with every warning on: the page is well-formed roff.
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(page)
                .output()
                .expect("groff (Debian: groff-base)");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{}: {}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let run = fs::read_to_string(
            written
                .iter()
                .find(|p| name(p) == "enforcer-run.1")
                .unwrap(),
        )
        .unwrap();
        for flag in ["policy", "metrics\\-addr", "runtime\\-dir", "log\\-level"] {
            assert!(
                run.contains(&format!("\\-\\-{flag}")),
                "enforcer-run.1 lacks --{flag}"
            );
        }
    }
}
