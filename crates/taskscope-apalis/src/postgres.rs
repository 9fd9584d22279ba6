//! apalis-postgres: outcomes written to its jobs table, with the attempt count and the time of
//! the next try that the default bookkeeping cannot express.

use std::time::Duration;

use apalis_postgres::{Config, PgPool};
use futures::future::BoxFuture;
use taskscope::{BoxError, Cause};

use crate::layer::JobOutcome;
use crate::layer::JOB_TARGET;
use crate::settle::Job;

/// The apalis-postgres configuration [`Settle`] needs, for `queue`: one task fetched at a
/// time (a worker that stops hands nothing back unrun), tasks not marked *running* by
/// apalis (the mark is written late and would undo a requeue) and results not written by
/// apalis (`Settle` writes them), with a 1 s heartbeat and a worker presumed dead after 5
/// missed ones (its jobs are then re-enqueued).
pub fn config(queue: &str) -> Config {
    Config::default()
        .queue(queue)
        .batch_size(1)
        .lock_tasks(false)
        .persist_results(false)
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(5)
}

/// Writes each job's outcome to apalis-postgres' `apalis.jobs`, as the job ends:
///
/// | outcome | status | attempts | next run |
/// |---|---|---|---|
/// | done | `Done` | this attempt | — |
/// | requeued (a shutdown) | `Pending` | as before this attempt | now |
/// | retrying | `Failed` | this attempt | after the backoff |
/// | failed (no attempt left) | `Failed` | this attempt | never |
/// | aborted | `Killed` | this attempt | never |
///
/// `last_result` is `{"Err": "<outcome>: <cause>"}` (`{"Ok": null}` when done), as apalis
/// writes it. A row is written only while the worker still holds the job (`lock_by`); one
/// re-enqueued meanwhile (its worker presumed dead) is left to its new run.
///
/// The worker's backend must be configured by [`config`].
#[derive(Clone, Debug)]
pub struct Settle {
    pool: PgPool,
}

impl Settle {
    /// Settles in the database of `pool`.
    pub fn new(pool: &PgPool) -> Settle {
        Settle { pool: pool.clone() }
    }
}

const SETTLE: &str = "
UPDATE apalis.jobs
SET status = $3,
    attempts = $4,
    last_result = $5,
    run_at = CASE WHEN $6::bigint IS NULL THEN run_at ELSE now() + $6 * interval '1 millisecond' END,
    done_at = CASE WHEN $3 IN ('Done', 'Killed') OR ($3 = 'Failed' AND $6::bigint IS NULL) THEN now() END,
    lock_by = CASE WHEN $3 IN ('Pending', 'Failed') AND $6::bigint IS NOT NULL THEN NULL ELSE lock_by END,
    lock_at = CASE WHEN $3 IN ('Pending', 'Failed') AND $6::bigint IS NOT NULL THEN NULL ELSE lock_at END
WHERE id = $1 AND lock_by IS NOT DISTINCT FROM $2";

impl crate::settle::Settle for Settle {
    /// # Cancel safety
    ///
    /// One statement: dropped, it is either written or not.
    fn settle<'a>(
        &'a self,
        job: &'a Job,
        outcome: &'a JobOutcome,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let attempt = i32::try_from(job.attempt).unwrap_or(i32::MAX);
            let (status, attempts, run_in) = match outcome {
                JobOutcome::Done => ("Done", attempt, None),
                JobOutcome::Requeued(_) => ("Pending", attempt - 1, Some(Duration::ZERO)),
                JobOutcome::Retrying { after, .. } => ("Failed", attempt, Some(*after)),
                JobOutcome::Failed(_) => ("Failed", attempt, None),
                JobOutcome::Aborted(_) => ("Killed", attempt, None),
            };
            let result = match outcome.cause() {
                None => serde_json::json!({ "Ok": null }),
                Some(cause) => serde_json::json!({ "Err": described(outcome, cause) }),
            };
            let run_in = run_in.map(|after| i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
            let written = sqlx::query(SETTLE)
                .bind(&job.id)
                .bind(&job.worker)
                .bind(status)
                .bind(attempts.max(0))
                .bind(result)
                .bind(run_in)
                .execute(&self.pool)
                .await?;
            if written.rows_affected() == 0 {
                tracing::warn!(
                    target: JOB_TARGET,
                    job = job.id.as_str(),
                    outcome = outcome.as_str(),
                    "job no longer held by this worker (re-enqueued as orphaned?): its outcome is not written"
                );
            }
            Ok(())
        })
    }
}

fn described(outcome: &JobOutcome, cause: &Cause) -> String {
    let mut text = format!("{}: {cause}", outcome.as_str());
    if let Some(origin) = cause.origin() {
        text.push_str(&format!(" [origin {origin}]"));
    }
    text
}
