//! A private MongoDB-compatible server: SecantusDB (`pip install secantusdb`), which speaks
//! the MongoDB wire protocol, run as `secantusd-py --standalone` on its own storage
//! directory. It runs multi-document transactions on its single node. Test commands are on
//! (loopback only): tests inject errors with `configureFailPoint` / `failCommand`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Mongo {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// `secantusd-py` from `SECANTUSD`, else on PATH.
fn binary() -> PathBuf {
    if let Ok(b) = std::env::var("SECANTUSD") {
        return PathBuf::from(b);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("secantusd-py")).find(|p| p.is_file()).expect("secantusd-py, a MongoDB-compatible server, on PATH: pip install secantusdb")
}

impl Mongo {
    /// Starts a server on a free loopback port with fresh storage.
    pub fn start() -> Mongo {
        let mut m = Mongo { port: crate::free_port(), dir: crate::temp_dir("mongo"), child: None };
        m.start_again();
        m
    }

    /// Starts the (stopped) server again on the same port and storage.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = File::options().create(true).append(true).open(self.dir.join("log")).expect("log file");
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--standalone", "--enable-test-commands", "--log-level", "WARNING", "--storage-path"])
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start secantusd-py (pip install secantusdb): {e}"));
        let pid = child.id();
        self.child = Some(child);
        if !crate::wait_port(self.port, Duration::from_secs(60)) {
            self.stop();
            panic!("secantusd-py (pid {pid}) did not listen on port {}: {}", self.port, std::fs::read_to_string(self.dir.join("log")).unwrap_or_default());
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_pid(child.id(), Duration::from_secs(10));
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
