//! Dodo's ids as types: a grant id cannot be passed where a customer id is wanted, and every id
//! that came off the wire was checked once (bounded length, no control characters).

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::Postgres;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};

/// Longest id accepted, in bytes. Dodo's ids are a prefix and a few dozen characters; this
/// leaves room while keeping every id well inside a btree index entry.
pub const MAX_ID_LEN: usize = 255;

/// What kind of id an `Id` is; names it in error messages.
pub trait IdKind {
    const NAME: &'static str;
}

/// An id of one kind. Made only by `parse` (or read back from our own database).
pub struct Id<K> {
    value: String,
    kind: PhantomData<fn() -> K>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} is {1} bytes long; at most {MAX_ID_LEN} are accepted")]
    TooLong(&'static str, usize),
    #[error("{0} contains a control character")]
    ControlCharacter(&'static str),
    #[error("{0} contains an invisible or direction-changing character (such as U+202E)")]
    Invisible(&'static str),
}

impl<K: IdKind> Id<K> {
    pub fn parse(raw: &str) -> Result<Id<K>, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty(K::NAME));
        }
        if raw.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(K::NAME, raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(IdError::ControlCharacter(K::NAME));
        }
        if raw.chars().any(super::text::invisible) {
            return Err(IdError::Invisible(K::NAME));
        }
        Ok(Id::trusted(raw.to_string()))
    }
}

impl<K> Id<K> {
    /// A value keyrelay stored itself after parsing it.
    fn trusted(value: String) -> Id<K> {
        Id {
            value,
            kind: PhantomData,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

/// Marks a grant id.
#[derive(Debug)]
pub enum Grant {}
impl IdKind for Grant {
    const NAME: &'static str = "grant id";
}
pub type GrantId = Id<Grant>;

/// Marks a customer id.
#[derive(Debug)]
pub enum Customer {}
impl IdKind for Customer {
    const NAME: &'static str = "customer id";
}
pub type CustomerId = Id<Customer>;

/// Marks an entitlement id.
#[derive(Debug)]
pub enum Entitlement {}
impl IdKind for Entitlement {
    const NAME: &'static str = "entitlement id";
}
pub type EntitlementId = Id<Entitlement>;

/// Marks a payment id (a grant's payment, for finding it by what the customer's receipt says).
#[derive(Debug)]
pub enum Payment {}
impl IdKind for Payment {
    const NAME: &'static str = "payment id";
}
pub type PaymentId = Id<Payment>;

/// Marks a subscription id (a grant's subscription: a newer grant of it supersedes older ones).
#[derive(Debug)]
pub enum Subscription {}
impl IdKind for Subscription {
    const NAME: &'static str = "subscription id";
}
pub type SubscriptionId = Id<Subscription>;

impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Id::trusted(self.value.clone())
    }
}

impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<K> Eq for Id<K> {}

impl<K> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

impl<K> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state)
    }
}

impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.value, f)
    }
}

impl<K> AsRef<str> for Id<K> {
    fn as_ref(&self) -> &str {
        &self.value
    }
}

impl<K> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Id::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl<K> sqlx::Type<Postgres> for Id<K> {
    fn type_info() -> PgTypeInfo {
        <String as sqlx::Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <String as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<K> PgHasArrayType for Id<K> {
    fn array_type_info() -> PgTypeInfo {
        <String as PgHasArrayType>::array_type_info()
    }
}

impl<K> sqlx::Encode<'_, Postgres> for Id<K> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as sqlx::Encode<Postgres>>::encode(self.value.as_str(), buf)
    }
}

impl<'r, K> sqlx::Decode<'r, Postgres> for Id<K> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Id::trusted(<String as sqlx::Decode<Postgres>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        assert_eq!(GrantId::parse("grant_1").unwrap().as_str(), "grant_1");
        assert_eq!(GrantId::parse(""), Err(IdError::Empty("grant id")));
        assert_eq!(
            EntitlementId::parse(&"e".repeat(5000)),
            Err(IdError::TooLong("entitlement id", 5000))
        );
        assert_eq!(
            CustomerId::parse("cus\n1"),
            Err(IdError::ControlCharacter("customer id"))
        );
        assert!(GrantId::parse(&"g".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn ids_deserialize_through_parse() {
        let ok: GrantId = serde_json::from_str("\"grant_9\"").unwrap();
        assert_eq!(ok.to_string(), "grant_9");
        let err = serde_json::from_str::<GrantId>("\"\\u0000\"").unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
        for hidden in ["grant_\u{202e}exe.txt", "grant\u{200b}1", "grant_\u{2066}x"] {
            let err = GrantId::parse(hidden).unwrap_err();
            assert!(
                err.to_string().contains("direction-changing"),
                "{hidden:?}: {err}"
            );
        }
    }
}
