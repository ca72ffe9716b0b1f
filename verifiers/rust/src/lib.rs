//! Checks keyrelay signed keys offline.
//!
//! ```ignore
//! let keys = keyrelay_verify::Keys::from_jwks(&std::fs::read("jwks.json")?)?; // or Keys::from_public_key("base64…")
//! let revoked = keyrelay_verify::Revocations::load(&std::fs::read("revoked.json")?, &keys)?; // optional
//! let payload = keyrelay_verify::verify(license_key, &keys, Some(&revoked), std::time::SystemTime::now())?;
//! ```
//!
//! A refused key gives an [`Invalid`] reason, in the order checked: malformed, unknown key id,
//! bad signature, expired, revoked.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a key is refused; `as_str` gives the name every keyrelay verifier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Malformed,
    UnknownKeyId,
    BadSignature,
    Expired,
    Revoked,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::UnknownKeyId => "unknown_key_id",
            Invalid::BadSignature => "bad_signature",
            Invalid::Expired => "expired",
            Invalid::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid key: {}", self.as_str())
    }
}

impl std::error::Error for Invalid {}

/// What a valid key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payload {
    pub version: u8,
    pub key_id: Option<String>,
    pub grant_id: String,
    pub entitlement_id: String,
    pub issued_at: u32,
    pub expires_at: Option<u32>,
    pub activations_limit: Option<u32>,
}

/// An input that is not what it should be (a JWK Set, a public key, a revocation list).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The public keys a key may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct Keys(BTreeMap<String, VerifyingKey>);

fn key(raw: &[u8]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(raw.try_into().ok()?).ok()
}

/// Canonical unpadded base64url (the engine refuses padding and stray bits).
fn b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

impl Keys {
    /// The Ed25519 keys with a `kid` of a JWK Set.
    pub fn from_jwks(json: &[u8]) -> Result<Keys, Error> {
        #[derive(Deserialize)]
        struct Jwk {
            kty: Option<String>,
            crv: Option<String>,
            x: Option<String>,
            kid: Option<String>,
        }
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Jwk>,
        }
        let set: Set = serde_json::from_slice(json)?;
        let keys = set.keys.into_iter().filter_map(|jwk| {
            let okp = jwk.kty.as_deref() == Some("OKP") && jwk.crv.as_deref() == Some("Ed25519");
            Some((jwk.kid.filter(|_| okp)?, key(&b64url(jwk.x.as_deref()?)?)?))
        });
        Ok(Keys(keys.collect()))
    }

    /// One public key (base64 of 32 bytes), under the id derived from it.
    pub fn from_public_key(base64: &str) -> Result<Keys, Error> {
        let raw = STANDARD.decode(base64)?;
        let public = key(&raw).ok_or("the public key is not 32 bytes of Ed25519")?;
        let thumbprint = format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(&raw)
        );
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(thumbprint)[..8]);
        Ok(Keys(BTreeMap::from([(kid, public)])))
    }
}

fn signed_by<'a>(
    mut keys: impl Iterator<Item = &'a VerifyingKey>,
    data: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    keys.any(|k| k.verify(data, &signature).is_ok())
}

/// The grants on a signed revocation list (`GET /signing-keys/revoked`).
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    pub grants: HashSet<String>,
    pub sequence: i64,
}

impl Revocations {
    /// Checks the list's signature against `keys` and reads it.
    pub fn load(json: &[u8], keys: &Keys) -> Result<Revocations, Error> {
        #[derive(Deserialize)]
        struct Served {
            list: String,
            signature: String,
            kid: Option<String>,
        }
        #[derive(Deserialize)]
        struct Entry {
            grant_id: String,
        }
        #[derive(Deserialize)]
        struct Listed {
            sequence: i64,
            revoked: Vec<Entry>,
        }
        let served: Served = serde_json::from_slice(json)?;
        let list = b64url(&served.list).ok_or("the revocation list is not base64url")?;
        let signature = b64url(&served.signature).unwrap_or_default();
        let candidates = keys
            .0
            .iter()
            .filter(|(kid, _)| served.kid.as_ref().map_or(true, |k| k == *kid))
            .map(|(_, key)| key);
        if !signed_by(candidates, &list, &signature) {
            return Err("the revocation list is not signed by a trusted key".into());
        }
        let listed: Listed = serde_json::from_slice(&list)?;
        let grants = listed.revoked.into_iter().map(|e| e.grant_id).collect();
        Ok(Revocations {
            grants,
            sequence: listed.sequence,
        })
    }
}

/// Checks `key` against `keys`, then its expiry at `now`, then `revoked`.
pub fn verify(
    key: &str,
    keys: &Keys,
    revoked: Option<&Revocations>,
    now: SystemTime,
) -> Result<Payload, Invalid> {
    let raw = b64url(key).ok_or(Invalid::Malformed)?;
    let version = *raw.first().ok_or(Invalid::Malformed)?;
    let at = match version {
        1 => 1,
        2 => 9,
        _ => return Err(Invalid::Malformed),
    };
    let split = raw.len().checked_sub(64).ok_or(Invalid::Malformed)?;
    let (payload, signature) = raw.split_at(split);
    let mut pos = at + 12;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let len = usize::from(*payload.get(pos).ok_or(Invalid::Malformed)?);
        let id = payload
            .get(pos + 1..pos + 1 + len)
            .ok_or(Invalid::Malformed)?;
        ids.push(String::from_utf8(id.to_vec()).map_err(|_| Invalid::Malformed)?);
        pos += 1 + len;
    }
    if pos != payload.len() {
        return Err(Invalid::Malformed);
    }
    let key_id = (version == 2).then(|| URL_SAFE_NO_PAD.encode(&payload[1..9]));
    let signed = match &key_id {
        Some(kid) => {
            let key = keys.0.get(kid).ok_or(Invalid::UnknownKeyId)?;
            signed_by(std::iter::once(key), payload, signature)
        }
        None => signed_by(keys.0.values(), payload, signature),
    };
    if !signed {
        return Err(Invalid::BadSignature);
    }
    let number = |i: usize| u32::from_be_bytes(payload[at + i..at + i + 4].try_into().unwrap());
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if number(4) != 0 && now >= u64::from(number(4)) {
        return Err(Invalid::Expired);
    }
    let entitlement_id = ids.pop().unwrap_or_default();
    let grant_id = ids.pop().unwrap_or_default();
    if revoked.is_some_and(|r| r.grants.contains(&grant_id)) {
        return Err(Invalid::Revoked);
    }
    let optional = |n: u32| (n != 0).then_some(n);
    Ok(Payload {
        version,
        key_id,
        grant_id,
        entitlement_id,
        issued_at: number(0),
        expires_at: optional(number(4)),
        activations_limit: optional(number(8)),
    })
}
