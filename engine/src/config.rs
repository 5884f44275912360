//! Settings (`rg.*`), shared by the module config, `RG.CONFIGGET/SET` and `configGet()`.

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
];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("'{name}' must be an integer between {min} and {max}, got '{value}'")]
    OutOfRange { name: String, value: String, min: i64, max: i64 },
    #[error("'{0}' can only be set at load time (module arguments)")]
    LoadTimeOnly(String),
    #[error("unknown setting '{0}'; known settings: execution-threads, max-executions, script-timeout, lua-memory-limit, js-memory-limit, keys-batch-size")]
    Unknown(String),
}

pub struct Config {
    values: RwLock<BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config { values: RwLock::new(SETTINGS.iter().map(|s| (s.name.to_string(), s.default.to_string())).collect()) }
    }
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

    /// Sets a known setting after checking it.
    pub fn set(&self, name: &str, value: &str, at_load: bool) -> Result<(), ConfigError> {
        let (n, v) = Self::validate(name, value, at_load)?;
        self.values.write().insert(n, v);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.values.read().get(&normalize(name)).cloned()
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
