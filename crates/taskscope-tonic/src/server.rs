//! [`AnswerLayer`]: a call whose request scope ends before its handler answers is answered with
//! the cause, at once.

use std::task::{Context, Poll};

use http::{Request, Response};
use taskscope::Scope;
use tower_layer::Layer;
use tower_service::Service;

use crate::{CallFuture, StatusPolicy};

/// A tower [`Layer`] for a tonic server, inside
/// [`RequestScopeLayer`](taskscope_select::tower::RequestScopeLayer) (which puts each call's
/// scope in its extensions): when a call's scope is cancelled before its handler answers, the
/// handler's future is dropped and the call is answered at once with the cause's status
/// ([`StatusPolicy`]). So a deadline is `DEADLINE_EXCEEDED` with its cause, a shutdown
/// `UNAVAILABLE`, whether or not the handler looks at its scope; a handler that does answers
/// first, with its own status.
///
/// Add it after the scope layer, so that it runs inside it:
///
/// ```no_run
/// use taskscope::Scope;
/// use taskscope_select::tower::GracefulShutdown;
/// use taskscope_tonic::{AnswerLayer, StatusPolicy};
/// use std::time::Duration;
///
/// # fn server() {
/// let root = Scope::builder().name("inventory").build();
/// let shutdown = GracefulShutdown::new(&root, Duration::from_secs(2));
/// let server = tonic::transport::Server::builder()
///     .layer(shutdown.layer())
///     .layer(AnswerLayer::new(StatusPolicy::default()));
/// # drop(server);
/// # }
/// ```
///
/// tonic's server times a caller's `grpc-timeout` on its own, outside every layer, and answers
/// `CANCELLED` ("Timeout expired") when its timer fires first; the call's scope, whose deadline
/// is set a moment later from the same header, usually fires in the same tick and wins, since
/// tonic polls the call before its timer, but not always.
#[derive(Clone, Debug, Default)]
pub struct AnswerLayer {
    policy: StatusPolicy,
}

impl AnswerLayer {
    /// A layer that answers with `policy`'s statuses.
    pub fn new(policy: StatusPolicy) -> Self {
        AnswerLayer { policy }
    }
}

impl<S> Layer<S> for AnswerLayer {
    type Service = Answer<S>;

    fn layer(&self, inner: S) -> Answer<S> {
        Answer {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`AnswerLayer`].
#[derive(Clone, Debug)]
pub struct Answer<S> {
    inner: S,
    policy: StatusPolicy,
}

impl<S, B, ResBody> Service<Request<B>> for Answer<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match request.extensions().get::<Scope>().cloned() {
            Some(scope) => CallFuture::bound(self.inner.call(request), scope, None, &self.policy),
            None => CallFuture::unbound(self.inner.call(request), &self.policy),
        }
    }
}
