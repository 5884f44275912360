//! A private PostgreSQL cluster (`initdb` + `pg_ctl` from Debian's postgresql package, run
//! as the `postgres` user when the tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BIN") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()).unwrap_or_default();
    versions.sort();
    versions.pop().expect("PostgreSQL server binaries (apt-get install postgresql) under /usr/lib/postgresql/*/bin, or PG_BIN")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

/// Runs a PostgreSQL binary, as `postgres` when we are root (PostgreSQL refuses root).
fn run(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
}

impl Postgres {
    /// Starts a cluster with trust authentication for user `postgres`, database `postgres`.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = crate::temp_dir("pg");
        if is_root() {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        }
        let data = dir.join("data");
        let out = run(&bin.join("initdb"), &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = Postgres { port: crate::free_port(), dir, bin, running: false };
        pg.start_again();
        pg
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        let data = self.dir.join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", self.port, self.dir.display());
        let log = self.dir.join("log");
        let out = run(&self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "-t", "30", "start"]);
        assert!(out.status.success(), "pg_ctl start: {} {}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        self.running = true;
    }

    /// Stops the server (fast mode: connections are closed at once).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.dir.join("data");
        let out = run(&self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "-t", "30", "stop"]);
        if !out.status.success() {
            if let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid")).ok().and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok())) {
                crate::stop_pid(pid, Duration::from_secs(5));
            }
        }
        self.running = false;
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let out = Command::new(psql).args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url(), "-c", sql]).output().expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
