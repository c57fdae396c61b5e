//! Compose variable interpolation, as the Compose specification defines it: `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+other}`,
//! `${VAR+other}`, `$$` for a literal `$`, defaults that are themselves interpolated. The build
//! checks a stack's values with it; the agent resolves the environment with it at each start,
//! when per-device secrets and the site's variables are known.

/// How deeply `${A:-${B:-${C}}}` may nest: far more than any published file uses, few enough
/// that a file of nested braces is refused at once.
const MAX_DEPTH: usize = 16;

/// Why a value cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `${NAME:?message}` or `${NAME?message}` and NAME is not set (or empty, with `:`).
    Required { name: String, message: String },
    /// Not interpolation syntax: `${`, `$ `, an unclosed brace, nesting too deep.
    Syntax(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Required { name, message } if message.is_empty() => write!(f, "variable `{name}` is required and not set"),
            Error::Required { name, message } => write!(f, "variable `{name}` is required and not set: {message}"),
            Error::Syntax(m) => write!(f, "{m} (a literal `$` is written `$$`)"),
        }
    }
}

fn name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolates `text`; `get` gives a variable's value, `None` when it is not set.
pub fn interpolate(text: &str, get: &mut dyn FnMut(&str) -> Option<String>) -> Result<String, Error> {
    let chars: Vec<char> = text.chars().collect();
    let (out, end) = expand(&chars, 0, get, 0, false, None)?;
    debug_assert_eq!(end, chars.len());
    Ok(out)
}

/// The names `text` refers to, with whether each is required (`:?` / `?`), whatever the values:
/// every branch is walked, defaults and alternatives too.
pub fn references(text: &str) -> Result<Vec<(String, bool)>, Error> {
    let mut seen: Vec<String> = Vec::new();
    let mut required = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    expand(&chars, 0, &mut |n: &str| {
        seen.push(n.to_string());
        None
    }, 0, false, Some(&mut required))?;
    let mut out: Vec<(String, bool)> = Vec::new();
    for n in seen {
        if !out.iter().any(|(o, _)| *o == n) {
            let req = required.contains(&n);
            out.push((n, req));
        }
    }
    Ok(out)
}

/// Expands from `at` to the end of the text, or (inside a default) to the `}` that closes it;
/// returns the text and the index where it stopped. With `required`, a required variable that
/// is not set is noted there instead of failing.
fn expand(chars: &[char], at: usize, get: &mut dyn FnMut(&str) -> Option<String>, depth: usize, in_braces: bool, mut required: Option<&mut Vec<String>>) -> Result<(String, usize), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Syntax(format!("interpolation nested deeper than {MAX_DEPTH} levels")));
    }
    let mut out = String::new();
    let mut i = at;
    while i < chars.len() {
        let c = chars[i];
        if in_braces && c == '}' {
            return Ok((out, i));
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some(&c) if name_start(c) => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && name_char(chars[end]) {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                out.push_str(&get(&name).unwrap_or_default());
                i = end;
            }
            Some('{') => {
                let start = i + 2;
                let mut end = start;
                while end < chars.len() && name_char(chars[end]) {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                if name.is_empty() || !name.starts_with(name_start) {
                    return Err(Error::Syntax(format!("`${{` at character {} is not followed by a variable name", i + 1)));
                }
                let value = get(&name);
                let colon = chars.get(end) == Some(&':');
                let op_at = if colon { end + 1 } else { end };
                match chars.get(op_at) {
                    Some('}') if !colon => {
                        out.push_str(&value.unwrap_or_default());
                        i = op_at + 1;
                    }
                    Some(&op @ ('-' | '?' | '+')) => {
                        let (arg, close) = expand(chars, op_at + 1, get, depth + 1, true, required.as_deref_mut())?;
                        if close >= chars.len() {
                            return Err(Error::Syntax(format!("`${{{name}` is never closed")));
                        }
                        let unset = match &value {
                            None => true,
                            Some(v) => colon && v.is_empty(),
                        };
                        match op {
                            '-' => out.push_str(&if unset { arg } else { value.unwrap_or_default() }),
                            '+' => {
                                if !unset {
                                    out.push_str(&arg)
                                }
                            }
                            _ => {
                                if unset {
                                    match required.as_deref_mut() {
                                        Some(r) => r.push(name),
                                        None => return Err(Error::Required { name, message: arg }),
                                    }
                                }
                                out.push_str(&value.unwrap_or_default());
                            }
                        }
                        i = close + 1;
                    }
                    None => return Err(Error::Syntax(format!("`${{{name}` is never closed"))),
                    Some(c) => return Err(Error::Syntax(format!("`${{{name}{}{c}` is not interpolation: expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+`", if colon { ":" } else { "" }))),
                }
            }
            _ => return Err(Error::Syntax(format!("a `$` at character {} is followed by no variable name", i + 1))),
        }
    }
    if in_braces {
        return Ok((out, chars.len()));
    }
    Ok((out, i))
}

/// Reads a `.env` file as Compose does: `NAME=VALUE` lines, `#` comments and blank lines,
/// `export ` allowed, values in single quotes taken literally, in double quotes with `\n`,
/// `\"` and `\\` escapes (and spanning lines), unquoted values cut at ` #`.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            return Err(format!("line {}: `{}` is not NAME=VALUE", n + 1, t.chars().take(60).collect::<String>()));
        };
        let k = k.trim();
        if k.is_empty() || !k.starts_with(name_start) || !k.chars().all(name_char) {
            return Err(format!("line {}: `{k}` is not a variable name", n + 1));
        }
        let v = v.trim_start();
        let value = if let Some(rest) = v.strip_prefix('\'') {
            match rest.find('\'') {
                Some(e) => rest[..e].to_string(),
                None => return Err(format!("line {}: the single quote is never closed", n + 1)),
            }
        } else if let Some(rest) = v.strip_prefix('"') {
            let mut s = String::new();
            let mut buf: String = rest.to_string();
            'outer: loop {
                let mut it = buf.chars();
                while let Some(c) = it.next() {
                    match c {
                        '"' => break 'outer,
                        '\\' => match it.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(o) => s.push(o),
                            None => s.push('\\'),
                        },
                        o => s.push(o),
                    }
                }
                match lines.next() {
                    Some((_, more)) => {
                        s.push('\n');
                        buf = more.to_string();
                    }
                    None => return Err(format!("line {}: the double quote is never closed", n + 1)),
                }
            }
            s
        } else {
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.push((k.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], text: &str) -> Result<String, Error> {
        interpolate(text, &mut |n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn every_form_of_the_specification() {
        let v = [("SET", "x"), ("EMPTY", "")];
        assert_eq!(with(&v, "a $SET b ${SET} c").unwrap(), "a x b x c");
        assert_eq!(with(&v, "$UNSET|${UNSET}|").unwrap(), "||");
        assert_eq!(with(&v, "${SET:-d} ${UNSET:-d} ${EMPTY:-d}").unwrap(), "x d d");
        assert_eq!(with(&v, "${SET-d} ${UNSET-d} ${EMPTY-d}").unwrap(), "x d ");
        assert_eq!(with(&v, "${SET:+y} ${UNSET:+y} ${EMPTY:+y} ${EMPTY+y}").unwrap(), "y   y");
        assert_eq!(with(&v, "${SET:?must} ${EMPTY?fine}").unwrap(), "x ");
        assert_eq!(with(&v, "${UNSET:?must be set}"), Err(Error::Required { name: "UNSET".into(), message: "must be set".into() }));
        assert_eq!(with(&v, "${EMPTY:?no empty}"), Err(Error::Required { name: "EMPTY".into(), message: "no empty".into() }));
        assert_eq!(with(&v, "${UNSET?}"), Err(Error::Required { name: "UNSET".into(), message: String::new() }));
        // `$$` is a literal dollar, also before a brace; names end at the first other character.
        assert_eq!(with(&v, "$$SET $${SET} 100$$ $SET.txt ${SET}_1 $SET_1").unwrap(), "$SET ${SET} 100$ x.txt x_1 ");
        // Defaults are interpolated, nest, and may hold braces, colons and URLs.
        assert_eq!(with(&v, "${UNSET:-${SET}-${UNSET2:-z}}").unwrap(), "x-z");
        assert_eq!(with(&v, "http://${U:-admin}:${SET:?pw}@haproxy:${P:-5984}/medic").unwrap(), "http://admin:x@haproxy:5984/medic");
        assert_eq!(with(&v, "${UNSET:-a:b}").unwrap(), "a:b");
        // Not interpolation.
        for bad in ["$", "a $ b", "${", "${}", "${SET", "${SET:-x", "${1X}", "${SET:x}", "${SET:-${UNSET}"] {
            assert!(matches!(with(&v, bad), Err(Error::Syntax(_))), "{bad}: {:?}", with(&v, bad));
        }
        // Multi-line values pass through whole.
        assert_eq!(with(&v, "{\n  \"a\": \"${SET}\"\n}").unwrap(), "{\n  \"a\": \"x\"\n}");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "${A:-".repeat(10_000) + &"}".repeat(10_000);
        let t = std::time::Instant::now();
        assert!(matches!(with(&[], &deep), Err(Error::Syntax(m)) if m.contains("nested")));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let ok = "${A:-".repeat(5) + "x" + &"}".repeat(5);
        assert_eq!(with(&[], &ok).unwrap(), "x");
    }

    #[test]
    fn references_name_every_variable_and_which_are_required() {
        let r = references("http://${U:-admin}:${PW:?set it}@h:${P:-${Q}}/$DB $$NOT").unwrap();
        assert_eq!(r, vec![("U".into(), false), ("PW".into(), true), ("P".into(), false), ("Q".into(), false), ("DB".into(), false)]);
    }

    #[test]
    fn env_files_as_compose_reads_them() {
        let text = "# defaults\nexport A=1\nB = two words # comment\nC='lit $X'\nD=\"line\\nnext \\\"q\\\"\"\nE=\"multi\nline\"\n\nF=\n";
        let v = parse_env_file(text).unwrap();
        assert_eq!(
            v,
            [("A", "1"), ("B", "two words"), ("C", "lit $X"), ("D", "line\nnext \"q\""), ("E", "multi\nline"), ("F", "")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert!(parse_env_file("NOEQUALS\n").unwrap_err().contains("line 1"));
        assert!(parse_env_file("1A=x\n").unwrap_err().contains("`1A`"));
        assert!(parse_env_file("A=\"open\n").unwrap_err().contains("never closed"));
    }
}
