//! A session's definition and its binary form (RDB, replication, AOF).

use crate::session::Session;
use crate::Value;
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
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Nil);
        let ints = |v: &[usize]| Value::Array(v.iter().map(|i| Value::Int(*i as i64)).collect());
        let v = Value::Map(vec![
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
        ]);
        crate::codec::encode(&v).expect("a session definition is encodable")
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `session_blob` fuzz target: a db beyond u32 was cut to fit (2^32 read
    /// as db 0) instead of being refused.
    #[test]
    fn a_db_out_of_range_is_refused_not_cut() {
        let def = SessionDef { id: "s".into(), language: "lua".into(), source: "return 1".into(), args: vec![], user: None, db: 3, description: None, removed: vec![], paused: vec![], positions: vec![] };
        assert_eq!(SessionDef::decode(&def.encode()), Ok(def.clone()));
        for db in [1i64 << 32, i64::MAX, -1] {
            let Value::Map(mut m) = crate::codec::decode(&def.encode()).unwrap() else { unreachable!() };
            m.iter_mut().find(|(k, _)| k.as_bytes().as_deref() == Some(b"db")).unwrap().1 = Value::Int(db);
            let blob = crate::codec::encode(&Value::Map(m)).unwrap();
            assert_eq!(SessionDef::decode(&blob), Err("session definition: bad 'db'".to_string()), "db {db}");
        }
    }
}
