//! `sign` pools: keys an app can check offline, signed with the first of `keys.signing_key`
//! in format 2 (`format`), checked against the published keys (`keyset`) by keyrelay and by
//! the verifiers under `verifiers/`, which `vectors` gives one set of test keys.

pub mod format;
pub mod keyset;
#[cfg(test)]
mod vectors;

use chrono::{DateTime, Utc};

use super::{GrantFacts, KeySource, PoolRecipe, SourceError, Yield};
use crate::domain::{LicenseKey, MAX_KEY_LEN};
pub use format::{Refusal, SignedPayload, verify};
pub use keyset::{PublicKeys, SigningKeys, new_signing_key};

/// The source of a `sign` pool: a key signed for each grant, carrying its facts.
pub struct KeySigner<'a> {
    pub signing: Option<&'a SigningKeys>,
    pub pool: &'a PoolRecipe,
}

impl KeySource for KeySigner<'_> {
    async fn key_for(&self, grant: &GrantFacts<'_>) -> Result<Yield, SourceError> {
        let signing = self.signing.ok_or_else(|| {
            SourceError::Fail(format!(
                "pool `{}` signs its keys, but keys.signing_key (KEYRELAY_SIGNING_KEY) is not set; make one with `keyrelay keys new-signing-key`, set it, restart, then `keyrelay jobs retry --all-failed`",
                self.pool.pool
            ))
        })?;
        let facts = KeyFacts {
            grant_id: grant.grant_id.as_str(),
            entitlement_id: self.pool.entitlement_id.as_str(),
            issued_at: grant.now,
            expires_at: self.pool.expires_at(grant.now),
            activations_limit: self
                .pool
                .activations_limit
                .and_then(|n| u32::try_from(n).ok()),
        };
        make(signing, &facts)
            .map(Yield::Key)
            .map_err(SourceError::Fail)
    }

    async fn problem(&self) -> Option<String> {
        self.signing.is_none().then(|| {
            "signs its keys, but keys.signing_key (KEYRELAY_SIGNING_KEY) is not set in the workers; set it, restart, then `keyrelay jobs retry --all-failed`".into()
        })
    }
}

/// The facts a signed key carries, before signing.
#[derive(Debug, Clone)]
pub struct KeyFacts<'a> {
    pub grant_id: &'a str,
    pub entitlement_id: &'a str,
    pub issued_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub activations_limit: Option<u32>,
}

fn unix_secs(at: DateTime<Utc>) -> Result<u32, String> {
    u32::try_from(at.timestamp()).map_err(|_| format!("{at} does not fit a signed key"))
}

/// Signs `facts` into a format-2 key with the signing key, carrying its id.
pub fn make(signing: &SigningKeys, facts: &KeyFacts<'_>) -> Result<LicenseKey, String> {
    let fields = format::Fields {
        grant_id: facts.grant_id,
        entitlement_id: facts.entitlement_id,
        issued_at: unix_secs(facts.issued_at)?,
        expires_at: facts.expires_at.map(unix_secs).transpose()?.unwrap_or(0),
        activations_limit: facts.activations_limit.unwrap_or(0),
    };
    let payload = format::payload(format::V2, signing.id(), &fields)?;
    let value = format::seal(signing.signing(), payload);
    if value.len() > MAX_KEY_LEN {
        return Err(format!(
            "a signed key for grant {} would be {} characters, more than the {MAX_KEY_LEN} a key may have (the grant and entitlement ids are too long)",
            facts.grant_id,
            value.len()
        ));
    }
    LicenseKey::parse(&value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use secrecy::SecretString;

    use super::*;

    fn facts(issued_at: DateTime<Utc>) -> KeyFacts<'static> {
        KeyFacts {
            grant_id: "grant_8f2kq0aZ19xQ",
            entitlement_id: "ent_pro_license",
            issued_at,
            expires_at: Some(issued_at + chrono::TimeDelta::days(365)),
            activations_limit: Some(3),
        }
    }

    fn keys(seeds: &[u8]) -> SigningKeys {
        let raw: Vec<String> = seeds.iter().map(|s| STANDARD.encode([*s; 32])).collect();
        SigningKeys::parse(&SecretString::from(raw.join(" "))).unwrap()
    }

    #[test]
    fn a_key_carries_its_grant_and_the_id_of_the_key_that_signed_it() {
        let signing = keys(&[5, 6]);
        let issued = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let key = make(&signing, &facts(issued)).unwrap();
        let payload = verify(key.reveal(), signing.published(), None, issued).unwrap();
        assert_eq!(
            payload,
            SignedPayload {
                version: 2,
                key_id: Some(signing.kid()),
                grant_id: "grant_8f2kq0aZ19xQ".into(),
                entitlement_id: "ent_pro_license".into(),
                issued_at: 1_795_000_000,
                expires_at: Some(1_795_000_000 + 365 * 86_400),
                activations_limit: Some(3),
            }
        );
        let later = issued + chrono::TimeDelta::days(365);
        assert_eq!(
            verify(key.reveal(), signing.published(), None, later),
            Err(Refusal::Expired(1_795_000_000 + 365 * 86_400))
        );
    }

    #[test]
    fn any_changed_character_or_another_key_fails() {
        let signing = keys(&[7]);
        let now = Utc::now();
        let key = make(&signing, &facts(now)).unwrap();
        let value = key.reveal();
        for i in 0..value.len() {
            let mut changed: Vec<char> = value.chars().collect();
            changed[i] = if changed[i] == 'A' { 'B' } else { 'A' };
            let changed: String = changed.into_iter().collect();
            assert!(
                verify(&changed, signing.published(), None, now).is_err(),
                "position {i} changed"
            );
        }
        let other = keys(&[8]);
        assert_eq!(
            verify(value, other.published(), None, now),
            Err(Refusal::UnknownKeyId(signing.kid()))
        );
        // The other key published under this key's id: the id matches, the signature does not.
        let impostor = PublicKeys::from_jwks(
            other
                .published()
                .to_jwks()
                .to_string()
                .replace(&other.kid(), &signing.kid())
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            verify(value, &impostor, None, now),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn ids_too_long_for_a_key_are_an_error_not_a_truncated_key() {
        let long = "g".repeat(150);
        let facts = KeyFacts {
            grant_id: &long,
            ..facts(Utc::now())
        };
        let error = make(&keys(&[9]), &facts).unwrap_err();
        assert!(error.contains("too long"), "{error}");
    }
}
