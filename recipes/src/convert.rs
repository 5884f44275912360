//! Hash field values (bytes) to typed cells for a target column: integers, floats,
//! booleans, timestamps, text and bytes. A value that does not convert is a per-record
//! error naming the field, the value and the type.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    Int,
    Float,
    Bool,
    /// Stored as a point in time (UTC).
    Timestamp,
    Text,
    Bytes,
}

impl ColType {
    pub const NAMES: &'static [&'static str] = &["int", "float", "bool", "timestamp", "text", "bytes"];

    pub fn parse(s: &str) -> Option<ColType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "int" | "integer" => ColType::Int,
            "float" | "double" | "number" => ColType::Float,
            "bool" | "boolean" => ColType::Bool,
            "timestamp" | "date" | "datetime" => ColType::Timestamp,
            "text" | "string" => ColType::Text,
            "bytes" | "binary" => ColType::Bytes,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ColType::Int => "an integer",
            ColType::Float => "a number",
            ColType::Bool => "a boolean",
            ColType::Timestamp => "a timestamp",
            ColType::Text => "text",
            ColType::Bytes => "bytes",
        }
    }
}

/// A value ready for a target.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    /// The value as text, as SQL text parameters carry it (`None` for NULL).
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Cell::Null => return None,
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => format!("{f:?}"),
            Cell::Bool(b) => b.to_string(),
            Cell::Timestamp(us) => format_timestamp(*us),
            Cell::Text(s) => s.clone(),
            Cell::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        })
    }
}

pub fn convert(raw: &[u8], ty: ColType) -> Result<Cell, String> {
    if ty == ColType::Bytes {
        return Ok(Cell::Bytes(raw.to_vec()));
    }
    let s = std::str::from_utf8(raw).map_err(|_| "is not valid UTF-8".to_string())?;
    let bad = || format!("'{}' is not {}", shorten(s), ty.as_str());
    let t = s.trim();
    Ok(match ty {
        ColType::Text => Cell::Text(s.to_string()),
        ColType::Int => Cell::Int(t.parse().map_err(|_| bad())?),
        ColType::Float => {
            let f: f64 = t.parse().map_err(|_| bad())?;
            if !f.is_finite() {
                return Err(bad());
            }
            Cell::Float(f)
        }
        ColType::Bool => Cell::Bool(match t.to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "y" | "on" => true,
            "0" | "false" | "f" | "no" | "n" | "off" => false,
            _ => return Err(bad()),
        }),
        ColType::Timestamp => Cell::Timestamp(parse_timestamp(t).ok_or_else(bad)?),
        ColType::Bytes => unreachable!(),
    })
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A timestamp: Unix seconds (`1700000000`, `1700000000.25`), or an ISO 8601 / RFC 3339
/// date or date-time (`2024-05-01`, `2024-05-01T12:30:00Z`, `2024-05-01 12:30:00.5+02:00`;
/// no zone means UTC). Returns microseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<f64>() {
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-') && secs.is_finite() && secs.abs() < 1e13 {
            return Some((secs * 1e6).round() as i64);
        }
        return None;
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut us = days_from_civil(y, mo, d) * 86_400_000_000;
    if b.len() == 10 {
        return Some(us);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    us += (h * 3600 + mi * 60 + sec) * 1_000_000;
    let mut i = 19;
    if i < b.len() && b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 6)];
        us += frac.parse::<i64>().ok()? * 10i64.pow(6 - frac.len() as u32);
    }
    let zone = &s[i..];
    let offset = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let z = &zone[1..];
            let (zh, zm) = match z.len() {
                5 if z.as_bytes()[2] == b':' => (z[0..2].parse::<i64>().ok()?, z[3..5].parse::<i64>().ok()?),
                4 => (z[0..2].parse::<i64>().ok()?, z[2..4].parse::<i64>().ok()?),
                2 => (z.parse::<i64>().ok()?, 0),
                _ => return None,
            };
            sign * (zh * 3600 + zm * 60) * 1_000_000
        }
    };
    Some(us - offset)
}

/// `2024-05-01T12:30:00.000000Z`.
pub fn format_timestamp(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rest = us.rem_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    let secs = rest / 1_000_000;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z", secs / 3600, secs / 60 % 60, secs % 60, rest % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_zones() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000_000));
        assert_eq!(parse_timestamp("1700000000.5"), Some(1_700_000_000_500_000));
        let t = parse_timestamp("2024-05-01T12:30:00Z").unwrap();
        assert_eq!(format_timestamp(t), "2024-05-01T12:30:00.000000Z");
        assert_eq!(parse_timestamp("2024-05-01 14:30:00+02:00"), Some(t));
        assert_eq!(parse_timestamp("2024-05-01T12:30:00.25Z"), Some(t + 250_000));
        assert_eq!(format_timestamp(parse_timestamp("1969-12-31T23:59:59Z").unwrap()), "1969-12-31T23:59:59.000000Z");
        for bad in ["", "yesterday", "2024-13-01", "2024-05-01T25:00:00", "2024-05-01T12:30:00+2", "12abc"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn conversions_and_errors() {
        assert_eq!(convert(b" 42 ", ColType::Int), Ok(Cell::Int(42)));
        assert_eq!(convert(b"1.5", ColType::Float), Ok(Cell::Float(1.5)));
        assert_eq!(convert(b"YES", ColType::Bool), Ok(Cell::Bool(true)));
        assert_eq!(convert(b"off", ColType::Bool), Ok(Cell::Bool(false)));
        assert_eq!(convert(b"abc", ColType::Int), Err("'abc' is not an integer".into()));
        assert_eq!(convert(b"inf", ColType::Float), Err("'inf' is not a number".into()));
        assert_eq!(convert(b"maybe", ColType::Bool), Err("'maybe' is not a boolean".into()));
        assert_eq!(convert(&[0xff, 0xfe], ColType::Text), Err("is not valid UTF-8".into()));
        assert_eq!(convert(&[0xff], ColType::Bytes), Ok(Cell::Bytes(vec![0xff])));
    }
}
