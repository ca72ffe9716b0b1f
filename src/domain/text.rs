//! Text that came from outside, made safe to store and to show: no control characters (no NUL
//! for Postgres, no terminal escapes for operators) and a bounded length.

/// Characters that show as nothing, or reorder what is shown: text holding one looks like
/// other text on screen (`U+202E` turns `evil.exe` around), and a key holding one would not
/// work when typed.
pub fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{061c}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
    )
}

/// Whether `c` may not appear in an id or a key: a control character, or one that shows as
/// nothing or reorders what is shown.
pub fn unsafe_in_id(c: char) -> bool {
    c.is_control() || invisible(c)
}

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
