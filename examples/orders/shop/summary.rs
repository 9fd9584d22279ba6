//! What a run did: the summary table, its JSON, and whether everything added up.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::pipeline::OrderReport;
use super::store::Ledger;

/// What [`Summary::new`] sums up.
pub(super) struct SummaryInput {
    pub(super) planned: usize,
    pub(super) reports: Vec<OrderReport>,
    pub(super) ledger: Ledger,
    pub(super) latencies: Vec<u64>,
    pub(super) restarts: u32,
    pub(super) authorized: u64,
    pub(super) voided: u64,
    pub(super) supervisor_error: Option<String>,
    pub(super) stopped_by: Option<String>,
    pub(super) audit_write_errors: u64,
    pub(super) elapsed: Duration,
    pub(super) db: String,
    pub(super) audit_log: String,
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
    /// Payments the gateway authorized: one per completed order, the others voided.
    pub authorizations: u64,
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
    pub(super) fn new(input: SummaryInput) -> Summary {
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
            // Nearest rank, exact: the latencies (one per cancelled order, sorted once) are few
            // enough that a histogram crate would only add an approximation.
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
            authorizations: input.authorized,
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
            self.authorizations.checked_sub(self.authorizations_voided)
                == Some(self.ledger.completed),
            format!(
                "{} payments authorized, {} voided, for {} completed orders",
                self.authorizations, self.authorizations_voided, self.ledger.completed
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
