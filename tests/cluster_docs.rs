//! Runs the examples of docs/cluster.md on a 3-primary cluster, as a reader would on the
//! page's cluster (ports 7000, 7001, 7002 made with `redis-cli --cluster create`):
//!
//! - `redis` lines run on the node of 7000 and follow `MOVED` redirections, as
//!   `redis-cli -c -p 7000` does; `COMMAND args -> reply` also checks the reply (canonical
//!   form, a trailing `...` matches any rest, a leading `~` any text containing the rest).
//! - `lua`/`js` blocks are sent with RG.EXEC to 7000, or to the node the option
//!   `port=7001`/`port=7002` names; options `args=a,b`, `id=<id>`, `upgrade` as in
//!   tests/docs.rs. The next `result` block holds their reply (`result unordered` sorts the
//!   results of `run()`).
//! - `text` and `sh` blocks are not run (the setup commands, synopses, error formats).
//!
//! The page's node `7000 + k` is the node that serves the k-th slot range (0-5460,
//! 5461-10922, 10923-16383, as `redis-cli --cluster create` gives them out). Replies are
//! compared after putting the page's addresses (`127.0.0.1:7000`, `"port", 7000`) and node
//! ids (the page lists them) in place of the test nodes' own.
//!
//! tests/docs.rs runs every other page of docs/ on a single server.

mod common;

use common::cluster::Cluster;
use common::{canon, cmd};

const PAGE: &str = "cluster.md";
/// The node ids the page shows for 7000, 7001, 7002.
const IDS: [&str; 3] = ["dbaeff3af76fe8f5d069cae7db9678e07123b435", "7cd3baace595fc6051cf99b2f7307c4cd04c426e", "34f697c0335b4ed70ccdd01087bedc5894841338"];

/// `...` at the end: starts with; `~` at the start: contains; otherwise equal.
fn matches(got: &str, expected: &str) -> bool {
    if let Some(part) = expected.strip_prefix('~') {
        return got.contains(part);
    }
    match expected.strip_suffix("...") {
        Some(prefix) => got.starts_with(prefix),
        None => got == expected,
    }
}

/// Block kinds and the options each takes (`x=`: with a value).
const KINDS: &[(&str, &[&str])] = &[("redis", &[]), ("lua", &["args=", "id=", "upgrade", "port="]), ("js", &["args=", "id=", "upgrade", "port="]), ("result", &["unordered"]), ("text", &[]), ("sh", &[])];

fn unknown_kind(kind: &str, opts: &[&str]) -> Option<String> {
    let Some((_, allowed)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return Some(format!("unknown block kind `{kind}`"));
    };
    opts.iter().find(|o| !allowed.iter().any(|a| if a.ends_with('=') { o.starts_with(*a) } else { **o == *a })).map(|o| format!("`{kind}` block with unknown option `{o}`"))
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

/// Splits a `redis` line into words (double quotes group words).
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

struct Page {
    cluster: Cluster,
    /// Node index of the page's 7000, 7001, 7002.
    nodes: [usize; 3],
}

impl Page {
    /// A reply with the page's ids and addresses in place of the test nodes'.
    fn normalize(&self, text: &str) -> String {
        let mut t = text.to_string();
        for (k, &n) in self.nodes.iter().enumerate() {
            let port = self.cluster.nodes[n].port;
            t = t.replace(&self.cluster.ids[n], IDS[k]);
            t = t.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{}", 7000 + k));
            t = t.replace(&format!("\"port\", {port}"), &format!("\"port\", {}", 7000 + k));
        }
        t
    }

    /// A command run as `redis-cli -c -p 7000` runs it.
    fn redis(&self, w: &[&str]) -> String {
        let mut node = self.nodes[0];
        for _ in 0..3 {
            let r = canon::fmt(&cmd(&mut self.cluster.conn(node), w));
            match r.strip_prefix("(error) MOVED ") {
                Some(rest) => {
                    let port: u16 = rest.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("MOVED without a port: {r}"));
                    node = self.cluster.nodes.iter().position(|n| n.port == port).unwrap_or_else(|| panic!("MOVED to an unknown node: {r}"));
                }
                None => return self.normalize(&r),
            }
        }
        panic!("{w:?}: redirected too many times");
    }
}

#[test]
fn every_example_of_the_cluster_page_runs_on_a_cluster() {
    let mut cluster = Cluster::new(3);
    let nodes = [0u16, 5461, 10923].map(|slot| {
        let owners = cluster.owners();
        owners.iter().find(|(a, b, _)| *a <= slot && slot <= *b).map(|(_, _, n)| *n).expect("slot owner")
    });
    let page = Page { cluster, nodes };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(PAGE);
    let md = std::fs::read_to_string(&path).expect("docs/cluster.md");
    let (mut failures, mut checked) = (Vec::new(), 0);
    let mut pending: Vec<(String, String)> = Vec::new(); // (where, reply)
    for b in blocks(&md) {
        let mut info = b.info.split_whitespace();
        let kind = info.next().unwrap_or("");
        let opts: Vec<&str> = info.collect();
        if let Some(why) = unknown_kind(kind, &opts) {
            failures.push(format!("{PAGE}:{}: {why}", b.line));
            continue;
        }
        match kind {
            "redis" => {
                for line in b.body.lines().filter(|l| !l.trim().is_empty()) {
                    let (command, expected) = match line.rsplit_once(" -> ") {
                        Some((c, e)) => (c, Some(e.trim())),
                        None => (line, None),
                    };
                    let w = words(command);
                    let refs: Vec<&str> = w.iter().map(String::as_str).collect();
                    let r = page.redis(&refs);
                    match expected {
                        Some(e) => {
                            checked += 1;
                            if !matches(&r, e) {
                                failures.push(format!("{PAGE}:{}: `{command}`\n  expected: {e}\n  got:      {r}", b.line));
                            }
                        }
                        None if r.starts_with("(error)") => failures.push(format!("{PAGE}:{}: setup `{line}` failed: {r}", b.line)),
                        None => {}
                    }
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
                let node = match opts.iter().find_map(|o| o.strip_prefix("port=")) {
                    Some(p) => match p.parse::<usize>().ok().and_then(|p| p.checked_sub(7000)).filter(|k| *k < 3) {
                        Some(k) => page.nodes[k],
                        None => {
                            failures.push(format!("{PAGE}:{}: port={p} is not one of 7000, 7001, 7002", b.line));
                            continue;
                        }
                    },
                    None => page.nodes[0],
                };
                let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
                let got = page.normalize(&page.cluster.exec(node, kind, b.body.trim_end(), &refs));
                pending.push((format!("{PAGE}:{} ({kind})", b.line), got));
            }
            "result" => {
                let unordered = opts.contains(&"unordered");
                let expected = b.body.trim();
                if pending.is_empty() {
                    failures.push(format!("{PAGE}:{}: result block without a script before it", b.line));
                }
                for (at, got) in pending.drain(..) {
                    checked += 1;
                    let got = if unordered { canon::sort_results(&got) } else { got };
                    let expected = if unordered { canon::sort_results(expected) } else { expected.to_string() };
                    if !matches(&got, &expected) {
                        failures.push(format!("{at}\n  expected: {expected}\n  got:      {got}"));
                    }
                }
            }
            _ => {} // `text`, `sh`: for the reader
        }
    }
    for (at, got) in pending {
        failures.push(format!("{at}: script without a result block (got {got})"));
    }
    assert!(checked > 20, "only {checked} examples found in docs/{PAGE}");
    println!("{checked} examples of docs/{PAGE} checked");
    assert!(failures.is_empty(), "{} example(s) of docs/{PAGE} failed:\n{}", failures.len(), failures.join("\n"));
}
