//! What a token (an API token, a git host's access token) may look like: it goes into an HTTP
//! header or a credential file line as is, so one line of printable ASCII without spaces.

/// Why `token` cannot be used, never quoting it; `None` when it is fine.
pub fn problem(token: &str, max_bytes: usize) -> Option<String> {
    if token.is_empty() {
        Some("it is empty".into())
    } else if token.len() > max_bytes {
        Some(format!("it is longer than {max_bytes} bytes"))
    } else if token.bytes().any(|byte| byte.is_ascii_whitespace()) {
        Some("it contains whitespace".into())
    } else if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        Some("it contains characters other than printable ASCII".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_printable_word() {
        assert_eq!(problem("abc_DEF-123.x", 64), None);
        for (bad, why) in [
            ("", "empty"),
            ("a b", "whitespace"),
            ("a\nb", "whitespace"),
            ("é", "printable"),
            ("\u{7}", "printable"),
        ] {
            assert!(problem(bad, 64).unwrap().contains(why), "{bad:?}");
        }
        assert!(problem(&"x".repeat(65), 64).unwrap().contains("64 bytes"));
    }
}
