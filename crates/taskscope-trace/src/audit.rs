//! Audit records of cancellations, as JSON lines.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use taskscope::observe::TaskFinished;
use taskscope::{Cause, Scope, TaskInfo};

use crate::observer::{TaskPath, micros};

/// The `target` of audit records written [through tracing](AuditLog::tracing), and of audit
/// write errors.
pub const AUDIT_TARGET: &str = "taskscope::audit";

/// The version of the record schema this crate writes.
pub const AUDIT_VERSION: u32 = 1;

/// One audit record: a scope cancellation, or a task that a cancellation stopped.
///
/// Serialised as one JSON object per line (schema version [`AUDIT_VERSION`]; field names are
/// public API, unknown fields are ignored when reading):
///
/// ```json
/// {"v":1,"event":"task_stopped","scope":"orders/order-17/payment",
///  "task":{"name":"payment","id":1,"spawned_at":"src/orders.rs:42:11","outcome":"cancelled",
///          "elapsed_us":3000,"cancel_latency_us":120},
///  "cause":{"v":1,"kind":"task_failed","code":"INVENTORY_SHORTAGE", "...":"..."},
///  "recorded_at_unix_us":1763800000000000}
/// ```
///
/// `cause` is taskscope's stable cause record (its `at_unix_us` is when the cancellation took
/// effect).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// The schema version, [`AUDIT_VERSION`].
    pub v: u32,
    /// What happened.
    pub event: AuditEvent,
    /// The path of the scope cancelled, or of the task's scope.
    pub scope: String,
    /// The task, for [`AuditEvent::TaskStopped`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<AuditTask>,
    /// Why.
    pub cause: Cause,
    /// When the record was made, in microseconds since the Unix epoch.
    pub recorded_at_unix_us: u64,
}

/// What an [`AuditRecord`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A scope was cancelled (once per cancellation, for the scope it was aimed at).
    ScopeCancelled,
    /// A task ended because of a cancellation: it returned the cause, never started, or was
    /// aborted.
    TaskStopped,
}

/// The task of an [`AuditEvent::TaskStopped`] record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditTask {
    /// Its name.
    pub name: String,
    /// Its number in its group.
    pub id: u64,
    /// Where it was spawned, `file:line:column`.
    pub spawned_at: String,
    /// `cancelled` or `aborted`.
    pub outcome: String,
    /// How long it ran, in microseconds.
    pub elapsed_us: u64,
    /// How long it took to end after its scope was cancelled, in microseconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_latency_us: Option<u64>,
}

/// Why an audit record could not be read.
#[derive(Debug)]
pub struct AuditParseError(String);

impl fmt::Display for AuditParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed audit record: {}", self.0)
    }
}

impl std::error::Error for AuditParseError {}

impl AuditRecord {
    /// Reads one line written by an [`AuditLog`]. Malformed input, or a record of a later
    /// schema version, is an error, never a panic.
    ///
    /// ```
    /// use taskscope_trace::{AuditEvent, AuditRecord};
    ///
    /// let line = r#"{"v":1,"event":"scope_cancelled","scope":"orders/order-17",
    ///     "cause":{"v":1,"kind":"explicit","code":"USER_CANCELLED"},"recorded_at_unix_us":0}"#;
    /// let record = AuditRecord::parse(line).unwrap();
    /// assert_eq!(record.event, AuditEvent::ScopeCancelled);
    /// assert_eq!(record.cause.code(), "USER_CANCELLED");
    ///
    /// let error = AuditRecord::parse(r#"{"v":1,"event":"exploded"}"#).unwrap_err();
    /// assert!(error.to_string().starts_with("malformed audit record: "));
    /// ```
    pub fn parse(line: &str) -> Result<AuditRecord, AuditParseError> {
        let record: AuditRecord =
            serde_json::from_str(line).map_err(|error| AuditParseError(error.to_string()))?;
        if record.v != AUDIT_VERSION {
            return Err(AuditParseError(format!(
                "schema version {} is not {AUDIT_VERSION}",
                record.v
            )));
        }
        Ok(record)
    }

    pub(crate) fn scope_cancelled(scope: &str, cause: &Cause) -> AuditRecord {
        AuditRecord {
            v: AUDIT_VERSION,
            event: AuditEvent::ScopeCancelled,
            scope: scope.to_owned(),
            task: None,
            cause: cause.clone(),
            recorded_at_unix_us: now_unix_us(),
        }
    }

    pub(crate) fn task_stopped(
        group: &Scope,
        task: &TaskInfo,
        event: &TaskFinished<'_>,
        cause: &Cause,
    ) -> AuditRecord {
        AuditRecord {
            v: AUDIT_VERSION,
            event: AuditEvent::TaskStopped,
            scope: TaskPath {
                group,
                name: task.name(),
            }
            .to_string(),
            task: Some(AuditTask {
                name: task.name().to_owned(),
                id: task.id().get(),
                spawned_at: task.spawned_at().to_string(),
                outcome: event.outcome.as_str().to_owned(),
                elapsed_us: micros(event.elapsed),
                cancel_latency_us: event.cancel_latency.map(micros),
            }),
            cause: cause.clone(),
            recorded_at_unix_us: now_unix_us(),
        }
    }
}

fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// Where a [`TraceObserver`](crate::TraceObserver) writes its [`AuditRecord`]s: JSON lines to
/// any writer, or `tracing` events. Cloning it gives another handle to the same log.
///
/// ```
/// use std::sync::Arc;
/// use taskscope::{Cause, Scope};
/// use taskscope_trace::{AuditLog, AuditRecord, TraceObserver};
///
/// # fn main() -> std::io::Result<()> {
/// let path = std::env::temp_dir().join(format!("taskscope-audit-doc-{}.jsonl", std::process::id()));
/// let log = AuditLog::to_writer(std::fs::File::create(&path)?);
/// let observer = TraceObserver::new().audit(log.clone());
/// let orders = Scope::builder().name("orders").observer(Arc::new(observer)).build();
/// orders.cancel(Cause::new("SHUTTING_DOWN"));
///
/// let text = std::fs::read_to_string(&path)?;
/// let record = AuditRecord::parse(text.lines().next().unwrap()).unwrap();
/// assert_eq!(record.scope, "orders");
/// assert_eq!(record.cause.code(), "SHUTTING_DOWN");
/// assert_eq!(log.write_errors(), 0);
/// # std::fs::remove_file(&path)
/// # }
/// ```
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Sink,
    write_errors: AtomicU64,
}

enum Sink {
    Writer(Mutex<Box<dyn Write + Send>>),
    Tracing,
}

impl AuditLog {
    /// Writes each record as one line of JSON to `writer`, flushed after each record, so a
    /// record is not lost in a buffer if the process dies. A write error is counted
    /// ([`write_errors`](AuditLog::write_errors)) and reported as a `WARN` event on
    /// [`AUDIT_TARGET`]; later records are still attempted.
    pub fn to_writer(writer: impl Write + Send + 'static) -> AuditLog {
        AuditLog::with(Sink::Writer(Mutex::new(Box::new(writer))))
    }

    /// Emits each record as an `INFO` event on [`AUDIT_TARGET`] whose `record` field is the
    /// JSON line, for pipelines that ship logs already.
    pub fn tracing() -> AuditLog {
        AuditLog::with(Sink::Tracing)
    }

    fn with(sink: Sink) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                sink,
                write_errors: AtomicU64::new(0),
            }),
        }
    }

    /// How many records could not be written.
    pub fn write_errors(&self) -> u64 {
        self.inner.write_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn write(&self, record: &AuditRecord) {
        // A record holds user text; whatever goes wrong in turning it into a line is counted,
        // never lost silently.
        let line = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serde_json::to_string(record)
        })) {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => return self.failed(&error),
            Err(_) => return self.failed(&"serialising the record panicked"),
        };
        match &self.inner.sink {
            Sink::Tracing => tracing::info!(target: AUDIT_TARGET, record = %line, "audit record"),
            Sink::Writer(writer) => {
                // A writer that panicked once is still the best place for the next record.
                let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
                let written = writer
                    .write_all(line.as_bytes())
                    .and_then(|()| writer.write_all(b"\n"))
                    .and_then(|()| writer.flush());
                drop(writer);
                if let Err(error) = written {
                    self.failed(&error);
                }
            }
        }
    }

    fn failed(&self, error: &dyn fmt::Display) {
        self.inner.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: AUDIT_TARGET, error = %error, "audit record not written");
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sink = match self.inner.sink {
            Sink::Writer(_) => "writer",
            Sink::Tracing => "tracing",
        };
        f.debug_struct("AuditLog")
            .field("sink", &sink)
            .field("write_errors", &self.write_errors())
            .finish()
    }
}
