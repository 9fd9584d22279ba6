//! Instrumentation for [`taskscope`]: *why was this cancelled, by whom, when, and what did not
//! stop?* answered from traces, logs, metrics and audit records, with no code in the tasks.
//!
//! Install a [`TraceObserver`] on the root scope of a service. Every scope, task group, task and
//! supervisor under it is then reported through taskscope's [observer
//! hook](taskscope::observe):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use taskscope::{Cause, Scope, TaskGroup};
//! use taskscope_trace::TraceObserver;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let observer = TraceObserver::new().slow_to_stop_after(Some(Duration::from_secs(2)));
//! let orders = Scope::builder().name("orders").observer(Arc::new(observer)).build();
//!
//! let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
//! group.spawn("inventory", |_| async { Err(Cause::new("INVENTORY_SHORTAGE").into()) });
//! group.spawn("payment", |scope| async move { Err(scope.cancelled().await.into()) });
//! let _ = group.join().await;
//! // WARN taskscope::cancel: scope cancelled scope="orders/order-17" cause.kind="task_failed"
//! //      cause.code="INVENTORY_SHORTAGE" cause.origin="orders/order-17/inventory" ...
//! // WARN taskscope::task: task finished scope="orders/order-17/inventory" task.outcome="failed" ...
//! // DEBUG taskscope::task: task finished scope="orders/order-17/payment" task.outcome="cancelled"
//! //      cause.code="INVENTORY_SHORTAGE" cancel.latency_us=... ...
//! # }
//! ```
//!
//! # Event schema
//!
//! Targets, messages and field names are public API: dashboards and alerts may rely on them.
//! Fields marked "if any" are absent when there is no value.
//!
//! | target | level | message | fields |
//! |---|---|---|---|
//! | `taskscope::cancel` | `WARN` for causes of kind `task_failed`/`task_panicked`, else `INFO` | `scope cancelled` | `scope`, `cause.kind`, `cause.code`, `cause.detail`\*, `cause.origin`\*, `cause.location`\* |
//! | `taskscope::cancel` | `DEBUG` | `cancel lost` | `scope`, `cause.*` of the cause that lost, `winner.kind`, `winner.code`, `winner.origin`\* |
//! | `taskscope::task` | `TRACE` | `task spawned` | `scope`, `task.name`, `task.id`, `task.spawned_at`, `task.pending` |
//! | `taskscope::task` | `TRACE` | `task started` | `scope`, `task.name`, `task.id`, `task.spawned_at` |
//! | `taskscope::task` | `WARN` if failed, panicked or aborted, else `DEBUG` | `task finished` | `scope`, `task.name`, `task.id`, `task.spawned_at`, `task.outcome`, `task.elapsed_us`, `task.error`\*, `cause.*`\*, `cancel.latency_us`\* |
//! | `taskscope::task` | `WARN` | `task slow to stop` | `scope`, `task.name`, `task.id`, `task.spawned_at`, `cause.*`, `cancel.elapsed_us` |
//! | `taskscope::supervisor` | `INFO` | `child restarting` | `scope` (the supervisor's), `child.name`, `child.restarts`, `restart.delay_us`, `cause.*`\* |
//! | `taskscope::audit` | `INFO` | `audit record` | `record` (one [`AuditRecord`] as JSON), with [`AuditLog::tracing`] |
//!
//! \* if any. `cause.*` stands for `cause.kind`, `cause.code`, `cause.detail`\*,
//! `cause.origin`\* (`cause.location` is only on `scope cancelled` and `cancel lost`).
//! `scope` is a scope path (`orders/order-17/payment`; a task's scope is its group's
//! path and its name). `cause.kind` is [`CauseKind::as_str`](taskscope::CauseKind::as_str): one
//! of `explicit`, `deadline_exceeded`, `task_failed`, `task_panicked`, `shutdown`, `dropped`.
//! `task.outcome` is [`TaskOutcome::as_str`](taskscope::observe::TaskOutcome::as_str): one of
//! `completed`, `failed`, `panicked`, `cancelled`, `aborted`. `task.spawned_at` and
//! `cause.location` are `file:line:column`. Durations are whole microseconds.
//! `cancel.latency_us` is the time from the task's scope being cancelled to the task's end (on
//! tokio's clock). A scope cancelled by its deadline is reported when the deadline is noticed;
//! its cause's time is the deadline's.
//!
//! # Spans
//!
//! | target | name | fields | parent |
//! |---|---|---|---|
//! | `taskscope::group` | `taskscope.group` | `scope`; `cause.kind`, `cause.code`, `cause.detail`, `cause.origin` recorded when the group is cancelled | the current span where the group is built |
//! | `taskscope::supervisor` | `taskscope.supervisor` | as `taskscope.group`, for the group a supervisor runs its children in (`scope` is the supervisor's) | the current span where the supervisor starts |
//! | `taskscope::task` | `taskscope.task` | `task.name`, `task.id` (the path is its group span's, the spawn site on its events); `task.outcome`, `cause.*`, `cancel.latency_us` recorded when the task ends | its group's span (the current span where it starts, if the group has none) |
//!
//! A task's span is entered around its closure and every poll of its future, so the events
//! and spans of the task's own code nest under it; with `tracing-opentelemetry`, the fields
//! become span attributes. Spans are made at `INFO` level: a subscriber that disables them
//! costs no allocation.
//!
//! # When tasks are reported
//!
//! Scope events are always reported. A group's tasks (their events, spans, slow-to-stop checks)
//! are reported when, at the time the group is made, a subscriber is interested in `WARN` events
//! of `taskscope::task`, or metrics (`TraceObserver::metrics`) or an [audit
//! log](TraceObserver::audit) are on: with nothing listening, tasks cost nothing extra. Install
//! the subscriber before building long-lived groups and supervisors.
//!
//! # Slow to stop
//!
//! A task still running [`slow_to_stop_after`](TraceObserver::slow_to_stop_after) (default
//! [`DEFAULT_SLOW_TO_STOP`]) after its scope was cancelled is reported once, at `WARN`, with
//! its name and spawn location: the task that ignores its cancellation, the Rust form of a
//! goroutine leak. It is reported whether or not anyone joins its group.
//!
//! # Metrics
//!
//! With the `metrics` feature and `TraceObserver::metrics`, through the
//! [`metrics`](https://docs.rs/metrics) facade to whatever recorder (Prometheus exporter, …) is
//! installed. Names are in the `metrics` module: cancellations by `code` and
//! `kind`, lost cancels, cancel→exit latency histogram, running and pending task gauges, ended
//! tasks by `outcome`, aborted and slow-to-stop tasks, supervisor restarts. Labels are bounded
//! by cause codes, never details.
//!
//! # Audit records
//!
//! With [`TraceObserver::audit`], one [`AuditRecord`] per scope cancellation and per task a
//! cancellation stopped, as JSON lines to any [`io::Write`](std::io::Write) or through
//! `tracing` ([`AuditLog`]).
//!
//! # Features
//!
//! - `metrics`: `TraceObserver::metrics` and the `metrics` module of metric names.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod audit;
#[cfg(feature = "metrics")]
pub mod metrics;
mod observer;

// The code of the crate README and of the concepts guide (whose last section uses this crate)
// is tested as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../docs/concepts.md")]
struct ConceptsDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../docs/operations.md")]
struct OperationsDoctests;

pub use audit::{
    AUDIT_TARGET, AUDIT_VERSION, AuditEvent, AuditLog, AuditParseError, AuditRecord, AuditTask,
};
pub use observer::{
    CANCEL_TARGET, DEFAULT_SLOW_TO_STOP, GROUP_TARGET, OTHER_CODE, SUPERVISOR_TARGET, TASK_TARGET,
    TraceObserver,
};
