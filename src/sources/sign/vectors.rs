//! `fixtures/verify/vectors.json`: signed keys made by this code with three fixed test keys,
//! each with the answer keyrelay's own check gives, against the JWK Set (an old and a current
//! key) and against the current public key alone, with the revocation list. Every verifier
//! under `verifiers/` must give the same answers. The test keys are public: never sign real
//! keys with them.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::DateTime;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::format::{self, Fields, V1, V2};
use super::keyset::{PublicKeys, SigningKeys};
use crate::sources::revocations::{RevocationList, Revoked};

const OLD: u8 = 0x11;
const CURRENT: u8 = 0x22;
const STRANGER: u8 = 0x33;
/// The time the answers are computed at; every answer holds from 2020 to 2096.
const NOW: i64 = 1_900_000_000;
const LATER: u32 = 4_000_000_000;

fn keys(seeds: &[u8]) -> SigningKeys {
    let raw: Vec<String> = seeds.iter().map(|s| STANDARD.encode([*s; 32])).collect();
    SigningKeys::parse(&SecretString::from(raw.join(" "))).expect("test keys parse")
}

fn fields(grant_id: &str) -> Fields<'_> {
    Fields {
        grant_id,
        entitlement_id: "ent_pro_license",
        issued_at: 1_800_000_000,
        expires_at: LATER,
        activations_limit: 3,
    }
}

/// A key signed by `by` in `version`, carrying `as_id`'s key id.
fn signed(by: &SigningKeys, as_id: &SigningKeys, version: u8, fields: &Fields<'_>) -> String {
    let payload = format::payload(version, as_id.id(), fields).expect("test ids fit");
    format::seal(by.signing(), payload)
}

/// `key` with the character at `at` replaced by another of the alphabet.
fn changed_at(key: &str, at: usize) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// `key` with the unused low bits of its last character set: the same bytes to a lenient
/// decoder, but not canonical base64url.
fn with_spare_bits_set(key: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = key.as_bytes()[key.len() - 1];
    let index = ALPHABET.iter().position(|c| *c == last).expect("base64url");
    let spare = if key.len() % 4 == 2 { 0b1111 } else { 0b11 };
    let mut out = key[..key.len() - 1].to_string();
    out.push(ALPHABET[index | spare] as char);
    out
}

/// The whole file, as JSON.
pub fn make() -> Value {
    let (old, current, stranger) = (keys(&[OLD]), keys(&[CURRENT]), keys(&[STRANGER]));
    let published = keys(&[CURRENT, OLD]);
    let now = DateTime::from_timestamp(NOW, 0).expect("a time");
    let list = RevocationList::new(
        7,
        vec![
            Revoked {
                grant_id: "grant_vec_refunded".into(),
                since: "2030-01-01T00:00:00Z".into(),
                state: "revoked".into(),
            },
            Revoked {
                grant_id: "grant_vec_on_hold".into(),
                since: "2030-01-02T00:00:00Z".into(),
                state: "suspended".into(),
            },
        ],
        now,
    );
    let current_v2 = signed(&current, &current, V2, &fields("grant_vec_current"));
    // A length whose last character has spare bits (a multiple of 3 bytes has none).
    let odd_length = (0..)
        .map(|n| {
            signed(
                &current,
                &current,
                V2,
                &fields(&"grant_vec_".repeat(1 + n % 3)),
            )
        })
        .find(|k| k.len() % 4 != 0)
        .expect("some length leaves spare bits");
    let with_dash = (0..)
        .map(|n| signed(&current, &current, V2, &fields(&format!("grant_vec_{n}"))))
        .find(|k| k.contains('-') || k.contains('_'))
        .expect("some key holds - or _");
    // Inside the grant id: past the 21-byte header and the id's length.
    let grant_at = 34;
    let cases: Vec<(&str, String)> = vec![
        ("format 2, signed by the current key", current_v2.clone()),
        (
            "format 2, signed by the old key before a rotation",
            signed(&old, &old, V2, &fields("grant_vec_before_rotation")),
        ),
        (
            "format 1, signed by the current key",
            signed(&current, &current, V1, &fields("grant_vec_v1")),
        ),
        (
            "format 1, signed by the old key",
            signed(&old, &old, V1, &fields("grant_vec_v1_old")),
        ),
        (
            "format 2, never expires, no activations limit, non-ASCII ids",
            signed(
                &current,
                &current,
                V2,
                &Fields {
                    grant_id: "grant_vec_ünï",
                    entitlement_id: "ent_日本",
                    issued_at: 1_800_000_000,
                    expires_at: 0,
                    activations_limit: 0,
                },
            ),
        ),
        (
            "one character of the signature changed",
            changed_at(&current_v2, current_v2.len() - 10),
        ),
        (
            "one character of the grant id changed",
            changed_at(&current_v2, grant_at),
        ),
        (
            "signed by another key under the current key's id",
            signed(&stranger, &current, V2, &fields("grant_vec_forged")),
        ),
        (
            "format 1, signed by another key",
            signed(&stranger, &stranger, V1, &fields("grant_vec_forged_v1")),
        ),
        (
            "an unknown key id",
            signed(&stranger, &stranger, V2, &fields("grant_vec_stranger")),
        ),
        (
            "expired",
            signed(
                &current,
                &current,
                V2,
                &Fields {
                    expires_at: 1_600_000_000,
                    ..fields("grant_vec_expired")
                },
            ),
        ),
        (
            "revoked: its grant is on the revocation list",
            signed(&current, &current, V2, &fields("grant_vec_refunded")),
        ),
        (
            "suspended: its grant is on the revocation list",
            signed(&old, &old, V2, &fields("grant_vec_on_hold")),
        ),
        (
            "an unknown format version",
            signed(&current, &current, 3, &fields("grant_vec_v3")),
        ),
        ("bad base64", "not a key!".into()),
        (
            "the standard base64 alphabet instead of base64url",
            with_dash.replace('-', "+").replace('_', "/"),
        ),
        ("padded with =", format!("{current_v2}==")),
        (
            "spare bits of the last character set",
            with_spare_bits_set(&odd_length),
        ),
        ("a space before the key", format!(" {current_v2}")),
        ("truncated", current_v2[..current_v2.len() - 4].into()),
        (
            "only a signature's length",
            URL_SAFE_NO_PAD.encode([0u8; 64]),
        ),
        ("an empty string", String::new()),
    ];
    let answer =
        |key: &str, trusted: &PublicKeys| match format::verify(key, trusted, Some(&list), now) {
            Ok(payload) => {
                let mut value = serde_json::to_value(payload).expect("a payload serializes");
                value["valid"] = json!(true);
                value
            }
            Err(refusal) => json!({"valid": false, "reason": refusal.code()}),
        };
    let one = PublicKeys::one(current.signing().verifying_key());
    let vectors: Vec<Value> = cases
        .iter()
        .map(|(name, key)| {
            json!({
                "name": name,
                "key": key,
                "with_jwks": answer(key, published.published()),
                "with_public_key": answer(key, &one),
            })
        })
        .collect();
    json!({
        "about": "Signed keys made by keyrelay (src/sources/sign/vectors.rs) with public test keys; never sign real keys with them. Each vector gives the answer against `jwks` and against `public_key` alone, with `revocations`, at any time from 2020 to 2096.",
        "jwks": published.published().to_jwks(),
        "public_key": STANDARD.encode(current.signing().verifying_key().as_bytes()),
        "revocations": list.sign(&current),
        "vectors": vectors,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/verify/vectors.json");

    /// The checked-in file is what this code makes; `KEYRELAY_WRITE_VECTORS=1` rewrites it.
    #[test]
    fn the_vectors_file_is_what_keyrelay_makes() {
        let made = serde_json::to_string_pretty(&super::make()).unwrap() + "\n";
        if std::env::var_os("KEYRELAY_WRITE_VECTORS").is_some() {
            std::fs::write(FILE, &made).unwrap();
        }
        let stored = std::fs::read_to_string(FILE).unwrap_or_default();
        assert!(
            stored == made,
            "{FILE} differs from what the code makes; run `KEYRELAY_WRITE_VECTORS=1 cargo test vectors` and review the diff"
        );
    }

    #[test]
    fn the_vectors_cover_every_answer() {
        let made = super::make();
        let reasons: BTreeSet<&str> = made["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| [&v["with_jwks"], &v["with_public_key"]])
            .map(|a| a["reason"].as_str().unwrap_or("valid"))
            .collect();
        assert_eq!(
            reasons,
            BTreeSet::from([
                "bad_signature",
                "expired",
                "malformed",
                "revoked",
                "unknown_key_id",
                "valid"
            ])
        );
        let answer = |name: &str| {
            let v = made["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap();
            (
                v["with_jwks"]["reason"]
                    .as_str()
                    .unwrap_or("valid")
                    .to_string(),
                v["with_public_key"]["reason"]
                    .as_str()
                    .unwrap_or("valid")
                    .to_string(),
            )
        };
        let expect = |name: &str, jwks: &str, one: &str| {
            assert_eq!(answer(name), (jwks.into(), one.into()), "{name}");
        };
        expect("format 2, signed by the current key", "valid", "valid");
        expect(
            "format 2, signed by the old key before a rotation",
            "valid",
            "unknown_key_id",
        );
        expect("format 1, signed by the old key", "valid", "bad_signature");
        expect(
            "one character of the signature changed",
            "bad_signature",
            "bad_signature",
        );
        expect(
            "one character of the grant id changed",
            "bad_signature",
            "bad_signature",
        );
        expect(
            "signed by another key under the current key's id",
            "bad_signature",
            "bad_signature",
        );
        expect("an unknown key id", "unknown_key_id", "unknown_key_id");
        expect("expired", "expired", "expired");
        expect(
            "revoked: its grant is on the revocation list",
            "revoked",
            "revoked",
        );
        for malformed in [
            "an unknown format version",
            "bad base64",
            "the standard base64 alphabet instead of base64url",
            "padded with =",
            "spare bits of the last character set",
            "a space before the key",
            "truncated",
            "only a signature's length",
            "an empty string",
        ] {
            expect(malformed, "malformed", "malformed");
        }
    }
}
