//! Runs every example in docs/*.md against a real server: `redis` blocks run commands
//! (a line `COMMAND args -> reply` also checks the reply), `lua`/`js` blocks are sent with
//! RG.EXEC, and a `result` block holds the reply every script block since the previous
//! result must give (`result unordered` sorts the results first).

mod common;
include!("common/cases.rs");

use common::{canon, cmd, exec, Server};

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
            match kind {
                "redis" => {
                    // `COMMAND args -> reply` lines also check the reply.
                    for line in b.body.lines().filter(|l| !l.trim().is_empty()) {
                        let (command, expected) = match line.rsplit_once(" -> ") {
                            Some((c, e)) => (c, Some(e.trim())),
                            None => (line, None),
                        };
                        let w = words(command);
                        let refs: Vec<&str> = w.iter().map(String::as_str).collect();
                        let r = canon::fmt(&cmd(&mut c, &refs));
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
                "lua" | "js" => {
                    let mut extra: Vec<String> = Vec::new();
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
