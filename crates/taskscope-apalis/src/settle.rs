//! Where a job's outcome is written.

use std::fmt;

use futures::future::BoxFuture;
use taskscope::BoxError;

use crate::layer::JobOutcome;

/// A job, as its settlement needs it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Job {
    /// The task's id.
    pub id: String,
    /// The worker that ran it, if apalis said.
    pub worker: Option<String>,
    /// Which attempt this was, from 1.
    pub attempt: usize,
    /// The attempts the queue had counted when the job was fetched: its row's, unless it
    /// was re-enqueued (as an orphan) since.
    pub attempts_before: usize,
    /// How many attempts it may make in all.
    pub max_attempts: usize,
}

/// Writes a job's outcome to its queue, before apalis hears of it.
///
/// apalis' own bookkeeping cannot say "back to the queue, attempt not counted" nor "again in
/// 30 s": a backend's `Settle` does. [`ApalisResult`] writes nothing and leaves it to apalis;
/// [`postgres::Settle`](crate::postgres::Settle) writes apalis-postgres' jobs table.
pub trait Settle: fmt::Debug + Send + Sync + 'static {
    /// Records `outcome` for `job`.
    ///
    /// # Cancel safety
    ///
    /// Implementations say; the layer awaits it to its end unless the job's future is dropped.
    fn settle<'a>(
        &'a self,
        job: &'a Job,
        outcome: &'a JobOutcome,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// Writes nothing: apalis records the outcome from the error the layer returns, which it maps
/// to a status (`AbortError` → *killed*, `RetryAfterError`/`DeferredError` → *pending*, other
/// errors → *failed*).
///
/// apalis counts every attempt and ignores `RetryAfterError`'s delay, so with it a requeued
/// job's attempt is counted and a retry is not delayed: use a backend's own `Settle` where
/// there is one.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApalisResult;

impl Settle for ApalisResult {
    fn settle<'a>(&'a self, _: &'a Job, _: &'a JobOutcome) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}
