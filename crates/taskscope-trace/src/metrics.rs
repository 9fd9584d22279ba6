//! Metric names and how [`TraceObserver::metrics`](crate::TraceObserver::metrics) records them
//! (feature `metrics`).
//!
//! Labels are bounded: a cause's `code` and `kind`, a task's `outcome`; never a cause's detail,
//! a scope path or a task name. A code from outside this program that the observer does not
//! know counts as [`OTHER_CODE`].

use metrics::{counter, gauge, histogram};
use taskscope::Cause;
use taskscope::observe::{TaskFinished, TaskOutcome};

/// Counter of scope cancellations, labelled `code` and `kind`: one per scope a cancellation
/// was aimed at (a supervisor's ordered shutdown counts once for the supervisor and once for
/// each child it stops, since it cancels each in turn).
pub const CANCELLATIONS: &str = "taskscope_cancellations_total";
/// Counter of cancellations that lost to an earlier cause, labelled `code` and `kind` (of the
/// cause that lost).
pub const LOST_CANCELS: &str = "taskscope_lost_cancels_total";
/// Histogram of how long tasks took to end after their scope was cancelled, in seconds,
/// labelled `outcome`.
pub const CANCEL_LATENCY: &str = "taskscope_cancel_latency_seconds";
/// Gauge of running tasks.
pub const TASKS_RUNNING: &str = "taskscope_tasks_running";
/// Gauge of pending tasks (waiting for a slot under a group's limit).
pub const TASKS_PENDING: &str = "taskscope_tasks_pending";
/// Counter of ended tasks, labelled `outcome`.
pub const TASKS_FINISHED: &str = "taskscope_tasks_finished_total";
/// Counter of aborted tasks (still running after their group's grace).
pub const TASKS_ABORTED: &str = "taskscope_tasks_aborted_total";
/// Counter of tasks reported slow to stop.
pub const TASKS_SLOW_TO_STOP: &str = "taskscope_tasks_slow_to_stop_total";
/// Counter of supervisor restarts.
pub const RESTARTS: &str = "taskscope_restarts_total";

pub use crate::observer::OTHER_CODE;
use crate::observer::{KnownCodes, bounded_code};

fn code_and_kind(cause: &Cause, known: &KnownCodes) -> [(&'static str, String); 2] {
    [
        ("code", bounded_code(cause, known).to_owned()),
        ("kind", cause.kind().as_str().to_owned()),
    ]
}

pub(crate) fn cancelled(cause: &Cause, known: &KnownCodes) {
    counter!(CANCELLATIONS, &code_and_kind(cause, known)).increment(1);
}

pub(crate) fn lost(cause: &Cause, known: &KnownCodes) {
    counter!(LOST_CANCELS, &code_and_kind(cause, known)).increment(1);
}

pub(crate) fn spawned(pending: bool) {
    if pending {
        gauge!(TASKS_PENDING).increment(1.0);
    }
}

pub(crate) fn started(was_pending: bool) {
    if was_pending {
        gauge!(TASKS_PENDING).decrement(1.0);
    }
    gauge!(TASKS_RUNNING).increment(1.0);
}

pub(crate) fn finished(event: &TaskFinished<'_>) {
    if event.started {
        gauge!(TASKS_RUNNING).decrement(1.0);
    } else {
        gauge!(TASKS_PENDING).decrement(1.0);
    }
    let outcome = event.outcome.as_str();
    counter!(TASKS_FINISHED, "outcome" => outcome).increment(1);
    if event.outcome == TaskOutcome::Aborted {
        counter!(TASKS_ABORTED).increment(1);
    }
    if let Some(latency) = event.cancel_latency {
        histogram!(CANCEL_LATENCY, "outcome" => outcome).record(latency.as_secs_f64());
    }
}

pub(crate) fn slow_to_stop() {
    counter!(TASKS_SLOW_TO_STOP).increment(1);
}

pub(crate) fn restarting() {
    counter!(RESTARTS).increment(1);
}
