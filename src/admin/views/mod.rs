//! The dashboard's pages beyond a single job: the overview with charts, the job search with
//! bulk actions, needs attention, and events with replay.

mod events;
mod jobs;
mod overview;

pub use events::{events_page, replay_event};
pub use jobs::{bulk_confirm, bulk_run, jobs_page};
pub use overview::{attention, overview};

/// Jobs per page.
const PAGE: i64 = 50;
