//! Tables for people and JSON for machines.

use std::io::Write;

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::config::TableFormat;

/// A table in the user's chosen style, with a header row.
pub fn table<I, R>(format: TableFormat, header: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut table = Table::new();
    table.load_style(match format {
        TableFormat::Plain => presets::NOTHING,
        TableFormat::Ascii => presets::ASCII_FULL_CONDENSED,
        TableFormat::Utf8 => presets::UTF8_FULL_CONDENSED,
        TableFormat::Markdown => presets::ASCII_MARKDOWN,
    });
    table.set_header(header.iter().copied());
    for row in rows {
        table.add_row(row.into_iter().collect::<Vec<_>>());
    }
    if format == TableFormat::Plain {
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
    }
    let mut text = table.to_string();
    text.push('\n');
    text
}

/// Text from elsewhere (a service's answer, a session's status) made safe for a terminal:
/// control characters (C0, DEL, C1, so every escape sequence) and the bidirectional controls
/// that reorder what is shown are printed escaped (`\u{1b}`), so such text cannot move the
/// cursor, retitle the window, hide itself or fake a line of cubbi's own output.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    escape_where(text, is_unsafe)
}

/// [`terminal_safe`] for messages of several lines: line breaks stay, all else is escaped.
pub fn terminal_safe_lines(text: &str) -> std::borrow::Cow<'_, str> {
    escape_where(text, |c| c != '\n' && is_unsafe(c))
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_where(text: &str, escape: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(&escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escape(c) {
            safe.extend(c.escape_unicode());
        } else {
            safe.push(c);
        }
    }
    std::borrow::Cow::Owned(safe)
}

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value).map_err(std::io::Error::other)?;
    writeln!(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_text_cannot_steer_the_terminal() {
        assert_eq!(terminal_safe("alice"), "alice");
        let hostile = "al\u{1b}]0;owned\u{7}ice\u{1b}[2J\rok\nfake: line\u{9b}31m\u{202e}x";
        let safe = terminal_safe(hostile);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe}");
        assert!(!safe.contains('\u{202e}'), "{safe}");
        assert!(safe.contains("\\u{1b}]0;owned"), "{safe}");
        let lines = terminal_safe_lines("first\nsecond\u{1b}[31m");
        assert_eq!(lines, "first\nsecond\\u{1b}[31m");
    }

    #[test]
    fn plain_tables_align_columns() {
        let text = table(
            TableFormat::Plain,
            &["KEY", "VALUE"],
            [
                vec!["a".to_string(), "1".to_string()],
                vec!["longer".to_string(), "2".to_string()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = lines[0].find("VALUE").unwrap();
        assert_eq!(lines[2].find('2'), Some(column), "{text}");
    }
}
