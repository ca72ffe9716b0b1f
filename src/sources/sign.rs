//! `sign` pools: keys an app can check offline. A key is the base64url (no padding) encoding
//! of a payload followed by its 64-byte Ed25519 signature over exactly those payload bytes.
//! The payload (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, 1 |
//! | 4 | issued at, Unix seconds |
//! | 4 | expires at, Unix seconds; 0 = never |
//! | 4 | activations limit; 0 = none |
//! | 1 + n | grant id: its length n, then n bytes of UTF-8 |
//! | 1 + m | entitlement id: its length m, then m bytes of UTF-8 |

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::{TryRngCore, rngs::OsRng};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{GrantFacts, KeySource, PoolRecipe, SourceError, Yield};
use crate::domain::{LicenseKey, MAX_KEY_LEN};

/// The source of a `sign` pool: a key signed for each grant, carrying its facts.
pub struct KeySigner<'a> {
    pub signing: Option<&'a SigningKey>,
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

const VERSION: u8 = 1;
const HEADER: usize = 13;

/// What a signed key says, as `keys verify` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedPayload {
    pub grant_id: String,
    pub entitlement_id: String,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations_limit: Option<u32>,
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a signed key: it is not base64url")]
    NotBase64,
    #[error("not a signed key: too short or malformed")]
    Malformed,
    #[error("signed with format version {0}, which this keyrelay does not know")]
    UnknownVersion(u8),
    #[error("the signature does not match: the key was changed or signed with another key")]
    BadSignature,
}

/// A fresh signing key: (private, public), both base64 of 32 bytes.
pub fn new_signing_key() -> (SecretString, String) {
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .expect("the operating system's random source works");
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let private = SecretString::from(STANDARD.encode(key.to_bytes()));
    (private, STANDARD.encode(key.verifying_key().to_bytes()))
}

/// `keys.signing_key`: base64 of the 32-byte Ed25519 private key.
pub fn parse_signing_key(raw: &SecretString) -> anyhow::Result<SigningKey> {
    let bytes = STANDARD
        .decode(raw.expose_secret().trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "keys.signing_key (KEYRELAY_SIGNING_KEY) is not base64 of 32 bytes; make one with `keyrelay keys new-signing-key`"
            )
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A public key as `keys new-signing-key` prints it.
pub fn parse_public_key(raw: &str) -> anyhow::Result<VerifyingKey> {
    STANDARD
        .decode(raw.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            anyhow::anyhow!("the public key is not base64 of a 32-byte Ed25519 public key")
        })
}

fn unix_secs(at: DateTime<Utc>) -> Result<u32, String> {
    u32::try_from(at.timestamp()).map_err(|_| format!("{at} does not fit a signed key"))
}

/// Signs `facts` into a key.
pub fn make(signing: &SigningKey, facts: &KeyFacts<'_>) -> Result<LicenseKey, String> {
    let mut payload = vec![VERSION];
    payload.extend(unix_secs(facts.issued_at)?.to_be_bytes());
    let expires = facts.expires_at.map(unix_secs).transpose()?.unwrap_or(0);
    payload.extend(expires.to_be_bytes());
    payload.extend(facts.activations_limit.unwrap_or(0).to_be_bytes());
    for id in [facts.grant_id, facts.entitlement_id] {
        let len = u8::try_from(id.len()).map_err(|_| "an id longer than 255 bytes".to_string())?;
        payload.push(len);
        payload.extend(id.as_bytes());
    }
    let signature = signing.sign(&payload);
    payload.extend(signature.to_bytes());
    let value = URL_SAFE_NO_PAD.encode(&payload);
    if value.len() > MAX_KEY_LEN {
        return Err(format!(
            "a signed key for grant {} would be {} characters, more than the {MAX_KEY_LEN} a key may have (the grant and entitlement ids are too long)",
            facts.grant_id,
            value.len()
        ));
    }
    LicenseKey::parse(&value).map_err(|e| e.to_string())
}

/// Checks a key's signature and reads its payload.
pub fn verify(key: &str, public: &VerifyingKey) -> Result<SignedPayload, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(key.trim())
        .map_err(|_| VerifyError::NotBase64)?;
    if bytes.len() < HEADER + 2 + Signature::BYTE_SIZE {
        return Err(VerifyError::Malformed);
    }
    let (payload, signature) = bytes.split_at(bytes.len() - Signature::BYTE_SIZE);
    let signature = Signature::from_slice(signature).map_err(|_| VerifyError::Malformed)?;
    public
        .verify(payload, &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    if payload[0] != VERSION {
        return Err(VerifyError::UnknownVersion(payload[0]));
    }
    let number = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
    let time = |secs: u32| {
        DateTime::from_timestamp(i64::from(secs), 0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .ok_or(VerifyError::Malformed)
    };
    let mut rest = &payload[HEADER..];
    let mut text = || -> Result<String, VerifyError> {
        let (&len, tail) = rest.split_first().ok_or(VerifyError::Malformed)?;
        let (id, tail) = tail
            .split_at_checked(len.into())
            .ok_or(VerifyError::Malformed)?;
        rest = tail;
        String::from_utf8(id.to_vec()).map_err(|_| VerifyError::Malformed)
    };
    let (grant_id, entitlement_id) = (text()?, text()?);
    Ok(SignedPayload {
        grant_id,
        entitlement_id,
        issued_at: time(number(1))?,
        expires_at: (number(5) != 0).then(|| time(number(5))).transpose()?,
        activations_limit: (number(9) != 0).then(|| number(9)),
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_key_verifies_and_carries_its_grant() {
        let (private, public) = new_signing_key();
        let signing = parse_signing_key(&private).unwrap();
        let issued = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let key = make(&signing, &facts(issued)).unwrap();
        let payload = verify(key.reveal(), &parse_public_key(&public).unwrap()).unwrap();
        assert_eq!(
            payload,
            SignedPayload {
                grant_id: "grant_8f2kq0aZ19xQ".into(),
                entitlement_id: "ent_pro_license".into(),
                issued_at: "2026-11-18T11:06:40Z".into(),
                expires_at: Some("2027-11-18T11:06:40Z".into()),
                activations_limit: Some(3),
            }
        );
    }

    #[test]
    fn any_changed_character_or_another_public_key_fails() {
        let (private, public) = new_signing_key();
        let public = parse_public_key(&public).unwrap();
        let key = make(&parse_signing_key(&private).unwrap(), &facts(Utc::now())).unwrap();
        let value = key.reveal();
        for i in 0..value.len() {
            let mut changed: Vec<char> = value.chars().collect();
            changed[i] = if changed[i] == 'A' { 'B' } else { 'A' };
            let changed: String = changed.into_iter().collect();
            assert!(verify(&changed, &public).is_err(), "position {i} changed");
        }
        let (_, other) = new_signing_key();
        assert_eq!(
            verify(value, &parse_public_key(&other).unwrap()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn ids_too_long_for_a_key_are_an_error_not_a_truncated_key() {
        let (private, _) = new_signing_key();
        let long = "g".repeat(150);
        let facts = KeyFacts {
            grant_id: &long,
            ..facts(Utc::now())
        };
        let error = make(&parse_signing_key(&private).unwrap(), &facts).unwrap_err();
        assert!(error.contains("too long"), "{error}");
    }
}

/// README.md's Rust example, word for word, so the documentation cannot drift from the format.
#[cfg(test)]
mod readme_example {
    use base64::{
        Engine,
        engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    };
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    fn verify(key: &str, public_b64: &str) -> Option<(String, u32, u32)> {
        let public: [u8; 32] = STANDARD.decode(public_b64).ok()?.try_into().ok()?;
        let bytes = URL_SAFE_NO_PAD.decode(key.trim()).ok()?;
        let (payload, sig) = bytes.split_at(bytes.len().checked_sub(64)?);
        VerifyingKey::from_bytes(&public)
            .ok()?
            .verify(payload, &Signature::from_slice(sig).ok()?)
            .ok()?;
        let u32_at = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap());
        let n = *payload.get(13)? as usize;
        let grant_id = String::from_utf8(payload.get(14..14 + n)?.to_vec()).ok()?;
        Some((grant_id, u32_at(5), u32_at(9))) // grant, expires at, activations limit
    }

    #[test]
    fn the_readme_example_reads_a_signed_key() {
        let (private, public) = super::new_signing_key();
        let issued = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let facts = super::KeyFacts {
            grant_id: "grant_readme",
            entitlement_id: "ent_readme",
            issued_at: issued,
            expires_at: Some(issued + chrono::TimeDelta::days(1)),
            activations_limit: Some(2),
        };
        let key = super::make(&super::parse_signing_key(&private).unwrap(), &facts).unwrap();
        assert_eq!(
            verify(key.reveal(), &public),
            Some(("grant_readme".to_string(), 1_800_086_400, 2))
        );
        let mut changed: Vec<char> = key.reveal().chars().collect();
        changed[40] = if changed[40] == 'A' { 'B' } else { 'A' };
        assert_eq!(
            verify(&changed.into_iter().collect::<String>(), &public),
            None
        );
    }
}
