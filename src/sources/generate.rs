//! `generate` pools: keys made from a template, each `X` one character drawn from the
//! operating system's CSPRNG out of an alphabet without look-alike characters.

use rand::{Rng, TryRngCore, rngs::OsRng};

use super::{GrantFacts, KeySource, PoolRecipe, SourceError, Yield};
use crate::domain::{LicenseKey, MAX_KEY_LEN};

/// The source of a `generate` pool: a new key from its template for every grant.
pub struct FromTemplate<'a> {
    pub pool: &'a PoolRecipe,
}

impl KeySource for FromTemplate<'_> {
    async fn key_for(&self, _grant: &GrantFacts<'_>) -> Result<Yield, SourceError> {
        let pattern = self.pool.template.as_deref().unwrap_or_default();
        Template::parse(pattern, self.pool.alphabet.as_deref(), true)
            .map_err(|e| format!("pool `{}`: {e}", self.pool.pool))
            .and_then(|template| template.make())
            .map(Yield::Key)
            .map_err(SourceError::Fail)
    }

    async fn problem(&self) -> Option<String> {
        None
    }
}

/// Crockford's base32: digits and capitals without I, L, O and U.
pub const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The least randomness a key may carry without `--allow-weak-template`.
pub const MIN_BITS: f64 = 80.0;

/// A checked template and alphabet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pattern: Vec<char>,
    alphabet: Vec<char>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template has no X: each X is replaced by one random character")]
    NoPlaceholder,
    #[error("the template is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    #[error("the template may hold only printable characters without spaces")]
    BadCharacter,
    #[error("the alphabet needs at least 2 different printable characters without spaces")]
    BadAlphabet,
    #[error(
        "the template gives {bits:.0} bits of randomness, fewer than {MIN_BITS:.0}: add X's (each adds {per_x:.1} bits), or pass --allow-weak-template if guessable keys are acceptable"
    )]
    Weak { bits: f64, per_x: f64 },
}

impl Template {
    /// Checks `pattern` and `alphabet` (Crockford base32 when None); a template with less
    /// than 80 bits of randomness is refused unless `allow_weak`.
    pub fn parse(
        pattern: &str,
        alphabet: Option<&str>,
        allow_weak: bool,
    ) -> Result<Template, TemplateError> {
        // Each character once, in the order given: a repeat would make it likelier.
        let letters = alphabet
            .unwrap_or(CROCKFORD)
            .chars()
            .fold(Vec::new(), |mut kept, c| {
                if !kept.contains(&c) {
                    kept.push(c);
                }
                kept
            });
        let printable = |c: &char| !c.is_control() && !c.is_whitespace();
        if letters.len() < 2 || !letters.iter().all(printable) {
            return Err(TemplateError::BadAlphabet);
        }
        let pattern: Vec<char> = pattern.chars().collect();
        if pattern.len() > MAX_KEY_LEN {
            return Err(TemplateError::TooLong);
        }
        if !pattern.iter().all(printable) {
            return Err(TemplateError::BadCharacter);
        }
        let template = Template {
            pattern,
            alphabet: letters,
        };
        if template.placeholders() == 0 {
            return Err(TemplateError::NoPlaceholder);
        }
        let bits = template.bits();
        if bits < MIN_BITS && !allow_weak {
            return Err(TemplateError::Weak {
                bits,
                per_x: (template.alphabet.len() as f64).log2(),
            });
        }
        Ok(template)
    }

    fn placeholders(&self) -> usize {
        self.pattern.iter().filter(|c| **c == 'X').count()
    }

    /// Bits of randomness in one key.
    pub fn bits(&self) -> f64 {
        self.placeholders() as f64 * (self.alphabet.len() as f64).log2()
    }

    /// A new key: every `X` replaced by a character drawn uniformly from the OS CSPRNG.
    pub fn make(&self) -> Result<LicenseKey, String> {
        let mut rng = OsRng.unwrap_err();
        let value: String = self
            .pattern
            .iter()
            .map(|c| match c {
                'X' => self.alphabet[rng.random_range(0..self.alphabet.len())],
                literal => *literal,
            })
            .collect();
        LicenseKey::parse(&value).map_err(|e| format!("the template makes an invalid key: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const PRO: &str = "PRO-XXXXX-XXXXX-XXXXX-XXXXX";

    #[test]
    fn keys_follow_the_template_with_crockford_characters() {
        let template = Template::parse(PRO, None, false).unwrap();
        assert_eq!(template.bits(), 100.0);
        let mut seen = HashSet::new();
        let mut used = HashSet::new();
        for _ in 0..100_000 {
            let key = template.make().unwrap();
            let value = key.reveal();
            assert_eq!(value.len(), PRO.len());
            for (made, pattern) in value.chars().zip(PRO.chars()) {
                match pattern {
                    'X' => {
                        assert!(CROCKFORD.contains(made), "{made} is not Crockford base32");
                        used.insert(made);
                    }
                    literal => assert_eq!(made, literal),
                }
            }
            assert!(seen.insert(value.to_string()), "a key repeated");
        }
        // Every character of the alphabet turns up, so the draw covers it.
        assert!(CROCKFORD.chars().all(|c| used.contains(&c)));
        assert!(!used.contains(&'I') && !used.contains(&'O') && !used.contains(&'U'));
    }

    #[test]
    fn weak_or_broken_templates_are_refused_with_the_reason() {
        let weak = Template::parse("PRO-XXXXX", None, false).unwrap_err();
        assert!(weak.to_string().contains("25 bits"), "{weak}");
        assert!(Template::parse("PRO-XXXXX", None, true).is_ok());
        assert_eq!(
            Template::parse("PRO-12345", None, true),
            Err(TemplateError::NoPlaceholder)
        );
        assert_eq!(
            Template::parse("PRO XXXX", None, true),
            Err(TemplateError::BadCharacter)
        );
        assert_eq!(
            Template::parse("XXXX", Some("AAAA"), true),
            Err(TemplateError::BadAlphabet)
        );
        let long = "X".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            Template::parse(&long, None, false),
            Err(TemplateError::TooLong)
        );
    }

    #[test]
    fn a_custom_alphabet_sets_the_strength() {
        let hex = Template::parse(&"X".repeat(20), Some("0123456789abcdef"), false).unwrap();
        assert_eq!(hex.bits(), 80.0);
        assert!(
            hex.make()
                .unwrap()
                .reveal()
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
    }
}
