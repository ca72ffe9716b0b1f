//! The revocation list of `sign` pools: which signed keys no longer count. An app that checks
//! keys offline fetches it (`GET /signing-keys/revoked`) now and then and rejects a key whose
//! grant is on it. It is JSON, signed with the signing key so it can be served from anywhere:
//!
//! ```json
//! {"list": "<base64url of the list's JSON bytes>", "signature": "<base64url Ed25519 signature over exactly those bytes>", "kid": "<id of the signing key>"}
//! ```
//!
//! (a list without `kid` is checked against every trusted key)
//!
//! and the list itself is
//! `{"version": 1, "sequence": N, "issued_at": "…", "revoked": [{"grant_id", "since", "state"}]}`:
//! `sequence` grows with every change (an app keeps the list with the highest), `state` is
//! `revoked` (for good) or `suspended` (may return).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};

use super::sign::{PublicKeys, SigningKeys};

/// One signed key that no longer counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Revoked {
    pub grant_id: String,
    /// When it stopped counting (RFC 3339).
    pub since: String,
    /// `revoked` or `suspended`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    pub version: u32,
    pub sequence: i64,
    pub issued_at: String,
    pub revoked: Vec<Revoked>,
}

/// The list with its signature, as served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedList {
    pub list: String,
    pub signature: String,
    /// The id of the key that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

impl RevocationList {
    pub fn new(sequence: i64, revoked: Vec<Revoked>, now: DateTime<Utc>) -> RevocationList {
        RevocationList {
            version: 1,
            sequence,
            issued_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            revoked,
        }
    }

    /// Signed with the key that signs new keys, under its id.
    pub fn sign(&self, keys: &SigningKeys) -> SignedList {
        let bytes = serde_json::to_vec(self).expect("a revocation list serializes");
        SignedList {
            signature: URL_SAFE_NO_PAD.encode(keys.signing().sign(&bytes).to_bytes()),
            list: URL_SAFE_NO_PAD.encode(bytes),
            kid: Some(keys.kid()),
        }
    }

    /// The entry of `grant_id`, if its key no longer counts.
    pub fn find(&self, grant_id: &str) -> Option<&Revoked> {
        self.revoked.iter().find(|r| r.grant_id == grant_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the revocation list is not JSON with `list` and `signature`: {0}")]
    Malformed(String),
    #[error("the revocation list's signature does not match the trusted public keys")]
    BadSignature,
}

/// Checks a served list's signature (under the key its `kid` names, or any trusted key when
/// it names none) and reads it.
pub fn verify(served: &[u8], trusted: &PublicKeys) -> Result<RevocationList, ListError> {
    let malformed = |e: &dyn std::fmt::Display| ListError::Malformed(e.to_string());
    let signed: SignedList = serde_json::from_slice(served).map_err(|e| malformed(&e))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(signed.list.trim())
        .map_err(|e| malformed(&e))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signed.signature.trim())
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or(ListError::BadSignature)?;
    if !trusted.signed(signed.kid.as_deref(), &bytes, &signature) {
        return Err(ListError::BadSignature);
    }
    serde_json::from_slice(&bytes).map_err(|e| malformed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_list_verifies_and_any_change_or_other_key_fails() {
        let keys = |seed: u8| {
            let raw = base64::engine::general_purpose::STANDARD.encode([seed; 32]);
            SigningKeys::parse(&secrecy::SecretString::from(raw)).unwrap()
        };
        let signing = keys(7);
        let list = RevocationList::new(
            3,
            vec![Revoked {
                grant_id: "grant_1".into(),
                since: "2026-12-07T00:00:00Z".into(),
                state: "revoked".into(),
            }],
            Utc::now(),
        );
        let served = serde_json::to_vec(&list.sign(&signing)).unwrap();
        let read = verify(&served, signing.published()).unwrap();
        assert_eq!(read, list);
        assert!(read.find("grant_1").is_some() && read.find("grant_2").is_none());
        let other = keys(8);
        assert_eq!(
            verify(&served, other.published()),
            Err(ListError::BadSignature)
        );
        let mut tampered: SignedList = serde_json::from_slice(&served).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&tampered.list).unwrap();
        let at = bytes.iter().position(|b| *b == b'1').unwrap();
        bytes[at] = b'2';
        tampered.list = URL_SAFE_NO_PAD.encode(bytes);
        let tampered = serde_json::to_vec(&tampered).unwrap();
        assert_eq!(
            verify(&tampered, signing.published()),
            Err(ListError::BadSignature)
        );
        assert!(matches!(
            verify(b"not json", signing.published()),
            Err(ListError::Malformed(_))
        ));
    }
}
