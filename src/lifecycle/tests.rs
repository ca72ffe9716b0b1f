//! `settle` row by row, and a model of the store applying it to every order of events.

use chrono::{DateTime, TimeZone, Utc};

use super::*;

pub(super) fn minute(m: u32) -> Option<DateTime<Utc>> {
    Some(Utc.with_ymd_and_hms(2026, 11, 20, 10, m, 0).unwrap())
}

pub(super) fn facts(event: GrantEvent, carries_our_key: bool, at: u32) -> EventFacts {
    EventFacts {
        event,
        at: minute(at),
        carries_our_key,
        reason: Some("because".into()),
    }
}

pub(super) fn job(state: JobState, key: Option<KeyState>) -> JobNow {
    JobNow {
        state,
        key,
        seen: None,
        superseded: false,
    }
}

pub(super) fn decided(settlement: Settlement) -> (Option<JobState>, KeyAction) {
    match settlement {
        Settlement::Apply { job, key, .. } => (job, key),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn delivered_settles_unfinished_jobs_and_moves_the_key_by_whose_it_is() {
    use JobState::*;
    const DELIVERED: GrantEvent = GrantEvent::Delivered;
    let reserved = Some(KeyState::Reserved);
    for state in [Queued, Running, Retrying, WaitingForKeys, Failed] {
        assert_eq!(
            decided(settle(
                Some(&job(state, reserved)),
                &facts(DELIVERED, true, 5)
            )),
            (Some(Delivered), KeyAction::Deliver),
            "{state} with our key"
        );
        assert_eq!(
            decided(settle(
                Some(&job(state, reserved)),
                &facts(DELIVERED, false, 5)
            )),
            (Some(Delivered), KeyAction::Release),
            "{state} delivered elsewhere"
        );
        assert_eq!(
            decided(settle(Some(&job(state, None)), &facts(DELIVERED, false, 5))),
            (Some(Delivered), KeyAction::Keep),
            "{state} without a key"
        );
    }
    assert_eq!(
        decided(settle(
            Some(&job(Delivered, reserved)),
            &facts(DELIVERED, true, 5)
        )),
        (None, KeyAction::Deliver),
        "a delivered job whose key was not yet marked"
    );
    assert_eq!(
        decided(settle(
            Some(&job(Cancelled, reserved)),
            &facts(DELIVERED, true, 5)
        )),
        (None, KeyAction::Keep),
        "delivered after cancel changes nothing"
    );
}

#[test]
fn failed_fails_unfinished_jobs_only_and_keeps_the_key() {
    use JobState::*;
    let reserved = Some(KeyState::Reserved);
    for state in [Queued, Running, Retrying, WaitingForKeys] {
        let s = settle(
            Some(&job(state, reserved)),
            &facts(GrantEvent::Failed, false, 5),
        );
        let Settlement::Apply { job, key, note } = s else {
            panic!("{state}: {s:?}")
        };
        assert_eq!((job, key), (Some(Failed), KeyAction::Keep), "{state}");
        assert!(note.contains("because"), "{note}");
    }
    for state in [Delivered, Failed, Cancelled] {
        assert_eq!(
            decided(settle(
                Some(&job(state, reserved)),
                &facts(GrantEvent::Failed, false, 5)
            )),
            (None, KeyAction::Keep),
            "{state}"
        );
    }
}

#[test]
fn revoked_cancels_and_revokes_a_key_dodo_held_or_releases_one_it_never_took() {
    use JobState::*;
    let revoked = |state, key, ours| {
        decided(settle(
            Some(&job(state, key)),
            &facts(GrantEvent::Revoked, ours, 9),
        ))
    };
    let reserved = Some(KeyState::Reserved);
    let delivered = Some(KeyState::Delivered);
    assert_eq!(
        revoked(Running, reserved, false),
        (Some(Cancelled), KeyAction::Release)
    );
    assert_eq!(
        revoked(Running, reserved, true),
        (Some(Cancelled), KeyAction::Revoke)
    );
    assert_eq!(
        revoked(Queued, None, false),
        (Some(Cancelled), KeyAction::Keep)
    );
    assert_eq!(
        revoked(Delivered, delivered, true),
        (Some(Cancelled), KeyAction::Revoke)
    );
    assert_eq!(
        revoked(Cancelled, delivered, true),
        (None, KeyAction::Revoke)
    );
    assert_eq!(revoked(Cancelled, None, false), (None, KeyAction::Keep));
}

#[test]
fn an_event_not_newer_than_the_last_applied_is_stale() {
    let mut seen = job(JobState::Cancelled, None);
    seen.seen = minute(9);
    for at in [5, 9] {
        assert_eq!(
            settle(Some(&seen), &facts(GrantEvent::Delivered, false, at)),
            Settlement::Stale
        );
    }
    assert!(matches!(
        settle(Some(&seen), &facts(GrantEvent::Delivered, false, 10)),
        Settlement::Apply { .. }
    ));
}

#[test]
fn an_event_for_an_unknown_grant_records_its_end_state() {
    for (event, state) in [
        (GrantEvent::Delivered, JobState::Delivered),
        (GrantEvent::Failed, JobState::Failed),
        (GrantEvent::Revoked, JobState::Cancelled),
    ] {
        assert!(matches!(
            settle(None, &facts(event, false, 5)),
            Settlement::Unseen { state: s, .. } if s == state
        ));
    }
}

/// An event as the model delivers it: `created` makes a queued job if none exists (the
/// store's `ON CONFLICT DO NOTHING`); the others go through `settle`.
#[derive(Debug, Clone)]
pub(super) enum Arrival {
    Created,
    Lifecycle(EventFacts),
    /// A newer grant of the same subscription and entitlement is delivered: the store revokes
    /// a suspended key and cancels its job (`store::settle::supersede`).
    NewerGrantDelivered,
}

/// Applies arrivals the way the store applies settlements.
fn run(mut job: Option<JobNow>, arrivals: &[Arrival]) -> Option<JobNow> {
    for arrival in arrivals {
        match arrival {
            Arrival::Created => {
                job.get_or_insert(JobNow {
                    state: JobState::Queued,
                    key: None,
                    seen: None,
                    superseded: false,
                });
            }
            Arrival::Lifecycle(facts) => match settle(job.as_ref(), facts) {
                Settlement::Stale => {}
                Settlement::Unseen { state, .. } => {
                    job = Some(JobNow {
                        state,
                        key: None,
                        seen: facts.at,
                        superseded: false,
                    })
                }
                Settlement::Apply { job: next, key, .. } => {
                    let current = job.as_mut().expect("apply needs a job");
                    current.state = next.unwrap_or(current.state);
                    current.seen = current.seen.max(facts.at);
                    current.key = match key {
                        KeyAction::Keep => current.key,
                        KeyAction::Deliver | KeyAction::Reinstate => Some(KeyState::Delivered),
                        KeyAction::Suspend => Some(KeyState::Suspended),
                        KeyAction::Revoke => Some(KeyState::Revoked),
                        KeyAction::Release | KeyAction::Reject => None,
                    };
                }
            },
            Arrival::NewerGrantDelivered => {
                if let Some(current) = job.as_mut() {
                    current.superseded = true;
                    if current.key == Some(KeyState::Suspended) {
                        current.key = Some(KeyState::Revoked);
                        current.state = JobState::Cancelled;
                    }
                }
            }
        }
    }
    job
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// Every order of `arrivals`, each delivered twice over, ends in `expected`.
pub(super) fn every_order_ends_in(
    start: Option<JobNow>,
    arrivals: &[Arrival],
    expected: (JobState, Option<KeyState>),
) {
    let orders = permutations(arrivals);
    for order in &orders {
        let twice: Vec<Arrival> = order.iter().chain(order.iter()).cloned().collect();
        let end = run(start, &twice).expect("a job");
        assert_eq!((end.state, end.key), expected, "order {order:?}");
    }
}

#[test]
fn created_delivered_elsewhere_and_revoked_end_the_same_in_every_order() {
    every_order_ends_in(
        None,
        &[
            Arrival::Created,
            Arrival::Lifecycle(facts(GrantEvent::Delivered, false, 5)),
            Arrival::Lifecycle(facts(GrantEvent::Revoked, false, 9)),
        ],
        (JobState::Cancelled, None),
    );
}

#[test]
fn created_and_failed_end_the_same_in_every_order() {
    every_order_ends_in(
        None,
        &[
            Arrival::Created,
            Arrival::Lifecycle(facts(GrantEvent::Failed, false, 5)),
        ],
        (JobState::Failed, None),
    );
}

#[test]
fn our_key_delivered_then_revoked_ends_revoked_in_every_order() {
    for start in [
        job(JobState::Delivered, Some(KeyState::Delivered)),
        job(JobState::Running, Some(KeyState::Reserved)),
        job(JobState::Retrying, Some(KeyState::Reserved)),
    ] {
        every_order_ends_in(
            Some(start),
            &[
                Arrival::Lifecycle(facts(GrantEvent::Delivered, true, 5)),
                Arrival::Lifecycle(facts(GrantEvent::Revoked, true, 9)),
            ],
            (JobState::Cancelled, Some(KeyState::Revoked)),
        );
    }
}

#[test]
fn delivered_elsewhere_releases_a_reserved_key_in_every_order_with_revocation() {
    every_order_ends_in(
        Some(job(JobState::Retrying, Some(KeyState::Reserved))),
        &[
            Arrival::Lifecycle(facts(GrantEvent::Delivered, false, 5)),
            Arrival::Lifecycle(facts(GrantEvent::Revoked, false, 9)),
        ],
        (JobState::Cancelled, None),
    );
}
