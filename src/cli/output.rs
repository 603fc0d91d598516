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
