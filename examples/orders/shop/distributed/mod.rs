//! The distributed mode: orders as jobs on a PostgreSQL queue (apalis-postgres), run by any
//! number of worker processes, the ledger in the same database.
//!
//! ```text
//! orders --postgres URL enqueue       resets the ledger and the queue, enqueues --orders jobs
//! orders --postgres URL work          a worker, until SIGTERM/ctrl-c (or --exit-when-idle)
//! orders --postgres URL report        checks the ledger and the queue; non-zero if broken
//! ```
//!
//! ```text
//! worker-{name}                        root scope of one worker process
//! └── workers                          supervisor; SIGTERM/ctrl-c shut it down
//!     └── jobs                         the apalis worker, JobScopeLayer on it
//!         ├── job-{task id}            one per job, deadline --deadline-ms
//!         │   └── order-17             reserve ∥ charge ∥ fraud-check, then confirm
//!         └── compensate-{task id}     detached: the queue gave the order up
//! ```
//!
//! What becomes of an order that did not complete is decided by its cause
//! ([`taskscope_apalis::CausePolicy`]): the worker's shutdown puts it back in the queue, its
//! attempt not counted; its deadline and a panic are retried with backoff, up to
//! `--max-attempts`; a shortage, a declined or timed-out payment, a customer's cancellation and
//! a payload that is not an order are given up at once. An order given up is compensated once.

mod job;
pub mod ledger;
mod report;

use std::error::Error;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{PgPool, PostgresStorage};
use futures::stream;
use sqlx::postgres::PgPoolOptions;
use taskscope::{Backoff, BoxError, Cause, CauseKind, ChildSpec, Restart, Scope, Supervisor};
use taskscope_apalis::{CausePolicy, JobScope, JobScopeLayer, postgres};
use taskscope_select::signal::{Signals, shutdown_on_signals};

use super::Config;
use super::plan;
pub use job::{OrderJob, PERMANENT};
use ledger::PgLedger;
pub use report::Report;

/// The queue's name in `apalis.jobs.job_type`.
pub const QUEUE: &str = "orders";

/// What the distributed mode does.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Resets the ledger and the queue, and enqueues --orders orders drawn from --seed.
    Enqueue {
        /// Attempts each job may make.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// Jobs whose payload is not an order, to see them dead-lettered.
        #[arg(long, default_value_t = 0)]
        bad_payloads: u32,
    },
    /// Runs a worker until SIGTERM or ctrl-c; --concurrency jobs at a time.
    Work {
        /// The worker's name, unique among live workers [default: orders-{pid}].
        #[arg(long)]
        name: Option<String>,
        /// Stop once the queue has nothing left to run.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Checks the ledger's invariants and sums up the queue; the exit code is non-zero if an
    /// invariant is broken or a job is unsettled.
    Report,
}

/// Runs `command` against the database at `url`: `Ok(false)` when a report finds the run
/// inconsistent.
///
/// # Cancel safety
///
/// Not cancel-safe: a worker dropped half-way leaves its jobs to be re-enqueued as orphans.
pub async fn run(config: &Config, url: &str, command: &Command) -> Result<bool, Box<dyn Error>> {
    config.validate()?;
    let pool = PgPoolOptions::new()
        .max_connections(
            u32::try_from(config.concurrency)
                .unwrap_or(u32::MAX)
                .saturating_mul(3)
                .saturating_add(4),
        )
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .map_err(|error| format!("cannot connect to {url}: {error}"))?;
    PostgresStorage::setup(&pool).await?;
    match command {
        Command::Enqueue {
            max_attempts,
            bad_payloads,
        } => {
            enqueue(config, &pool, *max_attempts, *bad_payloads).await?;
            Ok(true)
        }
        Command::Work {
            name,
            exit_when_idle,
        } => {
            // Unique among live workers, across hosts: apalis registers workers by name.
            let name = name.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname")
                    .map(|host| host.trim().to_owned())
                    .unwrap_or_default();
                format!("orders-{host}-{}", std::process::id())
            });
            work(config, &pool, name, *exit_when_idle).await?;
            Ok(true)
        }
        Command::Report => {
            let report = Report::of(&pool, QUEUE).await?;
            if config.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(report.is_consistent())
        }
    }
}

async fn enqueue(
    config: &Config,
    pool: &PgPool,
    max_attempts: u32,
    bad_payloads: u32,
) -> Result<(), Box<dyn Error>> {
    if max_attempts == 0 {
        return Err("--max-attempts 0: a job needs at least one attempt".into());
    }
    PgLedger::new(pool).reset(config.orders).await?;
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(QUEUE)
        .execute(pool)
        .await?;
    let max_attempts = usize::try_from(max_attempts)?;
    let mut jobs = Vec::new();
    for plan in plan::plans(config) {
        jobs.push(serde_json::to_value(OrderJob::of(&plan))?);
    }
    for n in 1..=bad_payloads {
        jobs.push(serde_json::json!({ "order": format!("#{n}"), "note": "not an order job" }));
    }
    let total = jobs.len();
    let mut storage =
        PostgresStorage::<serde_json::Value>::new(pool).with_config(postgres::config(QUEUE));
    let tasks = jobs
        .into_iter()
        .map(|job| TaskBuilder::new(job).max_attempts(max_attempts).build());
    storage.push_all(&mut stream::iter(tasks)).await?;
    println!(
        "enqueued {} orders and {bad_payloads} bad payloads on queue {QUEUE:?} ({total} jobs, {max_attempts} attempts each)",
        config.orders
    );
    Ok(())
}

async fn work(
    config: &Config,
    pool: &PgPool,
    name: String,
    exit_when_idle: bool,
) -> Result<(), Box<dyn Error>> {
    // Listen before starting anything, so that a SIGTERM during start-up is not lost.
    let signals = Signals::new()?;
    let ledger = PgLedger::new(pool);
    let grace = Duration::from_millis(config.grace_ms);
    let ctx = Arc::new(job::Ctx {
        ledger: ledger.clone(),
        worker: name.clone(),
        payment_timeout: config.payment_timeout(),
        grace,
    });
    let deadline = Duration::from_millis(config.deadline_ms);
    let concurrency = NonZeroUsize::new(config.concurrency).expect("validated");
    let starts = Arc::new(AtomicUsize::new(0));
    let jobs = {
        let (pool, name) = (pool.clone(), name.clone());
        ChildSpec::new("jobs", move |scope: Scope| {
            let (pool, ctx, ledger) = (pool.clone(), ctx.clone(), ledger.clone());
            // apalis registers a worker by name: a restart registers afresh.
            let name = match starts.fetch_add(1, Ordering::Relaxed) {
                0 => name.clone(),
                n => format!("{name}.{n}"),
            };
            async move {
                // A payload that is not JSON would fail the worker (apalis decodes it before
                // any layer), and the next one after it: dead-letter those first.
                postgres::dead_letter_undecodable(&pool, QUEUE).await?;
                let policy = PERMANENT
                    .iter()
                    .fold(CausePolicy::new(), |policy, code| policy.permanent(code))
                    .backoff(Duration::from_millis(100), Duration::from_secs(2));
                let layer = JobScopeLayer::new(&scope)
                    .deadline(deadline)
                    // The steps' own grace, then time to return.
                    .grace(grace * 2)
                    .policy(policy)
                    .compensate(move |payload, cause, scope| {
                        job::compensate(ledger.clone(), payload, cause, scope)
                    })
                    .settle(postgres::Settle::new(&pool));
                let storage = PostgresStorage::<serde_json::Value>::new(&pool)
                    .with_config(postgres::config(QUEUE));
                let worker = WorkerBuilder::new(name.as_str())
                    .backend(storage)
                    .layer(layer)
                    .concurrency(concurrency.get())
                    .build(move |payload, scope: JobScope, attempt: Attempt| {
                        job::run(ctx.clone(), payload, scope, attempt.current())
                    });
                let stop = scope.clone();
                worker
                    .run_until(async move {
                        stop.cancelled().await;
                        Ok::<(), std::io::Error>(())
                    })
                    .await
                    .map_err(BoxError::from)?;
                // A fetch in flight when the worker stopped: back to the queue, uncounted.
                postgres::release_unstarted(&pool, QUEUE, &name).await?;
                Ok(())
            }
        })
        // Jobs in flight get their grace and their settlement.
        .grace(grace * 4 + Duration::from_secs(5))
        // A backend error (the database went away, a payload apalis cannot decode) stops
        // the apalis worker: start it again, after the supervisor's backoff.
        .restart(Restart::OnFailure)
    };
    let root = Scope::builder().name(format!("worker-{name}")).build();
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(Backoff::exponential(Duration::from_millis(200)).max(Duration::from_secs(5)))
        .intensity(10, Duration::from_secs(60))
        .child(jobs)
        .start(&root)?;
    let handle = supervisor.handle();
    if exit_when_idle {
        let (pool, handle) = (pool.clone(), handle.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match runnable(&pool, QUEUE).await {
                    Ok(0) => {
                        handle.shutdown(
                            Cause::of_kind(CauseKind::Shutdown)
                                .with_code(super::RUN_COMPLETE)
                                .with_detail("the queue has nothing left to run"),
                        );
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot count the queue's jobs"),
                }
            }
        });
    }
    eprintln!("worker {name}: running jobs of queue {QUEUE:?}, {concurrency} at a time");
    let listener = tokio::spawn(shutdown_on_signals(handle.clone(), signals));
    let stopped = supervisor.join().await;
    listener.abort();
    let cause = handle.scope().cause();
    eprintln!(
        "worker {name}: stopped by {}",
        cause.map_or_else(|| "nothing".to_owned(), |cause| cause.to_string())
    );
    stopped?;
    Ok(())
}

/// Jobs of `queue` that are waiting, in flight, or failed with attempts left.
async fn runnable(pool: &PgPool, queue: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1
           AND (status IN ('Pending', 'Queued', 'Running')
                OR (status = 'Failed' AND attempts < max_attempts))",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
}
