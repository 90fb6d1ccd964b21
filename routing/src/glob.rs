//! Glob patterns for resources, tools and agents: `*` matches any run of
//! characters (including none); everything else matches itself.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was, and which text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether a pattern has no wildcard (an exact name).
pub fn is_exact(pattern: &str) -> bool {
    !pattern.contains('*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_match_any_run() {
        assert!(matches("iam:*", "iam:role/admin"));
        assert!(matches("iam:*", "iam:"));
        assert!(!matches("iam:*", "db:orders"));
        assert!(matches("service:checkout", "service:checkout"));
        assert!(!matches("service:checkout", "service:checkout2"));
        assert!(matches("*.set*", "deploy.set_version"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("*", ""));
    }
}
