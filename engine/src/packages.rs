//! Shared recipe packages: code any script of the same language can import
//! (`require('name')` in Lua, `import ... from 'name'` in JavaScript).

use parking_lot::RwLock;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    pub name: String,
    pub language: String,
    pub source: String,
    /// Shipped inside the module (`gears/...`): cannot be replaced or deleted.
    pub builtin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("package '{0}' already exists: add REPLACE to replace it")]
    Exists(String),
    #[error("no package '{0}'")]
    NotFound(String),
    #[error("package '{0}' is built into the module and cannot be changed")]
    Builtin(String),
    #[error("package '{0}' is imported by session(s) {1}: drop or upgrade them first")]
    InUse(String, String),
    #[error("package names under 'gears/' are reserved for the module's built-in packages")]
    Reserved,
    #[error("a package name must be 1 to 128 characters of letters, digits and . _ - / (got '{0}')")]
    BadName(String),
}

#[derive(Default)]
pub struct Packages {
    map: RwLock<BTreeMap<(String, String), Package>>,
}

pub fn check_name(name: &str) -> Result<(), PackageError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !name.starts_with('/')
        && !name.ends_with('/')
        // A JavaScript script is itself the module named `script`.
        && name != "script";
    if ok { Ok(()) } else { Err(PackageError::BadName(name.to_string())) }
}

impl Packages {
    /// Adds a package. `imported_by(language, name)` lists the sessions that import it (a
    /// package in use is replaced only with `replace`, so its sessions keep their code
    /// until they are upgraded).
    pub fn load(&self, p: Package, replace: bool) -> Result<(), PackageError> {
        check_name(&p.name)?;
        if !p.builtin && (p.name.starts_with("gears/") || p.name.starts_with("gears.")) {
            return Err(PackageError::Reserved);
        }
        let mut map = self.map.write();
        let key = (p.language.clone(), p.name.clone());
        match map.get(&key) {
            Some(old) if old.builtin => return Err(PackageError::Builtin(p.name)),
            Some(_) if !replace => return Err(PackageError::Exists(p.name)),
            _ => {}
        }
        map.insert(key, p);
        Ok(())
    }

    pub fn delete(&self, language: Option<&str>, name: &str, importers: &[String]) -> Result<Vec<Package>, PackageError> {
        let mut map = self.map.write();
        let keys: Vec<(String, String)> = map.keys().filter(|(l, n)| n == name && language.is_none_or(|x| x == l)).cloned().collect();
        if keys.is_empty() {
            return Err(PackageError::NotFound(name.to_string()));
        }
        if keys.iter().any(|k| map[k].builtin) {
            return Err(PackageError::Builtin(name.to_string()));
        }
        if !importers.is_empty() {
            return Err(PackageError::InUse(name.to_string(), importers.join(", ")));
        }
        Ok(keys.into_iter().filter_map(|k| map.remove(&k)).collect())
    }

    pub fn get(&self, language: &str, name: &str) -> Option<Package> {
        self.map.read().get(&(language.to_string(), name.to_string())).cloned()
    }

    pub fn all(&self) -> Vec<Package> {
        self.map.read().values().cloned().collect()
    }

    /// Removes the packages that are not built in (before loading another state).
    pub fn clear_loaded(&self) {
        self.map.write().retain(|_, p| p.builtin);
    }
}
