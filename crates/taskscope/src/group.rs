//! [`TaskGroup`]: errgroup-style groups of tasks bound to a scope.

mod failure;
mod guard;
mod join;
mod report;
mod shared;
mod spawner;
mod state;
mod watch;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::panic::{self, Location};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::cancelled::CancelledOwned;
use crate::path::Name;
use crate::{BoxError, Cause, CauseKind, Scope, TaskError, TaskId};
pub(crate) use failure::failure_cause;
pub use join::{Join, JoinNext};
use shared::{Admit, Shared};
pub(crate) use shared::{Config, Spawned};
pub use spawner::Spawner;

pub use report::{
    Failure, GroupError, GroupSnapshot, Outcome, TaskExit, TaskFailure, TaskSnapshot, TaskState,
    TrySpawnError,
};

/// The default shutdown grace: how long tasks get to return once their group is cancelled.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A group of tasks bound to a scope, errgroup-style: the first failure cancels the rest, and
/// [`join`](TaskGroup::join) returns every value or *why the group stopped*.
///
/// The group owns a child scope of the scope it is made from; each task gets a named child scope
/// of that. A task returns `Result<T, E>`; `E` is a [`TaskError`], [`BoxError`] by default.
///
/// ```
/// use taskscope::{BoxError, Cause, CauseKind, Scope, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let orders = Scope::builder().name("orders").build();
/// let group: TaskGroup<&str> = TaskGroup::builder(&orders).name("order-17").build();
///
/// group.spawn("inventory", |_scope| async {
///     Err::<&str, BoxError>(Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42: 2 left").into())
/// });
/// group.spawn("payment", |scope| async move {
///     // Stops when the group is cancelled, and says why.
///     let cause = scope.cancelled().await;
///     Err(cause.into())
/// });
///
/// let error = group.join().await.unwrap_err();
/// let cause = error.cause().unwrap();
/// assert_eq!(cause.kind(), CauseKind::TaskFailed);
/// assert_eq!(cause.code(), "INVENTORY_SHORTAGE");
/// assert_eq!(cause.origin(), Some("orders/order-17/inventory"));
/// assert_eq!(error.first_failure().unwrap().task.name(), "inventory");
/// // The payment task only echoed the cancellation: it is not a failure.
/// assert_eq!(error.failures().len(), 1);
/// assert_eq!(error.cancelled()[0].name(), "payment");
/// assert_eq!(error.to_string(), "task 'inventory' failed: cancelled (INVENTORY_SHORTAGE): sku-42: 2 left");
/// # }
/// ```
///
/// # Failures
///
/// A task *fails* when it returns an error that is not an echo of its scope's cancellation, or
/// panics. Under the default policy the first failure cancels the group's scope with a
/// [`TaskFailed`](CauseKind::TaskFailed) (or [`TaskPanicked`](CauseKind::TaskPanicked)) cause:
/// its origin is the failing task's scope path, its detail names the task, it carries the error
/// (see [`Cause::downcast_ref`]), and if the error carries a [`Cause`] ([`TaskError::as_cause`]) the
/// group's cause takes its code. Later failures are kept, not dropped. With
/// [`collect_all`](TaskGroupBuilder::collect_all) failures do not cancel anything.
///
/// A panic is caught and becomes a failure with the panic's message; it never unwinds into the
/// caller unless [`resume_panics`](TaskGroupBuilder::resume_panics) asks `join` to re-raise it.
///
/// # Echoes of a cancellation
///
/// A task that stops because its scope was cancelled usually returns an error saying so. Such an
/// error is not a failure, and is reported as [`Outcome::Cancelled`], when the task's scope is
/// cancelled and the error carries that very cause ([`TaskError::as_cause`]): a [`Cause`]
/// returned as the error, the first cause in the source chain of a [`BoxError`] (such as a
/// nested group's [`GroupError`]), or the cause a typed error of your own says it carries.
///
/// # Concurrency limit and pending tasks
///
/// With a [`limit`](TaskGroupBuilder::limit), tasks over it wait as *pending*: their closure is
/// kept, not called, and they hold no tokio task. Each one starts as soon as a running task ends.
/// Pending tasks of a cancelled group never start; they are reported as cancelled with the
/// group's cause. Tasks spawned into an already cancelled group do not start either.
///
/// # Shutdown grace and aborts
///
/// Once the group's scope is cancelled (by a failure, its parent, a deadline), tasks get the
/// [`grace`](TaskGroupBuilder::grace) period, counted from the moment of the cancellation, to
/// return; `join` and `join_next` then abort the rest and report them by name and spawn
/// location. The grace is enforced while the group is being joined.
///
/// # Dropping
///
/// Dropping a group that still has pending or running tasks (directly, or by dropping its
/// [`join`](TaskGroup::join) future) cancels its scope with a [`Dropped`](CauseKind::Dropped)
/// cause and aborts the running tasks: no task outlives its group unseen. Work that must outlive
/// it belongs in its own task under a [detached scope](Scope::detached_child).
///
/// # Panics
///
/// Spawning outside a tokio runtime panics, as [`tokio::spawn`] does; tasks run on the runtime
/// of the code that spawns them (a pending task, on that of the task whose end freed its
/// slot). A non-zero grace needs the runtime's time driver.
pub struct TaskGroup<T, E = BoxError>
where
    T: Send + 'static,
    E: TaskError,
{
    shared: Arc<Shared<T, E>>,
    /// Notices the group's cancellation (and observes its deadline) while it is joined.
    cancelled: CancelledOwned,
    /// The waker `cancelled` was last polled with.
    cancelled_waker: Option<Waker>,
    /// When to abort the tasks still running: `Some(None)` once cancelled with a grace that
    /// never ends.
    abort_at: Option<Option<Instant>>,
    /// The end of [`shutdown_within`](TaskGroup::shutdown_within)'s budget.
    budget_end: Option<Instant>,
    grace_timer: Option<Pin<Box<Sleep>>>,
    aborted: bool,
    created_at: &'static Location<'static>,
}

impl<T: Send + 'static> TaskGroup<T> {
    /// A group with the default settings, in an unnamed child scope of `scope`, whose tasks
    /// fail with a [`BoxError`]. The value type is inferred from the tasks spawned, as
    /// `JoinSet::new()`'s is; for another error type, use [`builder`](TaskGroup::builder).
    ///
    /// ```
    /// use taskscope::{Scope, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let group = TaskGroup::new(&Scope::new());
    /// group.spawn("answer", |_| async { Ok(42) });
    /// assert_eq!(group.join().await?, [42]);
    /// # Ok(())
    /// # }
    /// ```
    #[track_caller]
    pub fn new(scope: &Scope) -> Self {
        TaskGroup::builder(scope).build()
    }

    /// A builder for a group with a name, a concurrency limit, a grace period or another
    /// policy, whose tasks fail with a [`BoxError`]; the value type is inferred from the tasks
    /// spawned. For another error type, use [`TaskGroupBuilder::new`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskscope::{Scope, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let group = TaskGroup::builder(&Scope::new())
    ///     .name("crawler")
    ///     .limit(8.try_into().unwrap())
    ///     .grace(Duration::from_secs(2))
    ///     .build();
    /// group.spawn("fetch", |_| async { Ok(200u16) });
    /// assert_eq!(group.join().await?, [200]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(scope: &Scope) -> TaskGroupBuilder<'_, T> {
        TaskGroupBuilder::new(scope)
    }
}

impl<T, E> TaskGroup<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    /// Spawns a task named `name`: `task` is called with the task's own scope (a child of the
    /// group's) and its future runs on the tokio runtime.
    ///
    /// Over the concurrency limit the task waits as pending, without calling `task`. In a
    /// cancelled group it never starts and is reported as cancelled. The call site is recorded
    /// as the task's spawn location.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`]. A panic of `task` itself is caught and
    /// reported as the task's failure.
    #[track_caller]
    pub fn spawn<F, Fut>(&self, name: impl Into<Cow<'static, str>>, task: F) -> TaskId
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let name = Name::from(name.into());
        self.spawn_queued(name, Location::caller(), task, Admit::Queue)
            .id
    }

    /// A handle that spawns into this group from other tasks: producers hold clones while
    /// another task joins (Go's `errgroup` shared by goroutines, tokio-util's `TaskTracker`).
    /// See [`Spawner`].
    pub fn spawner(&self) -> Spawner<T, E> {
        Spawner::new(self.shared.clone())
    }

    /// Spawns a task like [`spawn`](TaskGroup::spawn), unless the group is at its concurrency
    /// limit or cancelled: then hands the closure back (Go's `TryGo`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`].
    #[track_caller]
    pub fn try_spawn<F, Fut>(
        &self,
        name: impl Into<Cow<'static, str>>,
        task: F,
    ) -> Result<TaskId, TrySpawnError<F>>
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let name = Name::from(name.into());
        let spawned = self
            .shared
            .spawn(name, Location::caller(), task, Admit::Try);
        spawned.map(|spawned| spawned.id)
    }

    /// Spawns a task like [`spawn`](TaskGroup::spawn), at `spawned_at`, and returns the task's
    /// slab key and scope when it started at once (a slot was free and the group is not
    /// cancelled).
    pub(crate) fn spawn_child<F, Fut>(
        &self,
        name: Name,
        spawned_at: &'static Location<'static>,
        task: F,
    ) -> Spawned
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawn_queued(name, spawned_at, task, Admit::Child)
    }

    fn spawn_queued<F, Fut>(
        &self,
        name: Name,
        spawned_at: &'static Location<'static>,
        task: F,
        admit: Admit,
    ) -> Spawned
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.shared.spawn(name, spawned_at, task, admit) {
            Ok(spawned) => spawned,
            Err(_) => unreachable!("a queueing spawn is never refused"),
        }
    }

    /// The task `id`, recorded at `key`, was stopped alone (by its supervisor) with `cause`:
    /// tells the observer's bookkeeping (cancel latency, slow to stop).
    pub(crate) fn child_stopped(&self, key: usize, id: TaskId, cause: &Cause) {
        self.shared.child_stopped(key, id, cause);
    }

    /// Aborts the task `id`, recorded at `key`, if it is still running.
    pub(crate) fn abort_task(&self, key: usize, id: TaskId) {
        self.shared.abort_task(key, id);
    }

    /// Waits for every task and returns their values in spawn order, or the [`GroupError`]:
    /// the first failure, the cause, later failures, and the tasks cancelled or aborted.
    ///
    /// It returns `Ok` exactly when every task returned `Ok` before the group's scope was
    /// cancelled: a cancellation or a deadline that came after the last task ended does not
    /// count, one that came earlier is reported as the error's cause even if the tasks then
    /// returned `Ok` (a timeout is never mistaken for success). Values already returned by
    /// [`join_next`](TaskGroup::join_next) are not repeated.
    /// While it waits it enforces the shutdown grace. With
    /// [`resume_panics`](TaskGroupBuilder::resume_panics), it re-raises the first task panic
    /// once every task has ended.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops the group: its scope is cancelled with a
    /// [`Dropped`](CauseKind::Dropped) cause and its tasks are aborted. Use
    /// [`join_next`](TaskGroup::join_next) in a `select!` loop instead.
    pub fn join(self) -> Join<T, E> {
        Join { group: Some(self) }
    }

    /// Cancels the group with `cause` and waits for every task, as [`join`](TaskGroup::join)
    /// does, within `budget` in all: the tasks get the group's grace, clipped to `budget`, then
    /// those still running are aborted and named in the [`GroupError`]'s
    /// [`aborted`](GroupError::aborted). One call for a deadline set from outside.
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskscope::{Cause, CauseKind, Scope, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    /// group.spawn("stubborn", |_| async {
    ///     tokio::time::sleep(Duration::from_secs(3600)).await; // ignores its cancellation
    ///     Ok(())
    /// });
    /// let cause = Cause::of_kind(CauseKind::Shutdown);
    /// let error = group.shutdown_within(cause, Duration::from_secs(2)).await.unwrap_err();
    /// assert_eq!(error.aborted()[0].name(), "stubborn");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`join`](TaskGroup::join)'s.
    #[track_caller]
    pub fn shutdown_within(mut self, cause: Cause, budget: Duration) -> Join<T, E> {
        self.budget_end = Instant::now().checked_add(budget);
        self.shared.scope.cancel(cause);
        self.join()
    }

    /// Waits for the next task to end and returns its exit, in the order tasks end; `None` once
    /// no task is left. Tasks over the limit start as others end, whether or not this is
    /// called.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: an exit is only taken when the future returns it, so dropping the future
    /// (another `select!` branch won) loses nothing.
    ///
    /// ```
    /// use taskscope::{Outcome, Scope, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut group = TaskGroup::new(&Scope::new());
    /// for n in 0..3 {
    ///     group.spawn(format!("square-{n}"), move |_| async move { Ok(n * n) });
    /// }
    /// let mut sum = 0;
    /// while let Some(exit) = group.join_next().await {
    ///     if let Outcome::Completed(value) = exit.outcome {
    ///         sum += value;
    ///     }
    /// }
    /// assert_eq!(sum, 5);
    /// # }
    /// ```
    pub fn join_next(&mut self) -> JoinNext<'_, T, E> {
        JoinNext { group: self }
    }

    /// Polls for the next task exit: the poll function behind
    /// [`join_next`](TaskGroup::join_next), for manual `Future` implementations.
    pub fn poll_join_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<TaskExit<T, E>>> {
        ready!(self.poll_ended(cx, true));
        let Some((exit, panic)) = self.shared.take_next() else {
            return Poll::Ready(None);
        };
        if let Some(payload) = panic {
            panic::resume_unwind(payload);
        }
        Poll::Ready(Some(exit))
    }

    /// The group's scope: cancel it to cancel every task, or make children of it.
    pub fn scope(&self) -> &Scope {
        &self.shared.scope
    }

    /// How many tasks the group tracks: pending, running, or ended but not yet returned by
    /// [`join_next`](TaskGroup::join_next).
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether the group tracks no task.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of the group and of every task it tracks, in spawn order.
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskscope::{Scope, TaskGroup, TaskState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
    ///     .name("pollers")
    ///     .limit(1.try_into().unwrap())
    ///     .build();
    /// group.spawn("first", |scope| async move { scope.cancelled().await; Ok(()) });
    /// group.spawn("second", |_| async { Ok(()) });
    ///
    /// let snapshot = group.snapshot();
    /// assert!(matches!(snapshot.tasks[0].state, TaskState::Running));
    /// assert!(matches!(snapshot.tasks[1].state, TaskState::Pending));
    /// println!("{snapshot}");
    /// # }
    /// ```
    pub fn snapshot(&self) -> GroupSnapshot {
        self.shared.snapshot()
    }
}

impl<T, E> Drop for TaskGroup<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn drop(&mut self) {
        // Its spawners are refused from now on.
        self.shared.close();
        if self.shared.unfinished() == 0 {
            return;
        }
        // A callback panicking here was reported by the panic hook; a drop must not unwind.
        let _ = self
            .shared
            .scope
            .node
            .cancel(Cause::of_kind(CauseKind::Dropped), self.created_at);
        self.shared.abort_running();
    }
}

impl<T, E> fmt::Debug for TaskGroup<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskGroup")
            .field("scope", &self.shared.scope)
            .field("config", &self.shared.config)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`TaskGroup<T, E>`]: made by [`TaskGroup::builder`] for tasks that fail with a
/// [`BoxError`], or by [`TaskGroupBuilder::new`] for another error type.
#[must_use = "a builder does nothing until `build` is called"]
pub struct TaskGroupBuilder<'a, T, E = BoxError> {
    scope: &'a Scope,
    name: Option<String>,
    config: Config,
    types: PhantomData<fn() -> (T, E)>,
}

impl<T, E> fmt::Debug for TaskGroupBuilder<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskGroupBuilder")
            .field("scope", self.scope)
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

impl<'a, T, E> TaskGroupBuilder<'a, T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    /// A builder for a group whose tasks fail with `E`, so that `join` and `join_next` hand
    /// back the tasks' own error type. [`TaskGroup::builder`] is this with `E` =
    /// [`BoxError`], fixed so that a group whose tasks never name an error type (they return
    /// `Ok(..)`, or `Err(e.into())`) needs no annotation. The value type is inferred.
    ///
    /// ```
    /// use taskscope::{Scope, TaskGroupBuilder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroupBuilder::<_, std::io::Error>::new(&Scope::new())
    ///     .name("writers")
    ///     .build();
    /// group.spawn("log", |_| async { Err(std::io::Error::other("disk full")) as Result<(), _> });
    /// let error = group.join().await.unwrap_err();
    /// let io: &std::io::Error = error.first_failure().unwrap().failure.error().unwrap();
    /// assert_eq!(io.to_string(), "disk full");
    /// # }
    /// ```
    pub fn new(scope: &'a Scope) -> Self {
        TaskGroupBuilder {
            scope,
            name: None,
            config: Config {
                limit: usize::MAX,
                grace: DEFAULT_GRACE,
                cancel_on_error: true,
                resume_panics: false,
                supervisor: false,
            },
            types: PhantomData,
        }
    }

    /// Names the group's scope; task scopes are named under it (`orders/order-17/payment`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Runs at most `limit` tasks at once (Go's `SetLimit`); the rest wait as pending. No limit
    /// by default.
    pub fn limit(mut self, limit: NonZeroUsize) -> Self {
        self.config.limit = limit.get();
        self
    }

    /// How long tasks get to return once the group is cancelled before they are aborted;
    /// [`DEFAULT_GRACE`] (5 s) by default. Zero aborts at once; a grace too long to represent
    /// as an instant never aborts.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.config.grace = grace;
        self
    }

    /// Failures do not cancel the group: every task runs to its end, and `join` reports all
    /// failures (the default is to cancel on the first).
    pub fn collect_all(mut self) -> Self {
        self.config.cancel_on_error = false;
        self
    }

    /// Makes `join` re-raise the first task panic once every task has ended, and `join_next`
    /// re-raise it when it returns that task's exit (the default reports it as a failure).
    pub fn resume_panics(mut self) -> Self {
        self.config.resume_panics = true;
        self
    }

    /// Builds the group, in a new child scope of the builder's scope.
    #[track_caller]
    pub fn build(self) -> TaskGroup<T, E> {
        let scope = match self.name {
            Some(name) => self.scope.named_child(Name::Shared(Arc::from(name))),
            None => self.scope.child(),
        };
        TaskGroup::on_scope(scope, self.config, Location::caller())
    }
}

impl<T, E> TaskGroup<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    /// A group whose scope is `scope` itself.
    pub(crate) fn on_scope(
        scope: Scope,
        config: Config,
        created_at: &'static Location<'static>,
    ) -> Self {
        let cancelled = scope.clone().cancelled_owned();
        TaskGroup {
            shared: Shared::new(scope, config),
            cancelled,
            cancelled_waker: None,
            abort_at: None,
            budget_end: None,
            grace_timer: None,
            aborted: false,
            created_at,
        }
    }
}
