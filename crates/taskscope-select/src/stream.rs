//! [`StreamExt::until_cancelled`]: a stream that ends when its scope is cancelled.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_core::stream::FusedStream;
use pin_project_lite::pin_project;
use taskscope::futures::{Cancelled, CancelledOwned};
use taskscope::{Cause, Scope};

use crate::or_cancel::{Watch, poll_scope_first};

/// Adapters for any [`Stream`].
pub trait StreamExt: Stream + Sized {
    /// Yields this stream's items until it ends or `scope` is cancelled; then it ends, and
    /// [`cause`](UntilCancelled::cause) says why if it was the scope.
    ///
    /// ```
    /// use futures::StreamExt as _;
    /// use taskscope::{Cause, Scope};
    /// use taskscope_select::StreamExt;
    /// use tokio_stream::wrappers::UnboundedReceiverStream;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    /// tx.send("order-1").unwrap();
    /// tx.send("order-2").unwrap();
    /// let consumer = Scope::new();
    /// let mut orders = UnboundedReceiverStream::new(rx).until_cancelled(&consumer);
    ///
    /// assert_eq!(orders.next().await, Some("order-1"));
    /// consumer.cancel(Cause::new("REBALANCE"));
    /// assert_eq!(orders.next().await, None);
    /// assert_eq!(orders.cause().unwrap().code(), "REBALANCE");
    ///
    /// // What the stream had not yet yielded is still in it.
    /// let mut rest = orders.into_inner();
    /// assert_eq!(rest.next().await, Some("order-2"));
    /// # }
    /// ```
    ///
    /// # Fairness
    ///
    /// The scope is checked before each item, as in
    /// [`or_cancel`](crate::FutureExt::or_cancel): a stream that always has an item ready still
    /// ends at the cancel. No item is lost: one the inner stream has not yielded stays in it
    /// ([`into_inner`](UntilCancelled::into_inner) gives it back), and one it has yielded is
    /// returned.
    ///
    /// # Cancel safety
    ///
    /// `poll_next` is cancel-safe exactly when the inner stream's is (it is for tokio's channel
    /// receivers and most streams): dropping a pending `next()` loses nothing.
    fn until_cancelled(self, scope: &Scope) -> UntilCancelled<'_, Self> {
        UntilCancelled {
            stream: self,
            cancelled: scope.cancelled(),
            state: State::Running,
        }
    }

    /// Like [`until_cancelled`](StreamExt::until_cancelled), but owns a handle to the scope, so
    /// the result is `'static` when the stream is and can be moved into a spawned task.
    ///
    /// # Fairness and cancel safety
    ///
    /// As [`until_cancelled`](StreamExt::until_cancelled).
    fn until_cancelled_owned(self, scope: Scope) -> UntilCancelledOwned<Self> {
        UntilCancelledOwned {
            stream: self,
            cancelled: scope.cancelled_owned(),
            state: State::Running,
        }
    }
}

impl<S: Stream> StreamExt for S {}

/// Why the adapter has ended, if it has.
#[derive(Debug)]
enum State {
    Running,
    /// The inner stream ended on its own.
    Exhausted,
    Cancelled(Cause),
}

pin_project! {
    /// The stream returned by [`StreamExt::until_cancelled`].
    #[must_use = "streams do nothing unless polled"]
    #[derive(Debug)]
    pub struct UntilCancelled<'a, S> {
        #[pin]
        stream: S,
        cancelled: Cancelled<'a>,
        state: State,
    }
}

pin_project! {
    /// The stream returned by [`StreamExt::until_cancelled_owned`].
    #[must_use = "streams do nothing unless polled"]
    #[derive(Debug)]
    pub struct UntilCancelledOwned<S> {
        #[pin]
        stream: S,
        cancelled: CancelledOwned,
        state: State,
    }
}

macro_rules! accessors {
    () => {
        /// The cause that ended the stream: `Some` once it has ended because its scope was
        /// cancelled, `None` while it runs or if the inner stream ended on its own first.
        pub fn cause(&self) -> Option<&Cause> {
            match &self.state {
                State::Cancelled(cause) => Some(cause),
                State::Running | State::Exhausted => None,
            }
        }

        /// The inner stream.
        pub fn get_ref(&self) -> &S {
            &self.stream
        }

        /// The inner stream, to drain what it still holds after a cancel.
        pub fn into_inner(self) -> S {
            self.stream
        }
    };
}

impl<S> UntilCancelled<'_, S> {
    accessors!();
}

impl<S> UntilCancelledOwned<S> {
    accessors!();
}

impl<S: Stream> Stream for UntilCancelled<'_, S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        poll_until_cancelled(this.stream, this.cancelled, this.state, cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        size_hint(&self.state, &self.stream)
    }
}

impl<S: Stream> Stream for UntilCancelledOwned<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        poll_until_cancelled(this.stream, this.cancelled, this.state, cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        size_hint(&self.state, &self.stream)
    }
}

impl<S: Stream> FusedStream for UntilCancelled<'_, S> {
    fn is_terminated(&self) -> bool {
        !matches!(self.state, State::Running)
    }
}

impl<S: Stream> FusedStream for UntilCancelledOwned<S> {
    fn is_terminated(&self) -> bool {
        !matches!(self.state, State::Running)
    }
}

/// The inner stream's upper bound; no lower bound, since a cancel can end it at any item.
fn size_hint<S: Stream>(state: &State, stream: &S) -> (usize, Option<usize>) {
    match state {
        State::Running => (0, stream.size_hint().1),
        State::Exhausted | State::Cancelled(_) => (0, Some(0)),
    }
}

/// The rule every adapter follows (see `# Fairness`): the scope first; once ended, fused.
fn poll_until_cancelled<S: Stream>(
    stream: Pin<&mut S>,
    cancelled: &mut impl Watch,
    state: &mut State,
    cx: &mut Context<'_>,
) -> Poll<Option<S::Item>> {
    if !matches!(state, State::Running) {
        return Poll::Ready(None);
    }
    match std::task::ready!(poll_scope_first(cancelled, cx, |cx| stream.poll_next(cx))) {
        Ok(Some(item)) => Poll::Ready(Some(item)),
        Ok(None) => {
            *state = State::Exhausted;
            Poll::Ready(None)
        }
        Err(cause) => {
            *state = State::Cancelled(cause);
            Poll::Ready(None)
        }
    }
}
