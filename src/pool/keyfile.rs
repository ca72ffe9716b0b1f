//! Reading key files: one key per line, or a CSV whose header has a `key` column. Whitespace is
//! trimmed; blank lines and `#` comments are skipped; repeats within the file are counted. A
//! line with spaces inside is not a key (a pasted header, a sentence) unless the pool takes
//! such keys.

use std::collections::HashSet;

use crate::domain::LicenseKey;
pub use crate::domain::MAX_KEY_LEN;

#[derive(Debug, Default)]
pub struct ParsedKeys {
    /// Unique keys in file order.
    pub keys: Vec<LicenseKey>,
    /// Keys that appeared again later in the same file.
    pub duplicates_in_file: usize,
    /// Line number and reason for each line that is not a usable key.
    pub invalid: Vec<(usize, String)>,
}

/// What a line must be to count as a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRules {
    /// Keys may have spaces inside (`pool add --keys-with-spaces`).
    pub spaces_inside: bool,
}

/// Reads `text` as a key file; see the module's comment.
pub fn parse_keys(text: &str, rules: KeyRules) -> ParsedKeys {
    // A byte-order mark (as some editors save) is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let key_column = lines.peek().and_then(|(_, header)| csv_key_column(header));
    if key_column.is_some() {
        lines.next();
    }
    let mut parsed = ParsedKeys::default();
    let mut seen = HashSet::new();
    for (line_no, line) in lines {
        let value = match key_column {
            Some(column) => match csv_field(line, column) {
                Ok(v) => v,
                Err(reason) => {
                    parsed.invalid.push((line_no, reason));
                    continue;
                }
            },
            None => line.to_string(),
        };
        if !rules.spaces_inside && value.chars().any(char::is_whitespace) {
            parsed.invalid.push((
                line_no,
                "has spaces inside, and a key has none (a pasted header or note?); a pool whose keys do have spaces is made with `pool add --keys-with-spaces`".into(),
            ));
            continue;
        }
        match LicenseKey::parse(&value) {
            Err(reason) => parsed.invalid.push((line_no, reason.to_string())),
            Ok(key) if seen.insert(value) => parsed.keys.push(key),
            Ok(_) => parsed.duplicates_in_file += 1,
        }
    }
    parsed
}

/// The index of the `key` column if `header` is a CSV header that has one.
fn csv_key_column(header: &str) -> Option<usize> {
    let record = read_csv_record(header).ok()?;
    record
        .iter()
        .position(|field| field.trim().eq_ignore_ascii_case("key"))
}

fn csv_field(line: &str, column: usize) -> Result<String, String> {
    if !well_formed_csv(line) {
        return Err("malformed CSV row (unbalanced or misplaced quotes)".into());
    }
    let record = read_csv_record(line).map_err(|e| format!("unreadable CSV row: {e}"))?;
    record
        .get(column)
        .map(|f| f.trim().to_string())
        .ok_or_else(|| format!("CSV row has no column {} (`key`)", column + 1))
}

/// Whether every field of `line` is either unquoted without quotes, or quoted from start to
/// end with inner quotes doubled. The CSV reader accepts more, guessing; a key must not be
/// a guess.
fn well_formed_csv(line: &str) -> bool {
    let mut chars = line.chars().peekable();
    let (mut in_quotes, mut at_field_start, mut after_closing_quote) = (false, true, false);
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    in_quotes = false;
                    after_closing_quote = true;
                }
            }
            continue;
        }
        match c {
            ',' => {
                at_field_start = true;
                after_closing_quote = false;
                continue;
            }
            _ if after_closing_quote => return false,
            '"' if at_field_start => in_quotes = true,
            '"' => return false,
            _ => {}
        }
        at_field_start = false;
    }
    !in_quotes
}

fn read_csv_record(line: &str) -> Result<csv::StringRecord, csv::Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    reader.read_record(&mut record)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(p: &ParsedKeys) -> Vec<&str> {
        p.keys.iter().map(LicenseKey::reveal).collect()
    }

    #[test]
    fn plain_lines_are_trimmed_and_comments_skipped() {
        let p = parse_keys(
            "# vendor batch 7\n  PRO-1  \n\nPRO-2\r\nPRO-1\n#PRO-3\n",
            KeyRules::default(),
        );
        assert_eq!(values(&p), vec!["PRO-1", "PRO-2"]);
        assert_eq!(p.duplicates_in_file, 1);
        assert!(p.invalid.is_empty());
    }

    #[test]
    fn csv_with_a_key_column_reads_that_column() {
        let p = parse_keys(
            "serial,Key,batch\n1,PRO-A,x\n2,\"PRO-B\",y\n3,,z\n4\n",
            KeyRules::default(),
        );
        assert_eq!(values(&p), vec!["PRO-A", "PRO-B"]);
        assert_eq!(p.invalid.len(), 2);
        assert_eq!((p.invalid[0].0, p.invalid[1].0), (4, 5));
        assert!(p.invalid[1].1.contains("no column"), "{:?}", p.invalid);
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        assert_eq!(
            values(&parse_keys("\u{feff}PRO-1\nPRO-2\n", KeyRules::default())),
            vec!["PRO-1", "PRO-2"]
        );
        assert_eq!(
            values(&parse_keys(
                "\u{feff}serial,key\n1,PRO-A\n",
                KeyRules::default()
            )),
            vec!["PRO-A"]
        );
    }

    #[test]
    fn invisible_and_direction_changing_characters_make_a_line_invalid() {
        let p = parse_keys(
            "PRO\u{200b}-1\nPRO-\u{202e}2\nPRO-3\u{2060}\nPRO-4\n\u{00ad}PRO-5\n",
            KeyRules::default(),
        );
        assert_eq!(values(&p), vec!["PRO-4"]);
        assert_eq!(
            p.invalid.iter().map(|i| i.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );
        assert!(p.invalid[0].1.contains("invisible"), "{:?}", p.invalid);
    }

    #[test]
    fn a_line_with_spaces_inside_is_no_key_unless_the_pool_takes_them() {
        let text = "key\nbad line with spaces\nPRO-1\n";
        let p = parse_keys(text, KeyRules::default());
        assert_eq!(values(&p), vec!["PRO-1"]);
        assert_eq!(p.invalid.len(), 1);
        assert!(p.invalid[0].1.contains("spaces inside"), "{:?}", p.invalid);
        let p = parse_keys(
            "bad line with spaces\nPRO-1\n",
            KeyRules {
                spaces_inside: true,
            },
        );
        assert_eq!(values(&p), vec!["bad line with spaces", "PRO-1"]);
    }

    #[test]
    fn malformed_csv_rows_are_invalid_lines_not_keys() {
        let p = parse_keys(
            "serial,key\n1,\"PRO-A\n2,PRO-B\n3,\"PRO\"C\"\n4,PR\"O-D\n5,\"PRO-\"\"E\"\n",
            KeyRules::default(),
        );
        assert_eq!(values(&p), vec!["PRO-B", "PRO-\"E"]);
        assert_eq!(
            p.invalid.iter().map(|i| i.0).collect::<Vec<_>>(),
            vec![2, 4, 5]
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_line() {
        let long = "X".repeat(MAX_KEY_LEN + 1);
        let p = parse_keys(&format!("OK-1\n{long}\nBAD\u{7}KEY\n"), KeyRules::default());
        assert_eq!(values(&p), vec!["OK-1"]);
        assert_eq!(
            p.invalid.iter().map(|i| i.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Lines built from pieces a real key file, a spreadsheet export or a hostile one has.
    fn line() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[A-Z0-9]{1,8}",
            Just("-".to_string()),
            Just(",".to_string()),
            Just("\"".to_string()),
            Just("#".to_string()),
            Just(" ".to_string()),
            Just("\u{feff}".to_string()),
            Just("\u{200b}".to_string()),
            Just("\u{202e}".to_string()),
            Just("\u{1b}[2J".to_string()),
            Just("\0".to_string()),
            Just("key".to_string()),
            "\\PC{0,4}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_file_parses_into_printable_unique_keys_and_counted_lines(
            lines in proptest::collection::vec(line(), 0..40),
            long in proptest::option::of(300usize..2_000),
        ) {
            let mut text = lines.join("\n");
            if let Some(n) = long {
                text.push('\n');
                text.push_str(&"K".repeat(n));
            }
            let parsed = parse_keys(&text, KeyRules::default());
            let mut seen = HashSet::new();
            for key in &parsed.keys {
                let value = key.reveal();
                prop_assert!(LicenseKey::parse(value).is_ok());
                prop_assert!(value == value.trim());
                prop_assert!(seen.insert(value.to_string()), "{value:?} twice");
            }
            let lines_in_file = text.lines().count();
            prop_assert!(parsed.keys.len() + parsed.duplicates_in_file + parsed.invalid.len() <= lines_in_file);
            for (line_no, _) in &parsed.invalid {
                prop_assert!(*line_no >= 1 && *line_no <= lines_in_file);
            }
        }
    }
}
