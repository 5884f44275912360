//! A session's definition and its binary form (RDB, replication, AOF).

use crate::session::Session;
use crate::{Package, Value};
use std::sync::atomic::Ordering;

/// What defines a session, enough to build it again anywhere (a restart, a replica): the
/// script and how it was sent, plus what was changed since (registrations removed or paused).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionDef {
    pub id: String,
    pub language: String,
    pub source: String,
    pub args: Vec<Vec<u8>>,
    pub user: Option<String>,
    pub db: u32,
    pub description: Option<String>,
    /// Positions of registrations removed with RG.UNREGISTER.
    pub removed: Vec<usize>,
    /// Positions of paused registrations.
    pub paused: Vec<usize>,
    /// StreamReader positions: (registration position, stream, last processed id).
    pub positions: Vec<(usize, Vec<u8>, String)>,
    /// The packages the script imported when it was registered (built-in ones aside): its
    /// instances import these and only these. None in definitions saved before sessions
    /// pinned their packages: the packages loaded now are imported, and pinned from then on.
    pub packages: Option<Vec<Package>>,
}

impl SessionDef {
    pub fn of(s: &Session) -> SessionDef {
        if let Some(u) = &s.unbuilt {
            return u.def.clone();
        }
        let kept: Vec<usize> = s.registrations.iter().map(|r| r.index).collect();
        SessionDef {
            id: s.id.clone(),
            language: s.language.to_string(),
            source: s.source.clone(),
            args: s.args.clone(),
            user: s.user.clone(),
            db: s.db,
            description: s.description.clone(),
            removed: (0..s.declared).filter(|i| !kept.contains(i)).collect(),
            paused: s.registrations.iter().filter(|r| r.paused.load(Ordering::Relaxed)).map(|r| r.index).collect(),
            positions: s.registrations.iter().flat_map(|r| r.consumers.positions().into_iter().map(move |(k, id)| (r.index, k, id))).collect(),
            packages: Some(s.imports.iter().filter(|p| !p.builtin).cloned().collect()),
        }
    }

    /// What the primaries of a cluster share of a session: its definition without what
    /// belongs to this shard (stream positions, registrations paused by their own failure).
    pub fn shared(s: &Session) -> SessionDef {
        let mut def = SessionDef::of(s);
        def.positions.clear();
        if s.unbuilt.is_none() {
            def.paused = s.registrations.iter().filter(|r| r.paused.load(Ordering::Relaxed) && !r.halted.load(Ordering::Relaxed)).map(|r| r.index).collect();
        }
        def
    }

    pub fn encode(&self) -> Vec<u8> {
        let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Nil);
        let ints = |v: &[usize]| Value::Array(v.iter().map(|i| Value::Int(*i as i64)).collect());
        let mut fields = vec![
            (Value::str("version"), Value::Int(1)),
            (Value::str("id"), Value::String(self.id.clone())),
            (Value::str("language"), Value::String(self.language.clone())),
            (Value::str("source"), Value::String(self.source.clone())),
            (Value::str("args"), Value::Array(self.args.iter().map(|a| Value::Bytes(a.clone())).collect())),
            (Value::str("user"), opt(&self.user)),
            (Value::str("db"), Value::Int(self.db as i64)),
            (Value::str("description"), opt(&self.description)),
            (Value::str("removed"), ints(&self.removed)),
            (Value::str("paused"), ints(&self.paused)),
            (
                Value::str("positions"),
                Value::Array(self.positions.iter().map(|(i, k, id)| Value::Array(vec![Value::Int(*i as i64), Value::Bytes(k.clone()), Value::String(id.clone())])).collect()),
            ),
        ];
        // Absent, not empty, when nothing is pinned: such a definition reads as before.
        if let Some(packages) = &self.packages {
            let package = |p: &Package| {
                Value::Map(vec![
                    (Value::str("language"), Value::String(p.language.clone())),
                    (Value::str("name"), Value::String(p.name.clone())),
                    (Value::str("source"), Value::String(p.source.clone())),
                    (Value::str("owner"), opt(&p.owner)),
                ])
            };
            fields.push((Value::str("packages"), Value::Array(packages.iter().map(package).collect())));
        }
        crate::codec::encode(&Value::Map(fields)).expect("a session definition is encodable")
    }

    pub fn decode(b: &[u8]) -> Result<SessionDef, String> {
        let v = crate::codec::decode(b).map_err(|e| e.to_string())?;
        let text = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(format!("session definition: '{k}' missing or not a string")),
        };
        let opt = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let ints = |k: &str| match v.get(k) {
            Some(Value::Array(a)) => a.iter().map(|i| i.as_i64().filter(|n| *n >= 0).map(|n| n as usize).ok_or_else(|| format!("session definition: bad '{k}'"))).collect(),
            _ => Err(format!("session definition: '{k}' missing")),
        };
        if v.get("version").and_then(Value::as_i64) != Some(1) {
            return Err("session definition: unknown version".into());
        }
        Ok(SessionDef {
            id: text("id")?,
            language: text("language")?,
            source: text("source")?,
            args: match v.get("args") {
                Some(Value::Array(a)) => a.iter().map(|x| x.as_bytes().map(|b| b.into_owned()).ok_or("session definition: bad 'args'".to_string())).collect::<Result<_, _>>()?,
                _ => return Err("session definition: 'args' missing".into()),
            },
            user: opt("user"),
            db: v.get("db").and_then(Value::as_i64).and_then(|d| u32::try_from(d).ok()).ok_or("session definition: bad 'db'")?,
            description: opt("description"),
            removed: ints("removed")?,
            paused: ints("paused")?,
            positions: match v.get("positions") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|p| match p {
                        Value::Array(t) if t.len() == 3 => Ok((
                            t[0].as_i64().filter(|n| *n >= 0).ok_or("session definition: bad position")? as usize,
                            t[1].as_bytes().ok_or("session definition: bad position")?.into_owned(),
                            t[2].as_str_lossy().ok_or("session definition: bad position")?,
                        )),
                        _ => Err("session definition: bad position".to_string()),
                    })
                    .collect::<Result<_, String>>()?,
                _ => Vec::new(),
            },
            packages: match v.get("packages") {
                None => None,
                Some(Value::Array(items)) => Some(items.iter().map(decode_package).collect::<Result<_, String>>()?),
                Some(_) => return Err("session definition: bad 'packages'".into()),
            },
        })
    }
}

/// One pinned package of a definition: its hash is computed again from its source.
fn decode_package(v: &Value) -> Result<Package, String> {
    let bad = || "session definition: bad package".to_string();
    if !matches!(v, Value::Map(_)) {
        return Err(bad());
    }
    let text = |k: &str| match v.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(bad()),
    };
    let owner = match v.get("owner") {
        None | Some(Value::Nil) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad()),
    };
    Ok(Package::new(&text("language")?, &text("name")?, text("source")?, owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `session_blob` fuzz target: a db beyond u32 was cut to fit (2^32 read
    /// as db 0) instead of being refused.
    #[test]
    fn a_db_out_of_range_is_refused_not_cut() {
        let def = SessionDef { id: "s".into(), language: "lua".into(), source: "return 1".into(), args: vec![], user: None, db: 3, description: None, removed: vec![], paused: vec![], positions: vec![], packages: None };
        assert_eq!(SessionDef::decode(&def.encode()), Ok(def.clone()));
        for db in [1i64 << 32, i64::MAX, -1] {
            let Value::Map(mut m) = crate::codec::decode(&def.encode()).unwrap() else { unreachable!() };
            m.iter_mut().find(|(k, _)| k.as_bytes().as_deref() == Some(b"db")).unwrap().1 = Value::Int(db);
            let blob = crate::codec::encode(&Value::Map(m)).unwrap();
            assert_eq!(SessionDef::decode(&blob), Err("session definition: bad 'db'".to_string()), "db {db}");
        }
    }

    fn pinned() -> SessionDef {
        SessionDef {
            id: "s".into(),
            language: "lua".into(),
            source: "local m = require('lib')".into(),
            args: vec![b"a".to_vec()],
            user: Some("lim".into()),
            db: 0,
            description: None,
            removed: vec![],
            paused: vec![],
            positions: vec![],
            packages: Some(vec![Package::new("lua", "lib", "return {v = 1}".into(), Some("admin".into())), Package::new("lua", "other", "return 2".into(), None)]),
        }
    }

    #[test]
    fn pinned_packages_are_encoded_with_their_source_and_owner() {
        let def = pinned();
        let back = SessionDef::decode(&def.encode()).unwrap();
        assert_eq!(back, def);
        let p = &back.packages.as_ref().unwrap()[0];
        assert_eq!((p.owner.as_deref(), p.hash()), (Some("admin"), crate::packages::source_hash("return {v = 1}").as_str()));
        // Nothing imported is not the same as nothing pinned.
        let none = SessionDef { packages: Some(vec![]), ..pinned() };
        assert_eq!(SessionDef::decode(&none.encode()).unwrap().packages, Some(vec![]));
    }

    /// Definitions saved before sessions pinned packages have no `packages` field: they read
    /// as "nothing pinned" (and encode without the field again).
    #[test]
    fn definitions_without_packages_still_load() {
        let old = SessionDef { packages: None, ..pinned() };
        let blob = old.encode();
        let Value::Map(m) = crate::codec::decode(&blob).unwrap() else { unreachable!() };
        assert!(m.iter().all(|(k, _)| k.as_bytes().as_deref() != Some(b"packages")));
        assert_eq!(SessionDef::decode(&blob).unwrap().packages, None);
    }

    #[test]
    fn bad_packages_are_refused() {
        let Value::Map(m) = crate::codec::decode(&pinned().encode()).unwrap() else { unreachable!() };
        for (bad, error) in [
            (Value::str("x"), "session definition: bad 'packages'"),
            (Value::Array(vec![Value::Int(1)]), "session definition: bad package"),
            (Value::Array(vec![Value::Map(vec![(Value::str("language"), Value::str("lua")), (Value::str("name"), Value::str("x"))])]), "session definition: bad package"),
            (
                Value::Array(vec![Value::Map(vec![
                    (Value::str("language"), Value::str("lua")),
                    (Value::str("name"), Value::str("x")),
                    (Value::str("source"), Value::str("return 1")),
                    (Value::str("owner"), Value::Int(3)),
                ])]),
                "session definition: bad package",
            ),
        ] {
            let mut m = m.clone();
            m.iter_mut().find(|(k, _)| k.as_bytes().as_deref() == Some(b"packages")).unwrap().1 = bad;
            let blob = crate::codec::encode(&Value::Map(m)).unwrap();
            assert_eq!(SessionDef::decode(&blob), Err(error.to_string()));
        }
    }
}
