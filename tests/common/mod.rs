//! Test harness: starts real `redis-server` processes with the module on free loopback
//! ports and stops them on drop. No mocks.
#![allow(dead_code)]

pub mod canon;
pub mod cluster;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The module under test: `RG_MODULE`, else the library cargo built for this profile.
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("RG_MODULE") {
        return PathBuf::from(p);
    }
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root.join("target"));
    let p = target.join(profile).join("librg.so");
    let build = if profile == "release" { "cargo build --release" } else { "cargo build" };
    assert!(p.exists(), "module not built: {} (run {build} first)", p.display());
    // `cargo test` does not rebuild the cdylib: refuse to test an old one.
    let built = std::fs::metadata(&p).and_then(|m| m.modified()).expect("module mtime");
    let mut dirs: Vec<PathBuf> = ["src", "engine/src", "stdlib/src", "lang-lua/src", "lang-js/src", "recipes/src"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            } else if entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t > built) {
                panic!("{} is newer than {}: run {build} first", entry.path().display(), p.display());
            }
        }
    }
    p
}

/// `REDIS_SERVER` (e.g. valkey-server), else redis-server.
pub fn server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    module_args: Vec<String>,
    /// Variables added to the server's environment (kept across restarts).
    env: Vec<(String, String)>,
}

impl Server {
    /// A server with the module loaded and `module_args` as its arguments.
    pub fn start(module_args: &[&str]) -> Server {
        Self::start_with(module_args, &[])
    }

    /// `extra` are redis-server options like `["--appendonly", "yes"]`.
    pub fn start_with(module_args: &[&str], extra: &[&str]) -> Server {
        Self::start_with_env(module_args, extra, &[])
    }

    /// `start_with`, with `env` added to the server's environment (also after `restart`).
    pub fn start_with_env(module_args: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("rg-test-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = Server {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            module_args: module_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut load = vec![module_path().display().to_string()];
        load.extend(self.module_args.iter().cloned());
        let mut cmd = Command::new(server_binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "server.log", "--enable-module-command", "yes", "--enable-debug-command", "yes"])
            .arg("--loadmodule")
            .args(&load)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.try_conn() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("redis-server exited at start ({status}); log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "redis-server did not answer PING; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A RESP2 connection.
    pub fn conn(&self) -> redis::Connection {
        let c = self.try_conn().expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        c
    }

    /// A RESP3 connection.
    pub fn conn3(&self) -> redis::Connection {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", self.port)).expect("client").get_connection().expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        c
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True if the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command given as words.
pub fn cmd(c: &mut redis::Connection, words: &[&str]) -> redis::Value {
    let mut q = redis::cmd(words[0]);
    for w in &words[1..] {
        q.arg(*w);
    }
    q.query::<redis::Value>(c).unwrap_or_else(error_value)
}

/// An error reply as the text value `(error) CODE detail`, for assertions.
pub fn error_value(e: redis::RedisError) -> redis::Value {
    let text = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    };
    redis::Value::SimpleString(format!("(error) {text}"))
}

/// RG.EXEC <lang> <code> [extra...], as canonical text.
pub fn exec(c: &mut redis::Connection, lang: &str, code: &str, extra: &[&str]) -> String {
    let mut q = redis::cmd("RG.EXEC");
    q.arg(lang).arg(code);
    for e in extra {
        q.arg(*e);
    }
    let v = q.query::<redis::Value>(c).unwrap_or_else(error_value);
    canon::fmt(&v)
}

/// Waits (up to 20 s) until `words` replies `expected` (canonical text).
pub fn eventually(c: &mut redis::Connection, words: &[&str], expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = canon::fmt(&cmd(c, words));
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{words:?}: expected {expected}, still {got}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 20 ms until it gives `Ok`, and returns that; fails after `secs`
/// with `what` and the last `Err` (which says how far things got).
pub fn wait_until<T>(secs: u64, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) => assert!(Instant::now() < deadline, "{what}: still {state}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while the server's main thread does not answer a PING within `within` (it is busy,
/// e.g. in DEBUG SLEEP). A raw socket, so that no client handshake waits on the server.
pub fn main_thread_busy(port: u16, within: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    s.set_read_timeout(Some(within)).expect("timeout");
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// Waits until a replica's link to its primary is up.
pub fn wait_for_link(r: &mut redis::Connection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !canon::fmt(&cmd(r, &["INFO", "replication"])).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica never connected to its primary");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until execution `id` has `status` (RG.GETEXECUTION), failing after `within`.
pub fn wait_status(c: &mut redis::Connection, id: &str, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let v = canon::fmt(&cmd(c, &["RG.GETEXECUTION", id]));
        if v.contains(&format!("\"status\", \"{status}\"")) {
            return;
        }
        assert!(Instant::now() < deadline, "execution {id} did not reach {status} within {within:?}: {v}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `code` with UNBLOCKING, lets it run, aborts it, and checks that it stopped within
/// a second with `execution aborted` in its results. `s` must have no time limit.
pub fn assert_abort_stops(c: &mut redis::Connection, lang: &str, code: &str) {
    let id = exec(c, lang, code, &["UNBLOCKING"]).trim_matches('"').to_string();
    wait_status(c, &id, "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(canon::fmt(&cmd(c, &["RG.ABORTEXECUTION", &id])), "OK");
    wait_status(c, &id, "aborted", Duration::from_millis(1000));
    assert!(start.elapsed() < Duration::from_millis(1000), "`{code}`: {:?}", start.elapsed());
    let results = canon::fmt(&cmd(c, &["RG.GETRESULTS", &id]));
    assert!(results.contains("execution aborted"), "`{code}`: {results}");
}

/// Waits (up to `secs`) until `sql` answers `expected` in PostgreSQL.
pub fn pg_eventually(pg: &testdb::Postgres, sql: &str, expected: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = pg.sql(sql);
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: expected {expected:?}, still {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node port that serves each slot range (first, last, port), from CLUSTER SLOTS.
pub fn slot_owners(c: &mut redis::Connection) -> Vec<(u16, u16, u16)> {
    let v: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(c).expect("CLUSTER SLOTS");
    v.into_iter()
        .filter_map(|r| {
            let redis::Value::Array(parts) = r else { return None };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i as u16),
                _ => None,
            };
            let redis::Value::Array(node) = &parts[2] else { return None };
            Some((int(&parts[0])?, int(&parts[1])?, int(&node[1])?))
        })
        .collect()
}

/// A key's cluster slot (CRC16 of its hashtag or of the key).
pub fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let k = match k.iter().position(|&b| b == b'{') {
        Some(o) => match k[o + 1..].iter().position(|&b| b == b'}') {
            Some(c) if c > 0 => &k[o + 1..o + 1 + c],
            _ => k,
        },
        None => k,
    };
    let mut crc: u16 = 0;
    for &b in k {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}
