//! Tables for people and JSON for machines.

use std::io::{IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::config::TableFormat;

/// A table in the user's chosen style, with a header row, fitted to the terminal stdout is
/// (unchanged when stdout is no terminal: scripts read the same columns every time).
pub fn table<I, R>(format: TableFormat, header: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    table_within(format, header, rows, terminal_width())
}

/// The width of the terminal stdout is, `None` when it is none.
pub fn terminal_width() -> Option<u16> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    crossterm::terminal::size()
        .ok()
        .map(|(columns, _)| columns)
        .filter(|&columns| columns > 0)
}

/// [`table`] for a given width: columns shrink and long text wraps inside its cell so that no
/// line is wider than `width`; `None` lays the table out at its natural width.
pub fn table_within<I, R>(
    format: TableFormat,
    header: &[&str],
    rows: I,
    width: Option<u16>,
) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut table = Table::new();
    // The width is decided here, never by comfy-table's own look at the terminal.
    table.force_no_tty();
    table.load_style(match format {
        TableFormat::Plain => presets::NOTHING,
        TableFormat::Ascii => presets::ASCII_FULL_CONDENSED,
        TableFormat::Utf8 => presets::UTF8_FULL_CONDENSED,
        TableFormat::Markdown => presets::ASCII_MARKDOWN,
    });
    if let Some(width) = width {
        table
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(width);
    }
    table.set_header(header.iter().copied());
    for row in rows {
        table.add_row(row.into_iter().collect::<Vec<_>>());
    }
    if format == TableFormat::Plain {
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
    }
    finish(&table, width.is_some())
}

/// `text` wrapped at word boundaries to `width` (as is without one), for the lines printed
/// around a table.
pub fn paragraph(text: &str, width: Option<u16>) -> String {
    let Some(width) = width else {
        return format!("{text}\n");
    };
    let mut table = Table::new();
    table
        .force_no_tty()
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width)
        .add_row(vec![text]);
    for column in table.column_iter_mut() {
        column.set_padding((0, 0));
    }
    finish(&table, true)
}

/// The table's text with a final newline; fitted to a terminal, without the padding a wrapped
/// cell leaves at the end of a line.
fn finish(table: &Table, fitted: bool) -> String {
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(if fitted { line.trim_end() } else { &line });
        text.push('\n');
    }
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

    fn doctor_like_rows() -> Vec<Vec<String>> {
        vec![
            vec![
                "fail".into(),
                "sysbox".into(),
                "sysbox-runc is not installed, so sessions cannot be isolated from the host".into(),
                "install Sysbox from https://github.com/nestybox/sysbox/releases and run \
                 `sudo cubbi setup`, or pass --unsafe-runc on a throwaway machine"
                    .into(),
            ],
            vec![
                "ok".into(),
                "kernel".into(),
                "6.1.0 (5.12 or later needed)".into(),
                String::new(),
            ],
            vec![
                "warn".into(),
                "a-check-with-an-unbreakable-name-longer-than-a-column-can-be".into(),
                "x".repeat(150),
                "y".into(),
            ],
        ]
    }

    #[test]
    fn fitted_tables_stay_within_the_width_and_wrap_inside_cells() {
        for format in [
            TableFormat::Plain,
            TableFormat::Ascii,
            TableFormat::Utf8,
            TableFormat::Markdown,
        ] {
            for width in [40u16, 80, 100] {
                let header = ["STATUS", "CHECK", "FINDING", "REMEDY"];
                let text = table_within(format, &header, doctor_like_rows(), Some(width));
                for line in text.lines() {
                    assert!(
                        line.chars().count() <= usize::from(width),
                        "{format:?} at {width}: {line:?} is too long\n{text}"
                    );
                    assert!(!line.trim().is_empty(), "{format:?}: a blank line\n{text}");
                }
                assert!(
                    text.lines().count() > 4,
                    "nothing wrapped at {width}:\n{text}"
                );
            }
        }
    }

    #[test]
    fn unfitted_tables_keep_their_natural_width() {
        let header = ["STATUS", "CHECK", "FINDING", "REMEDY"];
        let text = table_within(TableFormat::Plain, &header, doctor_like_rows(), None);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.lines().any(|line| line.contains(&"x".repeat(150))),
            "{text}"
        );
    }

    #[test]
    fn paragraphs_wrap_at_words() {
        let text = "next: run `sudo cubbi setup` to install the dedicated endpoint with Sysbox";
        assert_eq!(paragraph(text, None), format!("{text}\n"));
        let wrapped = paragraph(text, Some(30));
        assert!(wrapped.lines().count() > 1, "{wrapped}");
        assert!(
            wrapped.lines().all(|line| line.chars().count() <= 30),
            "{wrapped}"
        );
        assert_eq!(
            wrapped.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
    }

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
