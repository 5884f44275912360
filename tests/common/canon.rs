//! The canonical text form of replies used by tests and docs:
//! nil, 42, "text", OK, [a, b], (error) MESSAGE.

use redis::Value;

pub fn fmt(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Int(i) => i.to_string(),
        Value::BulkString(b) => quote(&String::from_utf8_lossy(b)),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Array(items) | Value::Set(items) => format!("[{}]", items.iter().map(fmt).collect::<Vec<_>>().join(", ")),
        Value::Map(entries) => format!("{{{}}}", entries.iter().map(|(k, v)| format!("{}: {}", fmt(k), fmt(v))).collect::<Vec<_>>().join(", ")),
        Value::Double(d) => format!("{d}"),
        Value::Boolean(b) => format!("{b}"),
        Value::VerbatimString { text, .. } => quote(text),
        Value::BigNumber(n) => n.to_string(),
        Value::ServerError(e) => match e.details() {
            Some(d) => format!("(error) {} {}", e.code(), d),
            None => format!("(error) {}", e.code()),
        },
        other => format!("{other:?}"),
    }
}

pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits the top level of an array text `[a, b, [c, d]]` into its elements.
pub fn split_top(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc, mut cur) = (0i32, false, false, String::new());
    for ch in inner.chars() {
        if in_str {
            cur.push(ch);
            if esc {
                esc = false;
            } else if ch == '\\' {
                esc = true;
            } else if ch == '"' {
                in_str = false;
            }
            continue;
        }
        match ch {
            '"' => {
                in_str = true;
                cur.push(ch);
            }
            '[' | '{' => {
                depth += 1;
                cur.push(ch);
            }
            ']' | '}' => {
                depth -= 1;
                cur.push(ch);
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    Some(out)
}

/// For `[results, errors]` replies: sorts the results so runs whose order is not
/// defined compare equal.
pub fn sort_results(s: &str) -> String {
    match split_top(s) {
        Some(parts) if parts.len() == 2 && parts[0].starts_with('[') => {
            let mut results = split_top(&parts[0]).unwrap_or_default();
            results.sort();
            format!("[[{}], {}]", results.join(", "), parts[1])
        }
        _ => s.to_string(),
    }
}
