//! apalis-postgres: outcomes written to its jobs table, with the attempt count and the time of
//! the next try that the default bookkeeping cannot express.

use std::time::Duration;

use apalis_postgres::{Config, PgPool};
use futures::future::BoxFuture;
use taskscope::{BoxError, Cause};

use crate::layer::JOB_TARGET;
use crate::layer::JobOutcome;
use crate::settle::Job;

/// The apalis-postgres configuration [`Settle`] needs, for `queue`: one task fetched at a
/// time (a worker that stops hands nothing back unrun), tasks not marked *running* by
/// apalis (the mark is written late and would undo a requeue) and results not written by
/// apalis (`Settle` writes them), with a 1 s heartbeat and a worker presumed dead after 10
/// missed ones (its jobs are then re-enqueued). A stopping apalis worker sends no heartbeat:
/// the layer's grace and compensation time must fit in those 10 s.
pub fn config(queue: &str) -> Config {
    Config::default()
        .queue(queue)
        .batch_size(1)
        .lock_tasks(false)
        .persist_results(false)
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(10)
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
/// writes it. A row is written only while this run still holds the job: locked by this worker,
/// `Queued`, its attempts as when it was fetched. One re-enqueued meanwhile (its worker
/// presumed dead), even if fetched again by a worker of the same name, is left to its new run.
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
WHERE id = $1 AND lock_by IS NOT DISTINCT FROM $2 AND attempts = $7 AND status = 'Queued'";

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
                JobOutcome::Requeued { after, .. } => ("Pending", attempt - 1, Some(*after)),
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
                .bind(i32::try_from(job.attempts_before).unwrap_or(i32::MAX))
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

/// Dead-letters the jobs of `queue` whose payload is not JSON: they become `Killed`, with
/// `last_result` saying why, and are never fetched again. Returns how many there were.
///
/// What it tests is PostgreSQL's idea of JSON, not serde's: a payload both accept but the job
/// type does not (a number out of range, a wrong shape for a typed `Args`) still stops the
/// worker; one with `\u0000` (serde accepts it, PostgreSQL does not) is dead-lettered.
///
/// apalis decodes a payload in the backend, before any layer: one that is not JSON fails the
/// worker's stream (`run` returns a backend error) and stays locked by that worker, to be
/// re-enqueued as an orphan and fail the next worker too. Call this before a worker starts,
/// and again before it is restarted after a backend error. (A payload that is JSON but not a
/// job is better caught in the handler: take `serde_json::Value` and decode it there, failing
/// with a cause marked permanent.)
///
/// # Cancel safety
///
/// One transaction: dropped, it is either committed or not.
pub async fn dead_letter_undecodable(pool: &PgPool, queue: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // A function of this session only: PostgreSQL 15 has no `IS JSON`, and a failed cast
    // inside an expression would fail the whole statement.
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION pg_temp.taskscope_is_json(payload bytea) RETURNS boolean
         LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN
             PERFORM convert_from(payload, 'UTF8')::jsonb;
             RETURN true;
         EXCEPTION WHEN others THEN
             RETURN false;
         END $$",
    )
    .execute(&mut *tx)
    .await?;
    let dead = sqlx::query(
        "UPDATE apalis.jobs
         SET status = 'Killed', done_at = now(), lock_by = NULL, lock_at = NULL,
             last_result = jsonb_build_object('Err', 'dead-lettered: the payload is not JSON')
         WHERE job_type = $1
           AND (status IN ('Pending', 'Queued', 'Running')
                OR (status = 'Failed' AND attempts < max_attempts))
           AND (job IS NULL OR NOT pg_temp.taskscope_is_json(job))",
    )
    .bind(queue)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if dead > 0 {
        tracing::warn!(
            target: JOB_TARGET,
            queue,
            jobs = dead,
            "jobs dead-lettered: their payload is not JSON"
        );
    }
    Ok(dead)
}

/// Puts back the jobs of `queue` that the stopped worker `worker` fetched but never started,
/// their attempts unchanged. Returns how many there were.
///
/// A worker that stops may have a fetch in flight: apalis marks the job as the worker's
/// (`Queued`, `lock_by`), and nothing runs it. Left alone, it waits for the worker to be
/// presumed dead and is re-enqueued as an orphan with one more attempt. Every job the worker
/// started was settled by [`Settle`] before it returned (or its settlement failed, five times,
/// and was logged), so once the worker has stopped, what it still holds was never started or
/// could not be settled: either way it runs again. Call this after the worker's `run_until`
/// returns.
///
/// # Cancel safety
///
/// One statement: dropped, it is either written or not.
pub async fn release_unstarted(
    pool: &PgPool,
    queue: &str,
    worker: &str,
) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE apalis.jobs
         SET status = 'Pending', lock_by = NULL, lock_at = NULL
         WHERE job_type = $1 AND lock_by = $2 AND status IN ('Queued', 'Running')",
    )
    .bind(queue)
    .bind(worker)
    .execute(pool)
    .await?
    .rows_affected();
    if released > 0 {
        tracing::debug!(
            target: JOB_TARGET,
            queue,
            worker,
            jobs = released,
            "jobs fetched but not started put back"
        );
    }
    Ok(released)
}
