//! [`CallScopeLayer`]: outgoing HTTP requests made under a scope carry its remaining time in a
//! header, and are dropped when it is cancelled.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use pin_project_lite::pin_project;
use taskscope::futures::CancelledOwned;
use taskscope::{Cause, Scope};
use tower_layer::Layer;
use tower_service::Service;

use super::deadline::parse_millis_timeout;

/// A tower [`Layer`] for an HTTP client (a hyper client, a tower `Service<Request<B>>`): a
/// request that carries a [`Scope`] in its extensions is bound to it.
///
/// - **Deadline budget.** The request carries the scope's remaining time, in whole
///   milliseconds rounded down, in the layer's header (`x-timeout-ms`, or what the upstream
///   reads; a server's [`RequestScopeLayer`](super::RequestScopeLayer) reads it with
///   `timeout_header`), unless the caller set a shorter value there itself: a budget only
///   shrinks from hop to hop.
/// - **Cancel.** When the scope is cancelled before the response's head arrives, the request's
///   future is dropped (hyper then closes the connection or resets the stream, so the server
///   sees its client go), and the call fails with [`CallError::Cancelled`] and the scope's
///   cause. A request under a scope that is already cancelled is not sent.
///
/// A request without a scope passes through untouched. For gRPC, `taskscope-tonic` has its
/// own layer, which speaks `grpc-timeout` and answers with a gRPC status.
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderName, Request, Response};
/// use taskscope::Scope;
/// use taskscope_select::tower::CallScopeLayer;
/// use tower::{ServiceExt, service_fn};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstream = service_fn(|request: Request<()>| async move {
///     let budget = request.headers()["x-timeout-ms"].to_str().unwrap().to_owned();
///     Ok::<_, std::convert::Infallible>(Response::new(budget))
/// });
/// let client = CallScopeLayer::new(HeaderName::from_static("x-timeout-ms")).layer(upstream);
/// let scope = Scope::new().child_with_timeout(Duration::from_millis(750));
/// let mut request = Request::new(());
/// request.extensions_mut().insert(scope);
/// let response = client.oneshot(request).await.unwrap();
/// assert_eq!(response.body(), "750");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CallScopeLayer {
    header: HeaderName,
}

impl CallScopeLayer {
    /// A layer that sends the budget in `header`, in milliseconds.
    pub fn new(header: HeaderName) -> Self {
        CallScopeLayer { header }
    }
}

impl<S> Layer<S> for CallScopeLayer {
    type Service = CallScope<S>;

    fn layer(&self, inner: S) -> CallScope<S> {
        CallScope {
            inner,
            header: self.header.clone(),
        }
    }
}

/// The service made by [`CallScopeLayer`].
#[derive(Clone, Debug)]
pub struct CallScope<S> {
    inner: S,
    header: HeaderName,
}

/// Why a call through [`CallScope`] failed.
#[derive(Debug)]
pub enum CallError<E> {
    /// Its scope was cancelled first: the request was dropped, or never sent.
    Cancelled(Cause),
    /// The inner service failed.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Cancelled(cause) => write!(f, "call cancelled: {cause}"),
            CallError::Inner(error) => error.fmt(f),
        }
    }
}

impl<E: Error + 'static> Error for CallError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CallError::Cancelled(cause) => Some(cause),
            CallError::Inner(error) => Some(error),
        }
    }
}

impl<S, B> Service<Request<B>> for CallScope<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(scope) = request.extensions().get::<Scope>().cloned() else {
            return CallFuture::new(Some(self.inner.call(request)), None, None);
        };
        if let Some(cause) = scope.cause() {
            return CallFuture::new(None, None, Some(cause));
        }
        if let Some(remaining) = scope.remaining() {
            let own = request
                .headers()
                .get(&self.header)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_millis_timeout(value).ok());
            if own.is_none_or(|own| own > remaining) {
                request
                    .headers_mut()
                    .insert(self.header.clone(), millis(remaining));
            }
        }
        CallFuture::new(
            Some(self.inner.call(request)),
            Some(scope.cancelled_owned()),
            None,
        )
    }
}

/// `budget` in whole milliseconds, rounded down so that it never grows, and at most twelve
/// digits, what a [`RequestScopeLayer`](super::RequestScopeLayer) reads (about 31 years).
fn millis(budget: Duration) -> HeaderValue {
    const MAX: u128 = 999_999_999_999;
    HeaderValue::from(u64::try_from(budget.as_millis().min(MAX)).expect("twelve digits fit"))
}

pin_project! {
    /// The response future of [`CallScope`].
    pub struct CallFuture<F> {
        #[pin]
        inner: Option<F>,
        cancelled: Option<CancelledOwned>,
        refused: Option<Cause>,
    }
}

impl<F> CallFuture<F> {
    fn new(inner: Option<F>, cancelled: Option<CancelledOwned>, refused: Option<Cause>) -> Self {
        CallFuture {
            inner,
            cancelled,
            refused,
        }
    }
}

impl<F, T, E> Future for CallFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(cause) = this.refused.take() {
            return Poll::Ready(Err(CallError::Cancelled(cause)));
        }
        // The scope wins a tie, as every taskscope adapter does.
        if let Some(cancelled) = this.cancelled.as_mut()
            && let Poll::Ready(cause) = Pin::new(cancelled).poll(cx)
        {
            this.inner.set(None);
            *this.cancelled = None;
            return Poll::Ready(Err(CallError::Cancelled(cause)));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(CallError::Inner),
            None => Poll::Pending,
        }
    }
}
