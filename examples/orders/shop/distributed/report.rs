//! What a distributed run did, read from the database once its workers are done: the ledger
//! and its invariants, and the queue's jobs by the fate the producer drew for them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use sqlx::PgPool;

use super::job::OrderJob;
use super::ledger::PgLedger;
use crate::shop::store::Ledger;

/// A distributed run, from the database.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The ledger's view, and its invariants.
    pub ledger: Ledger,
    /// Cancelled orders by cause code.
    pub cancelled_by_code: BTreeMap<String, u64>,
    /// The queue's jobs by status (`Done`, `Killed`, `Failed`, ...).
    pub jobs_by_status: BTreeMap<String, u64>,
    /// Order jobs by the fate drawn for them.
    pub fates: BTreeMap<String, FateReport>,
    /// Jobs whose payload is not an order.
    pub bad_payloads: Vec<BadPayload>,
    /// Runs that began with the attempt number of an earlier run of the same order: jobs a
    /// worker's shutdown put back without counting the attempt.
    pub requeued_runs: u64,
    /// Jobs not settled yet: waiting, in flight, or failed with attempts left.
    pub unsettled_jobs: u64,
}

/// The jobs of one fate.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FateReport {
    /// Jobs of this fate.
    pub jobs: u64,
    /// Their jobs' statuses.
    pub statuses: BTreeMap<String, u64>,
    /// Their orders' states.
    pub orders: BTreeMap<String, u64>,
    /// Jobs that counted more than one attempt.
    pub retried: u64,
    /// The most attempts a job of this fate counted.
    pub max_attempts: i32,
}

/// A job whose payload is not an order, as the queue left it.
#[derive(Clone, Debug, Serialize)]
pub struct BadPayload {
    /// The task's id.
    pub id: String,
    /// Its status (`Killed` once dead-lettered).
    pub status: String,
    /// The attempts counted.
    pub attempts: i32,
    /// Why it was given up.
    pub last_result: String,
}

impl Report {
    /// Reads the run of queue `queue` from `pool`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn of(pool: &PgPool, queue: &str) -> Result<Report, sqlx::Error> {
        let ledger = PgLedger::new(pool).check().await?;
        let states: HashMap<i64, String> =
            sqlx::query_as::<_, (i64, String)>("SELECT id, state FROM shop.orders")
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect();
        let cancelled_by_code = sqlx::query_as::<_, (String, i64)>(
            "SELECT cause_code, count(*) FROM shop.orders WHERE state = 'cancelled' GROUP BY 1",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(code, n)| (code, u64::try_from(n).unwrap_or(0)))
        .collect();
        let jobs = sqlx::query_as::<_, (String, Vec<u8>, String, i32, Option<String>)>(
            "SELECT id, job, status, attempts, last_result::text
             FROM apalis.jobs WHERE job_type = $1",
        )
        .bind(queue)
        .fetch_all(pool)
        .await?;
        let mut report = Report {
            ledger,
            cancelled_by_code,
            jobs_by_status: BTreeMap::new(),
            fates: BTreeMap::new(),
            bad_payloads: Vec::new(),
            requeued_runs: 0,
            unsettled_jobs: u64::try_from(super::runnable(pool, queue).await?).unwrap_or(0),
        };
        for (id, payload, status, attempts, last_result) in jobs {
            *report.jobs_by_status.entry(status.clone()).or_default() += 1;
            let job = serde_json::from_slice(&payload)
                .ok()
                .and_then(|payload| OrderJob::decode(&payload).ok());
            let Some(job) = job else {
                report.bad_payloads.push(BadPayload {
                    id,
                    status,
                    attempts,
                    last_result: last_result.unwrap_or_default(),
                });
                continue;
            };
            let fate = report.fates.entry(job.fate.clone()).or_default();
            fate.jobs += 1;
            *fate.statuses.entry(status).or_default() += 1;
            let state = states.get(&job.id).map_or("none", String::as_str);
            *fate.orders.entry(state.to_owned()).or_default() += 1;
            if attempts > 1 {
                fate.retried += 1;
            }
            fate.max_attempts = fate.max_attempts.max(attempts);
        }
        let requeued: i64 = sqlx::query_scalar(
            "SELECT count(*) - count(DISTINCT (order_id, attempt)) FROM shop.attempts",
        )
        .fetch_one(pool)
        .await?;
        report.requeued_runs = u64::try_from(requeued).unwrap_or(0);
        Ok(report)
    }

    /// Whether every invariant holds and every job is settled: bad payloads included, none
    /// waiting to be tried again.
    pub fn is_consistent(&self) -> bool {
        self.ledger.violations.is_empty() && self.unsettled_jobs == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ledger = &self.ledger;
        writeln!(
            f,
            "orders: {} completed, {} cancelled, {} open; {} audit rows",
            ledger.completed, ledger.cancelled, ledger.open, ledger.audit_rows
        )?;
        for (code, n) in &self.cancelled_by_code {
            writeln!(f, "  cancelled {code:<22} {n:>6}")?;
        }
        writeln!(f, "jobs by status: {:?}", self.jobs_by_status)?;
        writeln!(f, "jobs by fate:")?;
        for (fate, report) in &self.fates {
            writeln!(
                f,
                "  {fate:<12} {:>6} jobs  statuses {:?}  orders {:?}  retried {}  max attempts {}",
                report.jobs, report.statuses, report.orders, report.retried, report.max_attempts
            )?;
        }
        for bad in &self.bad_payloads {
            writeln!(
                f,
                "bad payload {}: {} after {} attempt(s): {}",
                bad.id, bad.status, bad.attempts, bad.last_result
            )?;
        }
        writeln!(
            f,
            "runs requeued by a shutdown (attempt not counted): {}",
            self.requeued_runs
        )?;
        writeln!(f, "jobs not settled: {}", self.unsettled_jobs)?;
        if ledger.violations.is_empty() {
            write!(f, "invariants: all hold")
        } else {
            write!(f, "invariants BROKEN: {}", ledger.violations.join("; "))
        }
    }
}
