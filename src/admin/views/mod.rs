//! The dashboard's pages beyond a single job: the overview with charts, the job search with
//! bulk actions, needs attention, events with replay, and the outbox.

mod events;
mod jobs;
mod outbox;
mod overview;

pub use events::{events_page, replay_event};
pub use jobs::{bulk_confirm, bulk_run, jobs_page};
pub use outbox::{outbox_page, retry_notice};
pub use overview::{attention, overview};

/// Jobs per page.
const PAGE: i64 = 50;
