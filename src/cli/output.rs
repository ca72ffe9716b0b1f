//! Plain aligned tables and JSON for command output. Values from the database may hold
//! anything: every cell is shown escaped (no control characters reach the terminal) and cut
//! to a readable width.

use serde::Serialize;

/// Widest cell, in characters.
const MAX_CELL: usize = 96;

/// `value` as it is safe to print: control characters escaped, cut to `MAX_CELL` characters.
pub fn shown(value: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in value.chars() {
        let piece = escaped(c);
        count += piece.chars().count();
        if count > MAX_CELL {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// A character as it is safe to print: a control character as its escape (`\u{1b}`).
fn escaped(c: char) -> String {
    match c.is_control() {
        true => c.escape_default().collect(),
        false => c.to_string(),
    }
}

/// `value` escaped as `shown` does but never cut, broken into lines of at most `width`
/// characters at spaces; lines after the first start with `indent` spaces.
pub fn wrapped(value: &str, width: usize, indent: usize) -> String {
    let text: String = value.chars().map(escaped).collect();
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines.join(&format!("\n{}", " ".repeat(indent)))
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| shown(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for row in &rows {
        line(row);
    }
}

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_escaped_and_cut() {
        assert_eq!(shown("grant_\u{1b}[2J"), "grant_\\u{1b}[2J");
        let long = shown(&"g".repeat(100_000));
        assert_eq!(long.chars().count(), MAX_CELL + 1);
        assert!(long.ends_with('…'));
        assert_eq!(shown("plain"), "plain");
    }

    #[test]
    fn wrapped_text_keeps_every_word_and_escapes_controls() {
        let error = "set keys.signing_key (KEYRELAY_SIGNING_KEY), restart, then `keyrelay jobs retry --all-failed`\u{1b}";
        let text = wrapped(error, 30, 4);
        assert!(
            text.lines().skip(1).all(|l| l.starts_with("    ")),
            "{text}"
        );
        assert!(
            text.lines().all(|l| l.trim_start().chars().count() <= 30),
            "{text}"
        );
        let joined: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(joined.join(" "), error.replace('\u{1b}', "\\u{1b}"));
    }
}
