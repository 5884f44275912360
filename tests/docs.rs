//! Runs every example in docs/*.md against a real server: `redis` blocks run commands
//! (a line `COMMAND args -> reply` also checks the reply), `lua`/`js` blocks are sent with
//! RG.EXEC, and a `result` block holds the reply every script block since the previous
//! result must give (`result unordered` sorts the results first).
//!
//! Block options (words after the block's language):
//! - `lua`/`js`: `args=a,b` (`ARGS a b`), `id=<id>` (`ID <id>`, names the session), `upgrade`
//!   (`UPGRADE`).
//! - `redis eventually`, `sqlite eventually`: checked lines are tried again (up to 20 s) until
//!   they match, for what happens after the command replied (write-behind).
//! - `sqlite`: SQL run on the docs' SQLite database, a file in the test server's directory.
//!   A statement ends with a line that ends with `;` or holds ` -> <expected>`; the expected
//!   text is the rows as JSON (`[[1, "Ann", null]]`). Run with python3's sqlite3 module, so
//!   the test needs no SQLite crate.
//! - `text`: not run, unless it is a redis-cli transcript (below). Synopses, diagrams, output
//!   formats.
//! - `sh`: shell commands for the reader; not run.
//!
//! A block of any other kind, or with an option its kind does not take, fails the test
//! (see `KINDS`): a typo must not turn an example into prose nobody checks.
//!
//! redis-cli transcripts: a `text` block whose first line starts with the prompt
//! `127.0.0.1:6379> ` is what an interactive `redis-cli` shows. Each prompt line is a command,
//! split into arguments as redis-cli splits them (double quotes with backslash escapes, single
//! quotes); the lines up to the next prompt are its reply exactly as redis-cli prints it
//! (RESP2: `"text"`, `(integer) 1`, `(nil)`, `(error) ERR ...`, numbered nested arrays,
//! `(empty array)`; INFO's text as is). In an expected line, `...` stands for any text (a time,
//! a duration, a generated id). Inside `MULTI` the prompt must be `127.0.0.1:6379(TX)> `, as
//! redis-cli shows it. A file's transcripts run in order on a server of their own, which also
//! gets the commands of the file's `redis` blocks (their replies unchecked there) but not its
//! scripts: a transcript shows what a reader sees in redis-cli with the data the page set up,
//! without the executions and sessions of every script on the page.
//!
//! Placeholder: `/tmp/gears-docs.db` in a `redis` line is replaced by the path of that same
//! database file (e.g. `RG.CONFIGSET connection.main sqlite:///tmp/gears-docs.db`), so the docs
//! show a path a reader can use and the test writes only in its own directory.

mod common;
include!("common/cases.rs");

use common::{canon, cmd, exec, Server};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the docs write as the SQLite database's path (see the module comment).
const SQLITE_PLACEHOLDER: &str = "/tmp/gears-docs.db";

/// Runs one SQL statement on the SQLite database at `db`: its rows as JSON, or `(error) ...`.
fn sqlite(db: &Path, sql: &str) -> String {
    const PY: &str = "import json, sqlite3, sys\n\
c = sqlite3.connect(sys.argv[1], timeout=10)\n\
try:\n    rows = c.execute(sys.argv[2]).fetchall()\n    c.commit()\n    print(json.dumps([list(r) for r in rows], ensure_ascii=False, default=lambda b: b.hex()))\n\
except sqlite3.Error as e:\n    print('(error) ' + str(e))\n";
    let out = std::process::Command::new("python3").arg("-c").arg(PY).arg(db).arg(sql).output().expect("python3 runs the docs' sqlite blocks");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        text
    } else {
        format!("(error) python3: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// `get()` until it matches `expected`, up to 20 s (`eventually`), or once; the last reply.
fn check(eventually: bool, expected: &str, mut get: impl FnMut() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = get();
        if !eventually || matches(&got, expected) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Splits a line of a `redis` block into words (double quotes group words).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut any) = (String::new(), false, false);
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Block kinds and the options each takes (`id=`, `args=`: with a value).
const KINDS: &[(&str, &[&str])] = &[
    ("redis", &["eventually"]),
    ("sqlite", &["eventually"]),
    ("lua", &["args=", "id=", "upgrade"]),
    ("js", &["args=", "id=", "upgrade"]),
    ("result", &["unordered"]),
    ("text", &[]),
    ("sh", &[]),
];

/// Why a block's info string is not one this test knows, if it is not.
fn unknown_kind(kind: &str, opts: &[&str]) -> Option<String> {
    let Some((_, allowed)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        let what = if kind.is_empty() { "block without a kind".to_string() } else { format!("unknown block kind `{kind}`") };
        return Some(format!("{what} (known: {})", known.join(", ")));
    };
    opts.iter()
        .find(|o| !allowed.iter().any(|a| if a.ends_with('=') { o.starts_with(*a) } else { **o == *a }))
        .map(|o| format!("`{kind}` block with unknown option `{o}` (it takes: {})", allowed.join(" ")))
}

const PROMPT: &str = "127.0.0.1:6379> ";
const PROMPT_TX: &str = "127.0.0.1:6379(TX)> ";

/// A prompt line's command and whether its prompt is the `MULTI` one.
fn prompt(line: &str) -> Option<(&str, bool)> {
    line.strip_prefix(PROMPT).map(|c| (c, false)).or_else(|| line.strip_prefix(PROMPT_TX).map(|c| (c, true)))
}

/// Splits a command line as redis-cli does (sdssplitargs): `"..."` with `\n`, `\r`, `\t`,
/// `\a`, `\b`, `\xHH` and `\<c>` escapes, `'...'` with `\'`. None if a quote is not closed.
fn cli_args(line: &str) -> Option<Vec<Vec<u8>>> {
    let b = line.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Some(out);
        }
        let mut cur = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            if dq {
                let c = *b.get(i)?;
                if c == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' && b[i + 2].is_ascii_hexdigit() && b[i + 3].is_ascii_hexdigit() {
                    cur.push(u8::from_str_radix(std::str::from_utf8(&b[i + 2..i + 4]).ok()?, 16).ok()?);
                    i += 3;
                } else if c == b'\\' && i + 1 < b.len() {
                    i += 1;
                    cur.push(match b[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                } else if c == b'"' {
                    if i + 1 < b.len() && !b[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if sq {
                let c = *b.get(i)?;
                if c == b'\\' && b.get(i + 1) == Some(&b'\'') {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < b.len() && !b[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                match b.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => dq = true,
                    Some(b'\'') => sq = true,
                    Some(c) => cur.push(*c),
                }
            }
            i += 1;
        }
        out.push(cur);
    }
}

/// A bulk string as redis-cli prints it (sdscatrepr).
fn cli_repr(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &c in s {
        match c {
            b'\\' | b'"' => {
                out.push('\\');
                out.push(c as char);
            }
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            7 => out.push_str("\\a"),
            8 => out.push_str("\\b"),
            c if c.is_ascii_graphic() || c == b' ' => out.push(c as char),
            c => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push('"');
    out
}

/// A RESP2 reply as interactive redis-cli prints it (cliFormatReplyTTY): nested arrays are
/// numbered, their elements indented under the first one's text.
fn cli_reply(v: &redis::Value, prefix: &str) -> String {
    use redis::Value;
    match v {
        Value::Array(items) | Value::Set(items) if items.is_empty() => "(empty array)\n".into(),
        Value::Array(items) | Value::Set(items) => {
            let width = items.len().to_string().len();
            let inner = format!("{prefix}{}", " ".repeat(width + 2));
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                out.push_str(&format!("{}{:>width$}) ", if i == 0 { "" } else { prefix }, i + 1));
                out.push_str(&cli_reply(item, &inner));
            }
            out
        }
        Value::Nil => "(nil)\n".into(),
        Value::Int(i) => format!("(integer) {i}\n"),
        Value::BulkString(b) => cli_repr(b) + "\n",
        // Status replies, and errors as `cmd` gives them: `(error) CODE detail`.
        Value::SimpleString(s) => format!("{s}\n"),
        Value::Okay => "OK\n".into(),
        Value::ServerError(_) => format!("{}\n", canon::fmt(v)),
        other => format!("{}\n", canon::fmt(other)),
    }
}

/// redis-cli prints these commands' replies raw (INFO's text as it is).
fn cli_raw(command: &str) -> bool {
    command == "INFO"
}

/// Transcript commands that only read: a reply that differs is asked for again, up to 5 s.
const RETRIED: &[&str] = &["INFO", "RG.GETRESULTS", "RG.GETEXECUTION", "RG.DUMPEXECUTIONS", "RG.DUMPREGISTRATIONS", "RG.CONFIGGET"];

/// `expected` (a transcript line) with `...` standing for any text.
fn line_matches(got: &str, expected: &str) -> bool {
    let parts: Vec<&str> = expected.split("...").collect();
    if parts.len() == 1 {
        return got == expected;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !got.starts_with(first) || !got[first.len()..].ends_with(last) || got.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &got[first.len()..got.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

/// Runs one transcript block on `c`; its failures, and how many replies it checked.
fn run_transcript(c: &mut redis::Connection, name: &str, b: &Block) -> (Vec<String>, usize) {
    let (mut failures, mut checked, mut in_multi) = (Vec::new(), 0, false);
    let lines: Vec<&str> = b.body.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let at = b.line + 1 + i;
        let Some((command, tx)) = prompt(lines[i]) else {
            failures.push(format!("{name}:{at}: transcript line is neither a prompt nor a reply: {}", lines[i]));
            i += 1;
            continue;
        };
        let mut expected = Vec::new();
        i += 1;
        while i < lines.len() && prompt(lines[i]).is_none() {
            expected.push(lines[i].trim_end());
            i += 1;
        }
        while expected.last() == Some(&"") {
            expected.pop();
        }
        if tx != in_multi {
            failures.push(format!("{name}:{at}: prompt should be `{}` here", if in_multi { PROMPT_TX } else { PROMPT }.trim_end()));
        }
        let Some(args) = cli_args(command).filter(|a| !a.is_empty()) else {
            failures.push(format!("{name}:{at}: cannot split `{command}` into arguments"));
            continue;
        };
        let word = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let run = |c: &mut redis::Connection| {
            let mut q = redis::cmd(&word);
            for a in &args[1..] {
                q.arg(&a[..]);
            }
            // Not `query`: it turns an error inside an array (an EXEC reply) into an error.
            let v = redis::ConnectionLike::req_packed_command(c, &q.get_packed_command()).unwrap_or_else(common::error_value);
            let text = match &v {
                redis::Value::BulkString(text) if cli_raw(&word) => String::from_utf8_lossy(text).replace("\r\n", "\n"),
                _ => cli_reply(&v, ""),
            };
            let lines: Vec<String> = text.trim_end().lines().map(|l| l.trim_end().to_string()).collect();
            (v, lines)
        };
        let same = |got: &[String]| got.len() == expected.len() && got.iter().zip(&expected).all(|(g, e)| line_matches(g, e));
        let (mut v, mut got) = run(c);
        // What a reader would see a moment later, for commands that only read (an abort or
        // an UNBLOCKING execution finishes on its own thread).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !same(&got) && !in_multi && RETRIED.contains(&word.as_str()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            (v, got) = run(c);
        }
        match word.as_str() {
            "MULTI" if matches!(v, redis::Value::Okay) => in_multi = true,
            "EXEC" | "DISCARD" => in_multi = false,
            _ => {}
        }
        checked += 1;
        if !same(&got) {
            failures.push(format!("{name}:{at}: `{command}`\n  expected:\n    {}\n  got:\n    {}", expected.join("\n    "), got.join("\n    ")));
        }
    }
    (failures, checked)
}

struct Block {
    info: String,
    body: String,
    line: usize,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (n, line) in md.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("```") {
            match current.take() {
                Some(b) => out.push(b),
                None => current = Some(Block { info: rest.trim().to_string(), body: String::new(), line: n + 1 }),
            }
        } else if let Some(b) = current.as_mut() {
            b.body.push_str(line);
            b.body.push('\n');
        }
    }
    out
}

#[test]
fn every_example_in_the_docs_runs() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<_> = std::fs::read_dir(&docs).expect("docs/").map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    files.sort();
    // docs/cluster.md runs on a 3-primary cluster: tests/cluster_docs.rs.
    files.retain(|p| p.file_name() != Some(std::ffi::OsStr::new("cluster.md")));
    let server = Server::start(&[]);
    let mut c = server.conn();
    let db = server.dir.join("gears-docs.db");
    let db_path = db.display().to_string();
    let (mut failures, mut checked) = (Vec::new(), 0);
    for file in files {
        let md = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        cmd(&mut c, &["FLUSHALL"]);
        let blocks = blocks(&md);
        let is_transcript = |b: &Block| b.info == "text" && b.body.lines().next().is_some_and(|l| prompt(l).is_some());
        // The server the file's transcripts run on (see the module comment).
        let mut cli = blocks.iter().any(is_transcript).then(|| {
            let s = Server::start(&[]);
            let conn = s.conn();
            (s, conn)
        });
        let mut pending: Vec<(String, usize, String)> = Vec::new(); // (where, line, reply)
        for b in &blocks {
            let mut info = b.info.split_whitespace();
            let kind = info.next().unwrap_or("");
            let opts: Vec<&str> = info.collect();
            if let Some(why) = unknown_kind(kind, &opts) {
                failures.push(format!("{name}:{}: {why}", b.line));
                continue;
            }
            let eventually = opts.contains(&"eventually");
            match kind {
                "text" if is_transcript(b) => {
                    let (_, conn) = cli.as_mut().expect("transcript server");
                    let (f, n) = run_transcript(conn, &name, b);
                    failures.extend(f);
                    checked += n;
                }
                "redis" => {
                    // `COMMAND args -> reply` lines also check the reply.
                    for line in b.body.lines().filter(|l| !l.trim().is_empty()) {
                        let line = line.replace(SQLITE_PLACEHOLDER, &db_path);
                        let line = line.as_str();
                        let (command, expected) = match line.rsplit_once(" -> ") {
                            Some((c, e)) => (c, Some(e.trim())),
                            None => (line, None),
                        };
                        let w = words(command);
                        let refs: Vec<&str> = w.iter().map(String::as_str).collect();
                        if let Some((_, conn)) = cli.as_mut() {
                            cmd(conn, &refs);
                        }
                        let r = check(eventually && expected.is_some(), expected.unwrap_or(""), || canon::fmt(&cmd(&mut c, &refs)));
                        match expected {
                            Some(e) => {
                                checked += 1;
                                if !matches(&r, e) {
                                    failures.push(format!("{name}:{}: `{command}`\n  expected: {e}\n  got:      {r}", b.line));
                                }
                            }
                            None if r.starts_with("(error)") => failures.push(format!("{name}:{}: setup `{line}` failed: {r}", b.line)),
                            None => {}
                        }
                    }
                }
                "sqlite" => {
                    let mut statement = String::new();
                    for line in b.body.lines().filter(|l| !l.trim().is_empty()) {
                        let (sql, expected) = match line.rsplit_once(" -> ") {
                            Some((s, e)) => (s, Some(e.trim())),
                            None => (line, None),
                        };
                        statement.push_str(sql.trim());
                        statement.push('\n');
                        if expected.is_none() && !sql.trim_end().ends_with(';') {
                            continue;
                        }
                        let sql = std::mem::take(&mut statement);
                        let r = check(eventually && expected.is_some(), expected.unwrap_or(""), || sqlite(&db, &sql));
                        match expected {
                            Some(e) => {
                                checked += 1;
                                if !matches(&r, e) {
                                    failures.push(format!("{name}:{}: `{}`\n  expected: {e}\n  got:      {r}", b.line, sql.trim()));
                                }
                            }
                            None if r.starts_with("(error)") => failures.push(format!("{name}:{}: setup `{}` failed: {r}", b.line, sql.trim())),
                            None => {}
                        }
                    }
                    if !statement.trim().is_empty() {
                        failures.push(format!("{name}:{}: sqlite statement without an ending `;`: {}", b.line, statement.trim()));
                    }
                }
                "lua" | "js" => {
                    let mut extra: Vec<String> = Vec::new();
                    if let Some(id) = opts.iter().find_map(|o| o.strip_prefix("id=")) {
                        extra.extend(["ID".to_string(), id.to_string()]);
                    }
                    if opts.contains(&"upgrade") {
                        extra.push("UPGRADE".into());
                    }
                    if let Some(a) = opts.iter().find_map(|o| o.strip_prefix("args=")) {
                        extra.push("ARGS".into());
                        extra.extend(a.split(',').map(str::to_string));
                    }
                    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
                    let got = exec(&mut c, kind, b.body.trim_end(), &refs);
                    pending.push((format!("{name}:{} ({kind})", b.line), b.line, got));
                }
                "result" => {
                    let unordered = opts.contains(&"unordered");
                    let expected = b.body.trim();
                    if pending.is_empty() {
                        failures.push(format!("{name}:{}: result block without a script before it", b.line));
                    }
                    for (at, _, got) in pending.drain(..) {
                        checked += 1;
                        let got = if unordered { canon::sort_results(&got) } else { got };
                        let expected = if unordered { canon::sort_results(expected) } else { expected.to_string() };
                        if !matches(&got, &expected) {
                            failures.push(format!("{at}\n  expected: {expected}\n  got:      {got}"));
                        }
                    }
                }
                _ => {} // `text`, `sh`: prose for the reader
            }
        }
        for (at, _, got) in pending {
            failures.push(format!("{at}: script without a result block (got {got})"));
        }
    }
    assert!(checked > 0, "no examples found in docs/");
    assert!(failures.is_empty(), "{} doc example(s) failed:\n{}", failures.len(), failures.join("\n"));
}
