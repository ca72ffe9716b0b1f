//! `decide`, row by row against the README's table of what each Dodo answer does.

use super::*;

const OURS: &str = "PRO-AAAA-BBBB-0001";

fn key() -> LicenseKey {
    LicenseKey::parse(OURS).unwrap()
}

fn early() -> Budget {
    Budget {
        attempt: 1,
        max_attempts: 5,
    }
}

fn answer(status: u16) -> Result<FulfillAnswer, CallError> {
    Ok(FulfillAnswer {
        status,
        retry_after: Some(Duration::from_secs(3)),
        message: Some("msg".into()),
    })
}

fn grant(status: &str, key: Option<&str>) -> Result<Option<Grant>, CallError> {
    let mut v =
        serde_json::json!({"id":"g","customer_id":"c","entitlement_id":"e","status":status});
    if let Some(k) = key {
        v["license_key"] = serde_json::json!({"key": k});
    }
    Ok(Some(serde_json::from_value(v).unwrap()))
}

fn after_409(lookup: Result<Option<Grant>, CallError>) -> Decision {
    decide(&answer(409), Some(&lookup), &key(), early())
}

/// (next, key action, outcome) of a decision.
fn shape(d: &Decision) -> (Next, KeyAction, AttemptOutcome) {
    (d.next, d.key, d.outcome)
}

#[test]
fn ok_delivers_the_job_and_the_key() {
    let d = decide(&answer(200), None, &key(), early());
    assert_eq!(
        shape(&d),
        (
            Next::Finish(JobState::Delivered),
            KeyAction::Deliver,
            AttemptOutcome::Delivered
        )
    );
    assert_eq!(d.error, None);
}

#[test]
fn a_conflict_needs_a_look_up_and_nothing_else_does() {
    assert!(needs_lookup(&answer(409)));
    for status in [200, 400, 401, 404, 429, 500] {
        assert!(!needs_lookup(&answer(status)), "{status}");
    }
    assert!(!needs_lookup(&Err(CallError::Timeout)));
}

#[test]
fn conflict_delivered_with_our_key_is_delivered() {
    assert_eq!(
        shape(&after_409(grant("Delivered", Some(OURS)))),
        (
            Next::Finish(JobState::Delivered),
            KeyAction::Deliver,
            AttemptOutcome::ConflictDelivered
        )
    );
}

#[test]
fn conflict_delivered_with_another_key_releases_ours() {
    let d = after_409(grant("delivered", Some("OTHER-1")));
    assert_eq!(
        shape(&d),
        (
            Next::Finish(JobState::Delivered),
            KeyAction::Release,
            AttemptOutcome::ConflictDeliveredElsewhere
        )
    );
    assert!(d.error.unwrap().contains("elsewhere"));
}

#[test]
fn conflict_revoked_cancels_and_revokes_our_key_only_if_it_was_delivered() {
    assert_eq!(
        shape(&after_409(grant("Revoked", Some(OURS)))),
        (
            Next::Finish(JobState::Cancelled),
            KeyAction::Revoke,
            AttemptOutcome::ConflictRevoked
        )
    );
    assert_eq!(
        shape(&after_409(grant("Revoked", None))),
        (
            Next::Finish(JobState::Cancelled),
            KeyAction::Release,
            AttemptOutcome::ConflictRevoked
        )
    );
}

#[test]
fn conflict_on_a_pending_grant_rejects_our_key_and_tries_the_next_at_once() {
    assert_eq!(
        shape(&after_409(grant("Pending", None))),
        (
            Next::NextKey,
            KeyAction::Reject,
            AttemptOutcome::KeyRejected
        )
    );
}

#[test]
fn conflict_on_a_grant_failed_at_dodo_fails_the_job() {
    assert_eq!(
        shape(&after_409(grant("Failed", Some(OURS)))),
        (
            Next::Finish(JobState::Failed),
            KeyAction::Keep,
            AttemptOutcome::ConflictFailed
        )
    );
    assert_eq!(after_409(grant("Failed", None)).key, KeyAction::Release);
}

#[test]
fn conflict_without_an_answer_from_the_look_up_retries_with_the_same_key() {
    for lookup in [Err(CallError::Timeout), Ok(None)] {
        let d = after_409(lookup);
        assert_eq!(
            shape(&d),
            (
                Next::RetryLater { retry_after: None },
                KeyAction::Keep,
                AttemptOutcome::ConflictUnresolved
            )
        );
    }
    let d = after_409(Err(CallError::Connect("refused".into())));
    assert!(d.error.unwrap().contains("look-up failed"));
}

#[test]
fn permanent_answers_fail_the_job_and_release_the_key() {
    for status in [400, 404, 422] {
        let d = decide(&answer(status), None, &key(), early());
        assert_eq!(
            shape(&d),
            (
                Next::Finish(JobState::Failed),
                KeyAction::Release,
                AttemptOutcome::PermanentError
            ),
            "{status}"
        );
        assert!(d.error.unwrap().contains("msg"));
    }
}

#[test]
fn refused_credentials_retry_and_are_errors_someone_must_fix() {
    for status in [401, 403] {
        let d = decide(&answer(status), None, &key(), early());
        assert_eq!(d.next, Next::RetryLater { retry_after: None });
        assert_eq!((d.key, d.severity), (KeyAction::Keep, Severity::Error));
        assert!(d.error.unwrap().contains("DODO_PAYMENTS_API_KEY"));
    }
}

#[test]
fn rate_limits_retry_after_the_time_dodo_names() {
    let d = decide(&answer(429), None, &key(), early());
    assert_eq!(
        d.next,
        Next::RetryLater {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(d.key, KeyAction::Keep);
}

#[test]
fn server_errors_and_missing_answers_retry_with_the_same_key() {
    let mut answers: Vec<_> = [500, 502, 503].into_iter().map(answer).collect();
    answers.push(Err(CallError::Timeout));
    answers.push(Err(CallError::Connect("refused".into())));
    for a in &answers {
        let d = decide(a, None, &key(), early());
        assert_eq!(
            shape(&d),
            (
                Next::RetryLater { retry_after: None },
                KeyAction::Keep,
                AttemptOutcome::Retry
            ),
            "{a:?}"
        );
        assert_eq!(d.severity, Severity::Warn);
    }
}

#[test]
fn the_last_allowed_attempt_gives_up_and_keeps_the_key_bound() {
    let last = Budget {
        attempt: 5,
        max_attempts: 5,
    };
    for a in [answer(503), Err(CallError::Timeout), answer(500)] {
        let d = decide(&a, None, &key(), last);
        assert_eq!(
            shape(&d),
            (
                Next::Finish(JobState::Failed),
                KeyAction::Keep,
                AttemptOutcome::GaveUp
            )
        );
        assert!(d.error.unwrap().starts_with("gave up after 5 attempts"));
    }
    let d = decide(&answer(200), None, &key(), last);
    assert_eq!(
        d.outcome,
        AttemptOutcome::Delivered,
        "success is never given up"
    );
}

#[test]
fn a_rate_limit_never_uses_up_an_attempt() {
    let last = Budget {
        attempt: 5,
        max_attempts: 5,
    };
    let d = decide(&answer(429), None, &key(), last);
    assert_eq!(
        d.next,
        Next::RetryLater {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert!(!d.counts_as_attempt, "a 429 gives the attempt back");
    assert!(decide(&answer(503), None, &key(), early()).counts_as_attempt);
}

#[test]
fn a_call_never_sent_for_want_of_a_turn_uses_no_attempt() {
    let last = Budget {
        attempt: 5,
        max_attempts: 5,
    };
    let unsent = Err(CallError::NotSent("connection refused".into()));
    let d = decide(&unsent, None, &key(), last);
    assert_eq!(d.next, Next::RetryLater { retry_after: None });
    assert_eq!(d.key, KeyAction::Keep);
    assert!(!d.counts_as_attempt);
    assert!(d.error.unwrap().contains("rate budget"));
}
