//! [`Scope`]: one node of a cancellation tree, and [`ScopeBuilder`].

use std::fmt;
use std::panic::Location;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::cancelled::{Cancelled, CancelledOwned};
use crate::cause::{Origin, wall_clock};
use crate::node::{Listener, Node};
use crate::observe::Observer;
use crate::path::{Name, PathLink};
use crate::{Cause, CauseKind, OnCancel};

/// A handle to one node of a cancellation tree. Cloning it gives another handle to the same
/// scope.
///
/// A scope is cancelled when [`cancel`](Scope::cancel) is called on it or on an ancestor, or when
/// its deadline passes, and from then on reports *why*: its [`Cause`]. The first cause to reach a
/// scope wins and never changes. Children made from a cancelled scope are born cancelled with its
/// cause.
///
/// ```
/// use taskscope::{Cause, Scope};
///
/// let orders = Scope::builder().name("orders").build();
/// let reserve = orders.child_builder().name("reserve").build();
/// assert_eq!(reserve.path(), "orders/reserve");
///
/// assert!(orders.cancel(Cause::new("SHUTTING_DOWN")));
/// assert!(!orders.cancel(Cause::plain()), "the first cause wins");
///
/// let cause = reserve.cause().unwrap();
/// assert_eq!(cause.code(), "SHUTTING_DOWN");
/// assert_eq!(cause.origin(), Some("orders"));
/// ```
///
/// # Deadlines
///
/// A scope's effective deadline is the earliest of its own and its ancestors'. Deadlines cost no
/// background task: a scope notices its deadline when someone looks (`is_cancelled`, `cause`, a
/// waiting [`cancelled`](Scope::cancelled) future, which holds the only timer) or when a
/// cancellation reaches it, and what it then reports is decided by time order, not by when it was
/// looked at: a deadline that passed before an explicit cancel is the cause. Deadlines use
/// tokio's clock ([`tokio::time::Instant`]), so paused-time tests drive them.
///
/// # Memory
///
/// A parent holds its children weakly: dropping the last handle of a child unlinks and frees it,
/// so a long-lived scope that made a million short-lived children holds nothing for them
/// afterwards. A child keeps its ancestors alive.
#[derive(Clone)]
pub struct Scope {
    pub(crate) node: Arc<Node>,
}

impl Scope {
    /// A new root scope, with no name and no deadline.
    pub fn new() -> Scope {
        Scope {
            node: Node::new(None, false, None, None, None),
        }
    }

    /// A builder for a root scope with a name or a deadline.
    pub fn builder() -> ScopeBuilder<'static> {
        ScopeBuilder::new(None)
    }

    /// A child scope: cancelled whenever this scope is, with this scope's cause.
    ///
    /// If this scope is already cancelled, the child is born cancelled with the same cause.
    pub fn child(&self) -> Scope {
        Scope {
            node: Node::new(
                Some(&self.node),
                false,
                self.node.child_path(None),
                None,
                None,
            ),
        }
    }

    /// A child named `name`, with no deadline of its own: a task's scope in a group.
    pub(crate) fn named_child(&self, name: Name) -> Scope {
        Scope {
            node: Node::new(
                Some(&self.node),
                false,
                self.node.child_path(Some(name)),
                None,
                None,
            ),
        }
    }

    /// A child whose path, made by [`Node::child_path`] or shared with a sibling
    /// ([`Node::sibling_path`]), is `path`, with no deadline of its own: a task's scope in a
    /// group.
    pub(crate) fn child_on_path(&self, path: Option<Arc<PathLink>>) -> Scope {
        Scope {
            node: Node::new(Some(&self.node), false, path, None, None),
        }
    }

    /// A child scope that is also cancelled `timeout` from now, with a
    /// [`DeadlineExceeded`](CauseKind::DeadlineExceeded) cause.
    ///
    /// A zero timeout gives a child that is already past its deadline. A timeout too large to
    /// represent as an instant means no deadline of its own.
    #[track_caller]
    pub fn child_with_timeout(&self, timeout: Duration) -> Scope {
        self.child_builder().timeout(timeout).build()
    }

    /// A child scope that is also cancelled at `deadline`, with a
    /// [`DeadlineExceeded`](CauseKind::DeadlineExceeded) cause.
    ///
    /// A deadline in the past gives a child that is already past it.
    #[track_caller]
    pub fn child_with_deadline(&self, deadline: Instant) -> Scope {
        self.child_builder().deadline(deadline).build()
    }

    /// A builder for a child with a name, a deadline, a deadline cause of its own, or detached.
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskscope::{Cause, CauseKind, Scope};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let order = Scope::builder().name("order-17").build();
    /// let payment = order
    ///     .child_builder()
    ///     .name("payment")
    ///     .timeout(Duration::from_secs(2))
    ///     .deadline_cause(Cause::new("PAYMENT_TIMEOUT").with_detail("gateway too slow"))
    ///     .build();
    ///
    /// let cause = payment.cancelled().await;
    /// assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    /// assert_eq!(cause.code(), "PAYMENT_TIMEOUT");
    /// assert_eq!(cause.origin(), Some("order-17/payment"));
    /// assert!(!order.is_cancelled(), "a child's deadline does not cancel its parent");
    /// # }
    /// ```
    pub fn child_builder(&self) -> ScopeBuilder<'_> {
        ScopeBuilder::new(Some(self))
    }

    /// A detached child, for compensation: work that must run *because* this scope was
    /// cancelled (Go's `context.WithoutCancel`, Trio's shielded scope).
    ///
    /// It is not cancelled with this scope and does not inherit its deadline; give it its own
    /// time budget with a timeout child. It reads this scope's cause live through
    /// [`parent_cause`](Scope::parent_cause).
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    ///
    /// let order = Scope::builder().name("order-17").build();
    /// let compensation = order.detached_child();
    /// order.cancel(Cause::new("PAYMENT_DECLINED"));
    ///
    /// assert!(!compensation.is_cancelled());
    /// assert_eq!(compensation.parent_cause().unwrap().code(), "PAYMENT_DECLINED");
    /// ```
    pub fn detached_child(&self) -> Scope {
        self.child_builder().detached().build()
    }

    /// Cancels this scope and every descendant with `cause`.
    ///
    /// Returns `true` if this call set the cause, `false` if the scope already had one (the first
    /// cause wins; concurrent calls agree on one winner). A scope whose deadline had already
    /// passed keeps the deadline's cause, and this returns `false`.
    ///
    /// The cause is stamped with this scope's path as its [`origin`](Cause::origin), the time,
    /// and the caller's location, unless it already carries them.
    ///
    /// Synchronous: when it returns, this scope and every descendant report themselves
    /// cancelled, and every [`on_cancel`](Scope::on_cancel) callback this call fired has run.
    /// Waiting [`cancelled`](Scope::cancelled) futures are woken.
    ///
    /// # Panics
    ///
    /// If an `on_cancel` callback panics, the panic is resumed here after every other callback
    /// has run and the whole subtree is cancelled.
    #[track_caller]
    pub fn cancel(&self, cause: Cause) -> bool {
        let outcome = self.node.cancel(cause, Location::caller());
        if let Some(payload) = outcome.panic {
            std::panic::resume_unwind(payload);
        }
        outcome.won
    }

    /// The cause that cancelled this scope: its own if it was cancelled directly, else the one
    /// that reached it from an ancestor, else its deadline's. `None` while it is not cancelled.
    ///
    /// It never walks up the tree. While another thread cancels the scope it returns `None` or
    /// the final cause, never another. The first look after a deadline passed cancels the scope
    /// that owns the deadline, with its subtree; a callback panicking then is reported by the
    /// panic hook, not resumed here.
    pub fn cause(&self) -> Option<Cause> {
        self.node.cause()
    }

    /// Whether this scope is cancelled (or past its deadline).
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }

    /// A checkpoint for loops and long computations: `Err(cause)` once this scope is cancelled
    /// (or past its deadline), `Ok(())` until then, so `scope.check()?` returns early with the
    /// reason. [`Cause`] is an error, so `?` converts it into a boxed error too.
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    ///
    /// fn checksum(scope: &Scope, rows: &[u64]) -> Result<u64, Cause> {
    ///     let mut sum = 0u64;
    ///     for (i, row) in rows.iter().enumerate() {
    ///         if i % 1024 == 0 {
    ///             scope.check()?;
    ///         }
    ///         sum = sum.wrapping_add(*row);
    ///     }
    ///     Ok(sum)
    /// }
    ///
    /// let scope = Scope::new();
    /// assert_eq!(checksum(&scope, &[1, 2, 3]).unwrap(), 6);
    /// scope.cancel(Cause::new("SHUTDOWN"));
    /// assert_eq!(checksum(&scope, &[1, 2, 3]).unwrap_err().code(), "SHUTDOWN");
    /// ```
    pub fn check(&self) -> Result<(), Cause> {
        match self.cause() {
            Some(cause) => Err(cause),
            None => Ok(()),
        }
    }

    /// Turns this handle into a guard that cancels the scope with `cause` when dropped, unless
    /// [`disarm`](DropGuard::disarm)ed first (tokio-util's `CancellationToken::drop_guard`, with
    /// a reason). The cause names this call's location, as [`cancel`](Scope::cancel) names its
    /// caller's.
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    ///
    /// let request = Scope::new();
    /// let work = request.child();
    /// {
    ///     let _guard = request.clone().drop_guard(Cause::new("HANDLER_RETURNED"));
    /// }
    /// assert_eq!(work.cause().unwrap().code(), "HANDLER_RETURNED");
    ///
    /// let kept = Scope::new();
    /// let scope = kept.clone().drop_guard(Cause::plain()).disarm();
    /// drop(scope);
    /// assert!(!kept.is_cancelled());
    /// ```
    #[track_caller]
    pub fn drop_guard(self, cause: Cause) -> DropGuard {
        DropGuard {
            armed: Some((self, cause)),
            location: Location::caller(),
        }
    }

    /// Waits until this scope is cancelled, and resolves to the cause.
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let scope = Scope::new();
    /// let worker = tokio::spawn({
    ///     let scope = scope.child();
    ///     async move {
    ///         tokio::select! {
    ///             cause = scope.cancelled() => format!("stopped: {cause}"),
    ///             _ = std::future::pending::<()>() => unreachable!(),
    ///         }
    ///     }
    /// });
    /// scope.cancel(Cause::new("DRAINING"));
    /// assert_eq!(worker.await.unwrap(), "stopped: cancelled (DRAINING)");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: see [`Cancelled`].
    ///
    /// # Panics
    ///
    /// With a deadline, the future must be polled inside a tokio runtime with time enabled (it
    /// holds a `tokio::time::Sleep`); see [`Cancelled`].
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled::new(self)
    }

    /// Like [`cancelled`](Scope::cancelled), but the future owns this handle and is `'static`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: see [`CancelledOwned`].
    ///
    /// # Panics
    ///
    /// As [`cancelled`](Scope::cancelled).
    pub fn cancelled_owned(self) -> CancelledOwned {
        CancelledOwned::new(self)
    }

    /// This scope's effective deadline: the earliest of its own and its ancestors'.
    pub fn deadline(&self) -> Option<Instant> {
        self.node.deadline().map(|deadline| deadline.at)
    }

    /// Time left until the effective deadline (zero once it has passed), or `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// Runs `callback` once, with the cause, when this scope is cancelled (Go's
    /// `context.AfterFunc`); at once, on this thread, if it already is.
    ///
    /// No task is spawned. The callback runs on the thread that cancels the scope, after the
    /// whole subtree is cancelled and outside every internal lock, so it may use scopes; keep it
    /// short and spawn anything long. A scope that is dropped without being cancelled drops the
    /// callback unrun. A callback that captures a handle of its own scope keeps the scope alive
    /// until it runs or is stopped; capture a [`WeakScope`] ([`Scope::downgrade`]) instead. For a deadline, the callback runs when the deadline is observed (see
    /// [Deadlines](Scope#deadlines)).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use taskscope::{Cause, Scope};
    ///
    /// let scope = Scope::new();
    /// let released = Arc::new(AtomicBool::new(false));
    /// let handle = scope.on_cancel({
    ///     let released = released.clone();
    ///     move |cause| {
    ///         assert_eq!(cause.code(), "PAYMENT_DECLINED");
    ///         released.store(true, Ordering::SeqCst);
    ///     }
    /// });
    /// scope.cancel(Cause::new("PAYMENT_DECLINED"));
    /// assert!(released.load(Ordering::SeqCst));
    /// assert!(!handle.stop(), "it already ran");
    /// ```
    pub fn on_cancel<F>(&self, callback: F) -> OnCancel
    where
        F: FnOnce(&Cause) + Send + 'static,
    {
        if let Some(cause) = self.cause() {
            callback(&cause);
            return OnCancel::new(self.node.clone(), None);
        }
        match self.node.listen(Listener::Callback(Box::new(callback))) {
            Ok(key) => OnCancel::new(self.node.clone(), Some(key)),
            Err((listener, cause)) => {
                if let Listener::Callback(callback) = listener {
                    callback(&cause);
                }
                OnCancel::new(self.node.clone(), None)
            }
        }
    }

    /// A handle that does not keep this scope alive, for callbacks and caches that must not.
    ///
    /// ```
    /// use taskscope::Scope;
    ///
    /// let parent = Scope::new();
    /// let child = parent.child();
    /// let weak = child.downgrade();
    /// let _ = child.on_cancel(move |_| {
    ///     if let Some(child) = weak.upgrade() {
    ///         println!("{} cancelled", child.path());
    ///     }
    /// });
    /// drop(child);
    /// assert_eq!(parent.live_children(), 0, "no cycle keeps the child alive");
    /// ```
    pub fn downgrade(&self) -> WeakScope {
        WeakScope {
            node: Arc::downgrade(&self.node),
        }
    }

    /// This scope's path: the names of it and its ancestors joined by `/` (`"orders/reserve"`).
    /// Unnamed scopes add no segment; an unnamed root has the empty path.
    ///
    /// The path is built when it is formatted or compared, from the names of the scope and its
    /// named ancestors; a scope only links to its nearest named ancestor's name, so a child
    /// costs the same however deep it sits.
    pub fn path(&self) -> ScopePath<'_> {
        ScopePath { node: &self.node }
    }

    /// The cause of this scope's parent, read now; for a detached child, the cause of the scope
    /// it was detached from. `None` for a root or while the parent is not cancelled.
    pub fn parent_cause(&self) -> Option<Cause> {
        self.node.parent()?.cause()
    }

    /// Whether this scope was made with [`detached_child`](Scope::detached_child).
    pub fn is_detached(&self) -> bool {
        self.node.is_detached()
    }

    /// How many children this scope currently holds: live, linked and not yet cancelled.
    /// A cancelled scope holds none.
    pub fn live_children(&self) -> usize {
        self.node.live_children()
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope::new()
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("path", &self.path())
            .field("deadline", &self.deadline())
            // As recorded: formatting a scope must not observe its deadline.
            .field("cause", &self.node.recorded_cause())
            .finish()
    }
}

/// A handle to a scope that does not keep it alive; made by [`Scope::downgrade`].
#[derive(Clone, Debug, Default)]
pub struct WeakScope {
    node: Weak<Node>,
}

impl WeakScope {
    /// A handle to the scope, if it is still alive.
    pub fn upgrade(&self) -> Option<Scope> {
        self.node.upgrade().map(|node| Scope { node })
    }
}

/// Cancels a scope with a given cause when dropped; made by [`Scope::drop_guard`]. The scope
/// counterpart of tokio-util's `DropGuard`, which cancels a token and cannot say why.
#[must_use = "dropping the guard cancels the scope at once"]
pub struct DropGuard {
    armed: Option<(Scope, Cause)>,
    location: &'static Location<'static>,
}

impl DropGuard {
    /// Gives the scope back without cancelling it.
    pub fn disarm(mut self) -> Scope {
        let (scope, _) = self
            .armed
            .take()
            .expect("a guard is armed until dropped or disarmed");
        scope
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let Some((scope, cause)) = self.armed.take() else {
            return;
        };
        let outcome = scope.node.cancel(cause, self.location);
        // A callback's panic is resumed as `cancel` would, but never while already unwinding:
        // that would abort the process.
        if let Some(payload) = outcome.panic
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(payload);
        }
    }
}

impl fmt::Debug for DropGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropGuard")
            .field("scope", &self.armed.as_ref().map(|(scope, _)| scope))
            .field("cause", &self.armed.as_ref().map(|(_, cause)| cause))
            .finish()
    }
}

/// Builds a root scope ([`Scope::builder`]) or a child ([`Scope::child_builder`]).
#[must_use = "a builder does nothing until `build` is called"]
pub struct ScopeBuilder<'a> {
    parent: Option<&'a Scope>,
    name: Option<String>,
    deadline: Option<When>,
    deadline_cause: Option<Cause>,
    detached: bool,
    observer: Option<Arc<dyn Observer>>,
}

// As for `Node`: the builder only hands its observer to the node it builds.
impl std::panic::UnwindSafe for ScopeBuilder<'_> {}
impl std::panic::RefUnwindSafe for ScopeBuilder<'_> {}

impl fmt::Debug for ScopeBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeBuilder")
            .field("parent", &self.parent)
            .field("name", &self.name)
            .field("deadline", &self.deadline)
            .field("deadline_cause", &self.deadline_cause)
            .field("detached", &self.detached)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

#[derive(Debug)]
enum When {
    After(Duration),
    At(Instant),
}

impl<'a> ScopeBuilder<'a> {
    fn new(parent: Option<&'a Scope>) -> Self {
        ScopeBuilder {
            parent,
            name: None,
            deadline: None,
            deadline_cause: None,
            detached: false,
            observer: None,
        }
    }

    /// Names the scope; its [path](Scope::path) is its parent's path, `/`, and this name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Gives the scope a deadline `timeout` after [`build`](ScopeBuilder::build) is called.
    /// Replaces an earlier `timeout` or `deadline`. Zero means already expired; a timeout too
    /// large to represent means no deadline of its own.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(When::After(timeout));
        self
    }

    /// Gives the scope a deadline. Replaces an earlier `timeout` or `deadline`.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(When::At(deadline));
        self
    }

    /// The cause the scope reports when its own deadline passes (Go's `WithDeadlineCause`),
    /// instead of a plain [`DeadlineExceeded`](CauseKind::DeadlineExceeded). Its kind becomes
    /// `DeadlineExceeded`, so a timeout is never mistaken for a harmless cancel; its code,
    /// detail and source are kept. Without a deadline it has no effect.
    pub fn deadline_cause(mut self, cause: Cause) -> Self {
        self.deadline_cause = Some(cause);
        self
    }

    /// Makes the child detached: see [`Scope::detached_child`]. No effect on a root.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Reports this scope's lifecycle, and that of every scope, group, task and supervisor made
    /// under it, to `observer` (see [`observe`](crate::observe)), instead of the observer
    /// inherited from the parent, if any.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Builds the scope.
    #[track_caller]
    pub fn build(self) -> Scope {
        // Read here: a closure does not pass on `track_caller`.
        let caller = Location::caller();
        let parent_node = self.parent.map(|parent| &parent.node);
        let name = self.name.map(|name| Name::Shared(Arc::from(name)));
        let path = match parent_node {
            Some(parent) => parent.child_path(name),
            None => PathLink::child(None, name),
        };
        let now = Instant::now();
        let at = match self.deadline {
            None => None,
            Some(When::At(at)) => Some(at),
            Some(When::After(timeout)) => now.checked_add(timeout),
        };
        let deadline = at.map(|at| {
            let cause = self
                .deadline_cause
                .unwrap_or_else(|| Cause::of_kind(CauseKind::DeadlineExceeded))
                .into_deadline()
                .stamped(|| path.clone().map(Origin::from), at, caller)
                // Read here, off the cancel path, so that under paused time too it is the wall
                // clock now plus the time left.
                .with_wall_clock(wall_clock(at, now));
            (at, cause)
        });
        Scope {
            node: Node::new(parent_node, self.detached, path, deadline, self.observer),
        }
    }
}

/// A scope's path, built from the tree when it is formatted or compared; returned by
/// [`Scope::path`].
///
/// It displays as the names joined by `/` and compares equal to that string.
#[derive(Clone, Copy)]
pub struct ScopePath<'a> {
    node: &'a Node,
}

impl<'a> ScopePath<'a> {
    pub(crate) fn of(node: &'a Node) -> Self {
        ScopePath { node }
    }

    /// Whether neither the scope nor any ancestor is named.
    pub fn is_empty(&self) -> bool {
        self.node.names().next().is_none()
    }
}

impl fmt::Display for ScopePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.node.write_path(f)
    }
}

impl fmt::Debug for ScopePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl PartialEq<str> for ScopePath<'_> {
    fn eq(&self, other: &str) -> bool {
        // Compared from the innermost name outwards, without building the path.
        let mut rest = other;
        let mut names = self.node.names().peekable();
        while let Some(name) = names.next() {
            let Some(head) = rest.strip_suffix(name) else {
                return false;
            };
            rest = match names.peek() {
                Some(_) => match head.strip_suffix('/') {
                    Some(head) => head,
                    None => return false,
                },
                None => head,
            };
        }
        rest.is_empty()
    }
}

impl PartialEq<&str> for ScopePath<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<ScopePath<'_>> for ScopePath<'_> {
    fn eq(&self, other: &ScopePath<'_>) -> bool {
        self.node.names().eq(other.node.names())
    }
}
