//! The order pipeline behind `cargo run --example orders`, shared with its integration test:
//! `config` (flags), `plan` (what happens to each order, from the seed), `store` (SQLite),
//! `gateway` (the simulated payment gateway), `pipeline` (one order), `summary` (the table).
//!
//! ```text
//! shop                                   root scope: TraceObserver (events, audit log)
//! └── workers                            supervisor (one-for-one)
//!     ├── gateway-poller                 restarted with backoff on transient errors
//!     └── intake                         runs the orders, `concurrency` at a time
//!         └── orders/order-17            one task per order, deadline `deadline_ms`
//!             ├── reserve                DB transaction bound to the step's scope
//!             ├── charge                 gateway call under `payment_timeout_ms`
//!             ├── fraud-check
//!             └── compensate             detached: runs because the order was cancelled
//! ```

mod config;
pub mod distributed;
pub mod gateway;
pub mod pipeline;
pub mod plan;
pub mod store;
mod summary;

pub use config::{Config, ConfigError};
pub use summary::Summary;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use taskscope::{
    Backoff, Cause, CauseKind, ChildSpec, Outcome, Restart, Scope, Supervisor, SupervisorHandle,
    TaskGroup,
};
use taskscope_select::FutureExt;
use taskscope_trace::{AuditEvent, AuditLog, AuditRecord, TraceObserver};
use tokio::sync::watch;
use tokio::time::sleep;
use tokio_util::task::TaskTracker;

use gateway::Gateway;
use pipeline::{Ctx, OrderReport};
use plan::OrderPlan;
use store::Store;
use summary::SummaryInput;

/// Locks `mutex`, whether or not a panicking holder poisoned it: every value the shop keeps
/// under a lock stays valid at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the order steps' scopes are.
const STEPS: &str = "shop/workers/intake/orders/";

/// The code of the cause that stops the workers once every order has run.
pub const RUN_COMPLETE: &str = "RUN_COMPLETE";

/// Why a run could not start or finish.
#[derive(Debug)]
pub enum Error {
    Config(ConfigError),
    Db(PathBuf, rusqlite::Error),
    AuditLog(PathBuf, std::io::Error),
    Supervisor(taskscope::ConfigError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(error) => error.fmt(f),
            Error::Db(path, _) => write!(f, "database {}", path.display()),
            Error::AuditLog(path, _) => write!(f, "audit log {}", path.display()),
            Error::Supervisor(_) => f.write_str("supervisor configuration"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(_) => None,
            Error::Db(_, error) => Some(error),
            Error::AuditLog(_, error) => Some(error),
            Error::Supervisor(error) => Some(error),
        }
    }
}

/// A run in progress.
pub struct Running {
    supervisor: Supervisor,
    ctx: Arc<Ctx>,
    plans: usize,
    reports: Arc<Mutex<Vec<OrderReport>>>,
    intake_done: watch::Receiver<bool>,
    audit: AuditLog,
    audit_path: PathBuf,
    shutdown_after: Option<Duration>,
    started: Instant,
}

/// Sets up the database and the observer and starts the workers. `progress` is called as each
/// order ends.
pub fn start(
    config: &Config,
    progress: impl Fn(&OrderReport) + Send + Sync + 'static,
) -> Result<Running, Error> {
    config.validate().map_err(Error::Config)?;
    let plans = Arc::new(plan::plans(config));
    let db = config.db_path();
    let store = Store::create(&db, &plan::initial_stock(config)).map_err(|e| Error::Db(db, e))?;
    let audit_path = config.audit_path();
    let file = File::create(&audit_path).map_err(|e| Error::AuditLog(audit_path.clone(), e))?;
    let audit = AuditLog::to_writer(file);
    let grace = Duration::from_millis(config.grace_ms);
    // Every cancellation, task and restart under `shop` is reported, with no code in the steps:
    // as tracing events (on stderr, filtered by RUST_LOG) and as audit records.
    let observer = TraceObserver::new()
        .slow_to_stop_after(Some(grace / 2))
        .audit(audit.clone());
    let root = Scope::builder()
        .name("shop")
        .observer(Arc::new(observer))
        .build();
    let ctx = Arc::new(Ctx {
        store,
        gateway: Gateway::new(config.seed, config.gateway_flakiness),
        deadline: Duration::from_millis(config.deadline_ms),
        payment_timeout: config.payment_timeout(),
        grace,
        compensation_budget: Duration::from_secs(2),
        compensations: TaskTracker::new(),
    });
    let reports = Arc::new(Mutex::new(Vec::with_capacity(plans.len())));
    let (done, intake_done) = watch::channel(false);
    // Its orders finish what they began: enough for the steps' grace and compensation.
    let intake_grace = ctx.grace + ctx.compensation_budget + Duration::from_secs(1);
    let intake = {
        let (ctx, reports, progress) = (ctx.clone(), reports.clone(), Arc::new(progress));
        let plans = plans.clone();
        let concurrency = NonZeroUsize::new(config.concurrency).expect("validated");
        ChildSpec::new("intake", move |scope| {
            let (ctx, reports, progress) = (ctx.clone(), reports.clone(), progress.clone());
            let (plans, done) = (plans.clone(), done.clone());
            async move {
                intake(&ctx, &scope, &plans, concurrency, &reports, &*progress).await;
                done.send_replace(true);
                Ok(())
            }
        })
        .grace(intake_grace)
        .restart(Restart::Never)
    };
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(
            Backoff::exponential(Duration::from_millis(50))
                .max(Duration::from_secs(1))
                .jitter(0.2),
        )
        .jitter_seed(config.seed)
        .intensity(30, Duration::from_secs(10))
        // Started first, stopped last: orders stop before the poller does.
        .child(poller(ctx.gateway.clone()))
        .child(intake)
        .start(&root)
        .map_err(Error::Supervisor)?;
    Ok(Running {
        supervisor,
        ctx,
        plans: plans.len(),
        reports,
        intake_done,
        audit,
        audit_path,
        shutdown_after: config.shutdown_after_ms.map(Duration::from_millis),
        started: Instant::now(),
    })
}

impl Running {
    /// The workers' supervisor, to shut it down (ctrl-c).
    pub fn handle(&self) -> SupervisorHandle {
        self.supervisor.handle()
    }

    /// Waits for every order (or a shutdown), stops the workers, checks the database and
    /// sums up.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: dropping it drops the supervisor, which stops the workers with a
    /// *dropped* cause, and the summary is lost.
    pub async fn finish(mut self) -> Result<Summary, Error> {
        let handle = self.supervisor.handle();
        let shutdown_after = self.shutdown_after;
        let simulated_ctrl_c = async move {
            match shutdown_after {
                Some(after) => sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.intake_done.wait_for(|done| *done) => {
                handle.shutdown(
                    Cause::of_kind(CauseKind::Shutdown)
                        .with_code(RUN_COMPLETE)
                        .with_detail("every order has run"),
                );
            }
            () = simulated_ctrl_c => {
                handle.shutdown(taskscope_select::signal::shutdown_cause("SIGINT"));
            }
            // Shut down from outside (ctrl-c).
            () = handle.stopped() => {}
        }
        let stopped = self.supervisor.join().await;
        // The compensations of orders whose task was aborted (a forced shutdown) may still
        // be running: the ledger is checked once they are done.
        self.ctx.compensations.close();
        self.ctx.compensations.wait().await;
        let snapshot = handle.snapshot();
        let elapsed = self.started.elapsed();
        let reports = std::mem::take(&mut *lock(&self.reports));
        let db = self.ctx.store.path().to_owned();
        let ledger = self.ctx.store.check().await.map_err(|e| Error::Db(db, e))?;
        let latencies = read_latencies(&self.audit_path)
            .map_err(|e| Error::AuditLog(self.audit_path.clone(), e))?;
        let stopped_by = handle
            .scope()
            .cause()
            .filter(|cause| cause.code() != RUN_COMPLETE)
            .map(|cause| format!("{} ({})", cause.code(), cause.kind().as_str()));
        Ok(Summary::new(SummaryInput {
            planned: self.plans,
            reports,
            ledger,
            latencies,
            restarts: snapshot.child("gateway-poller").map_or(0, |c| c.restarts),
            authorized: self.ctx.gateway.authorized(),
            voided: self.ctx.gateway.voided(),
            supervisor_error: stopped.err().map(|error| error.to_string()),
            stopped_by,
            audit_write_errors: self.audit.write_errors(),
            elapsed,
            db: self.ctx.store.path().display().to_string(),
            audit_log: self.audit_path.display().to_string(),
        }))
    }
}

/// Runs every order, `concurrency` at a time, until they are all done or the intake is
/// cancelled (orders not yet started then never start).
async fn intake(
    ctx: &Arc<Ctx>,
    scope: &Scope,
    plans: &[OrderPlan],
    concurrency: NonZeroUsize,
    reports: &Mutex<Vec<OrderReport>>,
    progress: &(dyn Fn(&OrderReport) + Send + Sync),
) {
    let mut orders: TaskGroup<OrderReport> = TaskGroup::builder(scope)
        .name("orders")
        .limit(concurrency)
        .collect_all()
        .grace(ctx.grace + ctx.compensation_budget)
        .build();
    let mut ids = HashMap::with_capacity(plans.len());
    for plan in plans {
        let (ctx, plan) = (ctx.clone(), plan.clone());
        let id = plan.id;
        let task = orders.spawn(format!("order-{id}"), move |scope| async move {
            Ok(pipeline::run_order(ctx, scope, plan).await)
        });
        ids.insert(task, id);
    }
    while let Some(exit) = orders.join_next().await {
        let id = ids[&exit.task.id()];
        let report = match exit.outcome {
            Outcome::Completed(report) => report,
            Outcome::Cancelled(_) => OrderReport::not_started(id),
            // `run_order` returns `Ok`; this is a bug in it (a panic), said as such.
            Outcome::Failed(failure) => OrderReport {
                outcome: "failed",
                cause: Some(pipeline::CauseSummary {
                    kind: "task_panicked",
                    code: "ORDER_TASK_FAILED".to_owned(),
                    origin: None,
                    detail: Some(failure.to_string()),
                }),
                ..OrderReport::not_started(id)
            },
            Outcome::Aborted => OrderReport {
                outcome: "aborted",
                ..OrderReport::not_started(id)
            },
        };
        progress(&report);
        lock(reports).push(report);
    }
}

/// Polls the gateway's health endpoint; fails on a transient error, to be restarted.
fn poller(gateway: Gateway) -> ChildSpec {
    ChildSpec::new("gateway-poller", move |scope: Scope| {
        let gateway = gateway.clone();
        async move {
            loop {
                sleep(Duration::from_millis(100)).or_cancel(&scope).await?;
                gateway.health().or_cancel(&scope).await??;
            }
        }
    })
    .restart(Restart::OnFailure)
}

/// The cancel→exit latencies of the order steps a cancellation stopped (they returned its
/// cause; aborted steps are counted apart), in microseconds, from the audit log that
/// taskscope-trace wrote.
fn read_latencies(path: &std::path::Path) -> std::io::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path)?;
    let mut latencies = Vec::new();
    for line in text.lines() {
        let record = AuditRecord::parse(line).map_err(std::io::Error::other)?;
        if record.event == AuditEvent::TaskStopped
            && record.scope.starts_with(STEPS)
            && let Some(task) = record.task
            && task.outcome == "cancelled"
            && let Some(us) = task.cancel_latency_us
        {
            latencies.push(us);
        }
    }
    latencies.sort_unstable();
    Ok(latencies)
}
