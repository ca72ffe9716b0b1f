//! The states of jobs and keys (Postgres enums), and how a key is shown to people.

use serde::{Deserialize, Serialize};

/// Where a fulfillment job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Retrying,
    WaitingForKeys,
    Delivered,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::WaitingForKeys,
        JobState::Delivered,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::WaitingForKeys => "waiting_for_keys",
            JobState::Delivered => "delivered",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Delivered | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "key_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Available,
    Reserved,
    Delivered,
    Rejected,
    Revoked,
}

/// Hides a key for display: keeps a leading prefix group (when the key has three or more
/// groups) and the last four characters, e.g. `PRO-AAAA-BBBB-DDDD` → `PRO-****-****-DDDD`.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let reveal_tail = if chars.len() >= 12 { 4 } else { 0 };
    let groups = key.split('-').count();
    let prefix_len = if groups >= 3 {
        key.split('-').next().map_or(0, |g| g.chars().count())
    } else {
        0
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let visible = i < prefix_len || i >= chars.len() - reveal_tail;
            if visible || !c.is_alphanumeric() {
                c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_prefix_and_last_four() {
        assert_eq!(mask_key("PRO-AAAA-BBBB-DDDD"), "PRO-****-****-DDDD");
        assert_eq!(
            mask_key("PRO-AAAA-BBBB-CCCC-DDDD"),
            "PRO-****-****-****-DDDD"
        );
        assert_eq!(mask_key("ABCDEFGHIJKLMNOP"), "************MNOP");
        assert_eq!(mask_key("SHORT1"), "******");
        assert_eq!(mask_key("AB-CDEFGHIJKLMN"), "**-********KLMN");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("done"), None);
    }
}
