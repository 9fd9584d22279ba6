//! The futures returned by [`Scope::cancelled`] and [`Scope::cancelled_owned`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Sleep;

use crate::node::{Listener, Node};
use crate::{Cause, Scope};

/// Resolves to the [`Cause`] once its scope is cancelled; returned by [`Scope::cancelled`].
///
/// # Cancel safety
///
/// Cancel-safe: dropping it (for example when another `tokio::select!` branch wins) loses
/// nothing. Cancellation is level-triggered, so a future created later, or polled again, resolves
/// just the same.
///
/// # Deadlines
///
/// While it waits on a scope with a deadline, this future is what notices the deadline: it holds
/// a timer that is dropped with it, or as soon as it resolves.
///
/// # Panics
///
/// Polling it while its scope has a deadline and is not yet cancelled panics outside a tokio
/// runtime with the time driver enabled, as `tokio::time::sleep` does. Without a deadline it
/// works on any executor.
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    node: &'a Node,
    wait: Wait,
}

/// Like [`Cancelled`], but owns its scope handle, so it is `'static` and can be moved into a
/// spawned task; returned by [`Scope::cancelled_owned`].
///
/// # Cancel safety
///
/// Cancel-safe, as [`Cancelled`].
///
/// # Panics
///
/// As [`Cancelled`]: with a deadline, it must be polled inside a tokio runtime with time enabled.
#[must_use = "futures do nothing unless polled"]
pub struct CancelledOwned {
    node: Arc<Node>,
    wait: Wait,
}

impl<'a> Cancelled<'a> {
    pub(crate) fn new(scope: &'a Scope) -> Self {
        Cancelled {
            node: &scope.node,
            wait: Wait::default(),
        }
    }
}

impl CancelledOwned {
    pub(crate) fn new(scope: Scope) -> Self {
        CancelledOwned {
            node: scope.node,
            wait: Wait::default(),
        }
    }
}

impl Cancelled<'_> {
    /// Whether its scope is cancelled now (or past its deadline), that is whether a poll would
    /// resolve; registers no waker. Adapters check it before polling what they wrap, and poll
    /// this future only when that is pending. Like [`Scope::is_cancelled`], noticing a passed
    /// deadline cancels the scope that owns it, running its `on_cancel` callbacks on this
    /// thread.
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }
}

impl CancelledOwned {
    /// Whether its scope is cancelled now (or past its deadline); see
    /// [`Cancelled::is_cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }
}

impl Future for Cancelled<'_> {
    type Output = Cause;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cause> {
        let this = &mut *self;
        this.wait.poll(this.node, cx)
    }
}

impl Future for CancelledOwned {
    type Output = Cause;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cause> {
        let this = &mut *self;
        this.wait.poll(&this.node, cx)
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        self.wait.release(self.node);
    }
}

impl Drop for CancelledOwned {
    fn drop(&mut self) {
        self.wait.release(&self.node);
    }
}

impl fmt::Debug for Cancelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled").finish_non_exhaustive()
    }
}

impl fmt::Debug for CancelledOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelledOwned").finish_non_exhaustive()
    }
}

/// The state both futures share: their waker's key, and the deadline timer while waiting.
#[derive(Default)]
struct Wait {
    key: Option<usize>,
    /// Boxed so the futures stay `Unpin`; only made for scopes with a deadline.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Wait {
    fn poll(&mut self, node: &Node, cx: &mut Context<'_>) -> Poll<Cause> {
        loop {
            if let Some(cause) = node.cause() {
                return self.ready(cause);
            }
            // Register before sleeping: a cancel between the check above and here is seen by
            // `listen`/`update_waker` under the node lock (invariant 2 of `node`).
            match self.key {
                Some(key) if node.update_waker(key, cx.waker()) => {}
                // Drained by a cancellation since the last poll: look again.
                Some(_) => {
                    self.key = None;
                    continue;
                }
                None => match node.listen(Listener::Waker(cx.waker().clone())) {
                    Ok(key) => self.key = Some(key),
                    Err((_, cause)) => return self.ready(cause),
                },
            }
            let Some(deadline) = node.deadline() else {
                return Poll::Pending;
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.at)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: the next `node.cause()` observes the deadline.
        }
    }

    fn ready(&mut self, cause: Cause) -> Poll<Cause> {
        // The waker was drained by the cancellation; the key is dead (invariant 2 of `node`).
        self.key = None;
        self.sleep = None;
        Poll::Ready(cause)
    }

    fn release(&mut self, node: &Node) {
        if let Some(key) = self.key.take() {
            // Dropped here, outside the node lock.
            drop(node.unlisten(key));
        }
    }
}
