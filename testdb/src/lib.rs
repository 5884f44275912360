//! Real database servers for tests, each started in its own temporary directory on a free
//! loopback port and stopped (by its PID) when dropped. Nothing here relies on a server
//! the machine may already run.

mod postgres;
mod mariadb;
mod mongo;

pub use mariadb::MariaDb;
pub use mongo::Mongo;
pub use postgres::Postgres;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A fresh temporary directory for one server.
pub fn temp_dir(kind: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!("rg-{kind}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Waits until something accepts connections on `port`.
pub fn wait_port(port: u16, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Sends SIGTERM then, after `grace`, SIGKILL to `pid`, and waits for it to go.
pub fn stop_pid(pid: u32, grace: Duration) {
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists() && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let end = Instant::now() + grace;
    while alive() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive() {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}
