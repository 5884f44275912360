//! Redis's glob patterns (SCAN MATCH, KEYS): `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\`
//! escapes, matched on bytes, for hosts that walk the keyspace themselves.

/// Does `s` match `pattern` the way SCAN MATCH decides it?
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    // A prefix pattern (`user:*`, the common case): no backtracking needed.
    if let Some(prefix) = literal_prefix(pattern) {
        return s.starts_with(prefix);
    }
    matches(pattern, s)
}

/// `p*` where `p` has no special character: `p`.
fn literal_prefix(pattern: &[u8]) -> Option<&[u8]> {
    let (last, head) = pattern.split_last()?;
    (*last == b'*' && !head.iter().any(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))).then_some(head)
}

/// Matches with one backtracking point, the last `*` seen: since `*` takes any run of
/// bytes, going back further never helps, so the time stays polynomial whatever the
/// pattern (a pattern of many stars cannot stall the server).
fn matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            while pi < p.len() && p[pi] == b'*' {
                pi += 1;
            }
            star = Some((pi, si));
            continue;
        }
        if pi < p.len() {
            if let Some(next) = one(p, pi, s[si]) {
                pi = next;
                si += 1;
                continue;
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Does the pattern element at `pi` (not `*`) match byte `c`? Returns where the next
/// element starts.
fn one(p: &[u8], mut pi: usize, c: u8) -> Option<usize> {
    match p[pi] {
        b'?' => Some(pi + 1),
        b'[' => {
            pi += 1;
            let not = pi < p.len() && p[pi] == b'^';
            if not {
                pi += 1;
            }
            let mut found = false;
            loop {
                if pi >= p.len() {
                    // Unterminated: the end closes it.
                    break;
                }
                if p[pi] == b']' {
                    pi += 1;
                    break;
                }
                if p[pi] == b'\\' && pi + 1 < p.len() {
                    pi += 1;
                    found |= p[pi] == c;
                } else if pi + 2 < p.len() && p[pi + 1] == b'-' {
                    let (mut lo, mut hi) = (p[pi], p[pi + 2]);
                    if lo > hi {
                        std::mem::swap(&mut lo, &mut hi);
                    }
                    pi += 2;
                    found |= (lo..=hi).contains(&c);
                } else {
                    found |= p[pi] == c;
                }
                pi += 1;
            }
            (found != not).then_some(pi)
        }
        b'\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        x => (x == c).then_some(pi + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn like_redis() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("user:*", "user:1"),
            ("user:*", "user:"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("user\\[1\\]*", "user[1]:x"),
            ("*:x", "a:b:x"),
            ("a*b*c", "aXXbYYc"),
            ("[\\]]", "]"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no = [
            ("user:*", "use"),
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "aXb"),
            ("*:x", "a:b:y"),
            ("abc", "abcd"),
            ("user\\[1\\]*", "user1:x"),
        ];
        for (p, s) in no {
            assert!(!glob_match(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
    }

    #[test]
    fn many_stars_end() {
        let p = "*a".repeat(40) + "b";
        assert!(!glob_match(p.as_bytes(), "a".repeat(60).as_bytes()));
    }
}
