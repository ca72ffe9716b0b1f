//! License keys inside stored webhook payloads. Dodo's delivered events carry the key
//! (`license_key.key`); it is stored only sealed (`license_key.key_sealed`, bound to the
//! event's webhook-id), opened again for a replay, and masked for display.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::crypto::{OpenError, Row, Vault};

/// The payload with every `license_key.key` sealed, and the id of the key that sealed them
/// (None: the payload held no key and is returned as it came).
pub fn seal<'a>(payload: &'a str, vault: &Vault, webhook_id: &str) -> (Cow<'a, str>, Option<i32>) {
    // Only a payload with a "key" field can hold one: most (every `created`) have none.
    if !payload.contains("\"key\"") {
        return (Cow::Borrowed(payload), None);
    }
    let Ok(mut json) = serde_json::from_str::<Value>(payload) else {
        return (Cow::Borrowed(payload), None);
    };
    let mut sealed_any = false;
    for_each_license(&mut json, &mut |license| {
        if let Some(Value::String(key)) = license.remove("key") {
            let sealed = vault.seal(&key, Row::Event(webhook_id));
            license.insert("key_sealed".into(), Value::String(STANDARD.encode(sealed)));
            sealed_any = true;
        }
    });
    match sealed_any {
        true => (Cow::Owned(json.to_string()), Some(vault.sealing_key_id())),
        false => (Cow::Borrowed(payload), None),
    }
}

/// The stored payload with its keys opened again, as Dodo sent it.
pub fn open(payload: &str, vault: &Vault, webhook_id: &str) -> Result<String, OpenError> {
    if !payload.contains("\"key_sealed\"") {
        return Ok(payload.to_string());
    }
    let mut json: Value = serde_json::from_str(payload).map_err(|_| OpenError::Malformed)?;
    let mut result = Ok(());
    for_each_license(&mut json, &mut |license| {
        if let Some(Value::String(sealed)) = license.remove("key_sealed") {
            match open_sealed(&sealed, vault, webhook_id) {
                Ok(key) => {
                    license.insert("key".into(), Value::String(key));
                }
                Err(e) => result = Err(e),
            }
        }
    });
    result.map(|()| json.to_string())
}

/// Replaces every license key (open or sealed) with its masked form, or with `(sealed)` when
/// it cannot be opened here.
pub fn mask(json: &mut Value, vault: Option<&Vault>, webhook_id: &str) {
    for_each_license(json, &mut |license| {
        let shown = match license.remove("key_sealed") {
            Some(Value::String(sealed)) => vault
                .and_then(|v| open_sealed(&sealed, v, webhook_id).ok())
                .map_or_else(|| "(sealed)".to_string(), |k| crate::domain::mask_key(&k)),
            _ => match license.get("key") {
                Some(Value::String(key)) => crate::domain::mask_key(key),
                _ => return,
            },
        };
        license.insert("key".into(), Value::String(shown));
    });
}

/// One `key_sealed` value (base64 of the sealed key) opened.
fn open_sealed(sealed: &str, vault: &Vault, webhook_id: &str) -> Result<String, OpenError> {
    let bytes = STANDARD.decode(sealed).map_err(|_| OpenError::Malformed)?;
    vault.open(&bytes, Row::Event(webhook_id))
}

/// Calls `f` on every object under a `license_key` field.
fn for_each_license(value: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                match (name.as_str(), field) {
                    ("license_key", Value::Object(license)) => f(license),
                    (_, other) => for_each_license(other, f),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| for_each_license(i, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::new_encryption_key;

    const DELIVERED: &str = r#"{"type":"entitlement_grant.delivered","data":{"id":"grant_1","license_key":{"id":"lk_1","key":"PRO-AAAA-BBBB-CCCC"}}}"#;

    fn vault() -> Vault {
        Vault::from_config(&new_encryption_key()).unwrap()
    }

    #[test]
    fn a_delivered_payload_is_stored_without_its_key_and_opens_for_replay() {
        let v = vault();
        let (sealed, by) = seal(DELIVERED, &v, "msg_1");
        assert_eq!(by, Some(v.sealing_key_id()));
        assert!(!sealed.contains("AAAA") && sealed.contains("key_sealed"));
        let opened: Value = serde_json::from_str(&open(&sealed, &v, "msg_1").unwrap()).unwrap();
        assert_eq!(opened, serde_json::from_str::<Value>(DELIVERED).unwrap());
        assert_eq!(open(&sealed, &v, "msg_2"), Err(OpenError::Forged));
    }

    #[test]
    fn a_payload_without_a_key_is_kept_as_it_came() {
        let created = r#"{"data":{"id":"g","license_key":null}}"#;
        assert!(matches!(seal(created, &vault(), "m"), (Cow::Borrowed(p), None) if p == created));
    }

    #[test]
    fn masking_shows_a_sealed_key_masked_or_says_it_is_sealed() {
        let v = vault();
        let (sealed, _) = seal(DELIVERED, &v, "msg_1");
        let mut json: Value = serde_json::from_str(&sealed).unwrap();
        mask(&mut json, Some(&v), "msg_1");
        assert_eq!(json["data"]["license_key"]["key"], "PRO-****-****-CCCC");
        let mut json: Value = serde_json::from_str(&sealed).unwrap();
        mask(&mut json, None, "msg_1");
        assert_eq!(json["data"]["license_key"]["key"], "(sealed)");
    }
}
