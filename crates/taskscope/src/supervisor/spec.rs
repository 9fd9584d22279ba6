//! What a supervisor runs: child specs and restart kinds.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::deep::{Deferred, nesting};
use super::tree::Inner;
use super::{ConfigError, SupervisorBuilder, SupervisorError};
use crate::path::Name;
use crate::sync::{Mutex, lock};
use crate::{BoxError, Cause, DEFAULT_GRACE, Failure, Scope, TaskError};

/// When a child is restarted after it returns (OTP's restart types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Restart {
    /// Whenever it returns, `Ok` or not (OTP's *permanent*). The default.
    #[default]
    Always,
    /// Only when it fails: returns an error or panics (OTP's *transient*).
    OnFailure,
    /// Never (OTP's *temporary*).
    Never,
}

pub(crate) type ChildFuture<E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send>>;
/// Makes a run's future; a nested supervisor also publishes its state in the slot given.
type Factory<E> = Arc<dyn Fn(Scope, Option<&Nested>) -> ChildFuture<E> + Send + Sync>;
type Predicate<E> = Arc<dyn Fn(&Failure<E>, &Cause) -> bool + Send + Sync>;

/// The state of a nested supervisor's latest run: for snapshots of the tree, to force it, and
/// to name the children it aborted.
pub(crate) type Nested = Arc<Mutex<Option<Deferred<Arc<Inner>>>>>;

/// A child of a [`Supervisor`](crate::Supervisor): a name, a factory that makes the child's
/// future anew on every (re)start, when to restart it, and how long it gets to stop.
///
/// ```
/// use std::time::Duration;
/// use taskscope::{ChildSpec, Restart, Scope};
///
/// # #[derive(Debug)] struct WatchError;
/// # impl std::fmt::Display for WatchError {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("x") }
/// # }
/// # impl taskscope::TaskError for WatchError {}
/// async fn watch(scope: Scope) -> Result<(), WatchError> {
///     scope.cancelled().await;
///     Ok(())
/// }
///
/// let spec = ChildSpec::new("pod-watcher", watch)
///     .restart(Restart::OnFailure)
///     .grace(Duration::from_secs(2));
/// assert_eq!(spec.name(), "pod-watcher");
/// ```
pub struct ChildSpec<E = BoxError> {
    pub(crate) name: Name,
    pub(crate) factory: Factory<E>,
    pub(crate) restart: Restart,
    pub(crate) grace: Duration,
    pub(crate) restart_if: Option<Predicate<E>>,
    pub(crate) location: &'static Location<'static>,
    /// Whether it is a nested supervisor.
    pub(crate) supervisor: bool,
    pub(crate) invalid: Option<ConfigError>,
}

impl<E> ChildSpec<E>
where
    E: TaskError,
{
    /// A child named `name` whose every run is `factory(scope)`, with `scope` the run's own
    /// scope (`supervisor/name`): cancelled when the supervisor stops or restarts it. Restarted
    /// [always](Restart::Always), with the [default grace](crate::DEFAULT_GRACE) of 5 s.
    ///
    /// The call site is recorded: causes and reports name it as the child's spawn location.
    #[track_caller]
    pub fn new<F, Fut>(name: impl Into<Cow<'static, str>>, factory: F) -> ChildSpec<E>
    where
        F: Fn(Scope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let name = Name::from(name.into());
        let invalid = name
            .is_empty()
            .then(|| ConfigError::new("a child needs a name".to_owned()));
        ChildSpec {
            name,
            factory: Arc::new(move |scope, _| Box::pin(factory(scope))),
            restart: Restart::Always,
            grace: DEFAULT_GRACE,
            restart_if: None,
            location: Location::caller(),
            supervisor: false,
            invalid,
        }
    }

    /// A nested supervisor as a child, named by the builder's name. Every run starts the
    /// nested supervisor in the run's scope, and its children before the parent's next child
    /// (OTP's order); beyond 32 levels of nesting started at once, a nested supervisor starts
    /// its children in its own task instead, so trees of any depth start and drop without
    /// exhausting a thread's stack. Its shutdown waits for its own children, so its
    /// grace is unlimited by default (OTP's `infinity` for supervisors); each of its children
    /// is bounded by its own grace. It fails, and may be restarted, when it escalates. When its
    /// grace runs out, or the parent is forced, it is forced in turn: it aborts its own
    /// children, and the parent's [`SupervisorError::aborted`] names them (`payments/ledger`).
    #[track_caller]
    pub fn supervisor<E2>(builder: SupervisorBuilder<E2>) -> ChildSpec<E>
    where
        E2: TaskError,
        E: From<SupervisorError<E2>>,
    {
        let name = builder.name_of();
        let invalid = match builder.validate() {
            Err(error) => Some(error),
            Ok(()) if name.is_empty() => Some(ConfigError::new("a child needs a name".to_owned())),
            Ok(()) => None,
        };
        let location = Location::caller();
        // A tree of nested supervisors drops in a loop, however deep.
        let builder = Deferred::new(builder);
        let factory = move |scope: Scope, slot: Option<&Nested>| -> ChildFuture<E> {
            let builder = builder.get().clone();
            let slot = slot.cloned();
            // Started now, so its children start before its parent's next child (OTP's order),
            // unless this thread is already that deep in starting nested supervisors: then on
            // the child's first poll, in its own task, so no depth overflows the stack.
            let level = nesting::enter();
            if let (None, Some(slot)) = (&level, &slot) {
                // Until its first poll, no stale run of it is snapshotted or forced.
                let stale = lock(slot).take();
                drop(stale);
            }
            let start = move || {
                let runner = builder.runner(scope, location);
                if let Some(slot) = slot {
                    // The last run's state is released after the lock.
                    let last = lock(&slot).replace(Deferred::new(runner.inner().clone()));
                    drop(last);
                }
                runner
            };
            match level {
                Some(level) => {
                    let runner = start();
                    drop(level);
                    Box::pin(async move { runner.await.map_err(E::from) })
                }
                None => Box::pin(async move { start().await.map_err(E::from) }),
            }
        };
        ChildSpec {
            name,
            factory: Arc::new(factory),
            restart: Restart::Always,
            grace: Duration::MAX,
            restart_if: None,
            location,
            supervisor: true,
            invalid,
        }
    }

    /// When to restart the child; [`Restart::Always`] by default.
    pub fn restart(mut self, restart: Restart) -> ChildSpec<E> {
        self.restart = restart;
        self
    }

    /// How long the child gets to return once the supervisor cancels its scope, before it is
    /// aborted. Zero aborts at once; a grace too long to represent as an instant never aborts.
    pub fn grace(mut self, grace: Duration) -> ChildSpec<E> {
        self.grace = grace;
        self
    }

    /// Decides whether a failure is worth a restart. It sees the failure (the error or the
    /// panic) and the cause it makes (kind *task failed* or *task panicked*, the error's code
    /// when the error is a [`Cause`], the child's path as origin). `true` restarts the child as
    /// usual; `false` means retrying cannot help: the supervisor escalates, stopping every
    /// child and failing with a cause that names this child and carries the failure.
    ///
    /// Not consulted when the child was stopped by a cancellation or a shutdown: that is never
    /// restarted. A panic in the predicate counts as `false`. To give up on a child without
    /// failing the supervisor, make it [`Restart::Never`] and let it return `Ok`.
    pub fn restart_if<P>(mut self, predicate: P) -> ChildSpec<E>
    where
        P: Fn(&Failure<E>, &Cause) -> bool + Send + Sync + 'static,
    {
        self.restart_if = Some(Arc::new(predicate));
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<E> Clone for ChildSpec<E> {
    fn clone(&self) -> Self {
        ChildSpec {
            name: self.name.clone(),
            factory: self.factory.clone(),
            restart: self.restart,
            grace: self.grace,
            restart_if: self.restart_if.clone(),
            location: self.location,
            supervisor: self.supervisor,
            invalid: self.invalid.clone(),
        }
    }
}

impl<E> fmt::Debug for ChildSpec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &&*self.name)
            .field("restart", &self.restart)
            .field("grace", &self.grace)
            .field("supervisor", &self.supervisor)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}
