//! [`FutureExt::or_cancel`]: run a future until it completes or its scope is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use taskscope::futures::{Cancelled, CancelledOwned};
use taskscope::{Cause, Scope};

/// Adapters for any future.
pub trait FutureExt: Future + Sized {
    /// Runs this future until it completes (`Ok(output)`) or `scope` is cancelled
    /// (`Err(cause)`), whichever comes first.
    ///
    /// # Fairness
    ///
    /// The scope is checked first: once it is cancelled the inner future is not polled again,
    /// so work does not start on a cancelled scope and a source that is always ready (a busy
    /// channel) still stops. Nothing is lost by this: an output the inner future has not
    /// returned was never produced.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe exactly when the inner future is: dropping an `OrCancel` drops the inner
    /// future, and waiting on the scope loses nothing.
    fn or_cancel(self, scope: &Scope) -> OrCancel<'_, Self> {
        OrCancel {
            future: self,
            cancelled: scope.cancelled(),
        }
    }

    /// Like [`or_cancel`](FutureExt::or_cancel), but owns a handle to the scope, so the result
    /// is `'static` when the inner future is and can be spawned.
    ///
    /// ```
    /// use taskscope::{Cause, Scope};
    /// use taskscope_select::FutureExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let scope = Scope::new();
    /// let worker = tokio::spawn(std::future::pending::<()>().or_cancel_owned(scope.child()));
    /// scope.cancel(Cause::new("SHUTDOWN"));
    /// assert_eq!(worker.await.unwrap().unwrap_err().code(), "SHUTDOWN");
    /// # }
    /// ```
    ///
    /// # Fairness and cancel safety
    ///
    /// As [`or_cancel`](FutureExt::or_cancel).
    fn or_cancel_owned(self, scope: Scope) -> OrCancelOwned<Self> {
        OrCancelOwned {
            future: self,
            cancelled: scope.cancelled_owned(),
        }
    }

    /// Runs this future for at most `timeout`; past it, resolves to `Err(cause)` with `cause`
    /// made a [deadline](taskscope::CauseKind::DeadlineExceeded) cause that keeps its code and
    /// detail. A timeout that says why, where `tokio::time::timeout` says only "elapsed".
    ///
    /// It is a root scope with that deadline and cause (as
    /// [`ScopeBuilder::deadline_cause`](taskscope::ScopeBuilder::deadline_cause) makes), run
    /// with [`or_cancel_owned`](FutureExt::or_cancel_owned). To bound work that already has a
    /// scope, give the scope the deadline instead (`scope.child_builder().timeout(d)`): its
    /// cancellation then reaches the work too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskscope::{Cause, CauseKind};
    /// use taskscope_select::FutureExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let gateway = tokio::time::sleep(Duration::from_secs(30));
    /// let cause = gateway
    ///     .timeout_with_cause(Duration::from_secs(2), Cause::new("PAYMENT_TIMEOUT"))
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    /// assert_eq!(cause.code(), "PAYMENT_TIMEOUT");
    /// # }
    /// ```
    ///
    /// # Fairness
    ///
    /// As [`or_cancel`](FutureExt::or_cancel): the deadline is checked first, so a zero
    /// `timeout` ends it without polling the inner future once (where `tokio::time::timeout`
    /// polls it first).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe exactly when the inner future is.
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with the time driver enabled, as
    /// `tokio::time::sleep` does.
    fn timeout_with_cause(self, timeout: Duration, cause: Cause) -> OrCancelOwned<Self> {
        let scope = Scope::builder()
            .timeout(timeout)
            .deadline_cause(cause)
            .build();
        self.or_cancel_owned(scope)
    }
}

impl<F: Future> FutureExt for F {}

pin_project! {
    /// The future returned by [`FutureExt::or_cancel`].
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct OrCancel<'a, F> {
        #[pin]
        future: F,
        cancelled: Cancelled<'a>,
    }
}

pin_project! {
    /// The future returned by [`FutureExt::or_cancel_owned`].
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct OrCancelOwned<F> {
        #[pin]
        future: F,
        cancelled: CancelledOwned,
    }
}

impl<F: Future> Future for OrCancel<'_, F> {
    type Output = Result<F::Output, Cause>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        poll_or_cancel(this.future, this.cancelled, cx)
    }
}

impl<F: Future> Future for OrCancelOwned<F> {
    type Output = Result<F::Output, Cause>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        poll_or_cancel(this.future, this.cancelled, cx)
    }
}

/// A scope's cancellation as the adapters watch it: [`Cancelled`] or [`CancelledOwned`].
pub(crate) trait Watch: Future<Output = Cause> + Unpin {
    /// Whether it is cancelled now, registering nothing.
    fn is_cancelled(&self) -> bool;
}

impl Watch for Cancelled<'_> {
    fn is_cancelled(&self) -> bool {
        Cancelled::is_cancelled(self)
    }
}

impl Watch for CancelledOwned {
    fn is_cancelled(&self) -> bool {
        CancelledOwned::is_cancelled(self)
    }
}

/// Polls `inner` under the one rule every adapter follows (see `# Fairness`): the scope first.
///
/// The scope is looked at without registering a waker, then `inner` is polled, and only if it
/// is pending is the waker registered with the scope (which looks again, under the scope's
/// lock: a cancel landing in between is not missed). An adapter whose inner future is ready
/// at once so never touches the scope's waiter list.
pub(crate) fn poll_scope_first<T>(
    cancelled: &mut impl Watch,
    cx: &mut Context<'_>,
    inner: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<Result<T, Cause>> {
    if !cancelled.is_cancelled()
        && let Poll::Ready(output) = inner(cx)
    {
        return Poll::Ready(Ok(output));
    }
    Pin::new(cancelled).poll(cx).map(Err)
}

fn poll_or_cancel<F: Future>(
    future: Pin<&mut F>,
    cancelled: &mut impl Watch,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, Cause>> {
    poll_scope_first(cancelled, cx, |cx| future.poll(cx))
}
