//! Shared recipe packages: code any script of the same language can import
//! (`require('name')` in Lua, `import ... from 'name'` in JavaScript), who loaded them, and
//! where a run's imports come from (`PackageSource`): the packages loaded now for a new
//! run, or the exact packages a session imported when it was registered for its instances.

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    pub name: String,
    pub language: String,
    pub source: String,
    /// Shipped inside the module (`gears/...`): cannot be replaced or deleted.
    pub builtin: bool,
    /// The ACL user who loaded it (None: built in, or loaded where no ACL applies).
    pub owner: Option<String>,
    /// SHA-256 of `source`, in hex: what tells two versions of a package apart.
    hash: String,
}

impl Package {
    /// A package loaded with RG.PACKAGE LOAD (by `owner`).
    pub fn new(language: &str, name: &str, source: String, owner: Option<String>) -> Package {
        Package { name: name.to_string(), language: language.to_string(), hash: source_hash(&source), source, builtin: false, owner }
    }

    /// A package shipped inside the module.
    pub fn builtin(language: &str, name: &str, source: String) -> Package {
        Package { builtin: true, ..Package::new(language, name, source, None) }
    }

    /// SHA-256 of the source, in lower-case hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    fn key(&self) -> (String, String) {
        (self.language.clone(), self.name.clone())
    }
}

/// SHA-256 of a package's source, in lower-case hex.
pub fn source_hash(source: &str) -> String {
    Sha256::digest(source.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
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
    #[error("package '{name}' is not among the packages session '{session}' imported when it was registered: upgrade the session (RG.EXEC ... ID {session} UPGRADE) to import it")]
    NotPinned { name: String, session: String },
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
    /// Adds a package; one of that language and name is replaced only with `replace`.
    /// Sessions that imported the old version keep it (they pinned it) until they are
    /// upgraded.
    pub fn load(&self, p: Package, replace: bool) -> Result<(), PackageError> {
        check_name(&p.name)?;
        if !p.builtin && (p.name.starts_with("gears/") || p.name.starts_with("gears.")) {
            return Err(PackageError::Reserved);
        }
        let mut map = self.map.write();
        let key = p.key();
        match map.get(&key) {
            Some(old) if old.builtin => return Err(PackageError::Builtin(p.name)),
            Some(_) if !replace => return Err(PackageError::Exists(p.name)),
            _ => {}
        }
        map.insert(key, p);
        Ok(())
    }

    /// Deletes `name` (of `language`, or of every language); refused while `importers`
    /// (the sessions that import it) is not empty: they could not be rebuilt from an
    /// older state that lacks their pinned copy.
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

/// Where the imports of a run come from.
#[derive(Clone)]
pub enum PackageSource {
    /// The packages loaded now: a new run (RG.EXEC, UPGRADE), or rebuilding a session saved
    /// before sessions pinned their packages.
    Current(Arc<Packages>),
    /// A session's instances (any thread, after a restart, on a replica): the packages the
    /// session imported when it was registered, and nothing else. Built-in packages come
    /// from the module (`builtins`), as they are part of it.
    Pinned { builtins: Arc<Packages>, session: String, packages: Arc<Vec<Package>> },
}

impl Default for PackageSource {
    fn default() -> Self {
        PackageSource::Current(Default::default())
    }
}

impl PackageSource {
    /// The package a script imports: None if there is none (the language says how to load
    /// one); an error if it exists but this run may not import it.
    pub fn resolve(&self, language: &str, name: &str) -> Result<Option<Package>, PackageError> {
        match self {
            PackageSource::Current(all) => Ok(all.get(language, name)),
            PackageSource::Pinned { builtins, session, packages } => {
                if let Some(p) = builtins.get(language, name).filter(|p| p.builtin) {
                    return Ok(Some(p));
                }
                match packages.iter().find(|p| p.language == language && p.name == name) {
                    Some(p) => Ok(Some(p.clone())),
                    None => Err(PackageError::NotPinned { name: name.to_string(), session: session.clone() }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_sha256_of_the_source() {
        let p = Package::new("lua", "lib", "return 1".into(), Some("admin".into()));
        assert_eq!(p.hash(), source_hash("return 1"));
        assert_eq!(p.hash().len(), 64);
        assert_eq!(source_hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(source_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(p.hash(), Package::new("lua", "lib", "return 2".into(), None).hash());
        assert_eq!(Package::builtin("js", "gears/x", "export default 1".into()).owner, None);
    }

    #[test]
    fn replace_keeps_owner_and_hash_of_the_new_version() {
        let ps = Packages::default();
        ps.load(Package::new("lua", "lib", "return 1".into(), Some("a".into())), false).unwrap();
        assert_eq!(ps.load(Package::new("lua", "lib", "return 2".into(), Some("b".into())), false), Err(PackageError::Exists("lib".into())));
        ps.load(Package::new("lua", "lib", "return 2".into(), Some("b".into())), true).unwrap();
        let p = ps.get("lua", "lib").unwrap();
        assert_eq!((p.owner.as_deref(), p.hash()), (Some("b"), source_hash("return 2").as_str()));
        assert_eq!(ps.delete(None, "lib", &["s".into()]), Err(PackageError::InUse("lib".into(), "s".into())));
    }

    #[test]
    fn pinned_sources_resolve_only_what_the_session_imported() {
        let current: Arc<Packages> = Default::default();
        current.load(Package::builtin("lua", "gears/json", "return {}".into()), false).unwrap();
        current.load(Package::new("lua", "lib", "return 2".into(), None), false).unwrap();
        current.load(Package::new("lua", "other", "return 3".into(), None), false).unwrap();
        let pinned = PackageSource::Pinned { builtins: current.clone(), session: "s1".into(), packages: Arc::new(vec![Package::new("lua", "lib", "return 1".into(), None)]) };
        assert_eq!(pinned.resolve("lua", "lib").unwrap().unwrap().source, "return 1");
        assert!(pinned.resolve("lua", "gears/json").unwrap().unwrap().builtin);
        let e = pinned.resolve("lua", "other").unwrap_err();
        assert_eq!(
            e.to_string(),
            "package 'other' is not among the packages session 's1' imported when it was registered: upgrade the session (RG.EXEC ... ID s1 UPGRADE) to import it"
        );
        // A pinned Lua package is not a JavaScript one.
        assert!(pinned.resolve("js", "lib").is_err());
        let now = PackageSource::Current(current);
        assert_eq!(now.resolve("lua", "lib").unwrap().unwrap().source, "return 2");
        assert_eq!(now.resolve("lua", "nope").unwrap(), None);
    }
}
