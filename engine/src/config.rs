//! Settings (`rg.*`), shared by the module config, `RG.CONFIGGET/SET` and `configGet()`,
//! and the recipes' connections: `connection.<name>` (a URL, secret: only ever shown
//! masked, or a reference `env:NAME` / `file:/path` to where the URL is) and
//! `connection.<name>.users` (who may use it).
//!
//! Connections come from two places. Module arguments are the defaults, kept as given at
//! load. Those set at run time (`RG.CONFIGSET`, and what the primary, the AOF or the RDB
//! sends) win over them, and are the ones saved and replicated, so a restart or a failover
//! changes nothing.

mod connection;

pub use connection::{is_reference, redact, resolve, secrets, ConnectionUsers};
use connection::{check_reference, unencoded_char};
use parking_lot::RwLock;
use std::collections::BTreeMap;

/// A known setting: its name (without the `rg.` prefix), default, and how it is checked.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub min: i64,
    pub max: i64,
    /// Only settable at load time (module arguments).
    pub load_time_only: bool,
    pub help: &'static str,
}

pub const SETTINGS: &[Setting] = &[
    Setting { name: "execution-threads", default: "2", min: 1, max: 64, load_time_only: true, help: "worker threads that run scripts" },
    Setting { name: "max-executions", default: "1000", min: 1, max: 1_000_000, load_time_only: false, help: "executions kept; the oldest finished ones are evicted beyond it" },
    Setting { name: "script-timeout", default: "5000", min: 0, max: 3_600_000, load_time_only: false, help: "ms a single call into script code may run (0 = no limit)" },
    Setting { name: "lua-memory-limit", default: "268435456", min: 0, max: i64::MAX, load_time_only: false, help: "bytes each Lua runtime may allocate (0 = no limit)" },
    Setting { name: "js-memory-limit", default: "268435456", min: 0, max: i64::MAX, load_time_only: false, help: "bytes each JavaScript runtime may allocate (0 = no limit)" },
    Setting { name: "keys-batch-size", default: "500", min: 1, max: 1_000_000, load_time_only: false, help: "keys read per lock acquisition by KeysReader" },
    Setting { name: "interpreters-memory-limit", default: "1073741824", min: 0, max: i64::MAX, load_time_only: false, help: "bytes all interpreter instances together may hold; idle ones are dropped beyond it, new ones refused (0 = no limit)" },
    Setting { name: "max-executions-memory", default: "268435456", min: 0, max: i64::MAX, load_time_only: false, help: "bytes the results of kept executions may take; the oldest finished ones are evicted beyond it (0 = no limit)" },
    Setting { name: "max-script-size", default: "1048576", min: 0, max: 536_870_912, load_time_only: false, help: "bytes a script or package source may have (0 = no limit)" },
    Setting { name: "execution-max-idle-time", default: "5000", min: 100, max: 3_600_000, load_time_only: false, help: "ms a cluster execution waits for a silent shard before it fails" },
    Setting { name: "cluster-batch-size", default: "1000", min: 1, max: 1_000_000, load_time_only: false, help: "records per message sent to another shard" },
];

/// The names of the known settings, for error messages.
fn known_settings() -> String {
    SETTINGS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("'{name}' must be an integer between {min} and {max}, got '{value}'")]
    OutOfRange { name: String, value: String, min: i64, max: i64 },
    #[error("'{0}' can only be set at load time (module arguments)")]
    LoadTimeOnly(String),
    #[error("bad connection setting '{0}': use connection.<name> (its URL, or env:<VARIABLE> or file:<absolute path> holding it) or connection.<name>.users (who may use it), with a <name> of letters, digits, '-' or '_'")]
    BadConnectionName(String),
    #[error("'{0}' must be a connection URL, got an empty value (an empty value unsets a connection set at run time)")]
    EmptyConnection(String),
    /// Never carries the URL: it holds a password.
    #[error("'{name}': the URL has a raw '{ch}' in its user name or password (before the '@'), which the database drivers do not all read the same way; percent-encode it ('{ch}' as {encoded})")]
    UnencodedUrl { name: String, ch: char, encoded: String },
    /// Never carries the value.
    #[error("'{name}': {why}")]
    BadReference { name: String, why: String },
    #[error("'{name}' must be ACL user names separated by spaces or commas, or '*' for any user (empty: only admins): {why}")]
    BadUsers { name: String, why: String },
    #[error("unknown setting '{0}'; known settings: {known}, connection.<name>, connection.<name>.users", known = known_settings())]
    Unknown(String),
}

pub struct Config {
    values: RwLock<BTreeMap<String, String>>,
    connections: RwLock<Connections>,
}

/// `connection.<name>` (URLs: secrets, never returned by `get`; or references) and
/// `connection.<name>.users`, by normalized setting name.
#[derive(Default)]
struct Connections {
    /// From the module arguments: used where `runtime` has no value.
    args: BTreeMap<String, String>,
    /// Set at run time, saved (RDB, AOF) and replicated. An empty `.users` here overrides
    /// the module argument's list (back to admins only).
    runtime: BTreeMap<String, String>,
    /// Per connection name (lowercase): how many times its URL was set, even to the same
    /// value. A recipe connected at an older generation connects again.
    generations: BTreeMap<String, u64>,
}

impl Connections {
    fn effective(&self, n: &str) -> Option<&String> {
        self.runtime.get(n).or_else(|| self.args.get(n)).filter(|v| !v.is_empty())
    }

    fn bump(&mut self, n: &str) {
        if let Some((conn, false)) = connection_setting(n) {
            *self.generations.entry(conn.to_string()).or_default() += 1;
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config { values: RwLock::new(SETTINGS.iter().map(|s| (s.name.to_string(), s.default.to_string())).collect()), connections: Default::default() }
    }
}

/// Settings named `connection.<name>` hold connection URLs for recipes;
/// `connection.<name>.users` say who may use them.
pub const CONNECTION_PREFIX: &str = "connection.";
const USERS_SUFFIX: &str = ".users";

/// Is `name` (normalized) a connection setting (`connection.<name>` or
/// `connection.<name>.users`)? These are not in `SETTINGS`: `Config::shown` gives what
/// RG.CONFIGGET shows of them (the URL masked, the users as set).
pub fn is_secret(name: &str) -> bool {
    name.starts_with(CONNECTION_PREFIX)
}

/// The connection a normalized `connection.*` setting is about, and whether it is its
/// `.users` setting. None when the name is not a valid one.
fn connection_setting(n: &str) -> Option<(&str, bool)> {
    let rest = n.strip_prefix(CONNECTION_PREFIX)?;
    let (conn, users) = match rest.strip_suffix(USERS_SUFFIX) {
        Some(conn) => (conn, true),
        None => (rest, false),
    };
    let valid = !conn.is_empty() && conn.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then_some((conn, users))
}

/// `rg.script-timeout` and `script-timeout` name the same setting.
pub fn normalize(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    lower.strip_prefix("rg.").map(str::to_string).unwrap_or(lower)
}

impl Config {
    pub fn setting(name: &str) -> Option<&'static Setting> {
        let n = normalize(name);
        SETTINGS.iter().find(|s| s.name == n)
    }

    /// Checks a value without setting it; returns the normalized name and value.
    pub fn validate(name: &str, value: &str, at_load: bool) -> Result<(String, String), ConfigError> {
        let n = normalize(name);
        if is_secret(&n) {
            let (_, users) = connection_setting(&n).ok_or_else(|| ConfigError::BadConnectionName(name.to_string()))?;
            if users {
                let list = ConnectionUsers::parse(value).map_err(|why| ConfigError::BadUsers { name: n.clone(), why })?;
                return Ok((n, list.value()));
            }
            if value.trim().is_empty() {
                // At run time, empty unsets the value set at run time (back to the module
                // argument's, if any).
                return if at_load { Err(ConfigError::EmptyConnection(n)) } else { Ok((n, String::new())) };
            }
            if is_reference(value) {
                check_reference(value).map_err(|why| ConfigError::BadReference { name: n.clone(), why })?;
                return Ok((n, value.to_string()));
            }
            if let Some(ch) = unencoded_char(value) {
                let encoded = format!("%{:02X}", ch as u32);
                return Err(ConfigError::UnencodedUrl { name: n, ch, encoded });
            }
            // The name is case-insensitive, the URL is kept as given.
            return Ok((n, value.to_string()));
        }
        let s = Self::setting(&n).ok_or_else(|| ConfigError::Unknown(name.to_string()))?;
        if s.load_time_only && !at_load {
            return Err(ConfigError::LoadTimeOnly(n));
        }
        let v: i64 = value.trim().parse().map_err(|_| out_of_range(s, value))?;
        if v < s.min || v > s.max {
            return Err(out_of_range(s, value));
        }
        Ok((n, v.to_string()))
    }

    /// Sets a known setting after checking it. A connection setting given at load time
    /// (module arguments) is a default; one set later (`at_load` false) wins over it and is
    /// saved and replicated (see `runtime_connections`).
    pub fn set(&self, name: &str, value: &str, at_load: bool) -> Result<(), ConfigError> {
        let (n, v) = Self::validate(name, value, at_load)?;
        if is_secret(&n) {
            let mut c = self.connections.write();
            c.bump(&n);
            if at_load {
                if v.is_empty() {
                    c.args.remove(&n);
                } else {
                    c.args.insert(n, v);
                }
            } else if v.is_empty() && (!c.args.contains_key(&n) || !n.ends_with(USERS_SUFFIX)) {
                // An empty URL unsets the run-time value: the module argument's applies, if
                // any. An empty `.users` is the default (admins only): the setting is unset,
                // unless a module argument gave a list, which it then overrides.
                c.runtime.remove(&n);
            } else {
                c.runtime.insert(n, v);
            }
        } else {
            self.values.write().insert(n, v);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.values.read().get(&normalize(name)).cloned()
    }

    /// The value of connection `name` (as scripts name it, without `connection.`): a URL,
    /// or a reference (`env:NAME`, `file:/path`) that `resolve` reads.
    pub fn connection(&self, name: &str) -> Option<String> {
        self.connections.read().effective(&format!("{CONNECTION_PREFIX}{}", name.to_ascii_lowercase())).cloned()
    }

    /// Changes each time connection `name`'s value is set (even to the same value, which
    /// re-reads an `env:` or `file:` reference), is loaded, or is cleared for a load.
    pub fn connection_generation(&self, name: &str) -> u64 {
        self.connections.read().generations.get(&name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// Who may use connection `name` (besides admins): `connection.<name>.users`.
    pub fn connection_users(&self, name: &str) -> ConnectionUsers {
        let key = format!("{CONNECTION_PREFIX}{}{USERS_SUFFIX}", name.to_ascii_lowercase());
        // Stored values were checked when set.
        self.connections.read().effective(&key).and_then(|v| ConnectionUsers::parse(v).ok()).unwrap_or(ConnectionUsers::AdminsOnly)
    }

    /// The connection settings set at run time, as (setting, value): what the RDB saves.
    /// Module arguments are not in it.
    pub fn runtime_connections(&self) -> Vec<(String, String)> {
        self.connections.read().runtime.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Forgets the connection settings set at run time (the server starts loading a state
    /// that brings its own); module arguments stay.
    pub fn clear_runtime_connections(&self) {
        let mut c = self.connections.write();
        let names: Vec<String> = std::mem::take(&mut c.runtime).into_keys().collect();
        for n in names {
            c.bump(&n);
        }
    }

    /// What RG.CONFIGGET shows for a setting: connection URLs redacted, references
    /// (`env:NAME`, `file:/path`, which are not secrets) and user lists as set.
    pub fn shown(&self, name: &str) -> Option<String> {
        let n = normalize(name);
        if is_secret(&n) {
            let value = self.connections.read().effective(&n).cloned()?;
            return Some(match connection_setting(&n) {
                Some((_, true)) => value,
                _ if is_reference(&value) => value,
                _ => redact(&value),
            });
        }
        self.get(&n)
    }

    pub fn get_i64(&self, name: &str) -> i64 {
        self.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    pub fn all(&self) -> Vec<(String, String)> {
        self.values.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn limits(&self, language: &str) -> crate::Limits {
        crate::Limits {
            memory_bytes: self.get_i64(&format!("{language}-memory-limit")).max(0) as usize,
            timeout: std::time::Duration::from_millis(self.get_i64("script-timeout").max(0) as u64),
        }
    }
}

fn out_of_range(s: &Setting, value: &str) -> ConfigError {
    ConfigError::OutOfRange { name: s.name.to_string(), value: value.to_string(), min: s.min, max: s.max }
}
