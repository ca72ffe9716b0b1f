//! Signing keys and the public keys apps trust. `keys.signing_key` holds one or more Ed25519
//! private keys, space-separated: the first signs, all are published as a JWK Set (RFC 7517,
//! each key an RFC 8037 `OKP` JWK). A key's id is short and derived from its public key: the
//! first 8 bytes of its RFC 7638 JWK thumbprint (SHA-256 of
//! `{"crv":"Ed25519","kty":"OKP","x":"<base64url public key>"}`), base64url, 11 characters.
//! Format-2 keys carry those 8 bytes, so an app finds the one public key to check with.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use rand::{TryRngCore, rngs::OsRng};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of a key id inside a format-2 key.
pub const KEY_ID_LEN: usize = 8;

/// The id of a public key: the first 8 bytes of its RFC 7638 thumbprint.
pub fn key_id_bytes(public: &VerifyingKey) -> [u8; KEY_ID_LEN] {
    let thumbprint = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public.as_bytes())
    );
    let digest = Sha256::digest(thumbprint.as_bytes());
    digest[..KEY_ID_LEN].try_into().expect("8 bytes")
}

/// A key id as it is written in a JWK (`kid`): base64url of its 8 bytes.
pub fn key_id(public: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key_id_bytes(public))
}

/// One public key an app trusts, with the id it is published under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub key: VerifyingKey,
}

impl PublicKey {
    /// `key` under the id derived from it.
    fn derived(key: VerifyingKey) -> PublicKey {
        PublicKey {
            kid: key_id(&key),
            key,
        }
    }
}

/// The public keys a key is checked against: a JWK Set, or one public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeys(Vec<PublicKey>);

/// An RFC 8037 public JWK, as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

impl PublicKeys {
    /// One public key, under the id derived from it.
    pub fn one(key: VerifyingKey) -> PublicKeys {
        PublicKeys(vec![PublicKey::derived(key)])
    }

    /// A public key as `keys new-signing-key` prints it (base64 of 32 bytes).
    pub fn from_base64(raw: &str) -> anyhow::Result<PublicKeys> {
        STANDARD
            .decode(raw.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .map(PublicKeys::one)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the public key is not base64 of a 32-byte Ed25519 public key (use what `keyrelay keys new-signing-key` printed after `public:`, or --jwks with `keyrelay keys public`)"
                )
            })
    }

    /// A JWK Set: its `OKP` / `Ed25519` keys that have a `kid`; other keys are skipped, as
    /// RFC 7517 §5 asks.
    pub fn from_jwks(json: &[u8]) -> anyhow::Result<PublicKeys> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| {
            anyhow::anyhow!(
                "not a JWK Set (JSON with a `keys` array, as `keyrelay keys public` prints): {e}"
            )
        })?;
        let keys: Vec<PublicKey> = set
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519")
            .filter_map(|jwk| {
                let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(&jwk.x).ok()?.try_into().ok()?;
                Some(PublicKey {
                    kid: jwk.kid?,
                    key: VerifyingKey::from_bytes(&bytes).ok()?,
                })
            })
            .collect();
        anyhow::ensure!(
            !keys.is_empty(),
            "the JWK Set has no Ed25519 key with a `kid` (kty OKP, crv Ed25519)"
        );
        Ok(PublicKeys(keys))
    }

    /// The keys as a JWK Set.
    pub fn to_jwks(&self) -> serde_json::Value {
        let keys: Vec<Jwk> = self
            .0
            .iter()
            .map(|k| Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(k.key.as_bytes()),
                kid: Some(k.kid.clone()),
                usage: Some("sig".into()),
                alg: Some("EdDSA".into()),
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Whether a key published under `kid` is here.
    pub fn has(&self, kid: &str) -> bool {
        self.0.iter().any(|k| k.kid == kid)
    }

    /// Whether `signature` over `data` verifies under the key published as `kid`, or under
    /// any of these keys when `kid` is `None` (what names no key: a format-1 key, a list
    /// without `kid`).
    pub fn signed(&self, kid: Option<&str>, data: &[u8], signature: &Signature) -> bool {
        self.0
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid == kid))
            .any(|k| k.key.verify(data, signature).is_ok())
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.0.iter()
    }

    /// The key ids, in order.
    pub fn kids(&self) -> Vec<&str> {
        self.0.iter().map(|k| k.kid.as_str()).collect()
    }
}

/// `keys.signing_key`: the key that signs, and every key whose public half is published.
#[derive(Clone)]
pub struct SigningKeys {
    signing: SigningKey,
    /// The signing key's id, as format-2 keys carry it.
    id: [u8; KEY_ID_LEN],
    published: PublicKeys,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("signs_as", &self.kid())
            .field("published", &self.published.0.len())
            .finish()
    }
}

impl SigningKeys {
    /// Space-separated base64 32-byte private keys; the first signs.
    pub fn parse(raw: &SecretString) -> anyhow::Result<SigningKeys> {
        let mut keys = Vec::new();
        for (n, part) in raw.expose_secret().split_whitespace().enumerate() {
            let bytes = STANDARD
                .decode(part)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "keys.signing_key (KEYRELAY_SIGNING_KEY): key {} of the space-separated list is not base64 of 32 bytes (not shown: it is a secret); make one with `keyrelay keys new-signing-key`",
                        n + 1
                    )
                })?;
            keys.push(SigningKey::from_bytes(&bytes));
        }
        let Some(signing) = keys.first().cloned() else {
            anyhow::bail!(
                "keys.signing_key (KEYRELAY_SIGNING_KEY) is set but empty; make a key with `keyrelay keys new-signing-key`"
            );
        };
        let mut published: Vec<PublicKey> = Vec::new();
        for key in &keys {
            let public = PublicKey::derived(key.verifying_key());
            if !published.contains(&public) {
                published.push(public);
            }
        }
        Ok(SigningKeys {
            id: key_id_bytes(&signing.verifying_key()),
            signing,
            published: PublicKeys(published),
        })
    }

    /// The key that signs new keys.
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The id of the key that signs, as format-2 keys carry it.
    pub fn id(&self) -> &[u8; KEY_ID_LEN] {
        &self.id
    }

    /// The id of the key that signs, as a JWK `kid`.
    pub fn kid(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.id)
    }

    /// Every configured key's public half, the signing one first.
    pub fn published(&self) -> &PublicKeys {
        &self.published
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn private(seed: u8) -> String {
        STANDARD.encode([seed; 32])
    }

    #[test]
    fn the_first_key_signs_and_all_are_published_once_in_a_jwk_set() {
        let raw = format!("  {}  {}\n{} ", private(2), private(1), private(2));
        let keys = SigningKeys::parse(&SecretString::from(raw)).unwrap();
        let two = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let one = SigningKey::from_bytes(&[1; 32]).verifying_key();
        assert_eq!(keys.signing().verifying_key(), two);
        assert_eq!(keys.kid(), key_id(&two));
        let jwks = keys.published().to_jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [key_id(&two), key_id(&one)]);
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        assert_eq!(jwks["keys"][0]["x"], URL_SAFE_NO_PAD.encode(two.as_bytes()));
        let read = PublicKeys::from_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(&read, keys.published());
        assert!(!format!("{keys:?}").contains(&private(2)));
    }

    #[test]
    fn a_key_id_is_the_rfc_7638_thumbprint_cut_to_8_bytes() {
        // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        let full = URL_SAFE_NO_PAD
            .decode("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
            .unwrap();
        assert_eq!(key_id_bytes(&key), full[..8]);
        assert_eq!(key_id(&key).len(), 11);
    }

    #[test]
    fn bad_keys_say_which_and_never_show_it() {
        let raw = format!("{} not-a-key", private(1));
        let error = SigningKeys::parse(&SecretString::from(raw))
            .unwrap_err()
            .to_string();
        assert!(error.contains("key 2"), "{error}");
        assert!(!error.contains("not-a-key"), "{error}");
        assert!(SigningKeys::parse(&SecretString::from("  ".to_string())).is_err());
        let error = PublicKeys::from_jwks(br#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no Ed25519 key"), "{error}");
        assert!(PublicKeys::from_jwks(b"[1,2]").is_err());
    }
}
