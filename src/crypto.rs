//! Key values at rest. Every key value keyrelay stores is sealed with XChaCha20-Poly1305 under
//! the first key of `keys.encryption_keys`, bound to its row (the row's identity is the
//! associated data, so a ciphertext moved to another row does not open), and found by a keyed
//! hash (HMAC-SHA256 under a key derived with HKDF from the same encryption key), on which the
//! database keeps values unique. Every configured key opens and hashes, so keys can be rotated:
//! the first seals, the others still open what they sealed until `keys rotate` reseals it.
//!
//! Sealed form: `1` (format) ‖ key id (4 bytes) ‖ nonce (24 bytes) ‖ ciphertext with tag.
//!
//! Also the one parser of Standard Webhooks secrets (`whsec_` + base64): Dodo's webhook
//! secret, and the secrets keyrelay signs its requests to key sources with.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{RngCore, TryRngCore, rngs::OsRng};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const FORMAT: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// How to make an encryption key, for messages that ask for one.
pub const MAKE_ONE: &str = "make one with `keyrelay keys new-encryption-key` and set it as KEYRELAY_ENCRYPTION_KEY (keep it secret, and keep a copy: without it the stored keys cannot be read)";

/// Why a key cannot be sealed or opened in a process that has no encryption key.
pub fn no_encryption_key() -> String {
    format!("keys.encryption_keys (KEYRELAY_ENCRYPTION_KEY) is not set; {MAKE_ONE}")
}

/// Which row a sealed value belongs to: its table and primary key.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    Key(i64),
    Event(&'a str),
}

impl Row<'_> {
    fn associated_data(&self) -> Vec<u8> {
        match self {
            Row::Key(id) => format!("keyrelay/keys/{id}").into_bytes(),
            Row::Event(webhook_id) => format!("keyrelay/events/{webhook_id}").into_bytes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error(
        "it was sealed with an encryption key that is not configured (key id {0:08x}); add that key to KEYRELAY_ENCRYPTION_KEY"
    )]
    UnknownKey(u32),
    #[error("it does not decrypt: it was changed, or moved from another row, or the key is wrong")]
    Forged,
    #[error("it decrypts to something that is not text")]
    NotText,
}

#[derive(Clone)]
struct VaultKey {
    id: u32,
    aead: XChaCha20Poly1305,
    hash_key: [u8; 32],
}

/// The configured encryption keys.
#[derive(Clone)]
pub struct Vault {
    keys: Vec<VaultKey>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| format!("{:08x}", k.id)).collect();
        f.debug_struct("Vault").field("key_ids", &ids).finish()
    }
}

/// Whether a presented token is the configured one, in time that depends on neither (their
/// digests are compared, so not even the length leaks). The admin sign-in and the shop API's
/// bearer check both use it.
pub fn token_matches(candidate: &str, token: &SecretString) -> bool {
    use subtle::ConstantTimeEq;
    let a = hmac_sha256::Hash::hash(candidate.as_bytes());
    let b = hmac_sha256::Hash::hash(token.expose_secret().as_bytes());
    bool::from(a.ct_eq(&b))
}

/// A new random encryption key, base64 of 32 bytes.
pub fn new_encryption_key() -> SecretString {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    let key = SecretString::from(STANDARD.encode(bytes));
    bytes.fill(0);
    key
}

impl Vault {
    /// The keys in `keys.encryption_keys`: space-separated base64 of 32 bytes, the first seals.
    pub fn from_config(raw: &SecretString) -> anyhow::Result<Vault> {
        let keys = raw
            .expose_secret()
            .split_whitespace()
            .enumerate()
            .map(|(i, encoded)| {
                let bytes: [u8; 32] = STANDARD
                    .decode(encoded)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "keys.encryption_keys (KEYRELAY_ENCRYPTION_KEY): key #{} is not base64 of 32 bytes; {MAKE_ONE}",
                            i + 1
                        )
                    })?;
                Ok(VaultKey::derive(&bytes))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if keys.is_empty() {
            anyhow::bail!("keys.encryption_keys (KEYRELAY_ENCRYPTION_KEY) is empty; {MAKE_ONE}");
        }
        Ok(Vault { keys })
    }

    /// The id of the key that seals, as stored beside each sealed value.
    pub fn sealing_key_id(&self) -> i32 {
        self.keys[0].id as i32
    }

    /// Seals `value` for `row` under the first key.
    pub fn seal(&self, value: &str, row: Row<'_>) -> Vec<u8> {
        let key = &self.keys[0];
        // A random 192-bit nonce never repeats in practice; the thread's CSPRNG (seeded from
        // the operating system) saves a system call per value on large imports.
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = row.associated_data();
        let sealed = key
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(FORMAT);
        out.extend(key.id.to_be_bytes());
        out.extend(nonce);
        out.extend(sealed);
        out
    }

    /// Opens a value sealed for `row` under any configured key.
    pub fn open(&self, sealed: &[u8], row: Row<'_>) -> Result<String, OpenError> {
        if sealed.len() < HEADER_LEN || sealed[0] != FORMAT {
            return Err(OpenError::Malformed);
        }
        let id = u32::from_be_bytes(sealed[1..5].try_into().expect("4 bytes"));
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(OpenError::UnknownKey(id))?;
        let aad = row.associated_data();
        let plain = key
            .aead
            .decrypt(
                XNonce::from_slice(&sealed[5..HEADER_LEN]),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Forged)?;
        String::from_utf8(plain).map_err(|_| OpenError::NotText)
    }

    /// The look-up hash of `value` under the sealing key.
    pub fn hash(&self, value: &str) -> Vec<u8> {
        self.keys[0].hash(value)
    }

    /// The look-up hashes of `value` under every configured key: a value stored before a
    /// rotation is still found.
    pub fn hashes(&self, value: &str) -> Vec<Vec<u8>> {
        self.keys.iter().map(|k| k.hash(value)).collect()
    }
}

impl VaultKey {
    fn derive(secret: &[u8; 32]) -> VaultKey {
        let hkdf = Hkdf::<Sha256>::new(Some(b"keyrelay"), secret);
        let mut seal_key = [0u8; 32];
        let mut hash_key = [0u8; 32];
        let mut id = [0u8; 4];
        hkdf.expand(b"seal key values v1", &mut seal_key)
            .and_then(|()| hkdf.expand(b"hash key values v1", &mut hash_key))
            .and_then(|()| hkdf.expand(b"key id v1", &mut id))
            .expect("HKDF-SHA256 gives up to 8 KiB");
        let aead = XChaCha20Poly1305::new_from_slice(&seal_key).expect("a 32-byte key");
        seal_key.fill(0);
        VaultKey {
            id: u32::from_be_bytes(id),
            aead,
            hash_key,
        }
    }

    fn hash(&self, value: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.hash_key)
            .expect("HMAC takes any key length");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// Splits `webhook.secret` into the keys it holds (space-separated, for rotation), checking
/// each is non-empty base64 after an optional `whsec_` prefix.
pub fn parse_webhook_secrets(raw: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let secrets: Vec<&str> = raw.split_whitespace().collect();
    if secrets.is_empty() {
        anyhow::bail!(
            "webhook.secret (DODO_PAYMENTS_WEBHOOK_KEY) is empty; copy the whsec_... secret from Dodo's webhook settings"
        );
    }
    secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let body = s.strip_prefix("whsec_").unwrap_or(s);
            let key = STANDARD
                .decode(body)
                .ok()
                .filter(|k| !k.is_empty());
            key.ok_or_else(|| {
                anyhow::anyhow!(
                    "webhook.secret (DODO_PAYMENTS_WEBHOOK_KEY): secret #{} is not whsec_ followed by base64",
                    i + 1
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(keys: &[&SecretString]) -> Vault {
        let joined: Vec<&str> = keys.iter().map(|k| k.expose_secret()).collect();
        Vault::from_config(&SecretString::from(joined.join(" "))).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_own_row() {
        let v = vault(&[&new_encryption_key()]);
        let sealed = v.seal("PRO-AAAA-BBBB-CCCC", Row::Key(7));
        assert_eq!(v.open(&sealed, Row::Key(7)).unwrap(), "PRO-AAAA-BBBB-CCCC");
        assert_eq!(v.open(&sealed, Row::Key(8)), Err(OpenError::Forged));
        assert_eq!(v.open(&sealed, Row::Event("7")), Err(OpenError::Forged));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(v.open(&tampered, Row::Key(7)), Err(OpenError::Forged));
        assert!(
            !sealed
                .windows(4)
                .any(|w| w == b"AAAA" || w == b"BBBB" || w == b"CCCC")
        );
    }

    #[test]
    fn every_configured_key_opens_and_the_first_seals() {
        let (old, new) = (new_encryption_key(), new_encryption_key());
        let before = vault(&[&old]);
        let sealed = before.seal("KEY-1", Row::Key(1));
        let rotating = vault(&[&new, &old]);
        assert_eq!(rotating.open(&sealed, Row::Key(1)).unwrap(), "KEY-1");
        assert_ne!(rotating.sealing_key_id(), before.sealing_key_id());
        assert!(rotating.hashes("KEY-1").contains(&before.hash("KEY-1")));
        let after = vault(&[&new]);
        assert!(matches!(
            after.open(&sealed, Row::Key(1)),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn hashes_are_keyed_and_stable() {
        let key = new_encryption_key();
        assert_eq!(vault(&[&key]).hash("K"), vault(&[&key]).hash("K"));
        assert_ne!(vault(&[&key]).hash("K"), vault(&[&key]).hash("L"));
        assert_ne!(
            vault(&[&key]).hash("K"),
            vault(&[&new_encryption_key()]).hash("K")
        );
    }

    #[test]
    fn bad_configuration_says_how_to_make_a_key() {
        for raw in ["", "not-base64!", "c2hvcnQ="] {
            let error = Vault::from_config(&SecretString::from(raw)).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("keyrelay keys new-encryption-key"),
                "{error}"
            );
        }
    }
}
