//! Lua 5.4 patterns, matched in Rust with a step counter.
//!
//! Same language as Lua's own matcher (classes `%a %c %d %g %l %p %s %u %w %x` and their
//! complements, sets, `.`, `*` `+` `-` `?`, captures and position captures, back references,
//! `%b`, `%f`, `^`/`$` anchors), same backtracking order (so the same match is found), same
//! nesting limit (200 -> "pattern too complex") and the same error messages. The difference:
//! every step calls `tick` now and then, so a pathological pattern can be stopped.

/// Most captures a pattern may have (LUA_MAXCAPTURES).
pub(crate) const MAX_CAPTURES: usize = 32;
/// Deepest recursion of the matcher (MAXCCALLS in Lua's string library).
const MAX_DEPTH: u32 = 200;
/// Steps between two calls of `tick`.
pub(crate) const TICK_EVERY: u32 = 4096;

const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;

/// Why a match could not be completed.
#[derive(Debug)]
pub(crate) enum Fail<E> {
    /// The pattern is malformed (Lua's message, without position).
    Pattern(String),
    /// `tick` asked to stop (deadline, abort, memory).
    Stop(E),
}

type Res<T, E> = Result<T, Fail<E>>;

fn bad<T, E>(msg: impl Into<String>) -> Res<T, E> {
    Err(Fail::Pattern(msg.into()))
}

/// One capture's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capture {
    /// Byte range of the subject.
    Text(usize, usize),
    /// A position capture `()`: 1-based index in the subject.
    Position(usize),
}

#[derive(Clone, Copy)]
struct Slot {
    init: usize,
    len: isize,
}

/// A matcher over one subject and one pattern (the pattern without its `^` anchor).
pub(crate) struct Matcher<'a, E> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    slots: [Slot; MAX_CAPTURES],
    depth: u32,
    steps: u32,
    tick: &'a mut dyn FnMut() -> Result<(), E>,
}

impl<'a, E> Matcher<'a, E> {
    pub(crate) fn new(src: &'a [u8], pat: &'a [u8], tick: &'a mut dyn FnMut() -> Result<(), E>) -> Self {
        Matcher {
            src,
            pat,
            level: 0,
            slots: [Slot { init: 0, len: 0 }; MAX_CAPTURES],
            depth: MAX_DEPTH,
            steps: 0,
            tick,
        }
    }

    /// Tries to match the pattern at `s`; returns the end of the match.
    pub(crate) fn match_at(&mut self, s: usize) -> Res<Option<usize>, E> {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.do_match(s, 0)
    }

    /// Counts `n` steps of work; calls `tick` every `TICK_EVERY` of them.
    pub(crate) fn spend(&mut self, n: u32) -> Res<(), E> {
        self.steps = self.steps.saturating_add(n);
        if self.steps >= TICK_EVERY {
            self.steps = 0;
            (self.tick)().map_err(Fail::Stop)?;
        }
        Ok(())
    }

    /// Capture `i` of the last match `s..e` (capture 0 is the whole match when the pattern
    /// has no captures).
    pub(crate) fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, String> {
        if i >= self.level {
            if i != 0 {
                return Err(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Capture::Text(s, e));
        }
        let slot = self.slots[i];
        match slot.len {
            CAP_UNFINISHED => Err("unfinished capture".into()),
            CAP_POSITION => Ok(Capture::Position(slot.init + 1)),
            len => Ok(Capture::Text(slot.init, slot.init + len as usize)),
        }
    }

    /// The values a match returns: its captures, or the whole match if it has none (and
    /// `whole` is given).
    pub(crate) fn captures(&self, whole: Option<(usize, usize)>) -> Result<Vec<Capture>, String> {
        let n = if self.level == 0 && whole.is_some() { 1 } else { self.level };
        let (s, e) = whole.unwrap_or((0, 0));
        (0..n).map(|i| self.capture(i, s, e)).collect()
    }

    /// Pattern byte at `p`, 0 past the end (like the NUL after a Lua string).
    fn pc(&self, p: usize) -> u8 {
        self.pat.get(p).copied().unwrap_or(0)
    }

    fn do_match(&mut self, s: usize, p: usize) -> Res<Option<usize>, E> {
        if self.depth == 0 {
            return bad("pattern too complex");
        }
        self.depth -= 1;
        let r = self.match_here(s, p);
        self.depth += 1;
        r
    }

    fn match_here(&mut self, mut s: usize, mut p: usize) -> Res<Option<usize>, E> {
        loop {
            self.spend(1)?;
            if p == self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' => {
                    return if self.pc(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                b'%' if self.pc(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(next) => {
                        s = next;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                b'%' if self.pc(p + 1) == b'f' => {
                    p += 2;
                    if self.pc(p) != b'[' {
                        return bad("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let prev = if s == 0 { 0 } else { self.src[s - 1] };
                    let cur = self.src.get(s).copied().unwrap_or(0);
                    if !self.match_set(prev, p, ep - 1) && self.match_set(cur, p, ep - 1) {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                b'%' if self.pc(p + 1).is_ascii_digit() => {
                    match self.match_back_reference(s, self.pc(p + 1))? {
                        Some(next) => {
                            s = next;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let quantifier = self.pc(ep);
                    if !self.single_match(s, p, ep) {
                        if matches!(quantifier, b'*' | b'?' | b'-') {
                            // zero repetitions are fine
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match quantifier {
                        b'?' => {
                            if let Some(e) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(e));
                            }
                            p = ep + 1;
                        }
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    /// Greedy: as many repetitions as possible, then give back one at a time.
    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Res<Option<usize>, E> {
        let mut i = 0;
        while self.single_match(s + i, p, ep) {
            i += 1;
            self.spend(1)?;
        }
        loop {
            if let Some(e) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(e));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    /// Lazy: as few repetitions as possible, one more at a time.
    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Res<Option<usize>, E> {
        loop {
            if let Some(e) = self.do_match(s, ep + 1)? {
                return Ok(Some(e));
            }
            if !self.single_match(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Res<Option<usize>, E> {
        if self.level >= MAX_CAPTURES {
            return bad("too many captures");
        }
        self.slots[self.level] = Slot { init: s, len: what };
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Res<Option<usize>, E> {
        let Some(l) = (0..self.level).rev().find(|&l| self.slots[l].len == CAP_UNFINISHED) else {
            return bad("invalid pattern capture");
        };
        self.slots[l].len = (s - self.slots[l].init) as isize;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.slots[l].len = CAP_UNFINISHED;
        }
        Ok(r)
    }

    /// `%1`..`%9`: the text of an earlier, closed capture.
    fn match_back_reference(&mut self, s: usize, digit: u8) -> Res<Option<usize>, E> {
        let l = digit as isize - b'1' as isize;
        if l < 0 || l as usize >= self.level || self.slots[l as usize].len == CAP_UNFINISHED {
            return bad(format!("invalid capture index %{}", l + 1));
        }
        let slot = self.slots[l as usize];
        if slot.len == CAP_POSITION {
            // Lua compares with a length of (size_t)-2: never a match.
            return Ok(None);
        }
        let len = slot.len as usize;
        self.spend((len / 64) as u32)?;
        let fits = self.src.len() - s >= len;
        Ok((fits && self.src[slot.init..slot.init + len] == self.src[s..s + len]).then_some(s + len))
    }

    /// `%bxy`: a balanced run from `x` to the matching `y`.
    fn match_balance(&mut self, s: usize, p: usize) -> Res<Option<usize>, E> {
        if p + 1 >= self.pat.len() {
            return bad("malformed pattern (missing arguments to '%b')");
        }
        if s >= self.src.len() || self.src[s] != self.pat[p] {
            return Ok(None);
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        let mut depth = 1usize;
        for i in s + 1..self.src.len() {
            self.spend(1)?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    /// The end of the single-character class starting at `p`.
    fn class_end(&self, mut p: usize) -> Res<usize, E> {
        let c = self.pat[p];
        p += 1;
        match c {
            b'%' => {
                if p >= self.pat.len() {
                    return bad("malformed pattern (ends with '%')");
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.pc(p) == b'^' {
                    p += 1;
                }
                // The first character after `[` (or `[^`) is part of the set, even `]`.
                loop {
                    if p >= self.pat.len() {
                        return bad("malformed pattern (missing ']')");
                    }
                    let c = self.pat[p];
                    p += 1;
                    if c == b'%' && p < self.pat.len() {
                        p += 1;
                    }
                    if self.pc(p) == b']' {
                        return Ok(p + 1);
                    }
                }
            }
            _ => Ok(p),
        }
    }

    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            b'%' => match_class(c, self.pat[p + 1]),
            b'[' => self.match_set(c, p, ep - 1),
            pc => pc == c,
        }
    }

    /// Whether `c` is in the set `[...]` from `p` (the `[`) to `ec` (the `]`).
    fn match_set(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut found = true;
        if self.pc(p + 1) == b'^' {
            found = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return !found;
            }
            if self.pat[p] == b'%' {
                p += 1;
                if match_class(c, self.pc(p)) {
                    return found;
                }
            } else if self.pc(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return found;
                }
            } else if self.pat[p] == c {
                return found;
            }
        }
    }
}

/// `%x` classes, as the C library's <ctype.h> answers them in the "C" locale.
fn match_class(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c < 32 || c == 127,
        b'd' => c.is_ascii_digit(),
        b'g' => (33..=126).contains(&c),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0, // deprecated, still in Lua 5.4
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

/// True when `find` may search for the pattern as plain text (no magic characters).
pub(crate) fn is_plain(pat: &[u8]) -> bool {
    !pat.iter().any(|c| b"^$*+?.([%-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(src: &str, pat: &str) -> Result<Option<(usize, usize)>, String> {
        let mut tick = || Ok::<(), ()>(());
        let mut m = Matcher::new(src.as_bytes(), pat.as_bytes(), &mut tick);
        for s in 0..=src.len() {
            match m.match_at(s) {
                Ok(Some(e)) => return Ok(Some((s, e))),
                Ok(None) => {}
                Err(Fail::Pattern(p)) => return Err(p),
                Err(Fail::Stop(())) => unreachable!(),
            }
        }
        Ok(None)
    }

    #[test]
    fn basics() {
        assert_eq!(find("hello world", "o w"), Ok(Some((4, 7))));
        assert_eq!(find("hello", "l+"), Ok(Some((2, 4))));
        assert_eq!(find("hello", "x*"), Ok(Some((0, 0))));
        assert_eq!(find("[x]", "%b[]"), Ok(Some((0, 3))));
        assert_eq!(find("THE (quick) fox", "%f[%a]%a+"), Ok(Some((0, 3))));
        assert_eq!(find("abc", "[%a"), Err("malformed pattern (missing ']')".into()));
        assert_eq!(find("abc", "%"), Err("malformed pattern (ends with '%')".into()));
    }

    #[test]
    fn tick_stops() {
        let mut n = 0;
        let mut tick = || {
            n += 1;
            if n > 3 {
                Err("stop")
            } else {
                Ok(())
            }
        };
        let src = ",".repeat(3000);
        let mut m = Matcher::new(src.as_bytes(), b"(.-),(.-),(.-);$", &mut tick);
        let mut stopped = false;
        for s in 0..=src.len() {
            match m.match_at(s) {
                Err(Fail::Stop("stop")) => {
                    stopped = true;
                    break;
                }
                Ok(None) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(stopped);
    }
}
