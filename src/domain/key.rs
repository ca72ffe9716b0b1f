//! A license key's value. `Debug` and `Display` show it masked, so it cannot reach a log or a
//! terminal by accident; `reveal` is the one, explicit way to the full value.

use std::fmt;

use sqlx::Postgres;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};

/// Longest key value accepted, in characters.
pub const MAX_KEY_LEN: usize = 256;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LicenseKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("key longer than {MAX_KEY_LEN} characters")]
    TooLong,
    #[error("key contains control characters")]
    ControlCharacter,
    #[error("key contains invisible or direction-changing characters")]
    Invisible,
}

impl LicenseKey {
    pub fn parse(raw: &str) -> Result<LicenseKey, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.chars().count() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        if raw.chars().any(super::text::invisible) {
            return Err(KeyError::Invisible);
        }
        Ok(LicenseKey(raw.to_string()))
    }

    /// The full value: for Dodo, and for an operator who asked for it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// The value as people see it, e.g. `PRO-****-****-DDDD`.
    pub fn masked(&self) -> String {
        mask_key(&self.0)
    }

    /// The characters of the key its masked form shows at the end (lowercased), by which
    /// people find it; empty when the mask shows none.
    pub fn search_tail(&self) -> String {
        key_tail(&self.0)
    }

    /// Whether `other` (a value Dodo reported) is this key.
    pub fn is(&self, other: Option<&str>) -> bool {
        other == Some(self.0.as_str())
    }
}

impl fmt::Debug for LicenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LicenseKey({})", self.masked())
    }
}

impl fmt::Display for LicenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The last four characters of `key` (lowercased) when its masked form shows them, else empty.
fn key_tail(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let masked = mask_key(key);
    if tail.chars().count() == 4 && masked.ends_with(&tail) && !tail.contains('*') {
        tail.to_lowercase()
    } else {
        String::new()
    }
}

/// Hides a key for display: keeps a short leading prefix group (when the key has three or more
/// groups) and the last four characters, e.g. `PRO-AAAA-BBBB-DDDD` → `PRO-****-****-DDDD` —
/// but never more than half of its letters and digits, whatever the key's shape.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let alphanumeric = chars.iter().filter(|c| c.is_alphanumeric()).count();
    let mut tail = if chars.len() >= 12 { 4 } else { 0 };
    let first_group = key.split('-').next().map_or(0, |g| g.chars().count());
    let mut prefix = if key.split('-').count() >= 3 && first_group <= 5 {
        first_group
    } else {
        0
    };
    let shown = |prefix: usize, tail: usize| {
        chars
            .iter()
            .enumerate()
            .filter(|(i, c)| c.is_alphanumeric() && (*i < prefix || *i >= chars.len() - tail))
            .count()
    };
    if shown(prefix, tail) * 2 > alphanumeric {
        prefix = 0;
    }
    if shown(prefix, tail) * 2 > alphanumeric {
        tail = 0;
    }
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let visible = i < prefix || i >= chars.len() - tail;
            if visible || !c.is_alphanumeric() {
                c
            } else {
                '*'
            }
        })
        .collect()
}

impl sqlx::Type<Postgres> for LicenseKey {
    fn type_info() -> PgTypeInfo {
        <String as sqlx::Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <String as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for LicenseKey {
    fn array_type_info() -> PgTypeInfo {
        <String as PgHasArrayType>::array_type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for LicenseKey {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as sqlx::Encode<Postgres>>::encode(self.0.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for LicenseKey {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(LicenseKey(<String as sqlx::Decode<Postgres>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_prefix_and_last_four() {
        assert_eq!(mask_key("PRO-AAAA-BBBB-DDDD"), "PRO-****-****-DDDD");
        assert_eq!(
            mask_key("PRO-AAAA-BBBB-CCCC-DDDD"),
            "PRO-****-****-****-DDDD"
        );
        assert_eq!(mask_key("ABCDEFGHIJKLMNOP"), "************MNOP");
        assert_eq!(mask_key("SHORT1"), "******");
        assert_eq!(mask_key("AB-CDEFGHIJKLMN"), "**-********KLMN");
    }

    #[test]
    fn masking_never_shows_most_of_a_key_whatever_its_shape() {
        for key in [
            "ABCDEFGHIJKLMNOPQRSTUVWX-AB-CD",
            "LONGPREFIX-A-B",
            "X-Y-Z",
            "ABCDEFGHIJKL",
            "A-BCDEFGHIJKLMNOPQRSTUVWXYZ",
        ] {
            let shown = mask_key(key);
            let total = key.chars().filter(|c| c.is_alphanumeric()).count();
            let visible = shown.chars().filter(|c| c.is_alphanumeric()).count();
            assert!(visible * 2 <= total, "{key} → {shown}");
            assert_eq!(shown.chars().count(), key.chars().count());
        }
    }

    #[test]
    fn a_key_prints_masked_unless_revealed() {
        let key = LicenseKey::parse("PRO-AAAA-BBBB-DDDD").unwrap();
        assert_eq!(format!("{key}"), "PRO-****-****-DDDD");
        assert_eq!(format!("{key:?}"), "LicenseKey(PRO-****-****-DDDD)");
        assert_eq!(key.reveal(), "PRO-AAAA-BBBB-DDDD");
        assert!(key.is(Some("PRO-AAAA-BBBB-DDDD")) && !key.is(None));
    }

    #[test]
    fn keys_are_bounded_and_printable() {
        assert_eq!(LicenseKey::parse(""), Err(KeyError::Empty));
        assert_eq!(
            LicenseKey::parse(&"K".repeat(MAX_KEY_LEN + 1)),
            Err(KeyError::TooLong)
        );
        assert_eq!(LicenseKey::parse("A\tB"), Err(KeyError::ControlCharacter));
    }
}
