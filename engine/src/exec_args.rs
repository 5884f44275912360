//! Parsing of `RG.EXEC lua|js <code> [UNBLOCKING] [ID <id>] [DESCRIPTION <text>] [ARGS a ...]`,
//! kept free of Redis types so it is unit-tested and fuzzed on its own.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecArgs {
    pub language: String,
    pub code: String,
    pub unblocking: bool,
    pub upgrade: bool,
    pub id: Option<String>,
    pub description: Option<String>,
    pub args: Vec<Vec<u8>>,
}

pub const EXEC_USAGE: &str = "RG.EXEC lua|js <code> [UNBLOCKING] [ID <id>] [UPGRADE] [DESCRIPTION <text>] [ARGS arg ...]";

fn text(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} must be valid UTF-8"))
}

/// `argv` excludes the command name.
pub fn parse_exec(argv: &[&[u8]]) -> Result<ExecArgs, String> {
    if argv.len() < 2 {
        return Err(format!("wrong number of arguments for 'rg.exec' command; usage: {EXEC_USAGE}"));
    }
    let language = text(argv[0], "the language")?.to_ascii_lowercase();
    if language != "lua" && language != "js" {
        return Err(format!("unknown language '{language}': expected 'lua' or 'js'"));
    }
    let code = text(argv[1], "the script")?;
    let mut out = ExecArgs { language, code, unblocking: false, upgrade: false, id: None, description: None, args: Vec::new() };
    let mut i = 2;
    while i < argv.len() {
        let opt = String::from_utf8_lossy(argv[i]).to_ascii_uppercase();
        match opt.as_str() {
            "UNBLOCKING" => {
                if out.unblocking {
                    return Err("UNBLOCKING given twice".into());
                }
                out.unblocking = true;
            }
            "UPGRADE" => {
                if out.upgrade {
                    return Err("UPGRADE given twice".into());
                }
                out.upgrade = true;
            }
            "ID" | "DESCRIPTION" => {
                let v = argv.get(i + 1).ok_or_else(|| format!("{opt} needs a value; usage: {EXEC_USAGE}"))?;
                let v = text(v, &opt)?;
                if opt == "ID" {
                    if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err("ID must be 1 to 256 characters without spaces or control characters".into());
                    }
                    if out.id.replace(v).is_some() {
                        return Err("ID given twice".into());
                    }
                } else if out.description.replace(v).is_some() {
                    return Err("DESCRIPTION given twice".into());
                }
                i += 1;
            }
            "ARGS" => {
                out.args = argv[i + 1..].iter().map(|a| a.to_vec()).collect();
                break;
            }
            _ => {
                return Err(format!(
                    "unknown option '{}' for RG.EXEC; usage: {EXEC_USAGE}",
                    String::from_utf8_lossy(argv[i])
                ))
            }
        }
        i += 1;
    }
    if out.upgrade && out.id.is_none() {
        return Err("UPGRADE needs the ID of the session to replace".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<ExecArgs, String> {
        let v: Vec<&[u8]> = a.iter().map(|s| s.as_bytes()).collect();
        parse_exec(&v)
    }

    #[test]
    fn parses_all_options() {
        let e = p(&["LUA", "return 1", "unblocking", "ID", "x1", "DESCRIPTION", "d", "ARGS", "a", "ID"]).unwrap();
        assert_eq!(e.language, "lua");
        assert!(e.unblocking);
        assert_eq!(e.id.as_deref(), Some("x1"));
        assert_eq!(e.description.as_deref(), Some("d"));
        assert_eq!(e.args, vec![b"a".to_vec(), b"ID".to_vec()]);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(p(&["lua"]).unwrap_err().contains("wrong number of arguments"));
        assert!(p(&["python", "x"]).unwrap_err().contains("unknown language 'python'"));
        assert!(p(&["js", "x", "ID"]).unwrap_err().contains("ID needs a value"));
        assert!(p(&["js", "x", "BOGUS"]).unwrap_err().contains("unknown option 'BOGUS'"));
        assert!(p(&["js", "x", "UNBLOCKING", "UNBLOCKING"]).unwrap_err().contains("twice"));
        assert!(parse_exec(&[b"lua", b"\xff\xfe"]).unwrap_err().contains("UTF-8"));
        assert!(p(&["js", "x", "UPGRADE"]).unwrap_err().contains("UPGRADE needs the ID"));
        assert!(p(&["js", "x", "ID", "s", "UPGRADE"]).unwrap().upgrade);
    }
}
