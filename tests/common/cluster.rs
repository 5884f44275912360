//! A Redis Cluster of module-loaded servers for the cluster tests: N primaries (and R
//! replicas each) on free loopback ports below 55535 (a node's cluster bus listens on its
//! port + 10000), made with `redis-cli --cluster create`, as docs/cluster.md tells a reader
//! to. Every wait is on a condition (CLUSTER INFO, CLUSTER NODES, INFO replication,
//! RG.INFOCLUSTER), never a fixed sleep. Dropping the cluster kills every node by PID.

use super::{canon::fmt, cmd, wait_until, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::Duration;

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub primaries: usize,
    /// Replicas of each primary.
    pub replicas: usize,
    /// `cluster-node-timeout` in ms: how long a silent node takes to be failed over.
    pub node_timeout_ms: u64,
    /// The module's arguments (`name value` pairs), the same on every node.
    pub module_args: Vec<String>,
    /// More redis-server options, the same on every node.
    pub extra: Vec<String>,
    /// `requirepass` and `masterauth` of every node (and `-a` of redis-cli).
    pub password: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options { primaries: 3, replicas: 0, node_timeout_ms: 5000, module_args: Vec::new(), extra: Vec::new(), password: None }
    }
}

impl Options {
    pub fn primaries(mut self, n: usize) -> Options {
        self.primaries = n;
        self
    }
    pub fn replicas(mut self, n: usize) -> Options {
        self.replicas = n;
        self
    }
    pub fn node_timeout(mut self, ms: u64) -> Options {
        self.node_timeout_ms = ms;
        self
    }
    pub fn module_args(mut self, args: &[&str]) -> Options {
        self.module_args = args.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn extra(mut self, args: &[&str]) -> Options {
        self.extra = args.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn password(mut self, p: &str) -> Options {
        self.password = Some(p.to_string());
        self
    }
    pub fn start(self) -> Cluster {
        Cluster::start(self)
    }
}

/// One line of CLUSTER NODES.
#[derive(Clone, Debug)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The primary's id, for a replica.
    pub master: Option<String>,
    pub link: String,
    /// Slot ranges as printed (`0-5460`, `7`), migrations excluded.
    pub slots: Vec<String>,
}

impl NodeLine {
    pub fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }
    /// Flagged failing, being met or without an address.
    pub fn troubled(&self) -> bool {
        self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }
}

/// Parses CLUSTER NODES.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = w[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            Some(NodeLine {
                id: w[0].to_string(),
                port,
                flags: w[2].split(',').map(str::to_string).collect(),
                master: (w[3] != "-").then(|| w[3].to_string()),
                link: w[7].to_string(),
                slots: w[8..].iter().filter(|s| !s.starts_with('[')).map(|s| s.to_string()).collect(),
            })
        })
        .collect()
}

/// A port for a cluster node: free, below 55535, and with its bus port (+10000) free too.
fn cluster_port(taken: &[TcpListener]) -> (u16, TcpListener) {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port >= 55535 || taken.iter().any(|t| t.local_addr().map(|a| a.port()).ok() == Some(port + 10000)) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return (port, l);
        }
    }
}

/// The cluster options every node starts with.
fn node_args(opts: &Options) -> Vec<String> {
    let mut a: Vec<String> = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout"].iter().map(|s| s.to_string()).collect();
    a.push(opts.node_timeout_ms.to_string());
    if let Some(p) = &opts.password {
        a.extend(["--masterauth".to_string(), p.clone()]);
    }
    a.extend(opts.extra.iter().cloned());
    a
}

/// Starts a module-loaded server on `port` (see `Server::start_with`).
fn start_node(port: u16, module_args: &[String], extra: &[String]) -> Server {
    let dir = std::env::temp_dir().join(format!("rg-test-{}-{}", std::process::id(), port));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut s = Server { child: None, port, dir, extra: extra.to_vec(), module_args: module_args.to_vec(), env: Vec::new() };
    s.spawn();
    s
}

pub struct Cluster {
    /// Every node, primaries and replicas, in the order given to `redis-cli --cluster create`.
    pub nodes: Vec<Server>,
    /// Node ids (CLUSTER MYID), by node index.
    pub ids: Vec<String>,
    pub opts: Options,
}

impl Cluster {
    /// `primaries` primaries, no replicas, default options.
    pub fn new(primaries: usize) -> Cluster {
        Options::default().primaries(primaries).start()
    }

    pub fn options() -> Options {
        Options::default()
    }

    pub fn start(opts: Options) -> Cluster {
        let total = opts.primaries * (1 + opts.replicas);
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..total {
            let (p, l) = cluster_port(&held);
            held.push(l);
            ports.push(p);
        }
        drop(held);
        let args = node_args(&opts);
        let module_args = opts.module_args.clone();
        let handles: Vec<_> = ports
            .iter()
            .map(|&p| {
                let (m, a) = (module_args.clone(), args.clone());
                std::thread::spawn(move || start_node(p, &m, &a))
            })
            .collect();
        let nodes: Vec<Server> = handles.into_iter().map(|h| h.join().expect("a node did not start")).collect();
        let mut cluster = Cluster { nodes, ids: Vec::new(), opts };
        if let Some(p) = cluster.opts.password.clone() {
            // requirepass is set once the node answers (the shared harness checks a new
            // server with a PING that has no password); masterauth came on the command line.
            for n in &cluster.nodes {
                let mut c = n.conn();
                assert_eq!(fmt(&cmd(&mut c, &["CONFIG", "SET", "requirepass", &p])), "OK");
            }
        }
        cluster.ids = (0..total).map(|i| fmt(&cmd(&mut cluster.conn(i), &["CLUSTER", "MYID"])).trim_matches('"').to_string()).collect();
        let mut cli = std::process::Command::new("redis-cli");
        if let Some(p) = &cluster.opts.password {
            cli.args(["-a", p, "--no-auth-warning"]);
        }
        cli.args(["--cluster", "create"]).args(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        cli.args(["--cluster-replicas", &cluster.opts.replicas.to_string(), "--cluster-yes"]);
        let out = cli.output().expect("redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        cluster.wait_ready();
        cluster
    }

    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// `<id> (<ip:port>)`, as the module's errors name a shard.
    pub fn describe(&self, i: usize) -> String {
        format!("{} ({})", self.ids[i], self.addr(i))
    }

    pub fn url(&self, i: usize) -> String {
        match &self.opts.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.nodes[i].port),
            None => format!("redis://127.0.0.1:{}/", self.nodes[i].port),
        }
    }

    /// A RESP2 connection to node `i` (authenticated when the cluster has a password).
    pub fn conn(&self, i: usize) -> redis::Connection {
        let c = redis::Client::open(self.url(i)).expect("client").get_connection_with_timeout(Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect to node {i} ({}): {e}", self.addr(i)));
        c.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        c
    }

    /// Runs a command on node `i` (canonical text of the reply).
    pub fn cmd(&self, i: usize, words: &[&str]) -> String {
        fmt(&cmd(&mut self.conn(i), words))
    }

    /// RG.EXEC on node `i` (canonical text).
    pub fn exec(&self, i: usize, lang: &str, code: &str, extra: &[&str]) -> String {
        super::exec(&mut self.conn(i), lang, code, extra)
    }

    /// Nodes whose process runs.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].alive()).collect()
    }

    fn any_live(&mut self) -> usize {
        *self.live().first().expect("no node is running")
    }

    /// CLUSTER NODES as node `i` sees it.
    pub fn view(&self, i: usize) -> Vec<NodeLine> {
        let v = cmd(&mut self.conn(i), &["CLUSTER", "NODES"]);
        match v {
            redis::Value::BulkString(b) => parse_nodes(&String::from_utf8_lossy(&b)),
            redis::Value::VerbatimString { text, .. } => parse_nodes(&text),
            other => panic!("CLUSTER NODES on node {i}: {}", fmt(&other)),
        }
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port == port).unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn index_of_id(&self, id: &str) -> usize {
        self.ids.iter().position(|x| x == id).unwrap_or_else(|| panic!("no node with id {id}"))
    }

    /// Primaries that serve slots and run, by index (sorted).
    pub fn primaries(&mut self) -> Vec<usize> {
        let me = self.any_live();
        let mut p: Vec<usize> = self.view(me).iter().filter(|n| n.is_primary() && !n.slots.is_empty() && !n.troubled()).map(|n| self.index_of_port(n.port)).collect();
        p.sort();
        p
    }

    /// The replicas of primary `i` (running or not), by index.
    pub fn replicas_of(&mut self, i: usize) -> Vec<usize> {
        let me = self.any_live();
        let id = self.ids[i].clone();
        let mut r: Vec<usize> = self.view(me).iter().filter(|n| n.master.as_deref() == Some(id.as_str())).map(|n| self.index_of_port(n.port)).collect();
        r.sort();
        r
    }

    /// Ids of the primaries that serve slots.
    pub fn primary_ids(&mut self) -> BTreeSet<String> {
        self.primaries().into_iter().map(|i| self.ids[i].clone()).collect()
    }

    /// The node (index) that serves `key`, from CLUSTER SLOTS; checked against CLUSTER KEYSLOT.
    pub fn node_of_key(&mut self, key: &str) -> usize {
        let me = self.any_live();
        let slot = super::slot(key);
        self.node_of_slot(me, slot)
    }

    fn node_of_slot(&self, asked: usize, slot: u16) -> usize {
        let owners = super::slot_owners(&mut self.conn(asked));
        let port = owners.iter().find(|(a, b, _)| *a <= slot && slot <= *b).map(|(_, _, p)| *p).unwrap_or_else(|| panic!("no owner of slot {slot}"));
        self.index_of_port(port)
    }

    /// A slot-owner map (slot ranges → node index) to look many keys up at once.
    pub fn owners(&mut self) -> Vec<(u16, u16, usize)> {
        let me = self.any_live();
        super::slot_owners(&mut self.conn(me)).into_iter().map(|(a, b, p)| (a, b, self.index_of_port(p))).collect()
    }

    /// CLUSTER KEYSLOT of `key`, asked of a node.
    pub fn keyslot(&mut self, key: &str) -> u16 {
        let me = self.any_live();
        let n = fmt(&cmd(&mut self.conn(me), &["CLUSTER", "KEYSLOT", key]));
        n.parse().unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {n}"))
    }

    /// Writes each command (`[COMMAND, key, ...]`) on the primary that serves its key,
    /// pipelined per node.
    pub fn populate(&mut self, commands: &[Vec<String>]) {
        let owners = self.owners();
        let mut per: BTreeMap<usize, Vec<&Vec<String>>> = BTreeMap::new();
        for c in commands {
            let s = super::slot(&c[1]);
            let n = owners.iter().find(|(a, b, _)| *a <= s && s <= *b).map(|(_, _, n)| *n).expect("slot owner");
            per.entry(n).or_default().push(c);
        }
        for (n, cmds) in per {
            let mut c = self.conn(n);
            for chunk in cmds.chunks(5000) {
                let mut p = redis::pipe();
                for words in chunk {
                    let mut q = redis::cmd(&words[0]);
                    for w in &words[1..] {
                        q.arg(w.as_str());
                    }
                    p.add_command(q).ignore();
                }
                p.query::<()>(&mut c).unwrap_or_else(|e| panic!("populate node {n}: {e}"));
            }
        }
    }

    /// Waits until every running replica has processed its primary's writes: its
    /// `slave_repl_offset` reaches the primary's `master_repl_offset` (not WAIT: Valkey 8
    /// answered WAIT while a replica just synced had not had the writes streamed yet).
    pub fn wait_replicated(&mut self) {
        let field = |info: &str, name: &str| -> u64 { info.lines().find_map(|l| l.trim().strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0) };
        for p in self.primaries() {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut self.conn(p)).expect("INFO");
            let target = field(&info, "master_repl_offset:");
            let replicas: Vec<usize> = self.replicas_of(p).into_iter().filter(|&r| self.nodes[r].alive()).collect();
            for r in replicas {
                let mut c = self.conn(r);
                wait_until(30, &format!("replica {r} to reach offset {target} of primary {p}"), || {
                    let info: String = redis::cmd("INFO").arg("replication").query(&mut c).map_err(|e| e.to_string())?;
                    let at = field(&info, "slave_repl_offset:");
                    if at >= target { Ok(()) } else { Err(format!("at {at}")) }
                });
            }
        }
    }

    /// FLUSHALL on every primary.
    pub fn flushall(&mut self) {
        for p in self.primaries() {
            assert_eq!(self.cmd(p, &["FLUSHALL"]), "OK");
        }
    }

    /// RG.CONFIGSET on every running node.
    pub fn config_set(&mut self, name: &str, value: &str) {
        for i in self.live() {
            let r = self.cmd(i, &["RG.CONFIGSET", name, value]);
            assert_eq!(r, "OK", "RG.CONFIGSET {name} {value} on node {i}");
        }
    }

    /// `used_memory` of INFO memory on node `i`.
    pub fn used_memory(&self, i: usize) -> u64 {
        let info: String = redis::cmd("INFO").arg("memory").query(&mut self.conn(i)).expect("INFO memory");
        info.lines().find_map(|l| l.trim().strip_prefix("used_memory:")).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no used_memory in {info}"))
    }

    /// Kills primary `i` with SIGKILL (by PID) and waits until one of its replicas serves
    /// its slots and the cluster is ok again; returns that replica's index.
    pub fn kill_primary(&mut self, i: usize) -> usize {
        let replicas = self.replicas_of(i);
        assert!(!replicas.is_empty(), "node {i} has no replica to take over");
        self.nodes[i].stop();
        self.wait_takeover(i, &replicas)
    }

    /// Waits until one of `replicas` serves the slots `old` served and the cluster is ready.
    pub fn wait_takeover(&mut self, old: usize, replicas: &[usize]) -> usize {
        let old_id = self.ids[old].clone();
        let timeout = 30 + 4 * self.opts.node_timeout_ms / 1000;
        let new = wait_until(timeout, &format!("a replica of node {old} to take over"), || {
            for &r in replicas {
                if !self.nodes[r].alive() {
                    continue;
                }
                let view = self.view(r);
                let me = view.iter().find(|n| n.flags.iter().any(|f| f == "myself")).ok_or("no myself line")?;
                if me.is_primary() && !me.slots.is_empty() {
                    return Ok(r);
                }
            }
            Err(format!("no replica of {old_id} serves slots yet"))
        });
        self.wait_ready();
        new
    }

    /// Promotes replica `r` with CLUSTER FAILOVER (its primary must run) and waits until it
    /// serves the slots and the cluster is ready.
    pub fn failover(&mut self, r: usize) {
        assert_eq!(self.cmd(r, &["CLUSTER", "FAILOVER"]), "OK");
        self.wait_promoted(r);
    }

    /// Waits until node `r` is a primary with slots, then for the cluster to be ready.
    pub fn wait_promoted(&mut self, r: usize) {
        wait_until(30 + 4 * self.opts.node_timeout_ms / 1000, &format!("node {r} to become a primary"), || {
            let view = self.view(r);
            let me = view.iter().find(|n| n.flags.iter().any(|f| f == "myself")).ok_or("no myself line")?;
            if me.is_primary() && !me.slots.is_empty() {
                Ok(())
            } else {
                Err(format!("flags {:?}, slots {:?}", me.flags, me.slots))
            }
        });
        self.wait_ready();
    }

    /// Waits until every running node: reports cluster_state:ok with every slot served,
    /// sees every other running node connected and agrees on who serves which slots; every
    /// running replica's link to its primary is up; and the module on every running node
    /// knows every serving primary (RG.REFRESHCLUSTER, then RG.INFOCLUSTER names them).
    pub fn wait_ready(&mut self) {
        let live = self.live();
        let ports: BTreeSet<u16> = live.iter().map(|&i| self.nodes[i].port).collect();
        let timeout = 30 + 4 * self.opts.node_timeout_ms / 1000;
        wait_until(timeout, "the cluster to be ready", || {
            let mut layouts = BTreeSet::new();
            for &i in &live {
                let info = fmt(&cmd(&mut self.conn(i), &["CLUSTER", "INFO"]));
                if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                    return Err(format!("node {i}: {info}"));
                }
                let view = self.view(i);
                for p in &ports {
                    match view.iter().find(|n| n.port == *p) {
                        None => return Err(format!("node {i} does not know port {p} yet")),
                        Some(n) if n.troubled() => return Err(format!("node {i} sees port {p} as {:?}", n.flags)),
                        Some(n) if !n.flags.iter().any(|f| f == "myself") && n.link != "connected" => return Err(format!("node {i}: link to port {p} is {}", n.link)),
                        _ => {}
                    }
                }
                // Every running node serves slots or replicates a primary that does (a node
                // redis-cli is about to make a replica is a primary without slots at first).
                for n in view.iter().filter(|n| ports.contains(&n.port)) {
                    let serves = n.is_primary() && !n.slots.is_empty();
                    let replicates = n.master.as_ref().is_some_and(|m| view.iter().any(|p| &p.id == m && p.is_primary() && !p.slots.is_empty()));
                    if !serves && !replicates {
                        return Err(format!("node {i} sees port {} as neither serving slots nor a replica: {:?}", n.port, n.flags));
                    }
                }
                let mut layout: Vec<String> = view.iter().filter(|n| n.is_primary() && !n.slots.is_empty()).map(|n| format!("{} {}", n.id, n.slots.join(" "))).collect();
                layout.sort();
                layouts.insert(layout);
                let me = view.iter().find(|n| n.flags.iter().any(|f| f == "myself")).ok_or("no myself line")?;
                let repl = fmt(&cmd(&mut self.conn(i), &["INFO", "replication"]));
                if !me.is_primary() {
                    // Synced: a replica whose full sync has not happened yet says its link is
                    // up on some servers while its primary's writes do not reach it.
                    if !repl.contains("master_link_status:up") || !repl.contains("master_sync_in_progress:0") {
                        return Err(format!("node {i}: replica link not up or still syncing"));
                    }
                } else {
                    let replicas = view.iter().filter(|n| n.master.as_deref() == Some(me.id.as_str()) && ports.contains(&n.port)).count();
                    let online = repl.matches("state=online").count();
                    if online != replicas {
                        return Err(format!("node {i}: {online} replicas online of {replicas}"));
                    }
                }
            }
            if layouts.len() != 1 {
                return Err(format!("nodes disagree on the slots: {layouts:?}"));
            }
            Ok(())
        });
        let primaries = self.primary_ids();
        for &i in &live {
            let mut c = self.conn(i);
            wait_until(20, &format!("the module on node {i} to know every primary"), || {
                let refresh = fmt(&cmd(&mut c, &["RG.REFRESHCLUSTER"]));
                if refresh.contains("unknown command") {
                    return Ok(()); // not built yet: the tests that need it fail on their own
                }
                let info = fmt(&cmd(&mut c, &["RG.INFOCLUSTER"]));
                let known = hex_ids(&info);
                match primaries.iter().find(|p| !known.contains(*p)) {
                    None => Ok(()),
                    Some(p) => Err(format!("RG.INFOCLUSTER lacks {p}: {info}")),
                }
            });
        }
    }
}

/// Every 40-hex-character word in a text (node ids).
pub fn hex_ids(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_ascii_hexdigit()).filter(|w| w.len() == 40).map(str::to_string).collect()
}

/// Writes each command on a standalone server, pipelined.
pub fn populate_standalone(s: &Server, commands: &[Vec<String>]) {
    let mut c = s.conn();
    for chunk in commands.chunks(5000) {
        let mut p = redis::pipe();
        for words in chunk {
            let mut q = redis::cmd(&words[0]);
            for w in &words[1..] {
                q.arg(w.as_str());
            }
            p.add_command(q).ignore();
        }
        p.query::<()>(&mut c).expect("populate standalone");
    }
}

/// A command as owned words.
pub fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}
