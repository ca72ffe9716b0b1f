//! The signed key format. A key is the base64url encoding (RFC 4648 §5, no padding) of a
//! payload followed by the 64-byte Ed25519 signature of exactly those payload bytes. The
//! payload, integers big-endian:
//!
//! | version 1 | version 2 | field |
//! |---|---|---|
//! | 1 | 1 | format version |
//! | – | 8 | id of the signing key (`keyset::key_id_bytes`) |
//! | 4 | 4 | issued at, Unix seconds |
//! | 4 | 4 | expires at, Unix seconds; 0 = never |
//! | 4 | 4 | activations limit; 0 = none |
//! | 1 + n | 1 + n | grant id: its length n, then n bytes of UTF-8 |
//! | 1 + m | 1 + m | entitlement id: its length m, then m bytes of UTF-8 |
//!
//! A key is checked in this order, and refused with the first reason that applies:
//! `malformed` (not canonical base64url, unknown version, lengths that do not add up, ids not
//! UTF-8), `unknown_key_id` (version 2, no trusted key has its id), `bad_signature` (version 2:
//! the key with its id; version 1: every trusted key), `expired` (now ≥ expires at), `revoked`
//! (its grant is on the revocation list).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::Serialize;

use super::keyset::{KEY_ID_LEN, PublicKeys};
use crate::sources::revocations::RevocationList;

pub const V1: u8 = 1;
pub const V2: u8 = 2;
const NUMBERS: usize = 12;
const SIGNATURE: usize = Signature::BYTE_SIZE;

/// What a valid key says, in the form every verifier prints (times as Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedPayload {
    pub version: u8,
    /// The signing key's id (format 2); `None` for format 1.
    pub key_id: Option<String>,
    pub grant_id: String,
    pub entitlement_id: String,
    pub issued_at: u32,
    pub expires_at: Option<u32>,
    pub activations_limit: Option<u32>,
}

/// Why a key is refused. `code()` is the name every verifier uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a signed key: {0}")]
    Malformed(&'static str),
    #[error("signed with key id {0}, which none of the trusted public keys has")]
    UnknownKeyId(String),
    #[error("the signature does not match: the key was changed or signed with another key")]
    BadSignature,
    #[error("it expired at Unix time {0}")]
    Expired(u32),
    #[error("its grant is {state} since {since} (revocation list #{sequence})")]
    Revoked {
        state: String,
        since: String,
        sequence: i64,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownKeyId(_) => "unknown_key_id",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired(_) => "expired",
            Refusal::Revoked { .. } => "revoked",
        }
    }
}

/// The fields a key carries, before it is signed.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    pub grant_id: &'a str,
    pub entitlement_id: &'a str,
    pub issued_at: u32,
    pub expires_at: u32,
    pub activations_limit: u32,
}

/// The payload bytes of `fields` in `version` (2 carries `key_id`, 1 does not).
pub fn payload(
    version: u8,
    key_id: &[u8; KEY_ID_LEN],
    fields: &Fields<'_>,
) -> Result<Vec<u8>, String> {
    let mut payload = vec![version];
    if version >= V2 {
        payload.extend(key_id);
    }
    for number in [
        fields.issued_at,
        fields.expires_at,
        fields.activations_limit,
    ] {
        payload.extend(number.to_be_bytes());
    }
    for id in [fields.grant_id, fields.entitlement_id] {
        let len = u8::try_from(id.len()).map_err(|_| "an id longer than 255 bytes".to_string())?;
        payload.push(len);
        payload.extend(id.as_bytes());
    }
    Ok(payload)
}

/// `payload` followed by its signature, base64url.
pub fn seal(signing: &SigningKey, mut payload: Vec<u8>) -> String {
    let signature = signing.sign(&payload);
    payload.extend(signature.to_bytes());
    URL_SAFE_NO_PAD.encode(payload)
}

/// A key's payload read, before its signature is checked.
struct Read<'a> {
    payload: SignedPayload,
    signed: &'a [u8],
    signature: Signature,
}

fn read(bytes: &[u8]) -> Result<Read<'_>, Refusal> {
    let malformed = Refusal::Malformed;
    let (&version, _) = bytes.split_first().ok_or(malformed("it is empty"))?;
    let id_len = match version {
        V1 => 0,
        V2 => KEY_ID_LEN,
        _ => return Err(malformed("unknown format version")),
    };
    let signed_len = bytes
        .len()
        .checked_sub(SIGNATURE)
        .ok_or(malformed("too short"))?;
    let (signed, signature) = bytes.split_at(signed_len);
    let mut rest = signed
        .get(1 + id_len + NUMBERS..)
        .ok_or(malformed("too short"))?;
    let number = |at: usize| u32::from_be_bytes(signed[at..at + 4].try_into().expect("4 bytes"));
    let at = 1 + id_len;
    let mut text = || -> Result<String, Refusal> {
        let (&len, tail) = rest.split_first().ok_or(malformed("too short"))?;
        let (id, tail) = tail
            .split_at_checked(len.into())
            .ok_or(malformed("an id runs past the end"))?;
        rest = tail;
        String::from_utf8(id.to_vec()).map_err(|_| malformed("an id is not UTF-8"))
    };
    let (grant_id, entitlement_id) = (text()?, text()?);
    if !rest.is_empty() {
        return Err(malformed("bytes left over after the ids"));
    }
    let nonzero = |n: u32| (n != 0).then_some(n);
    Ok(Read {
        payload: SignedPayload {
            version,
            key_id: (version == V2).then(|| URL_SAFE_NO_PAD.encode(&signed[1..1 + KEY_ID_LEN])),
            grant_id,
            entitlement_id,
            issued_at: number(at),
            expires_at: nonzero(number(at + 4)),
            activations_limit: nonzero(number(at + 8)),
        },
        signed,
        signature: Signature::from_slice(signature).map_err(|_| malformed("too short"))?,
    })
}

/// Checks `key` against `trusted`, then its expiry at `now`, then `revoked`.
pub fn verify(
    key: &str,
    trusted: &PublicKeys,
    revoked: Option<&RevocationList>,
    now: DateTime<Utc>,
) -> Result<SignedPayload, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(key)
        .map_err(|_| Refusal::Malformed("it is not base64url without padding"))?;
    let read = read(&bytes)?;
    let kid = read.payload.key_id.as_deref();
    if let Some(kid) = kid
        && !trusted.has(kid)
    {
        return Err(Refusal::UnknownKeyId(kid.into()));
    }
    if !trusted.signed(kid, read.signed, &read.signature) {
        return Err(Refusal::BadSignature);
    }
    let payload = read.payload;
    if let Some(expires) = payload.expires_at
        && now.timestamp() >= i64::from(expires)
    {
        return Err(Refusal::Expired(expires));
    }
    if let Some(list) = revoked
        && let Some(entry) = list.find(&payload.grant_id)
    {
        return Err(Refusal::Revoked {
            state: entry.state.clone(),
            since: entry.since.clone(),
            sequence: list.sequence,
        });
    }
    Ok(payload)
}
