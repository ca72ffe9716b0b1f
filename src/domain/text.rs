//! Text that came from outside, made safe to store and to show: no control characters (no NUL
//! for Postgres, no terminal escapes for operators) and a bounded length.

/// `raw` with control characters replaced by U+FFFD, cut to at most `max` bytes on a
/// character boundary.
pub fn printable(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max));
    for c in raw
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
    {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced_and_the_cut_falls_on_a_character_boundary() {
        assert_eq!(printable("a\u{1b}[2J\0b", 64), "a\u{FFFD}[2J\u{FFFD}b");
        assert_eq!(printable("ééé", 5), "éé");
        assert_eq!(printable("", 5), "");
    }
}
