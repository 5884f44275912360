//! A private MariaDB server (`mariadb-install-db` + `mariadbd` from Debian's mariadb-server
//! package), run as a child process with its own data directory, socket and loopback port,
//! and a database `test` that `root` (no password) reaches over TCP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct MariaDb {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// Options of both the bootstrap and the server: small InnoDB files and buffers, and a
/// private directory for temporary tables (servers sharing /tmp can pick the same names).
fn common(dir: &Path) -> Vec<String> {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    vec![format!("--tmpdir={}", tmp.display()), "--innodb-log-file-size=8M".into(), "--innodb-buffer-pool-size=32M".into()]
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let dir = crate::temp_dir("mariadb");
        let data = dir.join("data");
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", &format!("--datadir={}", data.display()), "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root", "--skip-name-resolve"])
            .args(common(&dir))
            .output()
            .expect("mariadb-install-db (apt-get install mariadb-server)");
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("mariadb-install-db: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        let mut db = MariaDb { port: 0, dir, child: None };
        // A port found free may be taken before the server binds it: then try another.
        for attempt in 0.. {
            db.port = crate::free_port();
            match db.spawn() {
                Ok(()) => break,
                Err(e) if attempt < 4 => eprintln!("mariadbd on port {}: {e}; trying another port", db.port),
                Err(e) => panic!("mariadbd: {e}"),
            }
        }
        db.client(None, "CREATE DATABASE test");
        db
    }

    /// Starts the server and waits until it is this one that answers on the port.
    fn spawn(&mut self) -> Result<(), String> {
        let d = &self.dir;
        let mut child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("log").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=2", "--skip-innodb-doublewrite"])
            // Without a configuration file the server would default to latin1.
            .args(["--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"])
            .args(common(d))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd (apt-get install mariadb-server)");
        let log = || std::fs::read_to_string(d.join("log")).unwrap_or_default();
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}): {}", log()));
            }
            if crate::wait_port(self.port, Duration::from_millis(100)) {
                // Something answers; make sure it is our server (same data directory).
                let out = self.run(None, "SELECT @@datadir");
                let ours = String::from_utf8_lossy(&out.stdout).trim().trim_end_matches('/') == d.join("data").to_str().unwrap();
                if out.status.success() && ours && child.try_wait().is_ok_and(|s| s.is_none()) {
                    self.child = Some(child);
                    return Ok(());
                }
            }
        }
        crate::stop_pid(child.id(), Duration::from_secs(10));
        let _ = child.wait();
        Err(format!("not ready within 60 s: {}", log()))
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn().unwrap_or_else(|e| panic!("mariadbd: {e}"));
        }
    }

    /// Stops the server (SIGTERM: a clean shutdown that closes connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_pid(child.id(), Duration::from_secs(30));
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    fn run(&self, db: Option<&str>, sql: &str) -> std::process::Output {
        Command::new("mariadb")
            .args(["--no-defaults", "--protocol=TCP", "--default-character-set=utf8mb4", "-N", "-B", "-h127.0.0.1", &format!("-P{}", self.port), "-uroot"])
            .args(db)
            .args(["-e", sql])
            .output()
            .expect("mariadb client")
    }

    fn client(&self, db: Option<&str>, sql: &str) -> String {
        let out = self.run(db, sql);
        assert!(out.status.success(), "mariadb {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Runs SQL in database `test` with the mariadb client and returns its batch output
    /// (tab-separated columns, no header).
    pub fn sql(&self, sql: &str) -> String {
        self.client(Some("test"), sql)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
