//! The observer hook: scope and task lifecycle events, for instrumentation.
//!
//! An [`Observer`] is installed on a scope with [`ScopeBuilder::observer`](crate::ScopeBuilder::observer)
//! and inherited by every scope made under it (detached children too), unless one of them installs
//! its own. Groups and supervisors built on such a scope report their tasks to it. The
//! `taskscope-trace` crate turns these events into `tracing` events and spans, metrics and audit
//! records; most users install its observer rather than writing one.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use taskscope::observe::{Observer, ScopeCancelled, TaskFinished};
//! use taskscope::{Cause, Scope, TaskGroup};
//!
//! #[derive(Default)]
//! struct Log(Mutex<Vec<String>>);
//!
//! impl Observer for Log {
//!     fn scope_cancelled(&self, event: &ScopeCancelled<'_>) {
//!         self.0.lock().unwrap().push(format!("{} cancelled: {}", event.scope, event.cause.code()));
//!     }
//!     fn task_finished(&self, event: &TaskFinished<'_>) {
//!         self.0.lock().unwrap().push(format!("{} {}", event.task.name(), event.outcome));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let log = Arc::new(Log::default());
//! let orders = Scope::builder().name("orders").observer(log.clone()).build();
//! let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
//! group.spawn("payment", |scope| async move { Err(scope.cancelled().await.into()) });
//! group.scope().cancel(Cause::new("USER_CANCELLED"));
//! let _ = group.join().await;
//!
//! let log = log.0.lock().unwrap();
//! assert_eq!(*log, ["orders/order-17 cancelled: USER_CANCELLED", "payment cancelled"]);
//! # }
//! ```
//!
//! # When events are delivered
//!
//! Synchronously, on the thread where the event happens, after taskscope released its locks:
//! an observer may look at scopes and cancel them, but it should be quick, since it runs inside
//! `cancel`, `spawn` and the tasks' own polls. A panic in an observer is reported by the panic
//! hook and otherwise ignored: it never changes what happens to a scope or a task. (A method
//! that returns something then counts as having returned the default: no attachment, tasks not
//! observed, no slow-to-stop check.)
//!
//! With no observer installed, each hook point costs one branch on a field the code already
//! reads.

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::{Cause, Scope, ScopePath, TaskInfo};

/// Receives scope and task lifecycle events; every method does nothing by default.
///
/// See the [module docs](self) for how to install one and when events are delivered.
pub trait Observer: Send + Sync + 'static {
    /// A scope was cancelled by a call to [`cancel`](crate::Scope::cancel) on it (or by its
    /// group, supervisor or deadline): reported once, for the scope the cancellation was aimed
    /// at, not for each descendant it reached (except a descendant whose own deadline had
    /// already passed: it takes its deadline's cause, and that is reported for it). A deadline is reported when it is noticed (see
    /// [`Scope`]'s deadlines); its cause's [`at`](Cause::at) says when it passed.
    fn scope_cancelled(&self, event: &ScopeCancelled<'_>) {
        let _ = event;
    }

    /// A cancellation reached a scope that already had a cause, and lost ("first cause wins"):
    /// a task failing after its group was cancelled, a second `cancel`, a drop after a cancel.
    fn cancel_lost(&self, event: &CancelLost<'_>) {
        let _ = event;
    }

    /// A task group was built. What this returns is kept as long as the group (see
    /// [`Attachment`]), and handed to the events of its tasks.
    fn group_created(&self, event: &GroupCreated<'_>) -> Option<Arc<dyn Attachment>> {
        let _ = event;
        None
    }

    /// A group's scope was cancelled (by a call on it, an ancestor, a deadline, a failing
    /// task, its drop): the group now stops its tasks. Reported once per group, whichever
    /// scope the cancellation was aimed at.
    fn group_cancelled(&self, event: &GroupCancelled<'_>) {
        let _ = event;
    }

    /// Whether to report a task of this group (the `task_*` events); asked for each task as it
    /// is spawned, so an answer that changes (a subscriber installed or a filter reloaded after
    /// the group was made) counts from the next task on. `true` by default. An observer that has
    /// nobody listening for task events (no subscriber interested, no metrics) answers `false`,
    /// and the task then costs it nothing but this question.
    fn observes_tasks(&self, group: &GroupCreated<'_>) -> bool {
        let _ = group;
        true
    }

    /// A task was spawned into a group: it starts now, or waits as pending (over the group's
    /// limit). A task spawned into a cancelled group is reported as pending, and then at once
    /// as [finished](Observer::task_finished) with `started == false`, like a pending task the
    /// group's cancellation reached. So every task not yet started is pending, for gauges.
    fn task_spawned(&self, event: &TaskSpawned<'_>) {
        let _ = event;
    }

    /// A task starts: its closure is about to be called. What this returns is kept while the
    /// task runs and [entered](Attachment::enter) around its closure and each poll of its
    /// future. (A task whose group is cancelled in the instant between its spawn and its start,
    /// from another thread, is reported as started and at once as cancelled, without its
    /// closure being called.)
    fn task_started(&self, event: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        let _ = event;
        None
    }

    /// A task ended: completed, failed, panicked, returned after its cancellation, was aborted,
    /// or was cancelled before it started. Exactly once per spawned task.
    fn task_finished(&self, event: &TaskFinished<'_>) {
        let _ = event;
    }

    /// A task is still running [`slow_to_stop_after`](Observer::slow_to_stop_after) after its
    /// scope was cancelled: reported once per task, while it runs. Checked for the tasks of a
    /// cancelled group (one timer per group, whether or not anyone joins it) and for a
    /// supervisor's children as it stops them; not for a task whose own scope alone is
    /// cancelled.
    fn task_slow_to_stop(&self, event: &TaskSlowToStop<'_>) {
        let _ = event;
    }

    /// A supervisor decided to restart a child: after the child failed (or returned, for
    /// [`Restart::Always`](crate::Restart::Always)), or as a sibling stopped to restart with a
    /// failing child (one-for-all, rest-for-one). A shutdown during the delay can still prevent
    /// the restart.
    fn child_restarting(&self, event: &ChildRestarting<'_>) {
        let _ = event;
    }

    /// How long a cancelled task may run before [`task_slow_to_stop`](Observer::task_slow_to_stop)
    /// reports it; `None` (the default) reports nothing and costs nothing. Read once per group,
    /// when it is made; the check then needs the tokio runtime's time driver.
    fn slow_to_stop_after(&self) -> Option<Duration> {
        None
    }
}

/// What an [`Observer`] keeps for a group or a running task, such as a tracing span.
///
/// taskscope holds it as long as the group, or while the task runs (and until a pending
/// slow-to-stop check is done), then drops it; the observer gets it back in the task's events
/// and can downcast it (`(attachment as &dyn Any).downcast_ref::<MySpan>()`).
pub trait Attachment: Any + Send + Sync {
    /// Runs `f`, which polls the task (or calls its closure), inside this attachment: for a
    /// span, entered. The default just runs it.
    fn enter(&self, f: &mut dyn FnMut()) {
        f();
    }

    /// Called on a running task's attachment each time the task's future returns
    /// `Poll::Pending`: the task is suspended at one of its await points. It says whether the
    /// task goes on, or is aborted right there: its future is dropped at that await point, as
    /// aborting its tokio task would, and it ends as [`Aborted`](TaskOutcome::Aborted).
    ///
    /// For harnesses that interrupt work at each of its await points (`taskscope-test`); the
    /// default goes on. Called outside every lock; a panic here is ignored, and the task goes
    /// on.
    fn suspended(&self) -> Suspended {
        Suspended::Continue
    }
}

/// What a task suspended at an await point does next; see [`Attachment::suspended`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suspended {
    /// It waits to be woken, as usual.
    Continue,
    /// Its future is dropped there, and it ends as aborted.
    Abort,
}

/// A scope was cancelled; see [`Observer::scope_cancelled`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ScopeCancelled<'a> {
    /// The scope the cancellation was aimed at.
    pub scope: ScopePath<'a>,
    /// Its cause, stamped with origin, time and location.
    pub cause: &'a Cause,
}

/// A cancellation lost to an earlier one; see [`Observer::cancel_lost`].
#[derive(Debug)]
#[non_exhaustive]
pub struct CancelLost<'a> {
    /// The scope the cancellation was aimed at.
    pub scope: ScopePath<'a>,
    /// The cause that lost.
    pub lost: &'a Cause,
    /// The cause the scope has.
    pub cause: &'a Cause,
}

/// A group was built; see [`Observer::group_created`].
#[derive(Debug)]
#[non_exhaustive]
pub struct GroupCreated<'a> {
    /// The group's scope.
    pub scope: &'a Scope,
    /// The group runs a supervisor's children: its scope is the supervisor's.
    pub supervisor: bool,
}

/// A group was cancelled; see [`Observer::group_cancelled`].
#[non_exhaustive]
pub struct GroupCancelled<'a> {
    /// The group's scope.
    pub scope: &'a Scope,
    /// What the observer attached to the group.
    pub attachment: Option<&'a dyn Attachment>,
    /// The group's cause.
    pub cause: &'a Cause,
}

impl fmt::Debug for GroupCancelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCancelled")
            .field("scope", &self.scope)
            .field("cause", &self.cause)
            .finish_non_exhaustive()
    }
}

/// A task was spawned; see [`Observer::task_spawned`].
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskSpawned<'a> {
    /// The group's scope.
    pub group: &'a Scope,
    /// The task's name, number and spawn location.
    pub task: &'a TaskInfo,
    /// Whether it waits as pending (over the group's limit, or in a cancelled group) rather
    /// than starting now.
    pub pending: bool,
}

/// A task starts; see [`Observer::task_started`].
#[non_exhaustive]
pub struct TaskStarted<'a> {
    /// The group's scope.
    pub group: &'a Scope,
    /// What the observer attached to the group.
    pub group_attachment: Option<&'a dyn Attachment>,
    /// The task's name, number and spawn location.
    pub task: &'a TaskInfo,
    /// The task's own scope.
    pub scope: &'a Scope,
    /// Whether it waited as pending (spawned over the group's limit).
    pub was_pending: bool,
}

/// A task ended; see [`Observer::task_finished`].
#[non_exhaustive]
pub struct TaskFinished<'a> {
    /// The group's scope.
    pub group: &'a Scope,
    /// What the observer attached to the group.
    pub group_attachment: Option<&'a dyn Attachment>,
    /// The task's name, number and spawn location.
    pub task: &'a TaskInfo,
    /// What the observer attached to the task when it started.
    pub attachment: Option<&'a dyn Attachment>,
    /// How it ended.
    pub outcome: TaskOutcome,
    /// Whether it started (false: cancelled while pending, or spawned into a cancelled group).
    pub started: bool,
    /// The task's error or panic message, for [`Failed`](TaskOutcome::Failed) and
    /// [`Panicked`](TaskOutcome::Panicked).
    pub error: Option<&'a dyn fmt::Display>,
    /// The cause of the task's scope, if it was cancelled before the task ended (not by the
    /// task's own failure).
    pub cause: Option<&'a Cause>,
    /// How long it ran, from its start; zero if it never started.
    pub elapsed: Duration,
    /// How long it took to end after its scope was cancelled (by its group's cancellation, by
    /// its supervisor stopping it, …), on tokio's clock; `None` if it was not cancelled, never
    /// started, or its cause does not say when it took effect (a cause decoded from a record).
    pub cancel_latency: Option<Duration>,
}

/// A task is slow to stop; see [`Observer::task_slow_to_stop`].
#[non_exhaustive]
pub struct TaskSlowToStop<'a> {
    /// The group's scope.
    pub group: &'a Scope,
    /// What the observer attached to the group.
    pub group_attachment: Option<&'a dyn Attachment>,
    /// The task's name, number and spawn location.
    pub task: &'a TaskInfo,
    /// What the observer attached to the task when it started.
    pub attachment: Option<&'a dyn Attachment>,
    /// The cause of the task's scope.
    pub cause: &'a Cause,
    /// How long ago its scope was cancelled.
    pub since_cancel: Duration,
}

/// A supervisor restarts a child; see [`Observer::child_restarting`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ChildRestarting<'a> {
    /// The supervisor's scope.
    pub supervisor: &'a Scope,
    /// The child's name.
    pub child: &'a str,
    /// Which restart this is: 1 for the first (the snapshot's
    /// [`restarts`](crate::ChildSnapshot::restarts) once it is done).
    pub restarts: u32,
    /// How long it waits before it starts again (its backoff).
    pub delay: Duration,
    /// Why: its failure as a cause (as its group would have been cancelled with), or `None`
    /// when it returned `Ok` and restarts always.
    pub cause: Option<&'a Cause>,
}

/// How a task ended, as reported to an [`Observer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskOutcome {
    /// It returned `Ok`.
    Completed,
    /// It returned an error that was not an echo of its cancellation.
    Failed,
    /// It panicked.
    Panicked,
    /// It was cancelled: it returned an echo of its scope's cause, or never started.
    Cancelled,
    /// It was aborted while running (after its group's grace, or its runtime shut down).
    Aborted,
}

impl TaskOutcome {
    /// The outcome's stable name: `completed`, `failed`, `panicked`, `cancelled`, `aborted`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Completed => "completed",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Panicked => "panicked",
            TaskOutcome::Cancelled => "cancelled",
            TaskOutcome::Aborted => "aborted",
        }
    }
}

impl fmt::Display for TaskOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! debug_without_attachments {
    ($($name:ident { $($field:ident),* }),*) => {$(
        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    )*};
}

debug_without_attachments! {
    TaskStarted { group, task, scope, was_pending },
    TaskSlowToStop { group, task, cause, since_cancel }
}

impl fmt::Debug for TaskFinished<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFinished")
            .field("group", &self.group)
            .field("task", &self.task)
            .field("outcome", &self.outcome)
            .field("started", &self.started)
            .field("error", &self.error.map(ToString::to_string))
            .field("cause", &self.cause)
            .field("elapsed", &self.elapsed)
            .field("cancel_latency", &self.cancel_latency)
            .finish_non_exhaustive()
    }
}

/// Delivers an event to `observer`; a panic there is reported by the panic hook and ignored.
pub(crate) fn notify<R: Default>(
    observer: &Arc<dyn Observer>,
    f: impl FnOnce(&dyn Observer) -> R,
) -> R {
    panic::catch_unwind(AssertUnwindSafe(|| f(&**observer))).unwrap_or_default()
}
