//! `KEY=VALUE`: the one definition of a session's environment entries, for `-e`,
//! `--env-file`, the service keys, and the files cubbi uploads (`/etc/cubbi/env`, which sshd's
//! pam_env reads into every session, and `/etc/cubbi/init.env`). The shell side is
//! `runtime/cubbi-lib.sh` (`cubbi_read_env`), which cubbi-init and cubbi-project source; a
//! test feeds the same files to both.
//!
//! What pam_env does with an env file (linux-pam `_parse_env_file`, `_assemble_line`) and what
//! that means for a value cubbi writes unquoted:
//! - a value ends at the first `#`, a line at the newline: values with `#`, CR, LF or NUL are
//!   refused (they would be cut, or smuggle in another variable);
//! - a line whose last non-blank character is `\` is joined with the next one: refused;
//! - a value starting with `"` or `'` loses that quote (and a closing one): refused;
//! - lines are read in 1023-byte pieces, so a longer line would be split into two entries, the
//!   second one chosen by whoever wrote the value: `KEY=VALUE` longer than
//!   [`MAX_LINE_BYTES`] is refused.

use std::collections::BTreeMap;

/// The longest `KEY=VALUE` (without its newline) pam_env reads as one line: its buffer holds
/// 1024 bytes, fgets keeps one for the NUL and the line needs its newline.
pub const MAX_LINE_BYTES: usize = 1022;

/// Why an entry cannot be a session's environment variable. Messages name the variable, never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error(
        "`{0}` is not a valid environment variable name (letters, digits and `_`, not starting \
         with a digit)"
    )]
    BadName(String),
    #[error("the value of `{0}` contains a line break or NUL; environment values must be one line")]
    LineBreak(String),
    #[error(
        "the value of `{0}` contains `#`, which the session's environment file cannot hold \
         (pam_env would cut the value there)"
    )]
    Hash(String),
    #[error(
        "the value of `{0}` starts with a quote, which pam_env would strip; give the value \
         without quotes"
    )]
    LeadingQuote(String),
    #[error(
        "the value of `{0}` ends with `\\`, which would join it with the next line of the \
         session's environment file"
    )]
    TrailingBackslash(String),
    #[error(
        "`{key}=...` is {bytes} bytes; the session's environment file holds at most \
         {MAX_LINE_BYTES} per variable"
    )]
    TooLong { key: String, bytes: usize },
    #[error("expected KEY=VALUE")]
    NoEquals,
    #[error("`{0}` has no `=` and is not set in this shell")]
    NotSet(String),
}

/// An [`EnvError`] on a line of an env file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct EnvFileError {
    pub line: usize,
    pub error: EnvError,
}

/// POSIX-portable environment variable names: a letter or `_`, then letters, digits or `_`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `key=value` can go into the session's environment file and come out of pam_env
/// unchanged.
pub fn validate(key: &str, value: &str) -> Result<(), EnvError> {
    if !is_env_name(key) {
        return Err(EnvError::BadName(key.to_string()));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(EnvError::LineBreak(key.to_string()));
    }
    if value.contains('#') {
        return Err(EnvError::Hash(key.to_string()));
    }
    if value.starts_with(['"', '\'']) {
        return Err(EnvError::LeadingQuote(key.to_string()));
    }
    if value.trim_end_matches([' ', '\t']).ends_with('\\') {
        return Err(EnvError::TrailingBackslash(key.to_string()));
    }
    let bytes = key.len() + 1 + value.len();
    if bytes > MAX_LINE_BYTES {
        return Err(EnvError::TooLong {
            key: key.to_string(),
            bytes,
        });
    }
    Ok(())
}

/// `-e KEY=VALUE`, or `-e KEY` for this shell's value of KEY. The value is taken as given.
pub fn parse_assignment(
    item: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, String), EnvError> {
    let (key, value) = match item.split_once('=') {
        Some((key, value)) => (key.to_string(), value.to_string()),
        None if is_env_name(item) => {
            let value = lookup(item).ok_or_else(|| EnvError::NotSet(item.to_string()))?;
            (item.to_string(), value)
        }
        None => return Err(EnvError::NoEquals),
    };
    validate(&key, &value)?;
    Ok((key, value))
}

/// One line of an env file, as `cubbi_read_env` in runtime/cubbi-lib.sh reads it: a trailing
/// CR and leading blanks are dropped; empty and `#` lines are skipped (`None`); an `export `
/// prefix is allowed; the key is everything before the first `=` (no blanks around it); one
/// pair of matching surrounding quotes is stripped from the value; nothing is expanded.
pub fn parse_line(line: &str) -> Result<Option<(String, String)>, EnvError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (key, value) = line.split_once('=').ok_or(EnvError::NoEquals)?;
    let value = unquote(value);
    validate(key, value)?;
    Ok(Some((key.to_string(), value.to_string())))
}

/// An env file (`--env-file`): every line must be valid; later lines win.
pub fn parse_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut entries = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        if let Some(entry) = parse_line(line).map_err(|error| EnvFileError {
            line: index + 1,
            error,
        })? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// `KEY=VALUE` lines for the uploaded files, every entry validated first.
pub fn render(env: &BTreeMap<String, String>) -> Result<String, EnvError> {
    let mut text = String::new();
    for (key, value) in env {
        validate(key, value)?;
        text.push_str(key);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    Ok(text)
}

/// One pair of matching surrounding quotes, as in a shell-style `.env` file.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if value.len() >= 2
            && let Some(inner) = value
                .strip_prefix(quote)
                .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_env_name("OPENAI_API_KEY"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("BAD NAME"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn refusals_name_the_key_never_the_value() {
        let long = "x".repeat(MAX_LINE_BYTES);
        for (key, value) in [
            ("X", "SECRET1\nEVIL=1"),
            ("X", "SECRET1\r"),
            ("X", "SECRET1\0"),
            ("X", "SECRET1#x"),
            ("X", "\"SECRET1"),
            ("X", "'SECRET1'"),
            ("X", "SECRET1\\"),
            ("X", "SECRET1\\  "),
            ("X", long.as_str()),
        ] {
            let err = validate(key, value).unwrap_err().to_string();
            assert!(err.contains("`X"), "{err}");
            assert!(!err.contains("SECRET1") && !err.contains("xxxx"), "{err}");
        }
        assert!(validate("BAD NAME", "1").is_err());
        assert!(validate("X", "spaces and = signs, a \\ and \"inner\" quotes").is_ok());
        assert!(validate("X", "").is_ok());
        assert!(validate("X", &"x".repeat(MAX_LINE_BYTES - 2)).is_ok());
    }

    #[test]
    fn assignments() {
        let lookup = |name: &str| (name == "HOME").then(|| "/home/me".to_string());
        assert_eq!(
            parse_assignment("A=b=c", lookup).unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_assignment("HOME", lookup).unwrap(),
            ("HOME".into(), "/home/me".into())
        );
        assert_eq!(
            parse_assignment("MISSING", lookup),
            Err(EnvError::NotSet("MISSING".into()))
        );
        assert_eq!(
            parse_assignment("sk-SECRET1", lookup),
            Err(EnvError::NoEquals)
        );
        assert!(parse_assignment("A=x#y", lookup).is_err());
    }

    #[test]
    fn files() {
        let text = "# comment\n\n  export A=1\r\nB=\"two words\"\nC='x'\nE=a=b\nA=2";
        assert_eq!(
            parse_file(text).unwrap(),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into()),
                ("E".into(), "a=b".into()),
                ("A".into(), "2".into()),
            ]
        );
        let err = parse_file("A=1\nsk-SECRET1\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(!err.to_string().contains("SECRET1"), "{err}");
        let err = parse_file("A = 1\n").unwrap_err();
        assert_eq!(err.error, EnvError::BadName("A ".into()));
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        let err = parse_file("D=\"unbalanced\n").unwrap_err();
        assert_eq!(err.error, EnvError::LeadingQuote("D".into()));
    }

    #[test]
    fn render_validates_and_writes_lines() {
        let env = BTreeMap::from([
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string()),
        ]);
        assert_eq!(render(&env).unwrap(), "A=1\nB=x y\n");
        let bad = BTreeMap::from([("A".to_string(), "x\nB=2".to_string())]);
        assert!(render(&bad).is_err());
    }
}
