//! What Dodo's answers mean (SPEC §3's table), as pure functions of the answer.

use std::time::Duration;

use crate::dodo::{CallError, FulfillAnswer, Grant, GrantStatus};

/// The meaning of one fulfill answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 200: the grant now holds our key.
    Delivered,
    /// 409: look the grant up before deciding anything.
    Conflict,
    /// 400, 404, 422: will never work; our key was not accepted.
    Permanent(String),
    /// Try again later with the same key.
    Retry {
        error: String,
        retry_after: Option<Duration>,
        /// 401/403: a configuration problem someone must fix.
        config_problem: bool,
    },
}

pub fn classify(result: &Result<FulfillAnswer, CallError>) -> Verdict {
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => {
            return Verdict::Retry {
                error: e.to_string(),
                retry_after: None,
                config_problem: false,
            };
        }
    };
    let detail = answer
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match answer.status {
        200..=299 => Verdict::Delivered,
        409 => Verdict::Conflict,
        400 | 404 | 422 => Verdict::Permanent(format!("Dodo answered {}{detail}", answer.status)),
        401 | 403 => Verdict::Retry {
            error: format!(
                "Dodo answered {}{detail}; check dodo.api_key (DODO_PAYMENTS_API_KEY) and its write access",
                answer.status
            ),
            retry_after: None,
            config_problem: true,
        },
        429 => Verdict::Retry {
            error: format!("Dodo answered 429 (rate limited){detail}"),
            retry_after: answer.retry_after,
            config_problem: false,
        },
        status => Verdict::Retry {
            error: format!("Dodo answered {status}{detail}"),
            retry_after: None,
            config_problem: false,
        },
    }
}

/// What a 409 turned out to mean, once the grant was looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictResolution {
    /// Delivered with our key: an earlier unacknowledged attempt succeeded.
    DeliveredWithOurKey,
    /// Delivered with another key: fulfilled elsewhere; our key was not used.
    DeliveredElsewhere,
    /// Revoked. `with_our_key`: it was delivered with our key first.
    Revoked { with_our_key: bool },
    /// Still pending, so the 409 was about our key: Dodo already has that value.
    KeyAlreadyExists,
    /// Dodo marked the grant failed.
    FailedAtDodo { with_our_key: bool },
    /// The grant is not in the listing (yet); look again later.
    NotFound,
}

pub fn resolve_conflict(grant: Option<&Grant>, our_key: &str) -> ConflictResolution {
    let Some(grant) = grant else {
        return ConflictResolution::NotFound;
    };
    let ours = grant.key_value() == Some(our_key);
    match grant.status {
        GrantStatus::Delivered if ours => ConflictResolution::DeliveredWithOurKey,
        GrantStatus::Delivered => ConflictResolution::DeliveredElsewhere,
        GrantStatus::Revoked => ConflictResolution::Revoked { with_our_key: ours },
        GrantStatus::Pending => ConflictResolution::KeyAlreadyExists,
        GrantStatus::Failed => ConflictResolution::FailedAtDodo { with_our_key: ours },
        GrantStatus::Other(_) if ours => ConflictResolution::DeliveredWithOurKey,
        GrantStatus::Other(_) => ConflictResolution::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Result<FulfillAnswer, CallError> {
        Ok(FulfillAnswer {
            status,
            retry_after: Some(Duration::from_secs(3)),
            message: Some("msg".into()),
        })
    }

    #[test]
    fn every_status_has_a_meaning() {
        assert_eq!(classify(&answer(200)), Verdict::Delivered);
        assert_eq!(classify(&answer(409)), Verdict::Conflict);
        for s in [400, 404, 422] {
            assert!(matches!(classify(&answer(s)), Verdict::Permanent(m) if m.contains("msg")));
        }
        for s in [401, 403] {
            assert!(matches!(
                classify(&answer(s)),
                Verdict::Retry {
                    config_problem: true,
                    ..
                }
            ));
        }
        assert!(matches!(
            classify(&answer(429)),
            Verdict::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        for s in [500, 502, 503] {
            assert!(matches!(
                classify(&answer(s)),
                Verdict::Retry {
                    retry_after: None,
                    config_problem: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            classify(&Err(CallError::Timeout)),
            Verdict::Retry { .. }
        ));
    }

    fn grant(status: &str, key: Option<&str>) -> Grant {
        let mut v =
            serde_json::json!({"id":"g","customer_id":"c","entitlement_id":"e","status":status});
        if let Some(k) = key {
            v["license_key"] = serde_json::json!({"key": k});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn conflicts_resolve_by_the_grant_state() {
        use ConflictResolution::*;
        assert_eq!(resolve_conflict(None, "K"), NotFound);
        assert_eq!(
            resolve_conflict(Some(&grant("Delivered", Some("K"))), "K"),
            DeliveredWithOurKey
        );
        assert_eq!(
            resolve_conflict(Some(&grant("delivered", Some("X"))), "K"),
            DeliveredElsewhere
        );
        assert_eq!(
            resolve_conflict(Some(&grant("Revoked", Some("K"))), "K"),
            Revoked { with_our_key: true }
        );
        assert_eq!(
            resolve_conflict(Some(&grant("Revoked", None)), "K"),
            Revoked {
                with_our_key: false
            }
        );
        assert_eq!(
            resolve_conflict(Some(&grant("Pending", None)), "K"),
            KeyAlreadyExists
        );
    }
}
