//! Globs over caller attributes: executable and cgroup paths (path globs) and systemd unit
//! names (name globs).
//!
//! Deliberately small, so an operator can predict every match:
//! - `*` matches any run of characters within one path component (never a `/`);
//! - `?` matches one character other than `/`;
//! - `**`, only as a whole path component, matches zero or more components.
//!
//! `[`, `]`, `{` and `}` are reserved (no character classes, no alternatives, no escapes), so
//! they can get a meaning later without changing what existing policies match.

/// A parsed glob. Matching never allocates for name globs; path globs collect the text's
/// components once (identities are matched once per connection, not per request).
#[derive(Debug, Clone)]
pub(super) struct Glob {
    text: Box<str>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// No wildcard: plain string equality.
    Exact,
    /// One wildcard pattern over the whole text.
    Name,
    /// Components after the leading `/`.
    Path(Box<[Component]>),
}

#[derive(Debug, Clone)]
enum Component {
    /// `**`: zero or more components.
    Any,
    /// A component pattern, possibly with `*` and `?`.
    Wild(Box<str>),
}

const RESERVED: &[char] = &['[', ']', '{', '}'];

// === impl Glob ===

impl Glob {
    /// A glob over absolute paths (`exe`, `cgroup`).
    pub(super) fn path(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("not an absolute path".into());
        };
        check_reserved(text)?;
        let mut components = Vec::new();
        // `/` alone is the root: no component.
        if !rest.is_empty() {
            for c in rest.split('/') {
                if c.is_empty() {
                    return Err("empty path component".into());
                }
                if c == "**" {
                    components.push(Component::Any);
                } else if c.contains("**") {
                    return Err("`**` must be a whole path component".into());
                } else {
                    components.push(Component::Wild(c.into()));
                }
            }
        }
        let kind = if has_wildcard(text) {
            Kind::Path(components.into())
        } else {
            Kind::Exact
        };
        Ok(Self {
            text: text.into(),
            kind,
        })
    }

    /// A glob over names without `/` (`systemdUnit`).
    pub(super) fn name(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty".into());
        }
        if text.contains('/') {
            return Err("a name has no `/`".into());
        }
        check_reserved(text)?;
        if text.contains("**") {
            return Err("`**` spans path components, which a name does not have: use `*`".into());
        }
        let kind = if has_wildcard(text) {
            Kind::Name
        } else {
            Kind::Exact
        };
        Ok(Self {
            text: text.into(),
            kind,
        })
    }

    pub(super) fn as_str(&self) -> &str {
        &self.text
    }

    /// The text, if the glob has no wildcard and so matches only itself.
    pub(super) fn exact(&self) -> Option<&str> {
        matches!(self.kind, Kind::Exact).then_some(&*self.text)
    }

    pub(super) fn matches(&self, s: &str) -> bool {
        match &self.kind {
            Kind::Exact => *self.text == *s,
            Kind::Name => wild_match(&self.text, s),
            Kind::Path(pattern) => {
                let Some(rest) = s.strip_prefix('/') else {
                    return false;
                };
                let text: Vec<&str> = if rest.is_empty() {
                    Vec::new()
                } else {
                    rest.split('/').collect()
                };
                // `//` or a trailing `/`: not a path the kernel reports; `*` must not match
                // the empty component.
                !text.contains(&"") && components_match(pattern, &text)
            }
        }
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

fn check_reserved(s: &str) -> Result<(), String> {
    if s.contains(RESERVED) {
        return Err("`[`, `]`, `{` and `}` are reserved".into());
    }
    Ok(())
}

/// Greedy matching with backtracking to the last `**`: each other component consumes exactly
/// one text component, so this is the classic wildcard algorithm one level up, and linear in
/// practice.
fn components_match(pattern: &[Component], text: &[&str]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Component::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Component::Wild(w)) if wild_match(w, text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| matches!(c, Component::Any))
}

/// `*` (any run) and `?` (one character) over a whole string, by the greedy algorithm with
/// backtracking to the last `*`.
pub(super) fn wild_match(pattern: &str, text: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            si += utf8_len(s[si]);
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + utf8_len(s[ss]);
            star = Some((sp, si));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Length of the UTF-8 sequence a lead byte starts (text is valid UTF-8: `&str`).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0..0x80 => 1,
        0xC0..0xE0 => 2,
        0xE0..0xF0 => 3,
        _ => 4,
    }
}
