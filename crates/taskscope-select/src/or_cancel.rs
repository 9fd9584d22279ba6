//! [`FutureExt::or_cancel`]: run a future until it completes or its scope is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use taskscope::{Cancelled, CancelledOwned, Cause, Scope};

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

/// The one rule both futures follow (see `# Fairness`): the scope first.
fn poll_or_cancel<F, C>(
    future: Pin<&mut F>,
    cancelled: &mut C,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, Cause>>
where
    F: Future,
    C: Future<Output = Cause> + Unpin,
{
    if let Poll::Ready(cause) = Pin::new(cancelled).poll(cx) {
        return Poll::Ready(Err(cause));
    }
    future.poll(cx).map(Ok)
}
