//! Selling the demo's grants through the sandbox's webhooks, and watching them settle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::db::Db;
use crate::domain::JobState;
use crate::sandbox::Sandbox;
use crate::store::stock;

use super::entitlement_of_sale;

/// What selling did: when keyrelay answered each grant's webhook, and how many were sent.
pub(super) struct Sold {
    pub answered: HashMap<String, Instant>,
    pub webhooks_sent: usize,
}

/// Sells `grants` grants, 16 at a time; every 10th webhook is sent twice, as Dodo's retries
/// do.
pub(super) async fn sell(sandbox: &Sandbox, url: &str, grants: usize) -> anyhow::Result<Sold> {
    let mut answered: HashMap<String, Instant> = HashMap::new();
    let mut webhooks_sent = 0;
    let sales = (0..grants).map(|i| {
        let url = url.to_string();
        async move {
            let grant = sandbox.create_grant(entitlement_of_sale(i), None);
            let hook = sandbox.webhook_for(&grant, "entitlement_grant.created");
            let status = sandbox.send_webhook(&url, &hook).await?;
            let at = Instant::now();
            let mut sent = 1;
            if i % 10 == 0 {
                sandbox.send_webhook(&url, &hook).await?;
                sent += 1;
            }
            anyhow::Ok((grant.id, status, at, sent))
        }
    });
    let mut stream = futures_util::stream::iter(sales).buffer_unordered(16);
    while let Some(sale) = stream.next().await {
        let (grant_id, status, at, sent) = sale?;
        if status != 200 {
            bail!("keyrelay answered {status} to a webhook");
        }
        webhooks_sent += sent;
        answered.insert(grant_id, at);
    }
    drop(stream);

    Ok(Sold {
        answered,
        webhooks_sent,
    })
}

/// Shows progress until `grants` jobs are settled (or two minutes pass): the jobs per state.
pub(super) async fn wait_until_settled(
    db: &Db,
    grants: usize,
) -> anyhow::Result<HashMap<JobState, i64>> {
    let bar = ProgressBar::new(grants as u64);
    bar.set_style(
        ProgressStyle::with_template("  {spinner} [{bar:40}] {pos}/{len} grants settled  {msg}")?
            .progress_chars("=> "),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let counts: HashMap<JobState, i64> =
            stock::count_jobs_by_state(db).await?.into_iter().collect();
        let settled =
            counts[&JobState::Delivered] + counts[&JobState::Failed] + counts[&JobState::Cancelled];
        bar.set_position(settled as u64);
        bar.set_message(format!("{} retrying", counts[&JobState::Retrying]));
        if settled as usize >= grants || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish();
    Ok(counts)
}
