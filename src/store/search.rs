//! Finding jobs the way people ask: by grant, customer or payment id, by the last characters of
//! a key, by state, pool and time — newest first, a page at a time. Pages are keyset-paginated
//! (`Cursor`) and every condition is written so an index answers it, so the first page and a
//! search stay fast with millions of finished jobs.

use std::fmt::Write;

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;

use crate::domain::{GrantId, JobState};
use crate::store::read::{JobSummary, SUMMARY_COLUMNS};

/// Which jobs; every part that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobFilter {
    /// A grant, customer or payment id, or a key's last four characters (what its masked form
    /// shows), e.g. `grant_123`, `cus_9`, `pay_7` or `7QX4`.
    pub search: Option<String>,
    pub customer: Option<String>,
    pub payment: Option<String>,
    pub state: Option<JobState>,
    /// A pool's name: the jobs of its entitlement.
    pub pool: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
}

impl JobFilter {
    /// The filter in words, for confirmations and the audit trail.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.search {
            parts.push(format!("matching \"{s}\""));
        }
        if let Some(c) = &self.customer {
            parts.push(format!("customer {c}"));
        }
        if let Some(p) = &self.payment {
            parts.push(format!("payment {p}"));
        }
        if let Some(s) = self.state {
            parts.push(format!("state {s}"));
        }
        if let Some(p) = &self.pool {
            parts.push(format!("pool {p}"));
        }
        if let Some(t) = self.since {
            parts.push(format!("created from {}", t.format("%Y-%m-%d %H:%M UTC")));
        }
        if let Some(t) = self.until {
            parts.push(format!("created before {}", t.format("%Y-%m-%d %H:%M UTC")));
        }
        if parts.is_empty() {
            "all jobs".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Where a page ends: the last job shown. The next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub grant_id: GrantId,
}

impl Cursor {
    pub fn after(job: &JobSummary) -> Cursor {
        Cursor {
            created_at: job.created_at,
            grant_id: job.grant_id.clone(),
        }
    }

    /// `<microseconds since the epoch>.<grant id>`: opaque to users, safe in a URL.
    pub fn encode(&self) -> String {
        encode_position(self.created_at, self.grant_id.as_str())
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let (created_at, grant) = decode_position(raw)?;
        Some(Cursor {
            created_at,
            grant_id: GrantId::parse(grant).ok()?,
        })
    }
}

/// A place in a list ordered by time and then id (jobs, events): `<microseconds>.<id>`.
pub fn encode_position(at: DateTime<Utc>, id: &str) -> String {
    format!("{}.{id}", at.timestamp_micros())
}

/// The time and id of an `encode_position`; None for anything else.
pub fn decode_position(raw: &str) -> Option<(DateTime<Utc>, &str)> {
    let (micros, id) = raw.split_once('.')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id))
}

/// An RFC 3339 time (or `YYYY-MM-DDTHH:MM`, UTC), or an age (`90s`, `30m`, `6h`, `2d`) counted back from now.
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    // What an HTML datetime-local field sends, read as UTC.
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    let unit_at = s.len().saturating_sub(1);
    let (number, unit) = (
        s.get(..unit_at).unwrap_or(""),
        s.get(unit_at..).unwrap_or(""),
    );
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    number
        .parse::<i64>()
        .ok()
        .filter(|n| secs > 0 && (0..=36_500 * 86_400).contains(&(n * secs)))
        .map(|n| Utc::now() - chrono::TimeDelta::seconds(n * secs))
        .ok_or_else(|| {
            format!("`{s}` is neither an RFC 3339 time (2026-11-27T10:00:00Z) nor an age like 30m, 6h or 2d")
        })
}

/// The last four characters of a search term, lowercased, as `key_values.tail` holds them.
fn tail_of(term: &str) -> Option<String> {
    let chars: Vec<char> = term.chars().collect();
    (chars.len() >= 4).then(|| {
        chars[chars.len() - 4..]
            .iter()
            .collect::<String>()
            .to_lowercase()
    })
}

/// The WHERE clause for `filter` (and `states`, when not empty), with its values in order
/// from `$first`.
struct Clause {
    sql: String,
    binds: Vec<Bind>,
}

enum Bind {
    Text(String),
    Time(DateTime<Utc>),
}

fn clause(filter: &JobFilter, states: &[JobState], first: usize) -> Clause {
    let mut sql = String::from("TRUE");
    let mut binds = Vec::new();
    let param = |bind: Bind, binds: &mut Vec<Bind>| {
        binds.push(bind);
        format!("${}", first + binds.len() - 1)
    };
    if let Some(term) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let p = param(Bind::Text(term.to_string()), &mut binds);
        // A union of index look-ups, not one OR: each arm uses its own index.
        let _ = write!(
            sql,
            " AND grant_id IN (SELECT grant_id FROM jobs WHERE grant_id = {p} \
              UNION ALL SELECT grant_id FROM jobs WHERE customer_id = {p} \
              UNION ALL SELECT grant_id FROM jobs WHERE payment_id = {p}"
        );
        if let Some(tail) = tail_of(term) {
            let t = param(Bind::Text(tail), &mut binds);
            let _ = write!(
                sql,
                " UNION ALL SELECT keys.grant_id FROM key_values JOIN keys ON keys.id = key_values.key_id \
                   WHERE key_values.tail = {t} AND keys.grant_id IS NOT NULL"
            );
        }
        sql.push(')');
    }
    if let Some(customer) = &filter.customer {
        let p = param(Bind::Text(customer.clone()), &mut binds);
        let _ = write!(sql, " AND customer_id = {p}");
    }
    if let Some(payment) = &filter.payment {
        let p = param(Bind::Text(payment.clone()), &mut binds);
        let _ = write!(sql, " AND payment_id = {p}");
    }
    // States are a closed set, written as literals so partial indexes (`jobs_due`,
    // `jobs_failed`, `jobs_cancelled`, ...) match.
    let wanted: Vec<JobState> = match filter.state {
        Some(s) if states.is_empty() || states.contains(&s) => vec![s],
        Some(_) => vec![],
        None => states.to_vec(),
    };
    if filter.state.is_some() || !states.is_empty() {
        if wanted.is_empty() {
            sql.push_str(" AND FALSE");
        } else {
            let list: Vec<String> = wanted.iter().map(|s| format!("'{s}'")).collect();
            let _ = write!(sql, " AND state IN ({})", list.join(", "));
        }
    }
    if let Some(pool) = &filter.pool {
        let p = param(Bind::Text(pool.clone()), &mut binds);
        let _ = write!(
            sql,
            " AND entitlement_id = (SELECT entitlement_id FROM pools WHERE name = {p})"
        );
    }
    if let Some(since) = filter.since {
        let p = param(Bind::Time(since), &mut binds);
        let _ = write!(sql, " AND created_at >= {p}");
    }
    if let Some(until) = filter.until {
        let p = param(Bind::Time(until), &mut binds);
        let _ = write!(sql, " AND created_at < {p}");
    }
    Clause { sql, binds }
}

fn bind_all<'q, O>(
    mut query: QueryAs<'q, sqlx::Postgres, O, PgArguments>,
    binds: &'q [Bind],
) -> QueryAs<'q, sqlx::Postgres, O, PgArguments> {
    for b in binds {
        query = match b {
            Bind::Text(t) => query.bind(t.as_str()),
            Bind::Time(t) => query.bind(*t),
        };
    }
    query
}

/// A page of jobs matching `filter`, newest first, starting after `after`.
pub async fn find_jobs(
    db: &Db,
    filter: &JobFilter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<JobSummary>, sqlx::Error> {
    let mut where_ = clause(filter, &[], 2);
    if let Some(cursor) = after {
        let (t, g) = (
            format!("${}", 2 + where_.binds.len()),
            format!("${}", 3 + where_.binds.len()),
        );
        // The first half lets the `created_at` index start at the cursor.
        let _ = write!(
            where_.sql,
            " AND created_at <= {t} AND (created_at, grant_id) < ({t}, {g})"
        );
        where_.binds.push(Bind::Time(cursor.created_at));
        where_.binds.push(Bind::Text(cursor.grant_id.to_string()));
    }
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE {} \
         ORDER BY created_at DESC, grant_id DESC LIMIT $1",
        where_.sql
    );
    let query = sqlx::query_as(&sql).bind(limit);
    bind_all(query, &where_.binds).fetch_all(db).await
}

/// How many jobs match `filter` and are in one of `states` (all states when empty).
pub async fn count_jobs(
    db: &Db,
    filter: &JobFilter,
    states: &[JobState],
) -> Result<i64, sqlx::Error> {
    let where_ = clause(filter, states, 1);
    let sql = format!("SELECT count(*) FROM jobs WHERE {}", where_.sql);
    let query = sqlx::query_as::<_, (i64,)>(&sql);
    Ok(bind_all(query, &where_.binds).fetch_one(db).await?.0)
}

/// Up to `limit` grants matching `filter` in one of `states`, oldest first.
pub async fn matching_grants(
    db: &Db,
    filter: &JobFilter,
    states: &[JobState],
    limit: i64,
) -> Result<Vec<GrantId>, sqlx::Error> {
    let where_ = clause(filter, states, 2);
    let sql = format!(
        "SELECT grant_id FROM jobs WHERE {} ORDER BY created_at, grant_id LIMIT $1",
        where_.sql
    );
    let query = sqlx::query_as::<_, (GrantId,)>(&sql).bind(limit);
    Ok(bind_all(query, &where_.binds)
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|(g,)| g)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_round_trip_and_junk_is_refused() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            grant_id: GrantId::parse("grant_a.b").unwrap(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for junk in ["", "x", "12", "abc.grant", "1.\u{7}"] {
            assert_eq!(Cursor::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_state_outside_the_wanted_states_matches_nothing() {
        let filter = JobFilter {
            state: Some(JobState::Delivered),
            ..JobFilter::default()
        };
        assert!(
            clause(&filter, &[JobState::Failed], 1)
                .sql
                .ends_with("AND FALSE")
        );
        assert!(
            clause(&filter, &[], 1)
                .sql
                .ends_with("AND state IN ('delivered')")
        );
    }
}
