//! Permission rules (`permit = <login> <ops> <pattern>`) and ActiveMQ-style destination
//! wildcards: `.` separates segments, `*` matches one segment, `>` one or more trailing ones.
//!
//! Pure data and matching, parsed by `config`, asked by `auth` on any thread.

use std::fmt;

/// What a client does to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// SUBSCRIBE, and browsing through the status listener.
    Read,
    /// SEND, in a transaction or not.
    Write,
    /// Creating a durable topic subscription; purging through the status listener.
    Admin,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Admin => "admin",
        })
    }
}

/// One `permit` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permit {
    /// None: every configured user (`*`).
    pub login: Option<String>,
    operations: Vec<Operation>,
    pattern: Pattern,
}

impl Permit {
    /// `<login or *> <read,write,admin> </queue/PATTERN or /topic/PATTERN>`.
    pub fn parse(text: &str) -> Result<Permit, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [login, operations, pattern] = fields[..] else {
            return Err(format!(
                "`{text}` is not `<login> <operations> <pattern>`, \
                 e.g. `app read,write /queue/orders.>`"
            ));
        };
        let operations = operations
            .split(',')
            .map(|op| match op {
                "read" => Ok(Operation::Read),
                "write" => Ok(Operation::Write),
                "admin" => Ok(Operation::Admin),
                _ => Err(format!(
                    "`{op}` is not an operation (read, write or admin, comma-separated)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Permit {
            login: (login != "*").then(|| login.to_string()),
            operations,
            pattern: Pattern::parse(pattern)?,
        })
    }

    /// Whether this rule lets `login` do `operation` on `destination`.
    pub fn allows(&self, login: &str, operation: Operation, destination: &str) -> bool {
        self.login.as_deref().is_none_or(|l| l == login)
            && self.operations.contains(&operation)
            && self.pattern.matches(destination)
    }
}

/// A destination pattern: its type prefix and the segments of its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    prefix: &'static str,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `>`: one or more segments; only last.
    Rest,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let (prefix, name) = match (text.strip_prefix("/queue/"), text.strip_prefix("/topic/")) {
            (Some(name), _) => ("/queue/", name),
            (_, Some(name)) => ("/topic/", name),
            _ => {
                return Err(format!(
                    "pattern `{text}` must start with /queue/ or /topic/"
                ))
            }
        };
        let parts: Vec<&str> = name.split('.').collect();
        let last = parts.len() - 1;
        let segments = parts
            .iter()
            .enumerate()
            .map(|(i, part)| match *part {
                "" => Err(format!("pattern `{text}` has an empty segment")),
                "*" => Ok(Segment::One),
                ">" if i == last => Ok(Segment::Rest),
                ">" => Err(format!(
                    "pattern `{text}`: `>` may only be the last segment"
                )),
                p if p.contains(['*', '>']) => Err(format!(
                    "pattern `{text}`: `*` and `>` must be whole segments"
                )),
                p => Ok(Segment::Literal(p.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pattern { prefix, segments })
    }

    pub fn matches(&self, destination: &str) -> bool {
        let Some(name) = destination.strip_prefix(self.prefix) else {
            return false;
        };
        let mut parts = name.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One if parts.next().is_none() => return false,
                Segment::One => {}
                Segment::Literal(l) if parts.next() != Some(l.as_str()) => return false,
                Segment::Literal(_) => {}
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, destination: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(destination)
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(matches("/queue/orders", "/queue/orders"));
        assert!(!matches("/queue/orders", "/queue/orders.eu"));
        assert!(!matches("/queue/orders", "/queue/order"));
        assert!(!matches("/queue/orders", "/topic/orders"));
        assert!(!matches("/queue/a.b", "/queue/a"));
        assert!(matches("/topic/a.b", "/topic/a.b"));
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(matches("/topic/*.prices", "/topic/eu.prices"));
        assert!(!matches("/topic/*.prices", "/topic/prices"));
        assert!(!matches("/topic/*.prices", "/topic/eu.x.prices"));
        assert!(matches("/queue/*", "/queue/anything"));
        assert!(!matches("/queue/*", "/queue/a.b"));
        assert!(matches("/queue/a.*.c", "/queue/a.b.c"));
        assert!(!matches("/queue/a.*.c", "/queue/a.b.d"));
    }

    #[test]
    fn greater_than_matches_one_or_more_trailing_segments() {
        assert!(matches("/queue/a.>", "/queue/a.b"));
        assert!(matches("/queue/a.>", "/queue/a.b.c.d"));
        assert!(!matches("/queue/a.>", "/queue/a"), "> needs one segment");
        assert!(!matches("/queue/a.>", "/queue/ab.c"));
        assert!(!matches("/queue/a.>", "/topic/a.b"));
        assert!(matches("/queue/>", "/queue/x"));
        assert!(matches("/queue/>", "/queue/DLQ.x.y"));
        assert!(!matches("/queue/>", "/topic/x"));
        assert!(matches("/queue/*.>", "/queue/a.b"));
        assert!(!matches("/queue/*.>", "/queue/a"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (pattern, needle) in [
            ("orders", "must start with /queue/ or /topic/"),
            ("/temp-queue/x", "must start with"),
            ("/queue/", "empty segment"),
            ("/queue/a..b", "empty segment"),
            ("/queue/>.a", "only be the last"),
            ("/queue/a*", "whole segments"),
            ("/topic/a.b>", "whole segments"),
        ] {
            let err = Pattern::parse(pattern).unwrap_err();
            assert!(err.contains(needle), "{pattern}: {err}");
        }
    }

    #[test]
    fn rules_name_a_login_operations_and_a_pattern() {
        let rule = Permit::parse("app read,write /queue/orders.>").unwrap();
        assert!(rule.allows("app", Operation::Read, "/queue/orders.eu"));
        assert!(rule.allows("app", Operation::Write, "/queue/orders.eu"));
        assert!(!rule.allows("app", Operation::Admin, "/queue/orders.eu"));
        assert!(!rule.allows("other", Operation::Read, "/queue/orders.eu"));
        assert!(!rule.allows("app", Operation::Read, "/queue/orders"));
        let anyone = Permit::parse("* admin /topic/*").unwrap();
        assert_eq!(anyone.login, None);
        assert!(anyone.allows("x", Operation::Admin, "/topic/t"));
        for (text, needle) in [
            ("app read", "is not `<login> <operations> <pattern>`"),
            ("app read /queue/a extra", "is not `<login>"),
            ("app read,delete /queue/a", "`delete` is not an operation"),
            ("app read, /queue/a", "`` is not an operation"),
            ("app read queue.a", "must start with"),
        ] {
            let err = Permit::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
