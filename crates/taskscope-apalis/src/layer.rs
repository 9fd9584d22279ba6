//! The layer: each job under a scope of its own, its end decided by cause.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::error::{AbortError, DeferredError, RetryAfterError};
use apalis_core::task::Task;
use apalis_core::task::from_request::FromRequest;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use taskscope::{BoxError, Cause, CauseKind, Scope, TaskError};
use tower_layer::Layer;
use tower_service::Service;

use crate::policy::{CausePolicy, JobEnd, JobPolicy, Verdict};
use crate::settle::{ApalisResult, Job, Settle};

/// The target of the events this crate emits.
pub(crate) const JOB_TARGET: &str = "taskscope::job";

/// apalis' limit on attempts for a task that names none.
const DEFAULT_MAX_ATTEMPTS: usize = 25;

/// The code of a job put back because its compensation failed, panicked or ran out of time.
pub const COMPENSATION_FAILED: &str = "COMPENSATION_FAILED";

/// How long a job whose compensation failed waits before it runs (and is compensated) again.
const COMPENSATION_RETRY: Duration = Duration::from_secs(5);

/// How often a failed settlement is tried again, and the first wait between tries.
const SETTLE_TRIES: u32 = 5;
const SETTLE_RETRY: Duration = Duration::from_millis(100);

/// How a job ended, once its [`JobPolicy`] has spoken.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum JobOutcome {
    /// It succeeded.
    Done,
    /// It goes back to the queue, its attempt not counted, to run again after `after`: its
    /// worker stopped ([`Verdict::Requeue`], at once), or its compensation failed.
    Requeued {
        /// Why it did not finish.
        cause: Cause,
        /// The wait before it runs again.
        after: Duration,
    },
    /// A failed attempt, to be tried again after `after` ([`Verdict::Retry`], attempts left).
    Retrying {
        /// Why the attempt failed.
        cause: Cause,
        /// The wait before the next attempt.
        after: Duration,
    },
    /// Its last attempt failed: given up, and compensated.
    Failed(Cause),
    /// Given up at once ([`Verdict::Abort`]), and compensated.
    Aborted(Cause),
}

impl JobOutcome {
    /// Its name in records and logs: `done`, `requeued`, `retrying`, `failed` or `aborted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::Requeued { .. } => "requeued",
            JobOutcome::Retrying { .. } => "retrying",
            JobOutcome::Failed(_) => "failed",
            JobOutcome::Aborted(_) => "aborted",
        }
    }

    /// The cause that ended the job; `None` if it succeeded.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            JobOutcome::Done => None,
            JobOutcome::Requeued { cause, .. }
            | JobOutcome::Retrying { cause, .. }
            | JobOutcome::Failed(cause)
            | JobOutcome::Aborted(cause) => Some(cause),
        }
    }

    /// Whether the job was given up ([`Failed`](JobOutcome::Failed) or
    /// [`Aborted`](JobOutcome::Aborted)): the outcomes that are compensated.
    pub fn is_given_up(&self) -> bool {
        matches!(self, JobOutcome::Failed(_) | JobOutcome::Aborted(_))
    }

    /// The error apalis is handed, whose type tells it the task's status: `AbortError` →
    /// *killed*, `RetryAfterError` and `DeferredError` → *pending*, any other → *failed*.
    fn into_error(self) -> BoxError {
        match self {
            JobOutcome::Done => unreachable!("a job that succeeded has no error"),
            JobOutcome::Requeued { cause, .. } => Box::new(DeferredError::new(cause)),
            JobOutcome::Retrying { cause, after } => Box::new(RetryAfterError::new(cause, after)),
            JobOutcome::Failed(cause) => Box::new(cause),
            JobOutcome::Aborted(cause) => Box::new(AbortError::new(cause)),
        }
    }
}

/// A job's scope, for its handler: ask for it as an argument.
///
/// ```
/// use taskscope::Cause;
/// use taskscope_apalis::JobScope;
///
/// async fn send_invoice(invoice: u64, scope: JobScope) -> Result<(), Cause> {
///     scope.check()?; // stopped (deadline, shutdown)? say why
///     // ... the work, every await bound to `scope` ...
///     Ok(())
/// }
/// ```
///
/// It is a child of the [`JobScopeLayer`]'s scope named `job-{task id}`, with the layer's
/// deadline; its cause is the job's.
#[derive(Clone, Debug)]
pub struct JobScope(Scope);

impl JobScope {
    /// The scope itself.
    pub fn into_inner(self) -> Scope {
        self.0
    }
}

impl Deref for JobScope {
    type Target = Scope;

    fn deref(&self) -> &Scope {
        &self.0
    }
}

/// A handler asked for a [`JobScope`] on a worker without a [`JobScopeLayer`].
#[derive(Debug)]
pub struct MissingJobScope;

impl fmt::Display for MissingJobScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no job scope: add taskscope_apalis::JobScopeLayer to the worker")
    }
}

impl Error for MissingJobScope {}

impl<Args: Sync> FromRequest<Task<Args>> for JobScope {
    type Error = MissingJobScope;

    async fn from_request(task: &Task<Args>) -> Result<JobScope, MissingJobScope> {
        task.data()
            .get::<JobScope>()
            .cloned()
            .ok_or(MissingJobScope)
    }
}

/// What is done for a job that was given up: undo what it did, knowing why.
///
/// It runs in a detached scope (a shutdown does not cut it short) with the layer's
/// [`compensation_timeout`](JobScopeLayer::compensation_timeout), before the job is settled,
/// so that a worker killed in between leaves the job to be run, and compensated, again: make
/// it idempotent. If it fails, panics or runs out of time, the job is not given up but put
/// back, its attempt not counted, to run again in 5 s ([`COMPENSATION_FAILED`]). A closure
/// `Fn(Args, Cause, Scope) -> impl Future<Output = Result<(), E>>` is one.
pub trait Compensate<Args>: Clone + Send + Sync + 'static {
    /// Undoes what the job with `args` did, because of `cause`, within `scope`.
    ///
    /// # Cancel safety
    ///
    /// The layer awaits it to its end, or its time limit; dropped there (or with the job's
    /// future), it must leave things so that running it again finishes the work.
    fn compensate(
        &self,
        args: Args,
        cause: Cause,
        scope: Scope,
    ) -> BoxFuture<'static, Result<(), BoxError>>;
}

impl<Args, F, Fut, E> Compensate<Args> for F
where
    F: Fn(Args, Cause, Scope) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn compensate(
        &self,
        args: Args,
        cause: Cause,
        scope: Scope,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        self(args, cause, scope)
            .map(|done| done.map_err(Into::into))
            .boxed()
    }
}

/// No compensation: the default of a [`JobScopeLayer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCompensation;

impl<Args> Compensate<Args> for NoCompensation {
    fn compensate(&self, _: Args, _: Cause, _: Scope) -> BoxFuture<'static, Result<(), BoxError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

/// A [`Layer`] for apalis workers: each job runs under a scope of its own, a child of the
/// worker's, with its own deadline, and its end is decided by the cause that ended it.
///
/// ```no_run
/// # async fn example(pool: apalis_postgres::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use apalis::prelude::*;
/// use apalis_postgres::PostgresStorage;
/// use taskscope::{Cause, Scope};
/// use taskscope_apalis::{postgres, CausePolicy, JobScope, JobScopeLayer};
///
/// async fn reserve(sku: String, scope: JobScope) -> Result<(), Cause> {
///     scope.check()?;
///     Ok(())
/// }
///
/// let worker_scope = Scope::new();
/// let backend = PostgresStorage::<String>::new(&pool).with_config(postgres::config("reserve"));
/// let worker = WorkerBuilder::new("reserve-1")
///     .backend(backend)
///     .layer(
///         JobScopeLayer::new(&worker_scope)
///             .deadline(Duration::from_secs(5))
///             .policy(CausePolicy::new().permanent("INVENTORY_SHORTAGE"))
///             .settle(postgres::Settle::new(&pool)),
///     )
///     .build(reserve);
/// worker.run_until(async move {
///     worker_scope.cancelled().await;
///     Ok::<(), std::io::Error>(())
/// }).await?;
/// # Ok(()) }
/// ```
///
/// For each job:
///
/// 1. a scope named `job-{task id}` is made under the layer's scope, with the
///    [`deadline`](JobScopeLayer::deadline); the handler asks for it as a [`JobScope`];
/// 2. the job runs; once its scope is cancelled (its deadline, the worker's scope) it has the
///    [`grace`](JobScopeLayer::grace) to return, and is then dropped;
/// 3. its cause is the scope's if it was cancelled (first cause wins), else the one its error
///    carries ([`TaskError::as_cause`]), else a `task_failed` cause with the error's words; a
///    panic is caught and becomes a `task_panicked` cause;
/// 4. the [`policy`](JobScopeLayer::policy) turns the cause into a [`Verdict`]; a retry with no
///    attempt left is a [`JobOutcome::Failed`];
/// 5. a job given up is [`compensate`](JobScopeLayer::compensate)d, in a detached scope named
///    `compensate-{task id}`, with the cause; if that fails, the job is put back instead
///    ([`COMPENSATION_FAILED`]);
/// 6. the outcome is [settled](Settle) with the queue (tried again with backoff if that
///    fails), and apalis is handed an error of the type that tells it the task's status.
///
/// One `taskscope::job` event (debug; warn when a job is given up or its compensation failed)
/// says how each job ended.
///
/// # Cancel safety
///
/// Dropping a job's future (apalis does not, short of the process ending) drops the handler's
/// future, its scope and any compensation in progress, and settles nothing: the job stays
/// locked by its worker, to be put back by
/// [`postgres::release_unstarted`](crate::postgres::release_unstarted) or re-enqueued as an
/// orphan.
#[derive(Clone)]
pub struct JobScopeLayer<P = CausePolicy, C = NoCompensation, S = ApalisResult> {
    parent: Scope,
    deadline: Option<Duration>,
    grace: Duration,
    compensation_timeout: Duration,
    policy: Arc<P>,
    compensate: C,
    settle: Arc<S>,
}

impl JobScopeLayer {
    /// Jobs under `parent` (the worker's scope), with the default [`CausePolicy`], no
    /// deadline, a 2 s grace, no compensation (5 s for one), and the outcome told to apalis
    /// by the error type alone ([`ApalisResult`]).
    pub fn new(parent: &Scope) -> JobScopeLayer {
        JobScopeLayer {
            parent: parent.clone(),
            deadline: None,
            grace: Duration::from_secs(2),
            compensation_timeout: Duration::from_secs(5),
            policy: Arc::new(CausePolicy::new()),
            compensate: NoCompensation,
            settle: Arc::new(ApalisResult),
        }
    }
}

impl<P, C, S> JobScopeLayer<P, C, S> {
    /// Each job's deadline, from its start: a `deadline_exceeded` cause when it passes.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How long a job whose scope was cancelled may take to return before it is dropped.
    ///
    /// A stopping apalis worker sends no heartbeat: the grace, plus the compensation's time
    /// and the settlement, must fit within the backend's orphan window
    /// (`heartbeat_interval × missed_heartbeats`: 10 s with
    /// [`postgres::config`](crate::postgres::config)), or the job is re-enqueued as an orphan
    /// while it is still stopping.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a compensation may take before it is dropped and the job put back to be
    /// compensated again.
    pub fn compensation_timeout(mut self, timeout: Duration) -> Self {
        self.compensation_timeout = timeout;
        self
    }

    /// How a job's end is decided: a [`CausePolicy`] or a closure.
    pub fn policy<Q: JobPolicy>(self, policy: Q) -> JobScopeLayer<Q, C, S> {
        JobScopeLayer {
            parent: self.parent,
            deadline: self.deadline,
            grace: self.grace,
            compensation_timeout: self.compensation_timeout,
            policy: Arc::new(policy),
            compensate: self.compensate,
            settle: self.settle,
        }
    }

    /// What is done for a job given up (see [`Compensate`]).
    pub fn compensate<D>(self, compensate: D) -> JobScopeLayer<P, D, S> {
        JobScopeLayer {
            parent: self.parent,
            deadline: self.deadline,
            grace: self.grace,
            compensation_timeout: self.compensation_timeout,
            policy: self.policy,
            compensate,
            settle: self.settle,
        }
    }

    /// Where outcomes are written: [`postgres::Settle`](crate::postgres::Settle) for
    /// apalis-postgres.
    pub fn settle<T: Settle>(self, settle: T) -> JobScopeLayer<P, C, T> {
        JobScopeLayer {
            parent: self.parent,
            deadline: self.deadline,
            grace: self.grace,
            compensation_timeout: self.compensation_timeout,
            policy: self.policy,
            compensate: self.compensate,
            settle: Arc::new(settle),
        }
    }
}

impl<P, C: fmt::Debug, S: fmt::Debug> fmt::Debug for JobScopeLayer<P, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobScopeLayer")
            .field("parent", &self.parent.path().to_string())
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("compensation_timeout", &self.compensation_timeout)
            .field("compensate", &self.compensate)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl<Svc, P, C: Clone, S> Layer<Svc> for JobScopeLayer<P, C, S> {
    type Service = JobScopeService<Svc, P, C, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        JobScopeService {
            inner,
            layer: JobScopeLayer {
                parent: self.parent.clone(),
                deadline: self.deadline,
                grace: self.grace,
                compensation_timeout: self.compensation_timeout,
                policy: self.policy.clone(),
                compensate: self.compensate.clone(),
                settle: self.settle.clone(),
            },
        }
    }
}

/// The service of a [`JobScopeLayer`].
#[derive(Clone)]
pub struct JobScopeService<Svc, P = CausePolicy, C = NoCompensation, S = ApalisResult> {
    inner: Svc,
    layer: JobScopeLayer<P, C, S>,
}

impl<Svc: fmt::Debug, P, C: fmt::Debug, S: fmt::Debug> fmt::Debug
    for JobScopeService<Svc, P, C, S>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobScopeService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<Svc, Args, P, C, S> Service<Task<Args>> for JobScopeService<Svc, P, C, S>
where
    Svc: Service<Task<Args>>,
    Svc::Error: Into<BoxError> + Send,
    Svc::Future: Send + 'static,
    Svc::Response: Send + 'static,
    Args: Clone + Send + Sync + 'static,
    P: JobPolicy,
    C: Compensate<Args>,
    S: Settle,
{
    type Response = Svc::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Svc::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut task: Task<Args>) -> Self::Future {
        let layer = &self.layer;
        let id = task
            .task_id()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        let mut scope = layer.parent.child_builder().name(format!("job-{id}"));
        if let Some(deadline) = layer.deadline {
            scope = scope.timeout(deadline).deadline_cause(
                Cause::of_kind(CauseKind::DeadlineExceeded).with_detail(format!(
                    "job {id} not done within {} ms",
                    deadline.as_millis()
                )),
            );
        }
        let scope = scope.build();
        let worker = task
            .data()
            .get::<WorkerContext>()
            .map(|worker| worker.name().to_owned());
        let max_attempts = task.max_attempts().unwrap_or(DEFAULT_MAX_ATTEMPTS);
        // apalis counts the attempt when its lifecycle layer, inside this one, is first
        // polled: read once the job has run.
        let attempt = task.raw_attempt().clone();
        let before = attempt.current();
        task.inject_data(JobScope(scope.clone()));
        let args = task.args.clone();
        let run = AssertUnwindSafe(self.inner.call(task)).catch_unwind();
        let (parent, grace) = (layer.parent.clone(), layer.grace);
        let compensation_timeout = layer.compensation_timeout;
        let (policy, compensate, settle) = (
            layer.policy.clone(),
            layer.compensate.clone(),
            layer.settle.clone(),
        );
        Box::pin(async move {
            let mut run = Box::pin(run);
            let returned = tokio::select! {
                biased;
                returned = &mut run => Some(returned),
                _ = scope.cancelled() => tokio::time::timeout(grace, &mut run).await.ok(),
            };
            // A job past its grace is dropped here, with what it was awaiting.
            drop(run);
            let job = Job {
                id,
                worker,
                attempt: attempt.current().max(before + 1),
                attempts_before: before,
                max_attempts,
            };
            let (response, cause) = match returned {
                Some(Ok(Ok(response))) => (Some(response), None),
                Some(Ok(Err(error))) => (None, Some(error_cause(&scope, &job, error.into()))),
                Some(Err(panic)) => (None, Some(panic_cause(&job, &*panic))),
                None => {
                    tracing::warn!(
                        target: JOB_TARGET,
                        job = job.id.as_str(),
                        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                        "job did not stop within its grace, dropped"
                    );
                    (None, scope.cause())
                }
            };
            drop(scope);
            let mut outcome = match cause {
                None => JobOutcome::Done,
                Some(cause) => {
                    let end = JobEnd::new(&cause, job.attempt, job.max_attempts)
                        .worker_stopping(parent.is_cancelled());
                    match policy.decide(&end) {
                        Verdict::Requeue => JobOutcome::Requeued {
                            cause,
                            after: Duration::ZERO,
                        },
                        Verdict::Retry { after } if !end.is_last_attempt() => {
                            JobOutcome::Retrying { cause, after }
                        }
                        Verdict::Retry { .. } => JobOutcome::Failed(cause),
                        Verdict::Abort => JobOutcome::Aborted(cause),
                    }
                }
            };
            if let (true, Some(cause)) = (outcome.is_given_up(), outcome.cause()) {
                let scope = parent
                    .child_builder()
                    .name(format!("compensate-{}", job.id))
                    .timeout(compensation_timeout)
                    .detached()
                    .build();
                let compensation =
                    AssertUnwindSafe(compensate.compensate(args, cause.clone(), scope))
                        .catch_unwind();
                let failed = match tokio::time::timeout(compensation_timeout, compensation).await {
                    Ok(Ok(Ok(()))) => None,
                    Ok(Ok(Err(error))) => Some(format!("failed: {error}")),
                    Ok(Err(panic)) => Some(format!("panicked: {}", panic_message(&*panic))),
                    Err(_) => Some(format!("took over {} ms", compensation_timeout.as_millis())),
                };
                if let Some(failed) = failed {
                    outcome = JobOutcome::Requeued {
                        cause: Cause::new(COMPENSATION_FAILED).with_detail(format!(
                            "job {} given up ({cause}), its compensation {failed}",
                            job.id
                        )),
                        after: COMPENSATION_RETRY,
                    };
                }
            }
            record(&job, &outcome);
            settle_with_retries(&*settle, &job, &outcome).await?;
            match response {
                Some(response) => Ok(response),
                None => Err(outcome.into_error()),
            }
        })
    }
}

/// The cause of a job that returned `error`: its scope's, else the error's own, else a
/// `task_failed` cause with the error's words.
fn error_cause(scope: &Scope, job: &Job, error: BoxError) -> Cause {
    if let Some(cause) = scope.cause() {
        return cause;
    }
    match error.as_cause() {
        Some(cause) => cause.clone(),
        None => Cause::of_kind(CauseKind::TaskFailed)
            .with_detail(format!("job {} failed: {error}", job.id)),
    }
}

fn panic_cause(job: &Job, panic: &(dyn std::any::Any + Send)) -> Cause {
    Cause::of_kind(CauseKind::TaskPanicked).with_detail(format!(
        "job {} panicked: {}",
        job.id,
        panic_message(panic)
    ))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload")
}

/// Settles `outcome`, trying again with backoff if the backend fails (the database went away
/// for a moment): a job whose outcome is not written stays locked by a live worker.
async fn settle_with_retries<S: Settle + ?Sized>(
    settle: &S,
    job: &Job,
    outcome: &JobOutcome,
) -> Result<(), BoxError> {
    let mut wait = SETTLE_RETRY;
    let mut tries = 1;
    loop {
        match settle.settle(job, outcome).await {
            Ok(()) => return Ok(()),
            Err(error) if tries < SETTLE_TRIES => {
                tracing::warn!(
                    target: JOB_TARGET,
                    job = job.id.as_str(),
                    outcome = outcome.as_str(),
                    %error,
                    "job outcome not written, trying again"
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            Err(error) => {
                tracing::error!(
                    target: JOB_TARGET,
                    job = job.id.as_str(),
                    outcome = outcome.as_str(),
                    %error,
                    "job outcome not written: the job stays with this worker until it stops"
                );
                return Err(error);
            }
        }
    }
}

fn record(job: &Job, outcome: &JobOutcome) {
    let cause = outcome.cause();
    let (kind, code) = cause.map_or(("", ""), |cause| (cause.kind().as_str(), cause.code()));
    let detail = cause.and_then(Cause::detail).unwrap_or("");
    if outcome.is_given_up() || code == COMPENSATION_FAILED {
        tracing::warn!(
            target: JOB_TARGET,
            job = job.id.as_str(),
            attempt = job.attempt as u64,
            outcome = outcome.as_str(),
            cause.kind = kind,
            cause.code = code,
            cause.detail = detail,
            "job given up, or its compensation failed"
        );
    } else {
        tracing::debug!(
            target: JOB_TARGET,
            job = job.id.as_str(),
            attempt = job.attempt as u64,
            outcome = outcome.as_str(),
            cause.kind = kind,
            cause.code = code,
            cause.detail = detail,
            "job ended"
        );
    }
}
