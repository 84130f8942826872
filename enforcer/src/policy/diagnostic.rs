//! Errors in a policy file, each with the place it was found.

use std::{
    borrow::Cow,
    fmt,
    path::{Path, PathBuf},
};

use serde_saphyr::{Localizer, Location, MessageFormatter, UserMessageFormatter};

/// One error in a policy file. Displays as `FILE:LINE:COLUMN: message`, the form compilers use
/// and editors jump to; an error about the whole file (it cannot be read) has line 0 and
/// displays as `FILE: message`. Lines and columns count from 1, in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Collects diagnostics while a file is checked.
pub(super) struct Diagnostics<'a> {
    file: &'a Path,
    list: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, loc: &Location, message: impl Into<String>) {
        let d = self.diagnostic(loc.line(), loc.column(), message.into());
        self.list.push(d);
    }

    pub(super) fn diagnostic(&self, line: u64, column: u64, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message,
        }
    }

    /// A syntax or type error from the parser: the location it names, and its message without
    /// the parser's own location suffix or source snippet.
    pub(super) fn parser_error(&self, e: &serde_saphyr::Error) -> Diagnostic {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.render_with_options(serde_saphyr::render_options! {
            formatter: &Plain,
            snippets: serde_saphyr::SnippetMode::Off,
        });
        self.diagnostic(line, column, message)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn push(&mut self, diagnostic: Diagnostic) {
        self.list.push(diagnostic);
    }

    /// The file being checked.
    pub(super) fn file(&self) -> &Path {
        self.file
    }

    /// Take the diagnostics found in another file the policy names (an API keys file).
    pub(super) fn absorb(&mut self, other: Diagnostics<'_>) {
        self.list.extend(other.list);
    }

    /// Everything found, in file order: the policy file's first, then those of the files it
    /// names, each in the order they were found.
    pub(super) fn into_sorted(mut self) -> Vec<Diagnostic> {
        let main = self.file;
        self.list.sort_by_key(|d| {
            (
                d.file != main,
                (d.file == main).then_some((d.line, d.column)),
            )
        });
        self.list
    }
}

/// The parser's end-user wording, without the "at line L, column C" it appends: the diagnostic
/// leads with the location instead.
struct Plain;

impl MessageFormatter for Plain {
    fn localizer(&self) -> &dyn Localizer {
        &NoLocation
    }

    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        UserMessageFormatter.format_message(err)
    }
}

struct NoLocation;

impl Localizer for NoLocation {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _: Location) -> Cow<'a, str> {
        base
    }
}
