//! [`ResponseFuture`]: a request's response, and what its drop means.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use taskscope::{Cause, CauseKind, Scope};

use super::shutdown::Tracked;

/// The [`code`](Cause::code) of the cause a request's scope gets when the client goes away.
pub const CLIENT_GONE: &str = "client_gone";

/// The cause a request's scope gets when the client goes away before the response: kind
/// [`Dropped`](CauseKind::Dropped), code [`CLIENT_GONE`].
///
/// ```
/// use taskscope::CauseKind;
/// use taskscope_select::tower::{CLIENT_GONE, client_gone};
///
/// let cause = client_gone();
/// assert_eq!(cause.kind(), CauseKind::Dropped);
/// assert_eq!(cause.code(), CLIENT_GONE);
/// ```
pub fn client_gone() -> Cause {
    Cause::of_kind(CauseKind::Dropped)
        .with_code(CLIENT_GONE)
        .with_detail("the client went away before the response")
}

pin_project! {
    /// The response future of [`RequestScope`](super::RequestScope).
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it completes is what "the client went away" means to a server: the
    /// request's scope is cancelled with [`client_gone`] first, then the inner future is
    /// dropped. A middleware *outside* this layer that drops it (a timeout) is seen the same
    /// way, so put this layer outermost. Dropped while a panic unwinds, it cancels the scope
    /// with a [`TaskPanicked`](CauseKind::TaskPanicked) cause instead. A request rejected
    /// before it reached the inner service (a timeout header that cannot be read) has no scope
    /// to cancel.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // Declared before `inner`, so dropped first: the cancel reaches the scope before the
        // handler's own drop guards (a `TaskGroup`'s "dropped" cause) would.
        guard: Guard,
        #[pin]
        inner: Inner<F>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<F> {
        /// The inner service's response.
        Called { #[pin] future: F },
        /// The layer's own answer, without a body yet; `None` once returned.
        Rejected { response: Option<Response<()>> },
    }
}

/// Cancels the request's scope if dropped before the response; ends its tracking either way.
#[derive(Debug)]
struct Guard {
    /// `Some` until the response is ready.
    scope: Option<Scope>,
    tracked: Option<Tracked>,
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, scope: Scope, tracked: Option<Tracked>) -> Self {
        ResponseFuture {
            guard: Guard {
                scope: Some(scope),
                tracked,
            },
            inner: Inner::Called { future: inner },
        }
    }

    /// Answers with `response` (and an empty body) without calling the inner service.
    pub(super) fn rejected(response: Response<()>) -> Self {
        ResponseFuture {
            guard: Guard {
                scope: None,
                tracked: None,
            },
            inner: Inner::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = match this.inner.project() {
            InnerProj::Called { future } => std::task::ready!(future.poll(cx)),
            InnerProj::Rejected { response } => {
                let response = response.take().expect("polled after completion");
                Ok(response.map(|()| B::default()))
            }
        };
        this.guard.scope = None;
        this.guard.tracked = None;
        Poll::Ready(output)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(scope) = self.scope.take() else {
            return;
        };
        // Dropped while unwinding: a panic in the handler (or above it), not a client leaving.
        let cause = if std::thread::panicking() {
            Cause::of_kind(CauseKind::TaskPanicked)
                .with_detail("the request's response future was dropped by a panic")
        } else {
            client_gone()
        };
        // A drop guard, not `cancel`: it never resumes a callback's panic while unwinding,
        // which would abort the process.
        drop(scope.drop_guard(cause));
    }
}
