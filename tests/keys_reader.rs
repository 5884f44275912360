//! The KeysReader reads through the Module key API: every type gives the value the
//! commands give (small and large encodings), expired keys and other databases are not
//! read, and a user reads exactly what its ACL lets it read with SCAN, TYPE and the type's
//! read command (key patterns per key, command rules per type).

mod common;

use common::{cmd, Server};
use std::collections::BTreeSet;

/// Each record as `key|type|value`, the value serialised the same way in both languages:
/// arrays `[a,b]`, maps `{k:v}` with sorted keys.
fn script(lang: &str, pattern: &str) -> String {
    match lang {
        "lua" => format!(
            r#"
local function ser(v)
  if type(v) ~= 'table' then return tostring(v) end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n == #v then
    local parts = {{}}
    for i = 1, #v do parts[i] = ser(v[i]) end
    return '[' .. table.concat(parts, ',') .. ']'
  end
  local keys = {{}}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {{}}
  for i, k in ipairs(keys) do parts[i] = k .. ':' .. ser(v[k]) end
  return '{{' .. table.concat(parts, ',') .. '}}'
end
return GB('KeysReader'):map(function(r) return r.key .. '|' .. r.type .. '|' .. ser(r.value) end):run('{pattern}')"#
        ),
        _ => format!(
            r#"
const ser = v => Array.isArray(v) ? '[' + v.map(ser).join(',') + ']'
  : (v !== null && typeof v === 'object') ? '{{' + Object.keys(v).sort().map(k => k + ':' + ser(v[k])).join(',') + '}}'
  : String(v);
GB('KeysReader').map(r => r.key + '|' + r.type + '|' + ser(r.value)).run('{pattern}');"#
        ),
    }
}

fn run(c: &mut redis::Connection, lang: &str, pattern: &str) -> Result<(BTreeSet<String>, Vec<String>), String> {
    let reply: redis::RedisResult<(Vec<String>, Vec<String>)> = redis::cmd("RG.EXEC").arg(lang).arg(script(lang, pattern)).query(c);
    reply.map(|(r, e)| (r.into_iter().collect(), e)).map_err(|e| e.to_string())
}

fn w(c: &mut redis::Connection, words: &[&str]) {
    let v = cmd(c, words);
    assert!(!matches!(v, redis::Value::ServerError(_)), "{words:?}: {v:?}");
}

/// The keyspace and the record each key must give.
fn populate(c: &mut redis::Connection) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    w(c, &["SET", "kr:s", "v"]);
    want.insert("kr:s|string|v".to_string());
    w(c, &["HSET", "kr:h", "b", "2", "a", "1"]);
    want.insert("kr:h|hash|{a:1,b:2}".to_string());
    // Large enough for each type's table encoding (not listpack/intset).
    let fields: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
    let mut hset = vec!["HSET".to_string(), "kr:bigh".to_string()];
    for f in &fields {
        hset.push(f.clone());
        hset.push(format!("v{}", &f[1..]));
    }
    w(c, &hset.iter().map(String::as_str).collect::<Vec<_>>());
    want.insert(format!("kr:bigh|hash|{{{}}}", fields.iter().map(|f| format!("{f}:v{}", &f[1..])).collect::<Vec<_>>().join(",")));
    w(c, &["RPUSH", "kr:l", "a", "b", "c", "b"]);
    want.insert("kr:l|list|[a,b,c,b]".to_string());
    let items: Vec<String> = (0..300).map(|i| format!("i{i:03}")).collect();
    let mut rpush = vec!["RPUSH", "kr:bigl"];
    rpush.extend(items.iter().map(String::as_str));
    w(c, &rpush);
    want.insert(format!("kr:bigl|list|[{}]", items.join(",")));
    w(c, &["SADD", "kr:set", "z", "x", "y"]);
    want.insert("kr:set|set|[x,y,z]".to_string());
    let mut sadd = vec!["SADD", "kr:bigset"];
    sadd.extend(items.iter().map(String::as_str));
    w(c, &sadd);
    want.insert(format!("kr:bigset|set|[{}]", items.join(",")));
    w(c, &["ZADD", "kr:z", "2.25", "b", "1.5", "a"]);
    want.insert("kr:z|zset|[[a,1.5],[b,2.25]]".to_string());
    let scores: Vec<String> = (0..300).map(|i| format!("{}.5", 300 - i)).collect();
    let mut zadd = vec!["ZADD".to_string(), "kr:bigz".to_string()];
    for (s, m) in scores.iter().zip(&items) {
        zadd.push(s.clone());
        zadd.push(m.clone());
    }
    w(c, &zadd.iter().map(String::as_str).collect::<Vec<_>>());
    let mut by_score: Vec<(f64, &String)> = scores.iter().map(|s| s.parse::<f64>().unwrap()).zip(&items).collect();
    by_score.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    want.insert(format!("kr:bigz|zset|[{}]", by_score.iter().map(|(s, m)| format!("[{m},{s}]")).collect::<Vec<_>>().join(",")));
    w(c, &["XADD", "kr:st", "1-1", "f", "v"]);
    w(c, &["XADD", "kr:st", "2-1", "g", "w", "f", "v2"]);
    want.insert("kr:st|stream|[[1-1,{f:v}],[2-1,{f:v2,g:w}]]".to_string());
    // Not read: another database, a key of another pattern, an expired key still in the
    // table (active expiry off).
    w(c, &["SELECT", "1"]);
    w(c, &["SET", "kr:otherdb", "x"]);
    w(c, &["SELECT", "0"]);
    w(c, &["SET", "other:s", "x"]);
    w(c, &["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    w(c, &["SET", "kr:gone", "x", "PX", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    want
}

#[test]
fn every_type_reads_as_the_commands_give_it() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let want = populate(&mut c);
    for lang in ["lua", "js"] {
        for batch in ["1", "1000"] {
            w(&mut c, &["RG.CONFIGSET", "keys-batch-size", batch]);
            let (got, errors) = run(&mut c, lang, "kr:*").unwrap();
            assert!(errors.is_empty(), "{lang}: {errors:?}");
            assert_eq!(got, want, "{lang}, batches of {batch}");
        }
        // A glob other than a prefix.
        let (got, _) = run(&mut c, lang, "kr:[hs]*").unwrap();
        let keys: BTreeSet<&str> = got.iter().map(|r| r.split('|').next().unwrap()).collect();
        assert_eq!(keys, ["kr:h", "kr:s", "kr:set", "kr:st"].into(), "{lang}");
    }
    // Reading did not make the expired key come back, nor touch the others' idle time.
    assert_eq!(common::canon::fmt(&cmd(&mut c, &["EXISTS", "kr:gone"])), "0");
}

#[test]
fn a_user_reads_what_its_acl_lets_it_read() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    populate(&mut c);
    // keys: only kr:s and kr:l*; no HGETALL; no SCAN.
    w(&mut c, &["ACL", "SETUSER", "few", "on", "nopass", "~kr:s", "~kr:l*", "+@all"]);
    w(&mut c, &["ACL", "SETUSER", "nohash", "on", "nopass", "~*", "+@all", "-hgetall"]);
    w(&mut c, &["ACL", "SETUSER", "noscan", "on", "nopass", "~*", "+@all", "-scan"]);
    for lang in ["lua", "js"] {
        let mut few = s.conn();
        w(&mut few, &["AUTH", "few", "x"]);
        let (got, errors) = run(&mut few, lang, "kr:*").unwrap();
        let keys: BTreeSet<&str> = got.iter().map(|r| r.split('|').next().unwrap()).collect();
        assert_eq!(keys, ["kr:l", "kr:s"].into(), "{lang}");
        assert_eq!(errors.len(), 8, "{lang}: {errors:?}");
        // The same text for every key refused, whichever is read first.
        assert!(errors.iter().all(|e| e.ends_with(": NOPERM User few has no permissions to run the 'type' command or to access its keys")), "{lang}: {errors:?}");
        assert!(errors.iter().any(|e| e == "kr:h: NOPERM User few has no permissions to run the 'type' command or to access its keys"), "{lang}: {errors:?}");

        let mut nohash = s.conn();
        w(&mut nohash, &["AUTH", "nohash", "x"]);
        let (got, errors) = run(&mut nohash, lang, "kr:*").unwrap();
        assert_eq!(got.len(), 8, "{lang}: {got:?}");
        let mut errors = errors;
        errors.sort();
        assert_eq!(
            errors,
            vec![
                "kr:bigh: NOPERM User nohash has no permissions to run the 'hgetall' command or to access its keys".to_string(),
                "kr:h: NOPERM User nohash has no permissions to run the 'hgetall' command or to access its keys".to_string(),
            ],
            "{lang}"
        );

        let mut noscan = s.conn();
        w(&mut noscan, &["AUTH", "noscan", "x"]);
        let err = run(&mut noscan, lang, "kr:*").unwrap_err();
        assert!(err.contains("User noscan has no permissions to run the 'scan' command"), "{lang}: {err}");
    }
}
