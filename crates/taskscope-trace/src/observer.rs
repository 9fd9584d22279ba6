//! [`TraceObserver`]: taskscope's lifecycle events as `tracing` events and spans.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taskscope::observe::{
    Attachment, CancelLost, ChildRestarting, GroupCancelled, GroupCreated, Observer,
    ScopeCancelled, TaskFinished, TaskOutcome, TaskSlowToStop, TaskSpawned, TaskStarted,
};
use taskscope::{Cause, CauseKind, Scope};
use tracing::Id;
use tracing::field::Empty;
use tracing::{Level, Span};

use crate::audit::{AuditLog, AuditRecord};

/// The `target` of scope cancellation events (`scope cancelled`, `cancel lost`).
pub const CANCEL_TARGET: &str = "taskscope::cancel";
/// The `target` of task events and of task spans.
pub const TASK_TARGET: &str = "taskscope::task";
/// The `target` of group spans.
pub const GROUP_TARGET: &str = "taskscope::group";
/// The `target` of supervisor events (`child restarting`).
pub const SUPERVISOR_TARGET: &str = "taskscope::supervisor";

/// How long a cancelled task may run before it is reported as slow to stop, by default.
pub const DEFAULT_SLOW_TO_STOP: Duration = Duration::from_secs(2);

/// An [`Observer`] that reports scope and task lifecycle as `tracing` events and spans, and
/// optionally as metrics (feature `metrics`) and audit records (see the [crate docs](crate)
/// for the schema).
///
/// Install it on the root scope of a service; every scope, group, task and supervisor under it
/// is reported, with no code in the tasks.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use taskscope::Scope;
/// use taskscope_trace::TraceObserver;
///
/// let observer = TraceObserver::new().slow_to_stop_after(Some(Duration::from_secs(1)));
/// let service = Scope::builder().name("orders").observer(Arc::new(observer)).build();
/// ```
pub struct TraceObserver {
    slow_to_stop_after: Option<Duration>,
    audit: Option<AuditLog>,
    #[cfg(feature = "metrics")]
    metrics: bool,
    known_codes: KnownCodes,
    lost_cancels: AtomicU64,
}

impl TraceObserver {
    /// An observer that emits events and spans, reports tasks
    /// [slow to stop](TraceObserver::slow_to_stop_after) after [`DEFAULT_SLOW_TO_STOP`], and
    /// records neither metrics nor audit records.
    pub fn new() -> Self {
        TraceObserver {
            slow_to_stop_after: Some(DEFAULT_SLOW_TO_STOP),
            audit: None,
            #[cfg(feature = "metrics")]
            metrics: false,
            known_codes: KnownCodes::new(),
            lost_cancels: AtomicU64::new(0),
        }
    }

    /// Reports a task still running this long after its scope was cancelled, once, at `WARN`;
    /// `None` reports none (and saves a timer per cancelled group). Zero reports every task
    /// that has not stopped by the time the check runs, just after its cancellation;
    /// `Duration::MAX` never reports.
    pub fn slow_to_stop_after(mut self, after: Option<Duration>) -> Self {
        self.slow_to_stop_after = after;
        self
    }

    /// Writes an [`AuditRecord`] for every scope cancellation and every task a cancellation
    /// stopped to `log`.
    pub fn audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// Records metrics through the [`metrics`](https://docs.rs/metrics) facade, to whatever
    /// recorder is installed (names in the `metrics` module).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Codes from other processes that metrics and `error.type` name as they are
    /// (`INVENTORY_SHORTAGE` set in the inventory service and seen in orders). A code that came
    /// from outside this program ([`Cause::is_foreign_code`](taskscope::Cause::is_foreign_code))
    /// and is not among these is named [`OTHER_CODE`], so that a peer cannot grow a label set;
    /// codes written in this program, the kinds' default codes (`deadline`) and gRPC status
    /// names (`UNAVAILABLE`) are always named as they are.
    pub fn known_codes(mut self, codes: impl IntoIterator<Item = &'static str>) -> Self {
        self.known_codes.extend(codes);
        self
    }

    /// How many cancellations lost to an earlier cause so far ("first cause wins").
    pub fn lost_cancels(&self) -> u64 {
        self.lost_cancels.load(Ordering::Relaxed)
    }

    fn audit_record(&self, record: impl FnOnce() -> AuditRecord) {
        if let Some(log) = &self.audit {
            log.write(&record());
        }
    }
}

impl Default for TraceObserver {
    fn default() -> Self {
        TraceObserver::new()
    }
}

impl fmt::Debug for TraceObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TraceObserver");
        debug
            .field("slow_to_stop_after", &self.slow_to_stop_after)
            .field("audit", &self.audit);
        #[cfg(feature = "metrics")]
        debug.field("metrics", &self.metrics);
        debug.field("lost_cancels", &self.lost_cancels()).finish()
    }
}

/// Emits an event whose level is decided at run time (`event!` needs a constant one).
macro_rules! event_at {
    ($level:expr, target: $target:expr, parent: $parent:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::event!(target: $target, parent: $parent, Level::ERROR, $($rest)+),
            Level::WARN => tracing::event!(target: $target, parent: $parent, Level::WARN, $($rest)+),
            Level::INFO => tracing::event!(target: $target, parent: $parent, Level::INFO, $($rest)+),
            Level::DEBUG => tracing::event!(target: $target, parent: $parent, Level::DEBUG, $($rest)+),
            Level::TRACE => tracing::event!(target: $target, parent: $parent, Level::TRACE, $($rest)+),
        }
    };
    ($level:expr, target: $target:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::event!(target: $target, Level::ERROR, $($rest)+),
            Level::WARN => tracing::event!(target: $target, Level::WARN, $($rest)+),
            Level::INFO => tracing::event!(target: $target, Level::INFO, $($rest)+),
            Level::DEBUG => tracing::event!(target: $target, Level::DEBUG, $($rest)+),
            Level::TRACE => tracing::event!(target: $target, Level::TRACE, $($rest)+),
        }
    };
}

/// A cause's fields, recorded on a span.
fn record_cause(span: &Span, cause: &Cause) {
    span.record("cause.kind", cause.kind().as_str());
    span.record("cause.code", cause.code());
    if let Some(detail) = cause.detail() {
        span.record("cause.detail", detail);
    }
    if let Some(origin) = cause.origin() {
        span.record("cause.origin", origin);
    }
}

/// The path of a task's scope: its group's path and its name.
pub(crate) struct TaskPath<'a> {
    pub(crate) group: &'a Scope,
    pub(crate) name: &'a str,
}

impl fmt::Display for TaskPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.path().is_empty() {
            f.write_str(self.name)
        } else {
            write!(f, "{}/{}", self.group.path(), self.name)
        }
    }
}

/// `error`'s text, or a placeholder if its `Display` panics: the event is emitted either way.
fn error_text(error: &dyn fmt::Display) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| error.to_string()))
        .unwrap_or_else(|_| "(its Display panicked)".to_owned())
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The span of a group; its cause is recorded when the group is cancelled.
struct GroupSpan {
    span: Span,
}

impl Attachment for GroupSpan {}

/// The span of a task, entered around each poll.
struct TaskSpan(Span);

impl Attachment for TaskSpan {
    fn enter(&self, f: &mut dyn FnMut()) {
        self.0.in_scope(f);
    }
}

/// The codes that name themselves in metrics and `error.type` even when they came from outside.
pub(crate) type KnownCodes = std::collections::HashSet<&'static str>;

/// The `code` label, or `error.type`, of a cause whose code came from outside this program and
/// is not among the observer's [`known_codes`](TraceObserver::known_codes): a peer cannot grow
/// a label set, as OpenTelemetry advises for `error.type`.
pub const OTHER_CODE: &str = "_OTHER";

/// How a cause names itself where the set of names must stay small: its code, or
/// [`OTHER_CODE`] for a foreign code not known here.
pub(crate) fn bounded_code<'a>(cause: &'a Cause, known: &KnownCodes) -> &'a str {
    let code = cause.code();
    if !cause.is_foreign_code() || known.contains(code) || is_standard_code(code) {
        code
    } else {
        OTHER_CODE
    }
}

/// Whether `code` is one every process knows, wherever it was set: a kind's default code
/// (`deadline`), or a gRPC status's name (`UNAVAILABLE`), which a status without a cause maps
/// to (`taskscope-tonic`'s `remote_cause`).
fn is_standard_code(code: &str) -> bool {
    const GRPC: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CauseKind::ALL
        .into_iter()
        .any(|kind| kind.default_code() == code)
        || GRPC.contains(&code)
}

/// OpenTelemetry's `error.type` of a cancellation: its bounded code when the cancellation is an
/// error (a task failed or panicked, a deadline passed), none when it was asked for.
fn error_type<'a>(cause: &'a Cause, known: &KnownCodes) -> Option<&'a str> {
    match cause.kind() {
        CauseKind::TaskFailed | CauseKind::TaskPanicked | CauseKind::DeadlineExceeded => {
            Some(bounded_code(cause, known))
        }
        _ => None,
    }
}

/// The parent of what is reported about a task or group: its span, else the current span.
fn parent_of(attachment: Option<&dyn Attachment>) -> Option<Id> {
    span_of(attachment)
        .and_then(Span::id)
        .or_else(|| Span::current().id())
}

fn span_of(attachment: Option<&dyn Attachment>) -> Option<&Span> {
    let any: &dyn std::any::Any = attachment?;
    if let Some(task) = any.downcast_ref::<TaskSpan>() {
        return Some(&task.0);
    }
    any.downcast_ref::<GroupSpan>().map(|group| &group.span)
}

impl Observer for TraceObserver {
    fn scope_cancelled(&self, event: &ScopeCancelled<'_>) {
        let cause = event.cause;
        let level = match cause.kind() {
            CauseKind::TaskFailed | CauseKind::TaskPanicked => Level::WARN,
            _ => Level::INFO,
        };
        event_at!(
            level,
            target: CANCEL_TARGET,
            scope = event.scope.to_string().as_str(),
            cause.kind = cause.kind().as_str(),
            cause.code = cause.code(),
            cause.detail = cause.detail(),
            cause.origin = cause.origin(),
            cause.location = cause.location().map(tracing::field::display),
            error.type = error_type(cause, &self.known_codes),
            "scope cancelled"
        );
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::cancelled(cause, &self.known_codes);
        }
        self.audit_record(|| AuditRecord::scope_cancelled(&event.scope.to_string(), cause));
    }

    fn cancel_lost(&self, event: &CancelLost<'_>) {
        self.lost_cancels.fetch_add(1, Ordering::Relaxed);
        let (lost, winner) = (event.lost, event.cause);
        tracing::debug!(
            target: CANCEL_TARGET,
            scope = event.scope.to_string().as_str(),
            cause.kind = lost.kind().as_str(),
            cause.code = lost.code(),
            cause.detail = lost.detail(),
            cause.origin = lost.origin(),
            cause.location = lost.location().map(tracing::field::display),
            winner.kind = winner.kind().as_str(),
            winner.code = winner.code(),
            winner.origin = winner.origin(),
            "cancel lost"
        );
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::lost(lost, &self.known_codes);
        }
    }

    fn group_created(&self, event: &GroupCreated<'_>) -> Option<Arc<dyn Attachment>> {
        // `tracing` wants a literal target and name: one span shape, two names.
        macro_rules! group_span {
            ($target:expr, $name:literal) => {
                tracing::info_span!(
                    target: $target,
                    $name,
                    scope = event.scope.path().to_string().as_str(),
                    cause.kind = Empty,
                    cause.code = Empty,
                    cause.detail = Empty,
                    cause.origin = Empty,
                )
            };
        }
        // A supervisor's children run in a group of its own: its span says supervisor.
        let span = if event.supervisor {
            group_span!(SUPERVISOR_TARGET, "taskscope.supervisor")
        } else {
            group_span!(GROUP_TARGET, "taskscope.group")
        };
        if span.is_disabled() {
            return None;
        }
        Some(Arc::new(GroupSpan { span }))
    }

    /// A task is reported when something listens as it is spawned: a subscriber interested in
    /// `WARN` events of [`TASK_TARGET`], metrics, or an audit log. Otherwise it costs nothing
    /// (and gets no span, no slow-to-stop check).
    fn observes_tasks(&self, _group: &GroupCreated<'_>) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics {
            return true;
        }
        self.audit.is_some() || tracing::enabled!(target: TASK_TARGET, Level::WARN)
    }

    fn group_cancelled(&self, event: &GroupCancelled<'_>) {
        if let Some(span) = span_of(event.attachment) {
            record_cause(span, event.cause);
        }
    }

    fn task_spawned(&self, event: &TaskSpawned<'_>) {
        let task = event.task;
        tracing::trace!(
            target: TASK_TARGET,
            scope = TaskPath { group: event.group, name: task.name() }.to_string().as_str(),
            task.name = task.name(),
            task.id = task.id().get(),
            task.spawned_at = %task.spawned_at(),
            task.pending = event.pending,
            "task spawned"
        );
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::spawned(event.pending);
        }
    }

    fn task_started(&self, event: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        let task = event.task;
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::started(event.was_pending);
        }
        let span = tracing::info_span!(
            target: TASK_TARGET,
            parent: parent_of(event.group_attachment),
            // Its group's span (the parent) has the path, the task's events the rest: a log
            // line shows every span around it, so each says only what it adds.
            "taskscope.task",
            task.name = task.name(),
            task.id = task.id().get(),
            task.outcome = Empty,
            cause.kind = Empty,
            cause.code = Empty,
            cause.detail = Empty,
            cause.origin = Empty,
            cancel.latency_us = Empty,
        );
        tracing::trace!(
            target: TASK_TARGET,
            parent: span.id().or_else(|| Span::current().id()),
            scope = event.scope.path().to_string().as_str(),
            task.name = task.name(),
            task.id = task.id().get(),
            task.spawned_at = %task.spawned_at(),
            "task started"
        );
        if span.is_disabled() {
            return None;
        }
        Some(Arc::new(TaskSpan(span)))
    }

    fn task_finished(&self, event: &TaskFinished<'_>) {
        let task = event.task;
        let cause = event.cause;
        let latency = event.cancel_latency.map(micros);
        if let Some(span) = span_of(event.attachment) {
            span.record("task.outcome", event.outcome.as_str());
            if let Some(cause) = cause {
                record_cause(span, cause);
            }
            if let Some(latency) = latency {
                span.record("cancel.latency_us", latency);
            }
        }
        let level = match event.outcome {
            TaskOutcome::Failed | TaskOutcome::Panicked | TaskOutcome::Aborted => Level::WARN,
            _ => Level::DEBUG,
        };
        event_at!(
            level,
            target: TASK_TARGET,
            parent: parent_of(event.attachment),
            scope = TaskPath { group: event.group, name: task.name() }.to_string().as_str(),
            task.name = task.name(),
            task.id = task.id().get(),
            task.spawned_at = %task.spawned_at(),
            task.outcome = event.outcome.as_str(),
            task.elapsed_us = micros(event.elapsed),
            task.error = event.error.map(error_text).as_deref(),
            cause.kind = cause.map(|cause| cause.kind().as_str()),
            cause.code = cause.map(Cause::code),
            cause.detail = cause.and_then(Cause::detail),
            cause.origin = cause.and_then(Cause::origin),
            cancel.latency_us = latency,
            error.type = match event.outcome {
                TaskOutcome::Failed | TaskOutcome::Panicked | TaskOutcome::Aborted => {
                    Some(event.outcome.as_str())
                }
                _ => None,
            },
            "task finished"
        );
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::finished(event);
        }
        if let (Some(cause), TaskOutcome::Cancelled | TaskOutcome::Aborted) = (cause, event.outcome)
        {
            self.audit_record(|| AuditRecord::task_stopped(event.group, task, event, cause));
        }
    }

    fn task_slow_to_stop(&self, event: &TaskSlowToStop<'_>) {
        let (task, cause) = (event.task, event.cause);
        tracing::warn!(
            target: TASK_TARGET,
            parent: parent_of(event.attachment),
            scope = TaskPath { group: event.group, name: task.name() }.to_string().as_str(),
            task.name = task.name(),
            task.id = task.id().get(),
            task.spawned_at = %task.spawned_at(),
            cause.kind = cause.kind().as_str(),
            cause.code = cause.code(),
            cause.detail = cause.detail(),
            cause.origin = cause.origin(),
            cancel.elapsed_us = micros(event.since_cancel),
            "task slow to stop"
        );
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::slow_to_stop();
        }
    }

    fn child_restarting(&self, event: &ChildRestarting<'_>) {
        let cause = event.cause;
        tracing::info!(
            target: SUPERVISOR_TARGET,
            scope = event.supervisor.path().to_string().as_str(),
            child.name = event.child,
            child.restarts = event.restarts,
            restart.delay_us = micros(event.delay),
            cause.kind = cause.map(|cause| cause.kind().as_str()),
            cause.code = cause.map(Cause::code),
            cause.detail = cause.and_then(Cause::detail),
            cause.origin = cause.and_then(Cause::origin),
            "child restarting"
        );
        #[cfg(feature = "metrics")]
        if self.metrics {
            crate::metrics::restarting();
        }
    }

    fn slow_to_stop_after(&self) -> Option<Duration> {
        self.slow_to_stop_after
    }
}
