//! OTP-style supervisors: children restarted with backoff, and an ordered graceful shutdown.

mod backoff;
mod changes;
mod child;
mod children;
mod deep;
mod error;
mod failure;
mod runner;
mod snapshot;
mod spec;
mod tree;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{self, Location};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cancelled::CancelledOwned;
use crate::path::Name;
use crate::{BoxError, Cause, CauseKind, Scope, TaskError};
use runner::{Runner, Settings};
use tree::Inner;

pub use backoff::{Backoff, Delays};
pub use changes::{NextChange, SupervisorChanges};
pub use children::{ChildRequest, ChildStarter};
pub use error::{ChildRequestError, ConfigError, SupervisorError};
pub use snapshot::{ChildSnapshot, ChildState, SupervisorSnapshot, SupervisorState};
pub use spec::{ChildSpec, Restart};

/// Which children restart when one of them is to be restarted (OTP's strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Strategy {
    /// Only that child. The default.
    #[default]
    OneForOne,
    /// Every child: the others are stopped in reverse start order, then all restart in start
    /// order. For children that cannot work without each other.
    OneForAll,
    /// That child and every child started after it: those are stopped in reverse start order,
    /// then restart in start order. For children that depend on those started before them.
    RestForOne,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::OneForOne => "one-for-one",
            Strategy::OneForAll => "one-for-all",
            Strategy::RestForOne => "rest-for-one",
        })
    }
}

/// The default restart intensity: more than 10 restarts within 60 s escalate.
pub const DEFAULT_INTENSITY: (u32, Duration) = (10, Duration::from_secs(60));

/// A running supervisor: long-lived children, restarted when they fail, stopped in reverse
/// start order when the supervisor shuts down.
///
/// Each child is a [`ChildSpec`]: a factory called with a fresh scope for every run. When a
/// child returns, the supervisor restarts it according to its [`Restart`] kind, the
/// [`Strategy`] (which siblings restart with it) and the [`Backoff`]; a restart predicate
/// ([`ChildSpec::restart_if`]) can refuse to retry a failure that retrying cannot fix. More
/// than the allowed restarts within the intensity window, or a refused failure, *escalates*:
/// the supervisor stops every child and fails with a cause that names the child and carries
/// its last failure. A child stopped because its scope was cancelled, or by a shutdown, is
/// never restarted.
///
/// Cancelling the supervisor's scope (or any ancestor of it) shuts it down, as does
/// [`shutdown`](Supervisor::shutdown): children stop one after the other, in the reverse of the
/// order they were added (and first started), each told the shutdown's cause through its scope
/// and given its grace, then aborted. Stops are sequential, as in OTP, so a shutdown takes up
/// to the sum of the graces of the children that do not stop.
/// [`abort`](Supervisor::abort) skips the graces (a second ctrl-c).
///
/// Children can also be changed while it runs, under the same rules:
/// [`start_child`](Supervisor::start_child) adds one after the others,
/// [`terminate_child`](SupervisorHandle::terminate_child),
/// [`restart_child`](SupervisorHandle::restart_child) and
/// [`delete_child`](SupervisorHandle::delete_child) stop one for good, run it again, forget it.
/// A supervisor ends by itself once every child has stopped for good, unless it was built with
/// [`run_until_shutdown`](SupervisorBuilder::run_until_shutdown).
/// [`changes`](Supervisor::changes) streams its state as it changes.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use taskscope::{Backoff, ChildSpec, Restart, Scope, SupervisorBuilder, TaskError};
///
/// #[derive(Debug)]
/// enum WatchError {
///     Connection,
///     Unauthorized,
/// }
/// # impl std::fmt::Display for WatchError {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
/// #         f.write_str(match self { WatchError::Connection => "connection reset", WatchError::Unauthorized => "401 unauthorized" })
/// #     }
/// # }
/// impl TaskError for WatchError {}
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let watch = move |_scope: Scope| {
///     let calls = calls.clone();
///     async move {
///         // Two transient failures, then one that retrying cannot fix.
///         match calls.fetch_add(1, Ordering::Relaxed) {
///             0 | 1 => Err(WatchError::Connection),
///             _ => Err(WatchError::Unauthorized),
///         }
///     }
/// };
///
/// let app = Scope::builder().name("app").build();
/// // Children fail with a `WatchError`, which the restart predicate inspects.
/// let supervisor = SupervisorBuilder::new()
///     .name("watchers")
///     .backoff(Backoff::exponential(Duration::from_millis(100)))
///     .child(
///         ChildSpec::new("pods", watch)
///             .restart(Restart::OnFailure)
///             .restart_if(|failure, _cause| {
///                 !matches!(failure.error(), Some(WatchError::Unauthorized))
///             }),
///     )
///     .start(&app)?;
///
/// let error = supervisor.join().await.unwrap_err();
/// assert_eq!(error.child().map(|child| child.name()), Some("pods"));
/// assert!(error.to_string().contains("401 unauthorized"));
/// # Ok(())
/// # }
/// ```
///
/// # Dropping
///
/// Dropping the `Supervisor` (or its [`join`](Supervisor::join) future) before it has ended
/// shuts it down with a [`Dropped`](CauseKind::Dropped) cause; the shutdown still runs in
/// order, in the supervisor's own task. Keep it, or a [`SupervisorHandle`], to stop it.
#[must_use = "dropping a `Supervisor` shuts it down"]
pub struct Supervisor<E = BoxError>
where
    E: TaskError,
{
    handle: SupervisorHandle,
    task: Option<JoinHandle<Result<(), SupervisorError<E>>>>,
}

impl Supervisor {
    /// A builder for a supervisor whose children fail with a [`BoxError`], so that children
    /// need no type annotation; children are added with [`child`](SupervisorBuilder::child)
    /// and it runs once [`start`](SupervisorBuilder::start)ed. For children with an error
    /// type of their own, use [`SupervisorBuilder::new`].
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::new()
    }
}

impl<E> Supervisor<E>
where
    E: TaskError,
{
    /// A handle to shut the supervisor down or take snapshots from elsewhere.
    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// The supervisor's scope. Its children's scopes are named under it
    /// (`app/watchers/pods`), but are not its children in the cancellation tree: cancelling it
    /// starts the ordered shutdown.
    pub fn scope(&self) -> &Scope {
        self.handle.scope()
    }

    /// Shuts the supervisor down with `cause`: see [`SupervisorHandle::shutdown`].
    #[track_caller]
    pub fn shutdown(&self, cause: Cause) -> bool {
        self.handle.shutdown(cause)
    }

    /// Shuts the supervisor down within a total budget: see
    /// [`SupervisorHandle::shutdown_within`].
    #[track_caller]
    pub fn shutdown_within(&self, cause: Cause, budget: Duration) -> bool {
        self.handle.shutdown_within(cause, budget)
    }

    /// Aborts every child now: see [`SupervisorHandle::abort`].
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// The live state of the supervision tree: see [`SupervisorHandle::snapshot`].
    pub fn snapshot(&self) -> SupervisorSnapshot {
        self.handle.snapshot()
    }

    /// The supervisor's changes of state, as a stream of snapshots: see [`SupervisorChanges`].
    pub fn changes(&self) -> SupervisorChanges {
        self.handle.changes()
    }

    /// Adds a child and starts it, after the others: see [`ChildStarter::start_child`].
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it.
    pub fn start_child(&self, spec: ChildSpec<E>) -> ChildRequest {
        self.starter().start_child(spec)
    }

    /// A cloneable handle that adds children from other tasks: see [`ChildStarter`].
    pub fn starter(&self) -> ChildStarter<E> {
        ChildStarter {
            handle: self.handle.clone(),
            error: PhantomData,
        }
    }

    /// Stops a child for good: see [`SupervisorHandle::terminate_child`].
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it.
    #[track_caller]
    pub fn terminate_child(&self, name: &str) -> ChildRequest {
        self.handle.terminate_child(name)
    }

    /// Starts a terminated child again: see [`SupervisorHandle::restart_child`].
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it.
    pub fn restart_child(&self, name: &str) -> ChildRequest {
        self.handle.restart_child(name)
    }

    /// Forgets a terminated child: see [`SupervisorHandle::delete_child`].
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it.
    pub fn delete_child(&self, name: &str) -> ChildRequest {
        self.handle.delete_child(name)
    }

    /// Waits until the supervisor has ended: every child has stopped for good, because the
    /// supervisor was shut down, escalated, or had no child left to restart.
    ///
    /// `Ok` when it ended without escalating and without aborting a child; otherwise the
    /// [`SupervisorError`] says which child escalated, with its last failure, and which
    /// children had to be aborted.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future before it completes shuts the supervisor down with a
    /// [`Dropped`](CauseKind::Dropped) cause. To wait for it in a `select!` loop, use
    /// [`SupervisorHandle::stopped`] and join afterwards.
    pub fn join(mut self) -> SupervisorJoin<E> {
        SupervisorJoin {
            handle: self.handle.clone(),
            task: self.task.take(),
        }
    }
}

impl<E> Drop for Supervisor<E>
where
    E: TaskError,
{
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.dropped();
        }
    }
}

impl<E> fmt::Debug for Supervisor<E>
where
    E: TaskError,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("scope", self.scope())
            .finish_non_exhaustive()
    }
}

/// A cheap, cloneable handle to a [`Supervisor`]: shut it down, force it, take snapshots,
/// follow its [changes](SupervisorHandle::changes), terminate, restart and delete its
/// children. Adding a child takes its spec, typed by the children's error type: that is on the
/// [`Supervisor`] and its [`ChildStarter`].
#[derive(Clone)]
pub struct SupervisorHandle {
    inner: Arc<Inner>,
}

impl SupervisorHandle {
    /// The supervisor's scope.
    pub fn scope(&self) -> &Scope {
        &self.inner.scope
    }

    /// Shuts the supervisor down: cancels its scope with `cause`, after which children stop
    /// in reverse start order, each told `cause` and given its grace, and none restarts.
    /// Returns whether this call set the scope's cause (the first cause wins). Use a cause of
    /// kind [`Shutdown`](CauseKind::Shutdown), such as the one a signal makes.
    ///
    /// A supervisor that has escalated is already stopping its children with the escalation's
    /// cause (its scope is left alone, so that a parent can restart it); shutting it down then
    /// changes nothing but its scope.
    #[track_caller]
    pub fn shutdown(&self, cause: Cause) -> bool {
        self.inner.scope.cancel(cause)
    }

    /// Shuts the supervisor down with `cause`, as [`shutdown`](Self::shutdown) does, within
    /// `budget` in all: children stop in reverse start order, each within its grace, and
    /// whatever still runs once `budget` has passed since this call is aborted, as by
    /// [`abort`](Self::abort). [`SupervisorError::aborted`] names the children aborted. One call
    /// for a deadline set from outside, such as a Kubernetes pod's
    /// `terminationGracePeriodSeconds` (leave a margin for what runs after the supervisor).
    ///
    /// A second call can only shorten the budget. Returns whether this call set the scope's
    /// cause.
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskscope::{BoxError, Cause, CauseKind, ChildSpec, Scope, Supervisor};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let supervisor = Supervisor::builder()
    ///     .child(ChildSpec::new("stubborn", |_scope: Scope| async {
    ///         // Ignores its cancellation.
    ///         tokio::time::sleep(Duration::from_secs(3600)).await;
    ///         Ok::<(), BoxError>(())
    ///     }))
    ///     .start(&Scope::new())?;
    /// let handle = supervisor.handle();
    /// let started = tokio::time::Instant::now();
    /// handle.shutdown_within(Cause::of_kind(CauseKind::Shutdown), Duration::from_secs(2));
    /// let error = supervisor.join().await.unwrap_err();
    /// assert_eq!(error.aborted()[0].name(), "stubborn");
    /// assert_eq!(started.elapsed(), Duration::from_secs(2));
    /// # Ok(())
    /// # }
    /// ```
    #[track_caller]
    pub fn shutdown_within(&self, cause: Cause, budget: Duration) -> bool {
        let won = self.inner.scope.cancel(cause);
        if let Some(at) = Instant::now().checked_add(budget) {
            self.inner.force_by(at);
        }
        won
    }

    /// Aborts every child now, without waiting for graces: what a second ctrl-c does. Shuts
    /// the supervisor down first, with a plain *shutdown* cause, if it was not already.
    /// Children not yet asked to stop are cancelled and aborted in the same step, so they get
    /// no chance to clean up; nested supervisors are forced in turn.
    pub fn abort(&self) {
        self.inner.force();
    }

    /// The live state of the supervision tree: every child's state, restarts, uptime, last
    /// failure and last cause, nested supervisors included.
    pub fn snapshot(&self) -> SupervisorSnapshot {
        self.inner.snapshot()
    }

    /// Whether the supervisor has ended.
    pub fn is_stopped(&self) -> bool {
        self.inner.done.is_cancelled()
    }

    /// Waits until the supervisor has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping it changes nothing, and a new one resolves at once once the
    /// supervisor has ended.
    pub fn stopped(&self) -> Stopped {
        Stopped {
            done: self.inner.done.clone().cancelled_owned(),
        }
    }

    fn dropped(&self) {
        if !self.is_stopped() {
            let cause = Cause::of_kind(CauseKind::Dropped).with_detail("supervisor dropped");
            self.inner.scope.cancel(cause);
        }
    }
}

impl fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

/// Waits for a supervisor to end; returned by [`SupervisorHandle::stopped`].
///
/// # Cancel safety
///
/// Cancel-safe.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Stopped {
    done: CancelledOwned,
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.done).poll(cx).map(drop)
    }
}

/// Waits for a supervisor to end; returned by [`Supervisor::join`].
///
/// # Cancel safety
///
/// Dropping it before it completes shuts the supervisor down with a
/// [`Dropped`](CauseKind::Dropped) cause.
#[must_use = "futures do nothing unless polled"]
pub struct SupervisorJoin<E>
where
    E: TaskError,
{
    handle: SupervisorHandle,
    task: Option<JoinHandle<Result<(), SupervisorError<E>>>>,
}

impl<E> Future for SupervisorJoin<E>
where
    E: TaskError,
{
    type Output = Result<(), SupervisorError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(task) = self.task.as_mut() else {
            panic!("`SupervisorJoin` polled after completion");
        };
        let result = std::task::ready!(Pin::new(task).poll(cx));
        self.task = None;
        Poll::Ready(match result {
            Ok(result) => result,
            // The supervisor's own code panicked (or a child's error `Debug`): not its
            // children, whose panics are failures.
            Err(error) if error.is_panic() => panic::resume_unwind(error.into_panic()),
            // Its runtime is shutting down; its children were aborted with it.
            Err(_) => Err(SupervisorError {
                cause: self.handle.scope().cause(),
                escalated: None,
                aborted: Vec::new(),
            }),
        })
    }
}

impl<E> Drop for SupervisorJoin<E>
where
    E: TaskError,
{
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.dropped();
        }
    }
}

impl<E> fmt::Debug for SupervisorJoin<E>
where
    E: TaskError,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorJoin")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Supervisor`]; made by [`Supervisor::builder`] or [`SupervisorBuilder::new`]. Cloneable, so that it can be
/// nested as a child ([`ChildSpec::supervisor`]) and started anew on each restart.
#[must_use = "a builder does nothing until `start` is called"]
pub struct SupervisorBuilder<E = BoxError> {
    name: Name,
    settings: Settings,
    children: Vec<ChildSpec<E>>,
}

impl<E> SupervisorBuilder<E>
where
    E: TaskError,
{
    /// A builder for a supervisor whose children fail with `E`, so that restart predicates
    /// and [`SupervisorError::last_failure`] see the children's own error type.
    /// [`Supervisor::builder`] is this with `E` = [`BoxError`], fixed so that children that
    /// never name an error type (they return `Ok(())`, or `Err(e.into())`) need no annotation.
    pub fn new() -> Self {
        SupervisorBuilder {
            name: Name::Static("supervisor"),
            settings: Settings {
                strategy: Strategy::OneForOne,
                backoff: Backoff::default(),
                max_restarts: DEFAULT_INTENSITY.0,
                window: DEFAULT_INTENSITY.1,
                seed: None,
                until_shutdown: false,
            },
            children: Vec::new(),
        }
    }

    /// Names the supervisor's scope (`app/watchers`); as a nested child, this is the child's
    /// name. `"supervisor"` by default.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Name::from(name.into());
        self
    }

    /// Which children restart together; [`Strategy::OneForOne`] by default.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.settings.strategy = strategy;
        self
    }

    /// How long to wait before each restart; [`Backoff::default`] by default.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Escalates instead of restarting when that would be more than `max_restarts` restarts
    /// within `window` (OTP's intensity and period). [`DEFAULT_INTENSITY`] by default: more
    /// than 10 in 60 s. `max_restarts` may be zero (any restart escalates); `window` may not.
    pub fn intensity(mut self, max_restarts: u32, window: Duration) -> Self {
        self.settings.max_restarts = max_restarts;
        self.settings.window = window;
        self
    }

    /// Seeds the jitter of the backoff, for reproducible runs and tests: see
    /// [`Backoff::delays`]. Random by default.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// Keeps the supervisor running until it is shut down, also with no child running (OTP's
    /// supervisors, Elixir's `DynamicSupervisor`): for children added at runtime with
    /// [`Supervisor::start_child`]. Without it, a supervisor whose children have all stopped
    /// for good (returned and not to be restarted, or terminated) ends by itself, and refuses
    /// children from then on.
    pub fn run_until_shutdown(mut self) -> Self {
        self.settings.until_shutdown = true;
        self
    }

    /// Adds a child. Children start in the order they are added and stop in reverse.
    pub fn child(mut self, spec: ChildSpec<E>) -> Self {
        self.children.push(spec);
        self
    }

    /// Starts the supervisor in a new child scope of `parent`, named by
    /// [`name`](SupervisorBuilder::name), on the current tokio runtime; every child starts
    /// now, in order.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the configuration cannot work: two children with the same name,
    /// a child without a name, a backoff factor below 1 or not finite, a jitter outside
    /// `[0, 1]`, a zero intensity window; also in nested supervisors.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`]; the runtime needs its time driver.
    #[track_caller]
    pub fn start(self, parent: &Scope) -> Result<Supervisor<E>, ConfigError> {
        self.validate()?;
        let scope = parent.named_child(self.name.clone());
        let runner = self.runner(scope, Location::caller());
        let handle = SupervisorHandle {
            inner: runner.inner().clone(),
        };
        Ok(Supervisor {
            handle,
            task: Some(tokio::spawn(runner)),
        })
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.settings.backoff.validate()?;
        if self.settings.window.is_zero() {
            return Err(ConfigError::new(
                "the restart intensity window must be longer than zero".to_owned(),
            ));
        }
        let mut names = HashSet::with_capacity(self.children.len());
        for spec in &self.children {
            if let Some(invalid) = &spec.invalid {
                return Err(invalid.clone());
            }
            if !names.insert(&*spec.name) {
                return Err(ConfigError::new(format!(
                    "two children are named '{}'",
                    &*spec.name
                )));
            }
        }
        Ok(())
    }

    /// The supervisor's future, running in `scope`, with its children started.
    pub(crate) fn runner(self, scope: Scope, location: &'static Location<'static>) -> Runner<E> {
        Runner::new(scope, self.settings, self.children, location)
    }

    pub(crate) fn name_of(&self) -> Name {
        self.name.clone()
    }
}

impl<E> Default for SupervisorBuilder<E>
where
    E: TaskError,
{
    fn default() -> Self {
        SupervisorBuilder::new()
    }
}

impl<E> Clone for SupervisorBuilder<E> {
    fn clone(&self) -> Self {
        SupervisorBuilder {
            name: self.name.clone(),
            settings: self.settings.clone(),
            children: self.children.clone(),
        }
    }
}

impl<E> fmt::Debug for SupervisorBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("name", &&*self.name)
            .field("settings", &self.settings)
            .field("children", &self.children)
            .finish()
    }
}
