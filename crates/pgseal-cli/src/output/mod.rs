//! Human rendering: what commands print for a person (tables, plans, status, summaries).
//! Commands gather the data and hand it here; JSON output is serde's, not this module's.

pub mod endpoint;
pub mod fleet;
pub mod journal;
pub mod migrate;

/// `text` as it may reach a terminal: names in it come from the databases (a table, a
/// schema, a key a user chose), so every control character but line breaks and tabs is
/// shown escaped (`\u{1b}`), never sent raw (an escape sequence could rewrite the
/// screen or what a person reads).
pub fn terminal_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Renders rows as left-aligned columns two spaces apart; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_names_are_shown_escaped() {
        assert_eq!(
            terminal_safe("t\x1b[2J\tx\nnext\r"),
            "t\\u{1b}[2J\tx\nnext\\u{d}"
        );
    }
}
