//! The order pipeline behind `cargo run --example orders`, shared with its integration test.
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

pub mod gateway;
pub mod pipeline;
pub mod plan;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildSpec, Outcome, Restart, Scope, Supervisor,
    SupervisorHandle, TaskGroup,
};
use taskscope_select::FutureExt;
use taskscope_trace::{AuditEvent, AuditLog, AuditRecord, TraceObserver};
use tokio::sync::watch;
use tokio::time::sleep;

use gateway::Gateway;
use pipeline::{Ctx, OrderReport};
use plan::{Fate, OrderPlan};
use store::{Ledger, Store};

/// Where the order steps' scopes are.
const STEPS: &str = "shop/workers/intake/orders/";

/// The code of the cause that stops the workers once every order has run.
pub const RUN_COMPLETE: &str = "RUN_COMPLETE";

/// What to run: the example's command-line flags.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "orders",
    about = "An order pipeline on taskscope: every cancelled order says why, in the output and \
             in its SQLite audit table."
)]
pub struct Config {
    /// Orders to run.
    #[arg(long, default_value_t = 300)]
    pub orders: u64,
    /// Seed of every random draw (order fates, latencies, backoff jitter).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Each order's deadline, in milliseconds.
    #[arg(long, default_value_t = 800)]
    pub deadline_ms: u64,
    /// How long the payment gateway may take, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub payment_timeout_ms: u64,
    /// How long a cancelled order's steps may take to stop before they are aborted, in
    /// milliseconds.
    #[arg(long, default_value_t = 150)]
    pub grace_ms: u64,
    /// Share of orders for the sold-out SKU (INVENTORY_SHORTAGE).
    #[arg(long, default_value_t = 0.06)]
    pub shortage_rate: f64,
    /// Share of payments declined (PAYMENT_DECLINED).
    #[arg(long, default_value_t = 0.05)]
    pub decline_rate: f64,
    /// Share of payments slower than the payment timeout (PAYMENT_TIMEOUT).
    #[arg(long, default_value_t = 0.04)]
    pub slow_payment_rate: f64,
    /// Share of orders the customer cancels (USER_CANCELLED).
    #[arg(long, default_value_t = 0.04)]
    pub user_cancel_rate: f64,
    /// Share of orders whose inventory worker panics (code `panicked`, kind `task_panicked`).
    #[arg(long, default_value_t = 0.02)]
    pub panic_rate: f64,
    /// Share of orders whose fraud check hangs (ORDER_DEADLINE, then aborted).
    #[arg(long, default_value_t = 0.01)]
    pub stuck_rate: f64,
    /// Chance that one poll of the gateway's health endpoint fails (the poller restarts).
    #[arg(long, default_value_t = 0.1)]
    pub gateway_flakiness: f64,
    /// Stop the run after this many milliseconds, as ctrl-c would (SIGINT cause).
    #[arg(long)]
    pub shutdown_after_ms: Option<u64>,
    /// The SQLite database (replaced if it exists) [default: orders.sqlite3 in the temporary
    /// directory].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The audit log of taskscope-trace, JSON lines [default: orders-audit.jsonl in the
    /// temporary directory].
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Print the summary as JSON on stdout, and nothing else there.
    #[arg(long)]
    pub json: bool,
}

impl Default for Config {
    fn default() -> Config {
        clap::Parser::parse_from(["orders"])
    }
}

/// A configuration that cannot run.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The longest any configured duration may be.
const MAX_MS: u64 = 3_600_000;

impl Config {
    /// Checks every flag, so that a bad one is a clear error rather than a strange run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if !(1..=1_000_000).contains(&self.orders) {
            return fail(format!("--orders {} is not in 1..=1000000", self.orders));
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return fail(format!(
                "--concurrency {} is not in 1..=10000",
                self.concurrency
            ));
        }
        for (flag, ms, min) in [
            ("--deadline-ms", self.deadline_ms, 1),
            ("--payment-timeout-ms", self.payment_timeout_ms, 1),
            ("--grace-ms", self.grace_ms, 0),
        ] {
            if !(min..=MAX_MS).contains(&ms) {
                return fail(format!("{flag} {ms} is not in {min}..={MAX_MS}"));
            }
        }
        if let Some(ms) = self.shutdown_after_ms
            && ms > MAX_MS
        {
            return fail(format!("--shutdown-after-ms {ms} is over {MAX_MS}"));
        }
        let rates = self.rates();
        for (rate, fate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return fail(format!(
                    "the rate of {fate:?} orders, {rate}, is not in 0..=1"
                ));
            }
        }
        let sum: f64 = rates.iter().map(|(rate, _)| rate).sum();
        if sum > 1.0 + 1e-9 {
            return fail(format!("the failure rates add up to {sum}, over 1"));
        }
        if !(0.0..1.0).contains(&self.gateway_flakiness) {
            return fail(format!(
                "--gateway-flakiness {} is not in 0..1",
                self.gateway_flakiness
            ));
        }
        Ok(())
    }

    /// The rate of each fate other than [`Fate::Complete`].
    pub fn rates(&self) -> [(f64, Fate); 6] {
        [
            (self.shortage_rate, Fate::Shortage),
            (self.decline_rate, Fate::Declined),
            (self.slow_payment_rate, Fate::SlowPayment),
            (self.user_cancel_rate, Fate::UserCancel),
            (self.panic_rate, Fate::Panic),
            (self.stuck_rate, Fate::Stuck),
        ]
    }

    /// How long the payment gateway may take.
    pub fn payment_timeout(&self) -> Duration {
        Duration::from_millis(self.payment_timeout_ms)
    }

    fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("orders.sqlite3"))
    }

    fn audit_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("orders-audit.jsonl"))
    }
}

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
    root: Scope,
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
        root,
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
        let snapshot = handle.snapshot();
        let elapsed = self.started.elapsed();
        let reports =
            std::mem::take(&mut *self.reports.lock().unwrap_or_else(PoisonError::into_inner));
        let db = self.ctx.store.path().to_owned();
        let ledger = self.ctx.store.check().await.map_err(|e| Error::Db(db, e))?;
        let latencies = read_latencies(&self.audit_path)
            .map_err(|e| Error::AuditLog(self.audit_path.clone(), e))?;
        let stopped_by = handle
            .scope()
            .cause()
            .filter(|cause| cause.code() != RUN_COMPLETE)
            .map(|cause| format!("{} ({})", cause.code(), cause.kind().as_str()));
        drop(self.root);
        Ok(Summary::new(SummaryInput {
            planned: self.plans,
            reports,
            ledger,
            latencies,
            restarts: snapshot.child("gateway-poller").map_or(0, |c| c.restarts),
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
    let mut orders: TaskGroup<OrderReport, BoxError> = TaskGroup::builder(scope)
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
        reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(report);
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

struct SummaryInput {
    planned: usize,
    reports: Vec<OrderReport>,
    ledger: Ledger,
    latencies: Vec<u64>,
    restarts: u32,
    voided: u64,
    supervisor_error: Option<String>,
    stopped_by: Option<String>,
    audit_write_errors: u64,
    elapsed: Duration,
    db: String,
    audit_log: String,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Orders planned.
    pub orders: u64,
    pub completed: u64,
    pub cancelled: u64,
    /// Cancelled orders by cause code.
    pub cancelled_by_code: BTreeMap<String, u64>,
    /// Orders that never started: the run was stopped first.
    pub not_started: u64,
    /// Order tasks aborted by the intake (their compensation did not finish in time).
    pub orders_aborted: u64,
    /// Order tasks that failed (a bug in the pipeline: it panicked).
    pub orders_failed: u64,
    /// Orders with no report at all: the intake itself was aborted (a second ctrl-c).
    pub orders_lost: u64,
    /// Compensations that ran, units they put back into stock, authorizations voided.
    pub compensations: u64,
    pub units_released: u64,
    pub authorizations_voided: u64,
    /// Compensations that could not finish.
    pub compensations_failed: u64,
    /// Steps aborted after the grace, by name.
    pub aborted_steps: BTreeMap<String, u64>,
    /// Order steps a cancellation stopped (that returned its cause), and their time from
    /// cancel to exit.
    pub stopped_tasks: u64,
    pub cancel_to_exit_p50_us: Option<u64>,
    pub cancel_to_exit_p99_us: Option<u64>,
    /// Restarts of the gateway poller.
    pub poller_restarts: u32,
    /// What stopped the run early, if something did (ctrl-c: `SIGINT (shutdown)`).
    pub stopped_by: Option<String>,
    /// The first cancelled order of each cause code: the stories of the run.
    pub stories: Vec<OrderReport>,
    /// The database's view, and its invariants.
    pub ledger: Ledger,
    /// Audit records that could not be written (should be 0).
    pub audit_write_errors: u64,
    /// Why the supervisor reported an error, if it did.
    pub supervisor_error: Option<String>,
    pub elapsed_ms: u64,
    pub db: String,
    pub audit_log: String,
}

impl Summary {
    fn new(input: SummaryInput) -> Summary {
        let mut reports = input.reports;
        reports.sort_by_key(|report| report.id);
        let count = |outcome: &str| reports.iter().filter(|r| r.outcome == outcome).count() as u64;
        let mut cancelled_by_code = BTreeMap::new();
        let mut aborted_steps = BTreeMap::new();
        let mut stories = Vec::new();
        let (mut compensations, mut units_released, mut compensations_failed) = (0, 0, 0);
        for report in &reports {
            if let Some(cause) = &report.cause {
                let n = cancelled_by_code.entry(cause.code.clone()).or_insert(0);
                if *n == 0 {
                    stories.push(report.clone());
                }
                *n += 1;
            }
            if let Some(compensation) = &report.compensation {
                compensations += 1;
                units_released += u64::from(compensation.released);
                compensations_failed += u64::from(compensation.failed.is_some());
            }
            for step in &report.aborted {
                *aborted_steps.entry(step.clone()).or_insert(0) += 1;
            }
        }
        let latencies = &input.latencies;
        let percentile = |p: f64| {
            // Nearest rank.
            let rank = (p * latencies.len() as f64).ceil() as usize;
            latencies.get(rank.saturating_sub(1)).copied()
        };
        Summary {
            orders: input.planned as u64,
            completed: count("completed"),
            cancelled: count("cancelled"),
            cancelled_by_code,
            not_started: count("not_started"),
            orders_aborted: count("aborted"),
            orders_failed: count("failed"),
            orders_lost: (input.planned as u64).saturating_sub(reports.len() as u64),
            compensations,
            units_released,
            authorizations_voided: input.voided,
            compensations_failed,
            aborted_steps,
            stopped_tasks: latencies.len() as u64,
            cancel_to_exit_p50_us: percentile(0.50),
            cancel_to_exit_p99_us: percentile(0.99),
            poller_restarts: input.restarts,
            stopped_by: input.stopped_by,
            stories,
            ledger: input.ledger,
            audit_write_errors: input.audit_write_errors,
            supervisor_error: input.supervisor_error,
            elapsed_ms: u64::try_from(input.elapsed.as_millis()).unwrap_or(u64::MAX),
            db: input.db,
            audit_log: input.audit_log,
        }
    }

    /// Whether the run kept every promise: invariants hold, every order is accounted for,
    /// nothing was lost.
    pub fn is_consistent(&self) -> bool {
        self.broken_promises().is_empty()
    }

    /// What did not add up, in words; empty when everything did.
    pub fn broken_promises(&self) -> Vec<String> {
        let mut broken = self.ledger.violations.clone();
        let mut check = |ok: bool, what: String| {
            if !ok {
                broken.push(what);
            }
        };
        check(
            self.ledger.completed == self.completed,
            format!(
                "{} orders completed, the database says {}",
                self.completed, self.ledger.completed
            ),
        );
        // An order task aborted while compensating may still have closed its order: its
        // transaction runs to its end on the blocking pool.
        check(
            (self.cancelled..=self.cancelled + self.orders_aborted)
                .contains(&self.ledger.cancelled),
            format!(
                "{} orders cancelled ({} aborted), the database says {}",
                self.cancelled, self.orders_aborted, self.ledger.cancelled
            ),
        );
        check(
            self.ledger.audit_rows == self.ledger.cancelled,
            format!(
                "{} audit rows for {} cancelled orders",
                self.ledger.audit_rows, self.ledger.cancelled
            ),
        );
        check(
            self.orders_lost == 0 && self.orders_failed == 0,
            format!(
                "{} orders without a report, {} order tasks failed",
                self.orders_lost, self.orders_failed
            ),
        );
        check(
            self.compensations_failed == 0,
            format!("{} compensations did not finish", self.compensations_failed),
        );
        check(
            self.audit_write_errors == 0,
            format!("{} audit records not written", self.audit_write_errors),
        );
        broken
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: Option<u64>| {
            us.map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0))
        };
        writeln!(
            f,
            "orders                  {:>6}   in {:.1} s",
            self.orders,
            self.elapsed_ms as f64 / 1000.0
        )?;
        writeln!(f, "completed               {:>6}", self.completed)?;
        writeln!(f, "cancelled               {:>6}", self.cancelled)?;
        for (code, n) in &self.cancelled_by_code {
            writeln!(f, "  {code:<22}{n:>6}")?;
        }
        if self.not_started > 0 || self.stopped_by.is_some() {
            writeln!(f, "not started             {:>6}", self.not_started)?;
        }
        if self.orders_aborted > 0 {
            writeln!(f, "orders aborted          {:>6}", self.orders_aborted)?;
        }
        if self.orders_lost > 0 {
            writeln!(
                f,
                "orders lost             {:>6}   (the intake was aborted)",
                self.orders_lost
            )?;
        }
        writeln!(
            f,
            "compensations           {:>6}   {} units back in stock, {} authorizations voided",
            self.compensations, self.units_released, self.authorizations_voided
        )?;
        let aborted: u64 = self.aborted_steps.values().sum();
        write!(f, "aborted tasks           {aborted:>6}")?;
        for (step, n) in &self.aborted_steps {
            write!(f, "   {step} x{n}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "cancel -> exit latency  p50 {}, p99 {}   over {} stopped tasks",
            ms(self.cancel_to_exit_p50_us),
            ms(self.cancel_to_exit_p99_us),
            self.stopped_tasks
        )?;
        writeln!(f, "gateway poller restarts {:>6}", self.poller_restarts)?;
        if let Some(stopped_by) = &self.stopped_by {
            writeln!(f, "stopped early by        {stopped_by}")?;
        }
        if let Some(error) = &self.supervisor_error {
            writeln!(f, "supervisor              {error}")?;
        }
        writeln!(f)?;
        writeln!(f, "one story per cause:")?;
        for story in &self.stories {
            let cause = story.cause.as_ref().expect("stories are cancelled orders");
            writeln!(
                f,
                "  order-{:<5} {} ({}), set by {}",
                story.id,
                cause.code,
                cause.kind,
                cause.origin.as_deref().unwrap_or("-")
            )?;
            if let Some(detail) = &cause.detail {
                writeln!(f, "               {detail}")?;
            }
            if let Some(compensation) = &story.compensation {
                writeln!(
                    f,
                    "               compensated: {} units released, authorization {}",
                    compensation.released,
                    if compensation.voided {
                        "voided"
                    } else {
                        "none"
                    }
                )?;
            }
            if !story.aborted.is_empty() {
                writeln!(
                    f,
                    "               aborted after the grace: {}",
                    story.aborted.join(", ")
                )?;
            }
        }
        writeln!(f)?;
        if self.is_consistent() {
            writeln!(
                f,
                "invariants hold: stock + held + sold == initial stock for every SKU, no \
                 reservation left for a closed order, {} cancelled orders with one audit row each",
                self.cancelled
            )?;
        } else {
            writeln!(f, "INVARIANTS BROKEN:")?;
            for broken in self.broken_promises() {
                writeln!(f, "  {broken}")?;
            }
        }
        writeln!(
            f,
            "database:  {}   (table audit: one row per cancelled order)",
            self.db
        )?;
        write!(
            f,
            "audit log: {}   (taskscope-trace records, JSON lines)",
            self.audit_log
        )
    }
}
