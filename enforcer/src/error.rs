//! How the agent writes an error into a log line or a recorded reason: the error and every
//! source below it, on one line.

use std::error::Error;

/// An error and its sources on one line, `a: b: c`.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::io;

    #[test]
    fn sources_follow_on_one_line() {
        let inner = io::Error::other("disk full");
        let outer = io::Error::other(Wrapped(inner));
        assert_eq!(super::chain(&outer), "write failed: disk full");
    }

    #[derive(Debug)]
    struct Wrapped(io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("write failed")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
