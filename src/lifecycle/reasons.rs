//! What each of Dodo's revocation reasons means for a delivered key. A reason that can reverse
//! suspends the key; every other reason revokes it for good. A reason Dodo adds later is kept
//! verbatim, revokes (the safe side: a key that should not count stops counting), and is shown
//! for review.

/// What a revocation does to the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The key no longer counts, for good.
    Revoke,
    /// The key stops counting until Dodo shows the grant delivered again.
    Suspend,
    /// A reason this table does not know: revoked, and shown for review.
    Review,
}

/// Dodo's documented reasons and what each means.
pub const REASONS: [(&str, Meaning); 8] = [
    ("refund", Meaning::Revoke),
    ("manual", Meaning::Revoke),
    ("subscription_cancelled", Meaning::Revoke),
    ("subscription_expired", Meaning::Revoke),
    ("plan_changed", Meaning::Revoke),
    ("platform_external", Meaning::Revoke),
    // "Recoverable: a successful retry produces a re-grant."
    ("subscription_on_hold", Meaning::Suspend),
    // "If the key is re-enabled, the grant is reactivated automatically."
    ("license_key_disabled", Meaning::Suspend),
];

/// What `reason` means; a missing reason is unknown too.
pub fn meaning(reason: Option<&str>) -> Meaning {
    let Some(reason) = reason else {
        return Meaning::Review;
    };
    REASONS
        .iter()
        .find(|(known, _)| *known == reason)
        .map_or(Meaning::Review, |(_, meaning)| *meaning)
}

impl Meaning {
    /// The key stays revoked whatever comes next.
    pub fn is_final(self) -> bool {
        self != Meaning::Suspend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversible_reasons_suspend_and_every_other_reason_revokes() {
        let suspending: Vec<&str> = REASONS
            .iter()
            .filter(|(_, m)| *m == Meaning::Suspend)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(suspending, ["subscription_on_hold", "license_key_disabled"]);
        assert_eq!(meaning(Some("refund")), Meaning::Revoke);
        assert_eq!(meaning(Some("SubscriptionPaused")), Meaning::Review);
        assert_eq!(
            meaning(Some("Refund")),
            Meaning::Review,
            "reasons are exact"
        );
        assert_eq!(meaning(None), Meaning::Review);
        assert!(Meaning::Review.is_final() && Meaning::Revoke.is_final());
        assert!(!Meaning::Suspend.is_final());
    }
}
