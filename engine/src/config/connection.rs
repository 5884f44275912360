//! Connections: what a connection URL may hold so that every driver reads it alike, how it
//! is shown (masked), where it may be read from instead of being stored (`env:NAME`,
//! `file:/path`), and who may use it (`connection.<name>.users`).

use std::io::Read;

const ENV_PREFIX: &str = "env:";
const FILE_PREFIX: &str = "file:";
/// A file that holds a connection URL holds nothing else: more than this is a mistake.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Is a connection value a reference to where the URL is (`env:NAME` or `file:/path`)
/// rather than the URL? A reference is not a secret: it is stored, saved, replicated and
/// shown as is, and read each time a recipe connects.
pub fn is_reference(value: &str) -> bool {
    value.starts_with(ENV_PREFIX) || value.starts_with(FILE_PREFIX)
}

/// Checks a reference's form (not whether the variable or file exists: that is seen when
/// a recipe connects, on each server). The error never quotes the value.
pub(super) fn check_reference(value: &str) -> Result<(), String> {
    if let Some(name) = value.strip_prefix(ENV_PREFIX) {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err("env: must be followed by the name of an environment variable (letters, digits and '_', not starting with a digit), e.g. env:PG_URL".into());
        }
    } else if let Some(path) = value.strip_prefix(FILE_PREFIX) {
        if !path.starts_with('/') {
            return Err("file: must be followed by an absolute path (starting with '/'), e.g. file:/run/secrets/pg-url".into());
        }
        if path.chars().any(char::is_control) {
            return Err("the file path holds a control character".into());
        }
    }
    Ok(())
}

/// The URL a connection value stands for: the value itself, or what its reference holds now
/// (the environment variable of redis-server, or the file's content), trimmed. The error
/// says what is missing or wrong without quoting what the variable or file holds.
pub fn resolve(value: &str) -> Result<String, String> {
    let (url, from) = if let Some(name) = value.strip_prefix(ENV_PREFIX) {
        let url = match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => return Err(format!("{value}: the variable is not set in redis-server's environment")),
            Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{value}: the variable is not UTF-8 text")),
        };
        (url, "the variable")
    } else if let Some(path) = value.strip_prefix(FILE_PREFIX) {
        let file = std::fs::File::open(path).map_err(|e| format!("{value}: {}", io_reason(&e)))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(format!("{value}: this is a directory, not a file"));
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("{value}: {}", io_reason(&e)))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("{value}: the file is larger than {MAX_FILE_BYTES} bytes; it must hold only the connection URL"));
        }
        let url = String::from_utf8(bytes).map_err(|_| format!("{value}: the file is not UTF-8 text"))?;
        (url, "the file")
    } else {
        return Ok(value.to_string());
    };
    let url = url.trim();
    if url.is_empty() {
        return Err(format!("{value}: {from} is empty"));
    }
    if is_reference(url) {
        return Err(format!("{value}: {from} holds another env: or file: reference; it must hold the connection URL"));
    }
    if let Some(ch) = unencoded_char(url) {
        return Err(format!(
            "{value}: the URL in {from} has a raw '{ch}' in its user name or password (before the '@'), which the database drivers do not all read the same way; percent-encode it ('{ch}' as %{:02X})",
            ch as u32
        ));
    }
    Ok(url.to_string())
}

/// Why a file cannot be read, in words (the OS error, which never holds the file's content).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file (as seen by redis-server)".into(),
        std::io::ErrorKind::PermissionDenied => "redis-server may not read it (permission denied)".into(),
        _ => format!("cannot be read: {e}"),
    }
}

/// Who may use a connection in a recipe, besides admins (and trusted callers: the primary,
/// the AOF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionUsers {
    /// `connection.<name>.users` is not set (or empty).
    AdminsOnly,
    /// `*`: any user.
    All,
    List(Vec<String>),
}

impl ConnectionUsers {
    /// Reads a `connection.<name>.users` value: ACL user names separated by spaces or
    /// commas, or `*` alone. The error says what is wrong with it.
    pub fn parse(value: &str) -> Result<ConnectionUsers, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(ConnectionUsers::AdminsOnly);
        }
        if value == "*" {
            return Ok(ConnectionUsers::All);
        }
        let mut names: Vec<String> = Vec::new();
        for part in value.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if words.is_empty() {
                return Err("an empty name (two commas in a row, or a comma at an end)".into());
            }
            for w in words {
                if w.contains('*') {
                    return Err(format!("'{w}': '*' means any user and must be the whole value; names are not patterns"));
                }
                if w.chars().any(char::is_control) {
                    return Err("a name holds a control character".into());
                }
                if !names.iter().any(|n| n == w) {
                    names.push(w.to_string());
                }
            }
        }
        Ok(ConnectionUsers::List(names))
    }

    /// May `user` (not an admin) use the connection?
    pub fn allows(&self, user: &str) -> bool {
        match self {
            ConnectionUsers::AdminsOnly => false,
            ConnectionUsers::All => true,
            ConnectionUsers::List(names) => names.iter().any(|n| n == user),
        }
    }

    /// The setting's value as stored and shown (names separated by one space); empty for
    /// admins only.
    pub(super) fn value(&self) -> String {
        match self {
            ConnectionUsers::AdminsOnly => String::new(),
            ConnectionUsers::All => "*".into(),
            ConnectionUsers::List(names) => names.join(" "),
        }
    }
}

/// A connection URL's user name and password end at an '@', but the drivers disagree on
/// which: tokio-postgres takes the first '@' of the whole string, URL parsers (the `url`
/// crate, hence the mysql driver and our masking) the last '@' before the first '/', '?' or
/// '#', the MongoDB driver the last '@' before the first '?'. They agree, and the password
/// is masked where the driver reads it, when the user name and password hold none of
/// `/ ? # @` raw. A '%' must start a `%XX` escape: every driver decodes those (MongoDB's
/// refuses a '%' that does not). MongoDB's also refuses a raw ':' in the password and '['
/// or ']' anywhere in them. Returns the first character that must be percent-encoded.
pub(super) fn unencoded_char(url: &str) -> Option<char> {
    let (scheme, rest) = url.split_once("://")?;
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if let Some(c) = userinfo.chars().find(|c| matches!(c, '/' | '?' | '#')) {
        return Some(c);
    }
    // No '/', '?' or '#' before `at`: the authority ends after it.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rest[at + 1..authority_end].contains('@') {
        return Some('@');
    }
    let bytes = userinfo.as_bytes();
    let bad_percent = bytes.iter().enumerate().any(|(i, &b)| b == b'%' && !(bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()));
    if bad_percent {
        return Some('%');
    }
    if matches!(scheme.to_ascii_lowercase().as_str(), "mongodb" | "mongodb+srv") {
        if let Some(c) = userinfo.chars().find(|c| matches!(c, '[' | ']')) {
            return Some(c);
        }
        if userinfo.split_once(':').is_some_and(|(_, password)| password.contains(':')) {
            return Some(':');
        }
    }
    None
}

/// A URL scheme as RFC 3986 spells it (safe to show).
fn is_scheme(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The `key=value` pairs of a libpq-style connection string (`host=db password='a b'`), as
/// byte ranges of the key and of the value as written (quotes included). None if it is not
/// one (the way tokio-postgres reads it: values quoted with `'`, `\` escapes).
fn key_values(s: &str) -> Option<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
    let b = s.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = skip_ws(0);
    while i < b.len() {
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = key_start..i;
        i = skip_ws(i);
        if key.is_empty() || b.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_ws(i + 1);
        let value_start = i;
        if b.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match b.get(i)? {
                    b'\\' => i += 2,
                    b'\'' => break,
                    _ => i += 1,
                }
            }
            i += 1;
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
        }
        let i_end = i.min(b.len());
        out.push((key, value_start..i_end));
        i = skip_ws(i_end);
    }
    Some(out)
}

/// Keys of a key/value connection string whose values are masked.
fn is_password_key(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with("password")
}

/// A connection URL with its password and query (which may carry one) masked, for replies
/// and logs: `postgres://app:***@127.0.0.1:5432/db?***`. A URL the parser cannot read, or
/// one whose password the drivers would read differently, is `<scheme>://***`; the
/// key/value form has its `password=` masked; a plain file path (SQLite) is shown as is.
pub fn redact(value: &str) -> String {
    let Some((scheme, _)) = value.split_once("://") else {
        if value.contains('=') {
            let Some(pairs) = key_values(value) else { return "***".into() };
            let mut out = String::new();
            let mut last = 0;
            for (_, v) in pairs.into_iter().filter(|(k, _)| is_password_key(&value[k.clone()])) {
                out.push_str(&value[last..v.start]);
                out.push_str("***");
                last = v.end;
            }
            out.push_str(&value[last..]);
            return out;
        }
        return if value.contains('@') { "***".into() } else { value.to_string() };
    };
    let masked = || if is_scheme(scheme) { format!("{scheme}://***") } else { "***".to_string() };
    if unencoded_char(value).is_some() {
        return masked();
    }
    let Ok(mut url) = url::Url::parse(value) else { return masked() };
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return masked();
    }
    if url.query().is_some() {
        url.set_query(Some("***"));
    }
    if url.fragment().is_some() {
        url.set_fragment(Some("***"));
    }
    url.to_string()
}

/// The parts of a connection value that are secret, as a driver's error message might
/// quote them: the password as written and percent-decoded (under every reading of where
/// it ends), the query, and the `password=` values of the key/value form. Longest first,
/// for masking by replacement.
pub fn secrets(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        for s in [s.to_string(), percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()] {
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
    };
    match value.split_once("://") {
        Some((_, rest)) => {
            let before_query = rest.split('?').next().unwrap_or("");
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            // The first '@' (PostgreSQL), the last of the authority (URL parsers), the last
            // before the query (MongoDB).
            let userinfos = [rest.split_once('@').map(|(u, _)| u), authority.rsplit_once('@').map(|(u, _)| u), before_query.rsplit_once('@').map(|(u, _)| u)];
            for userinfo in userinfos.into_iter().flatten() {
                if let Some((_, password)) = userinfo.split_once(':') {
                    add(password);
                }
            }
            if let Ok(url) = url::Url::parse(value) {
                if let Some(p) = url.password() {
                    add(p);
                }
            }
            if let Some((_, query)) = rest.split_once('?') {
                add(query.split('#').next().unwrap_or(""));
            }
        }
        None => {
            for (k, v) in key_values(value).unwrap_or_default() {
                if is_password_key(&value[k]) {
                    let v = &value[v];
                    add(v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v));
                }
            }
        }
    }
    // A secret made of '*' only would turn the masks themselves into longer masks.
    out.retain(|s| !s.chars().all(|c| c == '*'));
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    /// Passwords with every character that matters in a URL, raw and percent-encoded.
    const PASSWORDS: &[(&str, &str)] = &[
        ("hun/ter2", "hun%2Fter2"),
        ("hun@ter2", "hun%40ter2"),
        ("hun:ter2", "hun%3Ater2"),
        ("hun%ter2", "hun%25ter2"),
        ("hun?ter2", "hun%3Fter2"),
        ("hun#ter2", "hun%23ter2"),
        ("a/b@c:d%e?f#g", "a%2Fb%40c%3Ad%25e%3Ff%23g"),
    ];

    fn assert_hidden(text: &str, password: &str, encoded: &str) {
        // Neither form, nor the part of the password on either side of its special character.
        let mut pieces = vec![password, encoded];
        pieces.extend(password.split(['/', '@', ':', '%', '?', '#']).filter(|p| p.len() > 1));
        for p in pieces {
            assert!(!text.contains(p), "{text:?} shows {p:?} of the password {password:?}");
        }
    }

    #[test]
    fn encoded_passwords_are_accepted_and_masked() {
        for (raw, encoded) in PASSWORDS {
            for scheme in ["postgres", "postgresql", "mysql", "mongodb"] {
                let url = format!("{scheme}://app:{encoded}@127.0.0.1:5432/db?sslmode=disable");
                let (_, v) = Config::validate("connection.pg", &url, false).unwrap_or_else(|e| panic!("{url}: {e}"));
                assert_eq!(v, url);
                let shown = redact(&url);
                assert_eq!(shown, format!("{scheme}://app:***@127.0.0.1:5432/db?***"));
                assert_hidden(&shown, raw, encoded);
            }
        }
    }

    #[test]
    fn raw_special_characters_are_refused_without_echoing_the_password() {
        let cases = [
            ("postgres://app:hun/ter2@127.0.0.1/db", '/', "%2F"),
            ("postgres://app:123/ter2@127.0.0.1/db", '/', "%2F"),
            ("mysql://app:hun?ter2@127.0.0.1/db", '?', "%3F"),
            ("postgres://app:hun#ter2@127.0.0.1/db", '#', "%23"),
            ("postgres://app:hun@ter2@127.0.0.1/db", '@', "%40"),
            ("postgres://app:hun%ter2@127.0.0.1/db", '%', "%25"),
            ("postgres://app:hunter%2@127.0.0.1/db", '%', "%25"),
            ("mongodb://app:hun:ter2@127.0.0.1/db", ':', "%3A"),
            ("mongodb://app:hun[ter2@127.0.0.1/db", '[', "%5B"),
        ];
        for (url, ch, encoded) in cases {
            let e = Config::validate("connection.PG", url, false).unwrap_err();
            let text = e.to_string();
            assert_eq!(e, ConfigError::UnencodedUrl { name: "connection.pg".into(), ch, encoded: encoded.into() }, "{url}");
            assert!(text.contains(&format!("percent-encode it ('{ch}' as {encoded})")), "{text}");
            assert!(!text.contains("hun") && !text.contains("ter2"), "{text}");
            // Shown masked even if such a value got in.
            let shown = redact(url);
            assert!(shown.ends_with("://***"), "{url} -> {shown}");
            assert_hidden(&shown, "hunter2", "hunter2");
        }
        // A raw ':' in a password is read alike by the PostgreSQL and MySQL drivers.
        let url = "postgres://app:hun:ter2@127.0.0.1/db";
        assert!(Config::validate("connection.pg", url, false).is_ok());
        assert_eq!(redact(url), "postgres://app:***@127.0.0.1/db");
        // A '%XX' escape is an escape.
        assert!(Config::validate("connection.pg", "postgres://app:hunter%41@h/db", false).is_ok());
    }

    #[test]
    fn masking_of_every_form() {
        let cases = [
            ("postgresql://app:hunter2@127.0.0.1:1/db?password=hunter2", "postgresql://app:***@127.0.0.1:1/db?***"),
            ("postgres://app@127.0.0.1/db", "postgres://app@127.0.0.1/db"),
            ("postgres://:hunter2@127.0.0.1/db", "postgres://:***@127.0.0.1/db"),
            ("postgres://app:hunter2@[::1]:5432/db#hunter2", "postgres://app:***@[::1]:5432/db#***"),
            ("postgresql:///db?host=/run/postgresql&password=hunter2", "postgresql:///db?***"),
            // Not readable by the URL parser (a bad port, several hosts): all masked.
            ("postgres://app:hunter2@h:port/db", "postgres://***"),
            ("mongodb://app:hunter2@h1:27017,h2:27017/db", "mongodb://***"),
            ("bad scheme://app:hunter2@h/db", "***"),
            // The key/value form.
            ("host=db user=app password=hunter2 dbname=x", "host=db user=app password=*** dbname=x"),
            ("host = db password = 'hun ter2' dbname=x", "host = db password = *** dbname=x"),
            (r"password='it\'s hunter2' host=db", "password=*** host=db"),
            ("host=db password='hunter2", "***"),
            ("app:hunter2@db/x", "***"),
            // A file path.
            ("sqlite:///var/lib/app.db", "sqlite:///var/lib/app.db"),
            ("/var/lib/app.db", "/var/lib/app.db"),
        ];
        for (value, shown) in cases {
            assert_eq!(redact(value), shown, "{value}");
            assert!(!redact(value).contains("hunter2") && !redact(value).contains("ter2"), "{value}");
        }
    }

    #[test]
    fn secrets_cover_every_reading_of_the_password() {
        let s = secrets("postgres://app:hun%2Fter2@127.0.0.1/db?sslmode=disable");
        for want in ["hun%2Fter2", "hun/ter2", "sslmode=disable"] {
            assert!(s.iter().any(|x| x == want), "{s:?} lacks {want}");
        }
        assert!(s.windows(2).all(|w| w[0].len() >= w[1].len()));
        assert_eq!(secrets("host=db password='hun ter2'"), vec!["hun ter2".to_string()]);
        assert!(secrets("postgres://app:***@h/db").is_empty());
        assert!(secrets("/var/lib/app.db").is_empty());
    }

    #[test]
    fn connection_users() {
        let c = Config::default();
        assert_eq!(c.connection_users("pg"), ConnectionUsers::AdminsOnly);
        for (value, users, shown) in [
            ("app", ConnectionUsers::List(vec!["app".into()]), "app"),
            ("app lim", ConnectionUsers::List(vec!["app".into(), "lim".into()]), "app lim"),
            (" app, lim ,bob  app", ConnectionUsers::List(vec!["app".into(), "lim".into(), "bob".into()]), "app lim bob"),
            ("*", ConnectionUsers::All, "*"),
            (" * ", ConnectionUsers::All, "*"),
        ] {
            c.set("rg.Connection.PG.users", value, false).unwrap();
            assert_eq!(c.connection_users("PG"), users, "{value}");
            assert_eq!(c.shown("connection.pg.users").as_deref(), Some(shown));
            assert_eq!(c.connection("pg"), None, "the users are not the URL");
        }
        assert!(ConnectionUsers::All.allows("lim"));
        assert!(ConnectionUsers::List(vec!["app".into()]).allows("app"));
        assert!(!ConnectionUsers::List(vec!["app".into()]).allows("App"));
        assert!(!ConnectionUsers::AdminsOnly.allows("app"));
        // Empty: back to admins only (unset).
        c.set("connection.pg.users", "  ", false).unwrap();
        assert_eq!(c.connection_users("pg"), ConnectionUsers::AdminsOnly);
        assert_eq!(c.shown("connection.pg.users"), None);
        for bad in ["app,,lim", "app,", ",app", "app, ,lim", "app *", "ap*", "app\u{1}x"] {
            match Config::validate("connection.pg.users", bad, false) {
                Err(ConfigError::BadUsers { name, .. }) => assert_eq!(name, "connection.pg.users"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Setting the URL leaves the users alone, and the other way round.
        c.set("connection.pg.users", "app", false).unwrap();
        c.set("connection.pg", "postgres://app:hunter2@h/db", false).unwrap();
        assert_eq!(c.connection_users("pg"), ConnectionUsers::List(vec!["app".into()]));
        assert_eq!(c.shown("connection.pg").as_deref(), Some("postgres://app:***@h/db"));
        assert_eq!(c.get("connection.pg"), None);
        for bad in ["connection.", "connection..users", "connection.a.b", "connection.a b.users", "connection.users.x"] {
            assert!(matches!(Config::validate(bad, "x", false), Err(ConfigError::BadConnectionName(_))), "{bad}");
        }
        // A connection may be named `users`.
        assert!(Config::validate("connection.users", "postgres://h/db", false).is_ok());
        assert!(Config::validate("connection.users.users", "*", false).is_ok());
    }

    #[test]
    fn references_are_checked_shown_as_is_and_read_when_resolved() {
        let c = Config::default();
        for (value, ok) in [("env:PG_URL", true), ("env:_x1", true), ("env:", false), ("env:1X", false), ("env:PG-URL", false), ("env:postgres://app:hunter2@h/db", false), ("file:/run/secrets/pg", true), ("file:relative", false), ("file:", false), ("file:/a\nb", false)] {
            match Config::validate("connection.pg", value, false) {
                Ok((_, v)) => {
                    assert!(ok, "{value:?} accepted");
                    assert_eq!(v, value);
                }
                Err(e @ ConfigError::BadReference { .. }) => {
                    assert!(!ok, "{value:?}: {e}");
                    assert!(!e.to_string().contains("hunter2"), "{e}");
                }
                Err(e) => panic!("{value:?}: {e}"),
            }
        }
        c.set("connection.pg", "env:RG_TEST_SURELY_UNSET_VAR", false).unwrap();
        assert_eq!(c.shown("connection.pg").as_deref(), Some("env:RG_TEST_SURELY_UNSET_VAR"));
        assert_eq!(resolve("env:RG_TEST_SURELY_UNSET_VAR").unwrap_err(), "env:RG_TEST_SURELY_UNSET_VAR: the variable is not set in redis-server's environment");
        // A URL is its own value.
        assert_eq!(resolve("postgres://app:hunter2@h/db").unwrap(), "postgres://app:hunter2@h/db");
        // A file: read at each resolve, trimmed; its content never in an error.
        let dir = std::env::temp_dir().join(format!("rg-conn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("url");
        let r = format!("file:{}", f.display());
        assert_eq!(resolve(&r).unwrap_err(), format!("{r}: no such file (as seen by redis-server)"));
        std::fs::write(&f, "postgres://app:hunter2@h/db\n").unwrap();
        assert_eq!(resolve(&r).unwrap(), "postgres://app:hunter2@h/db");
        std::fs::write(&f, "postgres://app:hunter3@h/db").unwrap();
        assert_eq!(resolve(&r).unwrap(), "postgres://app:hunter3@h/db");
        std::fs::write(&f, " \n").unwrap();
        assert_eq!(resolve(&r).unwrap_err(), format!("{r}: the file is empty"));
        std::fs::write(&f, "postgres://app:hun/ter2@h/db").unwrap();
        let e = resolve(&r).unwrap_err();
        assert_eq!(e, format!("{r}: the URL in the file has a raw '/' in its user name or password (before the '@'), which the database drivers do not all read the same way; percent-encode it ('/' as %2F)"));
        assert!(!e.contains("hun") && !e.contains("ter2"));
        std::fs::write(&f, "env:OTHER").unwrap();
        assert!(resolve(&r).unwrap_err().ends_with("the file holds another env: or file: reference; it must hold the connection URL"));
        std::fs::write(&f, vec![b'x'; 70_000]).unwrap();
        assert!(resolve(&r).unwrap_err().ends_with("the file is larger than 65536 bytes; it must hold only the connection URL"));
        let d = format!("file:{}", dir.display());
        assert_eq!(resolve(&d).unwrap_err(), format!("{d}: this is a directory, not a file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runtime_connections_win_over_module_arguments_and_count_generations() {
        let c = Config::default();
        c.set("connection.pg", "postgres://arg@h/db", true).unwrap();
        c.set("connection.pg.users", "app", true).unwrap();
        assert_eq!(c.connection("pg").as_deref(), Some("postgres://arg@h/db"));
        assert!(c.runtime_connections().is_empty(), "module arguments are not saved");
        let g0 = c.connection_generation("PG");
        c.set("connection.PG", "postgres://rt@h/db", false).unwrap();
        assert_eq!(c.connection("pg").as_deref(), Some("postgres://rt@h/db"));
        assert!(c.connection_generation("pg") > g0);
        // The same value again: a new generation (recipes connect again, re-reading a file).
        let g1 = c.connection_generation("pg");
        c.set("connection.pg", "postgres://rt@h/db", false).unwrap();
        assert!(c.connection_generation("pg") > g1);
        // The users: unset at run time overrides the module argument's list.
        let g2 = c.connection_generation("pg");
        c.set("connection.pg.users", "", false).unwrap();
        assert_eq!(c.connection_users("pg"), ConnectionUsers::AdminsOnly);
        assert_eq!(c.connection_generation("pg"), g2, "the users are not the URL");
        assert_eq!(c.runtime_connections(), vec![("connection.pg".to_string(), "postgres://rt@h/db".to_string()), ("connection.pg.users".to_string(), String::new())]);
        // Loading another state: back to the module arguments, and recipes connect again.
        c.clear_runtime_connections();
        assert_eq!(c.connection("pg").as_deref(), Some("postgres://arg@h/db"));
        assert_eq!(c.connection_users("pg"), ConnectionUsers::List(vec!["app".into()]));
        assert!(c.connection_generation("pg") > g2);
        // With no module argument, an empty `.users` set at run time is simply unset.
        c.set("connection.x.users", "", false).unwrap();
        assert!(c.runtime_connections().is_empty());
        // An empty URL at run time unsets it: the module argument's again, or none.
        c.set("connection.pg", "postgres://rt@h/db", false).unwrap();
        c.set("connection.other", "postgres://o@h/db", false).unwrap();
        let g3 = c.connection_generation("pg");
        c.set("connection.pg", "", false).unwrap();
        c.set("connection.other", " ", false).unwrap();
        assert_eq!(c.connection("pg").as_deref(), Some("postgres://arg@h/db"));
        assert_eq!(c.connection("other"), None);
        assert_eq!(c.shown("connection.other"), None);
        assert!(c.connection_generation("pg") > g3);
        assert!(c.runtime_connections().is_empty());
        // Not at load: a module argument must hold a URL.
        assert_eq!(Config::validate("connection.pg", "", true), Err(ConfigError::EmptyConnection("connection.pg".into())));
    }
}
