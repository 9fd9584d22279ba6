//! Bridges between scopes and the rest of a tokio program: [`CancellationToken`]s both ways,
//! and any future as a source of cancellation ([`ScopeExt::cancel_on`]).
//!
//! Invariants:
//!
//! 1. [`ScopeExt::to_token`] spawns nothing: the token is cancelled by an
//!    [`on_cancel`](Scope::on_cancel) callback, which the scope drops (with its token clone)
//!    when the scope is freed.
//! 2. The task of [`ScopeExt::cancel_on`] holds its scope only weakly, and ends when the scope
//!    is cancelled or freed: the scope's `on_cancel` callback owns the task's `closed` sender
//!    and drops it either way. So a bridge never keeps a scope alive, and a freed scope never
//!    leaves a task behind.
//! 3. A scope notices its deadline only when someone looks (`taskscope`'s design: deadlines
//!    cost no task of their own). So a bridge to a scope with a deadline looks at the deadline:
//!    the task of invariant 2 also sleeps until it, then looks, which cancels the scope with
//!    its deadline cause and runs its callbacks (the token's among them).

use std::future::{Future, poll_fn};
use std::panic::Location;
use std::pin::{Pin, pin};
use std::task::Poll;

use taskscope::{Cause, Scope};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bridges on [`Scope`]: to a [`CancellationToken`], and from any future.
pub trait ScopeExt {
    /// A [`CancellationToken`] that is cancelled when this scope is (at once if it already
    /// is), by a cancel or by its deadline, for code that takes a token. No task is spawned
    /// for a scope without a deadline: one [`on_cancel`](Scope::on_cancel) callback holds the
    /// token until the scope is cancelled or freed. A scope with a deadline (its own or an
    /// ancestor's) also gets one timer task, as [`cancel_on`](ScopeExt::cancel_on) spawns, that
    /// wakes at the deadline so the token is cancelled then; it ends with the scope.
    ///
    /// The token follows the scope while the scope lives: keep a handle to the scope for as
    /// long as the token is used. Once its last handle is dropped the scope is freed with its
    /// callback, and the token is cancelled by nothing (so `parent.child().to_token()`, whose
    /// child is a temporary, is never cancelled; bind the child to a variable).
    ///
    /// Each call registers one callback, so call it once per scope and clone the token, rather
    /// than once per loop turn on a long-lived scope; make a short-lived
    /// [`child`](Scope::child) for per-request tokens. A token knows no cause: read it from the
    /// scope.
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    /// use taskscope_select::ScopeExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let request = Scope::new();
    /// let token = request.to_token();
    /// assert!(!token.is_cancelled());
    /// request.cancel(Cause::new("CLIENT_GONE"));
    /// assert!(token.is_cancelled());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// For a scope with a deadline, outside a tokio runtime with time enabled.
    #[track_caller]
    fn to_token(&self) -> CancellationToken;

    /// Cancels this scope with the cause `source` resolves to, unless the scope is cancelled
    /// first: a signal, a token, a message, any future ending in a [`Cause`] becomes a source
    /// of cancellation (`scope.cancel_on(signal::terminate()?)`).
    ///
    /// `source` runs in a task spawned here, which ends as soon as the scope is cancelled (by
    /// anything, its deadline included: the task wakes at it) or freed, dropping `source`. The task holds the scope weakly: it never keeps
    /// the scope alive. Its handle resolves to whether `source`'s cause cancelled the scope
    /// (`false` if the scope was cancelled otherwise, or freed); dropping the handle detaches
    /// the task, as with [`tokio::spawn`], and aborting it stops `source` (a small callback
    /// stays registered on the scope until the scope ends). A `source` that holds a handle of
    /// the scope itself keeps it alive: give it a [`WeakScope`](taskscope::WeakScope).
    ///
    /// The cause's [`origin`](Cause::origin) is this scope's path; its
    /// [`location`](Cause::location) is the call to `cancel_on`, unless `source`'s cause
    /// carries one of its own.
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    /// use taskscope_select::ScopeExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
    /// let consumer = Scope::new();
    /// let bridge = consumer.cancel_on(async move {
    ///     match rx.await {
    ///         Ok(reason) => Cause::new("REBALANCE").with_detail(reason),
    ///         Err(_) => Cause::new("COORDINATOR_GONE"),
    ///     }
    /// });
    /// tx.send("partition 7 moved").unwrap();
    /// assert_eq!(consumer.cancelled().await.detail(), Some("partition 7 moved"));
    /// assert!(bridge.await.unwrap(), "the source's cause won");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`].
    #[track_caller]
    fn cancel_on<F>(&self, source: F) -> JoinHandle<bool>
    where
        F: Future<Output = Cause> + Send + 'static;
}

impl ScopeExt for Scope {
    #[track_caller]
    fn to_token(&self) -> CancellationToken {
        let token = CancellationToken::new();
        // Dropping the handle leaves the callback registered (invariant 1).
        let _ = self.on_cancel({
            let token = token.clone();
            move |_| token.cancel()
        });
        // A deadline is noticed when someone looks (invariant 3).
        if self.deadline().is_some() && !token.is_cancelled() {
            drop(watch(self, std::future::pending(), Location::caller()));
        }
        token
    }

    #[track_caller]
    fn cancel_on<F>(&self, source: F) -> JoinHandle<bool>
    where
        F: Future<Output = Cause> + Send + 'static,
    {
        watch(self, source, Location::caller())
    }
}

/// Spawns the task of invariants 2 and 3: it cancels `scope` with `source`'s cause, recorded as
/// asked for at `called_at` unless it says otherwise, unless the scope is cancelled (by
/// anything, its deadline included) or freed first.
fn watch<F>(scope: &Scope, source: F, called_at: &'static Location<'static>) -> JoinHandle<bool>
where
    F: Future<Output = Cause> + Send + 'static,
{
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    // The callback runs (cancel) or is dropped unrun (scope freed): either way the sender goes
    // and the task wakes (invariant 2). The handle would keep the scope alive.
    let _ = scope.on_cancel(move |_| drop(closed_tx));
    let mut deadline = scope
        .deadline()
        .map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
    let scope = scope.downgrade();
    tokio::spawn(async move {
        let mut closed = closed_rx;
        let mut source = pin!(source);
        // The scope's end first: a source resolving after it changes nothing.
        let cause = poll_fn(|cx| {
            if Pin::new(&mut closed).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if let Some(timer) = &mut deadline
                && timer.as_mut().poll(cx).is_ready()
            {
                // Looking cancels the scope with its deadline's cause (invariant 3).
                if let Some(scope) = scope.upgrade() {
                    scope.is_cancelled();
                }
                return Poll::Ready(None);
            }
            source.as_mut().poll(cx).map(Some)
        })
        .await;
        let cause = cause.map(|cause| located(cause, called_at));
        cause.is_some_and(|cause| scope.upgrade().is_some_and(|scope| scope.cancel(cause)))
    })
}

/// `cause`, recorded as asked for at `called_at` unless it carries a location of its own.
fn located(cause: Cause, called_at: &'static Location<'static>) -> Cause {
    match cause.location() {
        Some(_) => cause,
        None => cause.with_location(called_at),
    }
}

/// Bridges on [`CancellationToken`]: to a [`Scope`].
pub trait TokenExt {
    /// A new root scope that is cancelled when this token is, with a
    /// [plain](Cause::plain) cause (kind explicit, code `"cancelled"`) whose detail says a
    /// token cancelled it. See [`to_scope_with`](TokenExt::to_scope_with) to give the cause.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it spawns a task, as [`ScopeExt::cancel_on`].
    #[track_caller]
    fn to_scope(&self) -> Scope;

    /// A new root scope that is cancelled with `cause` when this token is: the token says
    /// *that* the work stops, `cause` says *why* (`Cause::of_kind(CauseKind::Shutdown)` for an
    /// application's shutdown token).
    ///
    /// One task waits on the token, as [`ScopeExt::cancel_on`] spawns: it ends when the token
    /// or the scope is cancelled, or the scope is freed, so round trips (token to scope to
    /// token) leave nothing behind. Make children of the scope rather than a scope per request.
    ///
    /// ```
    /// use taskscope::{Cause, CauseKind};
    /// use taskscope_select::TokenExt;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let shutdown = CancellationToken::new(); // the application's existing token
    /// let app = shutdown.to_scope_with(Cause::of_kind(CauseKind::Shutdown).with_code("DEPLOY"));
    /// let worker = app.child();
    ///
    /// shutdown.cancel();
    /// let cause = worker.cancelled().await;
    /// assert_eq!(cause.kind(), CauseKind::Shutdown);
    /// assert_eq!(cause.code(), "DEPLOY");
    /// # }
    /// ```
    ///
    /// The cause's [`location`](Cause::location) is the call to `to_scope_with` (or
    /// [`to_scope`](TokenExt::to_scope)), unless `cause` carries one.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    #[track_caller]
    fn to_scope_with(&self, cause: Cause) -> Scope;
}

impl TokenExt for CancellationToken {
    #[track_caller]
    fn to_scope(&self) -> Scope {
        self.to_scope_with(Cause::plain().with_detail("its CancellationToken was cancelled"))
    }

    #[track_caller]
    fn to_scope_with(&self, cause: Cause) -> Scope {
        let cause = located(cause, Location::caller());
        let scope = Scope::new();
        // A token that is already cancelled gives the scope its cause now, not after a
        // scheduling round trip.
        if self.is_cancelled() {
            scope.cancel(cause);
        } else {
            let cancelled = self.clone().cancelled_owned();
            let _detached = scope.cancel_on(async move {
                cancelled.await;
                cause
            });
        }
        scope
    }
}
