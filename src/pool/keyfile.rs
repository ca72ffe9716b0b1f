//! Reading key files: one key per line, or a CSV whose header has a `key` column. Whitespace is
//! trimmed; blank lines and `#` comments are skipped; repeats within the file are counted.

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

pub fn parse_keys(text: &str) -> ParsedKeys {
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
    let record = read_csv_record(line).map_err(|e| format!("unreadable CSV row: {e}"))?;
    record
        .get(column)
        .map(|f| f.trim().to_string())
        .ok_or_else(|| format!("CSV row has no column {} (`key`)", column + 1))
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
        let p = parse_keys("# vendor batch 7\n  PRO-1  \n\nPRO-2\r\nPRO-1\n#PRO-3\n");
        assert_eq!(values(&p), vec!["PRO-1", "PRO-2"]);
        assert_eq!(p.duplicates_in_file, 1);
        assert!(p.invalid.is_empty());
    }

    #[test]
    fn csv_with_a_key_column_reads_that_column() {
        let p = parse_keys("serial,Key,batch\n1,PRO-A,x\n2,\"PRO-B\",y\n3,,z\n4\n");
        assert_eq!(values(&p), vec!["PRO-A", "PRO-B"]);
        assert_eq!(p.invalid.len(), 2);
        assert_eq!((p.invalid[0].0, p.invalid[1].0), (4, 5));
        assert!(p.invalid[1].1.contains("no column"), "{:?}", p.invalid);
    }

    #[test]
    fn bad_values_are_reported_with_their_line() {
        let long = "X".repeat(MAX_KEY_LEN + 1);
        let p = parse_keys(&format!("OK-1\n{long}\nBAD\u{7}KEY\n"));
        assert_eq!(values(&p), vec!["OK-1"]);
        assert_eq!(
            p.invalid.iter().map(|i| i.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }
}
