//! What a [`TaskGroup`](crate::TaskGroup) reports: task identities, exits, failures, the group
//! error and snapshots.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::Cause;
use crate::TaskInfo;
use crate::observe::TaskOutcome;
use crate::text::Escaped;

/// How a task ended, as [`join_next`](crate::TaskGroup::join_next) reports it.
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// It returned `Ok`.
    Completed(T),
    /// It failed: returned an error that is not an echo of its scope's cancellation, or
    /// panicked.
    Failed(Failure<E>),
    /// It stopped because its scope was cancelled: it returned an error carrying its scope's
    /// cause (see [`TaskGroup`](crate::TaskGroup#echoes-of-a-cancellation)), or it was still
    /// pending when the group was cancelled and never started.
    Cancelled(Cause),
    /// It did not return within the group's shutdown grace, or its group was dropped, and it was
    /// aborted.
    Aborted,
}

impl<T, E> Outcome<T, E> {
    /// How it ended, without the value, error or cause: the word every report of a task's end
    /// uses (a snapshot's [`TaskState::outcome`], a supervisor child's
    /// [`ChildState::outcome`](crate::ChildState::outcome), an observer's event).
    pub fn kind(&self) -> TaskOutcome {
        match self {
            Outcome::Completed(_) => TaskOutcome::Completed,
            Outcome::Failed(Failure::Panic(_)) => TaskOutcome::Panicked,
            Outcome::Failed(Failure::Error(_)) => TaskOutcome::Failed,
            Outcome::Cancelled(_) => TaskOutcome::Cancelled,
            Outcome::Aborted => TaskOutcome::Aborted,
        }
    }
}

/// Why a task failed: its error or its panic.
#[derive(Debug)]
pub enum Failure<E> {
    /// The error it returned. Shared, because the cause that cancelled the group carries it too
    /// (see [`Cause::downcast_ref`]); [`Arc::try_unwrap`] gets it back once that cause is gone
    /// (see [`GroupError::into_failures`]).
    Error(Arc<E>),
    /// It panicked, with this message (the panic's `&str` or `String` payload, or
    /// `"Box<dyn Any>"`).
    Panic(String),
}

impl<E> Failure<E> {
    /// The error, unless it panicked.
    pub fn error(&self) -> Option<&E> {
        match self {
            Failure::Error(error) => Some(error),
            Failure::Panic(_) => None,
        }
    }

    /// Whether it panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Failure::Panic(_))
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(error) => write!(f, "failed: {error}"),
            Failure::Panic(message) => write!(f, "panicked: {message}"),
        }
    }
}

/// One task's exit: who it was and how it ended. Yielded by
/// [`join_next`](crate::TaskGroup::join_next).
#[derive(Debug)]
pub struct TaskExit<T, E> {
    /// The task.
    pub task: TaskInfo,
    /// How it ended.
    pub outcome: Outcome<T, E>,
}

/// A task that failed, in a [`GroupError`].
#[derive(Debug)]
pub struct TaskFailure<E> {
    /// The task.
    pub task: TaskInfo,
    /// Its error or panic.
    pub failure: Failure<E>,
}

impl<E: fmt::Display> fmt::Display for TaskFailure<E> {
    /// `task 'reserve-inventory' failed: sku-42 is out of stock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task '{}' {}", &*self.task.name, self.failure)
    }
}

/// Why a group's [`join`](crate::TaskGroup::join) did not return every task's value.
///
/// It holds the first failure (the one that cancelled the group, unless the group was cancelled
/// first), the cause that cancelled the group, every later real failure, the tasks that stopped
/// because of the cause, and the tasks that had to be aborted, each named with its spawn
/// location. Echoes of the group's cancellation are not failures.
#[derive(Debug)]
pub struct GroupError<E> {
    pub(crate) cause: Option<Cause>,
    pub(crate) failures: Vec<TaskFailure<E>>,
    pub(crate) cancelled: Vec<TaskInfo>,
    pub(crate) aborted: Vec<TaskInfo>,
}

impl<E> GroupError<E> {
    /// The cause that cancelled the group: a *task failed* or *task panicked* cause naming the
    /// first failure, or whatever cancelled the group from outside (a parent's cause, a
    /// deadline, a *dropped* cause). `None` when the group was never cancelled: failures under
    /// [`collect_all`](crate::TaskGroupBuilder::collect_all).
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// The first failure: the one whose cause cancelled the group, else the earliest.
    pub fn first_failure(&self) -> Option<&TaskFailure<E>> {
        self.failures.first()
    }

    /// Every real failure: the first, then the later ones in the order they happened.
    pub fn failures(&self) -> &[TaskFailure<E>] {
        &self.failures
    }

    /// The tasks that stopped because the group was cancelled, including those that were still
    /// pending and never started; in spawn order.
    pub fn cancelled(&self) -> &[TaskInfo] {
        &self.cancelled
    }

    /// The tasks that did not return within the shutdown grace and were aborted; in spawn order.
    pub fn aborted(&self) -> &[TaskInfo] {
        &self.aborted
    }

    /// The failures, moved out, first to last. The group's cause, which shares the first
    /// failure's error, is dropped here, so [`Arc::try_unwrap`] gets each error back once
    /// nothing else holds the cause (a clone of it, or of the group's
    /// [`scope`](crate::TaskGroup::scope), which keeps it).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use taskscope::{Failure, Scope, TaskGroupBuilder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroupBuilder::<(), std::io::Error>::new(&Scope::new()).build();
    /// group.spawn("write", |_| async { Err(std::io::Error::other("disk full")) });
    /// let error = group.join().await.unwrap_err();
    /// let first = error.into_failures().remove(0);
    /// let Failure::Error(shared) = first.failure else { unreachable!() };
    /// let io: std::io::Error = Arc::try_unwrap(shared).unwrap();
    /// assert_eq!(io.to_string(), "disk full");
    /// # }
    /// ```
    pub fn into_failures(self) -> Vec<TaskFailure<E>> {
        drop(self.cause);
        self.failures
    }

    /// Whether the group was cancelled by a deadline (its own or an ancestor's).
    pub fn is_timeout(&self) -> bool {
        self.cause
            .as_ref()
            .is_some_and(|cause| cause.kind() == crate::CauseKind::DeadlineExceeded)
    }
}

impl<E: fmt::Display> fmt::Display for GroupError<E> {
    /// The first failure, or the cause; then the aborted tasks:
    /// `task 'inventory' failed: only 2 left; aborted: 'payment' (src/orders.rs:42:11)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.failures.first(), &self.cause) {
            (Some(failure), _) => write!(f, "{failure}")?,
            (None, Some(cause)) => write!(f, "task group stopped: {cause}")?,
            (None, None) => f.write_str("task group stopped")?,
        }
        match self.failures.len() {
            0 | 1 => {}
            2 => f.write_str(" (and 1 later failure)")?,
            n => write!(f, " (and {} later failures)", n - 1)?,
        }
        for (i, task) in self.aborted.iter().enumerate() {
            let sep = if i == 0 { "; aborted: " } else { ", " };
            write!(f, "{sep}{task}")?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> Error for GroupError<E> {
    /// The cause that cancelled the group: its own source is the first failure's error when that
    /// error is an error object (a `BoxError`, an `io::Error` or a [`Cause`]).
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_ref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

/// Why [`try_spawn`](crate::TaskGroup::try_spawn) refused a task. Holds the task's closure, so
/// it can be retried.
pub struct TrySpawnError<F> {
    pub(crate) task: F,
    pub(crate) cause: Option<Cause>,
}

impl<F> TrySpawnError<F> {
    /// Whether it was refused because the group is at its concurrency limit.
    pub fn is_full(&self) -> bool {
        self.cause.is_none()
    }

    /// The group's cause, if it was refused because the group is cancelled.
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// The refused closure.
    pub fn into_task(self) -> F {
        self.task
    }
}

impl<F> fmt::Debug for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrySpawnError")
            .field("cause", &self.cause)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            None => f.write_str("task group is at its concurrency limit"),
            Some(cause) => write!(f, "task group is cancelled: {cause}"),
        }
    }
}

impl<F> Error for TrySpawnError<F> {}

/// A task's state in a [`GroupSnapshot`].
#[derive(Clone, Debug)]
pub enum TaskState {
    /// Waiting for a concurrency slot: no tokio task yet, never polled.
    Pending,
    /// Spawned and not yet finished.
    Running,
    /// Returned `Ok`.
    Completed,
    /// Stopped because its scope was cancelled, or never started.
    Cancelled(Cause),
    /// Returned an error; its `Display`.
    Failed(String),
    /// Panicked, with this message.
    Panicked(String),
    /// Aborted after the grace period, or when the group was dropped.
    Aborted,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.outcome().is_some()
    }

    /// How it ended, once it has: see [`Outcome::kind`].
    pub fn outcome(&self) -> Option<TaskOutcome> {
        Some(match self {
            TaskState::Pending | TaskState::Running => return None,
            TaskState::Completed => TaskOutcome::Completed,
            TaskState::Cancelled(_) => TaskOutcome::Cancelled,
            TaskState::Failed(_) => TaskOutcome::Failed,
            TaskState::Panicked(_) => TaskOutcome::Panicked,
            TaskState::Aborted => TaskOutcome::Aborted,
        })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskState::Pending => f.write_str("pending"),
            TaskState::Running => f.write_str("running"),
            TaskState::Completed => f.write_str("completed"),
            TaskState::Cancelled(cause) => write!(f, "cancelled: {cause}"),
            TaskState::Failed(error) => write!(f, "failed: {error}"),
            TaskState::Panicked(message) => write!(f, "panicked: {message}"),
            TaskState::Aborted => f.write_str("aborted"),
        }
    }
}

/// One task in a [`GroupSnapshot`].
#[derive(Clone, Debug)]
pub struct TaskSnapshot {
    /// The task.
    pub task: TaskInfo,
    /// Its state when the snapshot was taken.
    pub state: TaskState,
}

/// The state of a group and of every task it still tracks (all but those already returned by
/// [`join_next`](crate::TaskGroup::join_next)); made by
/// [`snapshot`](crate::TaskGroup::snapshot).
#[derive(Clone, Debug)]
pub struct GroupSnapshot {
    /// The path of the group's scope.
    pub path: String,
    /// The group's cause, if it is cancelled.
    pub cause: Option<Cause>,
    /// The tasks, in spawn order.
    pub tasks: Vec<TaskSnapshot>,
}

impl fmt::Display for GroupSnapshot {
    /// One line for the group, then one indented line per task:
    ///
    /// ```text
    /// group orders/order-17: cancelled: task failed (INVENTORY_SHORTAGE): ...
    ///   #0 inventory (src/main.rs:12:11): failed: sku-42 is out of stock
    ///   #1 payment (src/main.rs:13:11): cancelled: task failed (INVENTORY_SHORTAGE): ...
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(unnamed)"
        } else {
            &self.path
        };
        // Names, details and errors are the user's: escaped, so none can forge a line.
        write!(f, "group {}: ", Escaped(path))?;
        match &self.cause {
            Some(cause) => writeln!(f, "cancelled: {}", Escaped(cause))?,
            None => writeln!(f, "running")?,
        }
        for task in &self.tasks {
            writeln!(
                f,
                "  {} {} ({}): {}",
                task.task.id,
                Escaped(&*task.task.name),
                task.task.spawned_at,
                Escaped(&task.state)
            )?;
        }
        Ok(())
    }
}
