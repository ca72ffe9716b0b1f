//! Revocation reasons against `settle`: each reason, and every order of what follows a
//! revocation, run through the model of the store in `tests`.

use super::tests::{Arrival, decided, every_order_ends_in, facts, job, minute};
use super::*;

fn revoked_for(reason: &str, at: u32) -> Arrival {
    Arrival::Lifecycle(EventFacts {
        event: GrantEvent::Revoked,
        at: minute(at),
        carries_our_key: true,
        reason: Some(reason.into()),
    })
}

/// Every reason, and every order in which what follows a revocation can arrive: Dodo's
/// delivered event for our key, the revocation, Dodo delivering the grant again (after a
/// re-enable) and a newer grant of the subscription being delivered (after on-hold).
#[test]
fn every_reason_ends_the_same_in_every_order() {
    use JobState::{Cancelled, Delivered};
    let delivered_key = job(Delivered, Some(KeyState::Delivered));
    let ours = |at| Arrival::Lifecycle(facts(GrantEvent::Delivered, true, at));
    let unknown = ["SubscriptionPaused", "chargeback_v2", ""];
    let revoking = reasons::REASONS
        .iter()
        .filter(|(_, m)| m.is_final())
        .map(|(r, _)| *r)
        .chain(unknown);
    for reason in revoking {
        let gone = (Cancelled, Some(KeyState::Revoked));
        every_order_ends_in(
            Some(delivered_key),
            &[ours(1), revoked_for(reason, 5)],
            gone,
        );
        every_order_ends_in(
            Some(delivered_key),
            &[ours(1), revoked_for(reason, 5), ours(9)],
            gone,
        );
        every_order_ends_in(
            Some(delivered_key),
            &[
                ours(1),
                revoked_for(reason, 5),
                Arrival::NewerGrantDelivered,
            ],
            gone,
        );
    }
    for reason in ["subscription_on_hold", "license_key_disabled"] {
        let suspended = (Delivered, Some(KeyState::Suspended));
        every_order_ends_in(
            Some(delivered_key),
            &[ours(1), revoked_for(reason, 5)],
            suspended,
        );
        every_order_ends_in(
            Some(delivered_key),
            &[ours(1), revoked_for(reason, 5), ours(9)],
            (Delivered, Some(KeyState::Delivered)),
        );
        every_order_ends_in(
            Some(delivered_key),
            &[
                ours(1),
                revoked_for(reason, 5),
                Arrival::NewerGrantDelivered,
            ],
            (Cancelled, Some(KeyState::Revoked)),
        );
    }
}

#[test]
fn a_reversible_reason_suspends_a_held_key_and_keeps_the_job_delivered() {
    use JobState::*;
    let on_hold = |state, key, ours| {
        let mut now = job(state, key);
        now.seen = minute(1);
        decided(settle(
            Some(&now),
            &EventFacts {
                event: GrantEvent::Revoked,
                at: minute(5),
                carries_our_key: ours,
                reason: Some("subscription_on_hold".into()),
            },
        ))
    };
    let delivered = Some(KeyState::Delivered);
    let reserved = Some(KeyState::Reserved);
    assert_eq!(
        on_hold(Delivered, delivered, true),
        (None, KeyAction::Suspend)
    );
    assert_eq!(
        on_hold(Running, reserved, true),
        (Some(Delivered), KeyAction::Suspend),
        "Dodo holds our key though the job had not heard"
    );
    assert_eq!(
        on_hold(Retrying, reserved, false),
        (Some(Cancelled), KeyAction::Release),
        "revoked before delivery: nothing to suspend"
    );
    assert_eq!(
        on_hold(Delivered, Some(KeyState::Suspended), true),
        (None, KeyAction::Keep)
    );
    let mut superseded = job(Delivered, delivered);
    superseded.superseded = true;
    let s = settle(
        Some(&superseded),
        &match revoked_for("subscription_on_hold", 5) {
            Arrival::Lifecycle(f) => f,
            _ => unreachable!(),
        },
    );
    let Settlement::Apply { job, key, note } = s else {
        panic!("{s:?}")
    };
    assert_eq!((job, key), (Some(Cancelled), KeyAction::Revoke));
    assert!(note.contains("newer grant"), "{note}");
}

#[test]
fn an_unknown_reason_revokes_and_asks_for_review_with_the_reason_verbatim() {
    let s = settle(
        Some(&job(JobState::Delivered, Some(KeyState::Delivered))),
        &EventFacts {
            event: GrantEvent::Revoked,
            at: minute(5),
            carries_our_key: true,
            reason: Some("SubscriptionPaused".into()),
        },
    );
    let Settlement::Apply { job, key, note } = s else {
        panic!("{s:?}")
    };
    assert_eq!((job, key), (Some(JobState::Cancelled), KeyAction::Revoke));
    assert!(
        note.contains("(SubscriptionPaused)") && note.contains("review"),
        "{note}"
    );
}

#[test]
fn a_suspended_key_is_reinstated_only_by_a_newer_delivery_of_our_key() {
    let mut now = job(JobState::Delivered, Some(KeyState::Suspended));
    now.seen = minute(5);
    assert_eq!(
        decided(settle(Some(&now), &facts(GrantEvent::Delivered, true, 9))),
        (None, KeyAction::Reinstate)
    );
    assert_eq!(
        decided(settle(Some(&now), &facts(GrantEvent::Delivered, false, 9))),
        (None, KeyAction::Keep),
        "delivered with a key that is not ours"
    );
    assert_eq!(
        settle(Some(&now), &facts(GrantEvent::Delivered, true, 4)),
        Settlement::Stale
    );
}
