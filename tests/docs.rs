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
    let server = Server::start(&[]);
    let mut c = server.conn();
    let db = server.dir.join("gears-docs.db");
    let db_path = db.display().to_string();
    let (mut failures, mut checked) = (Vec::new(), 0);
    for file in files {
        let md = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        cmd(&mut c, &["FLUSHALL"]);
        let mut pending: Vec<(String, usize, String)> = Vec::new(); // (where, line, reply)
        for b in blocks(&md) {
            let mut info = b.info.split_whitespace();
            let kind = info.next().unwrap_or("");
            let opts: Vec<&str> = info.collect();
            let eventually = opts.contains(&"eventually");
            match kind {
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
                _ => {}
            }
        }
        for (at, _, got) in pending {
            failures.push(format!("{at}: script without a result block (got {got})"));
        }
    }
    assert!(checked > 0, "no examples found in docs/");
    assert!(failures.is_empty(), "{} doc example(s) failed:\n{}", failures.len(), failures.join("\n"));
}
