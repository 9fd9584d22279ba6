//! [`RequestScopeLayer`]: a child scope per request.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, Request, Response};
use taskscope::Scope;
use tower_layer::Layer;
use tower_service::Service;

use super::ResponseFuture;
use super::deadline::{parse_grpc_timeout, parse_millis_timeout};
use super::reject::InvalidTimeout;
use super::shutdown::Tracker;

/// A tower [`Layer`] that runs each request under its own child [`Scope`] of a server scope,
/// put in the request's extensions for the handler (axum: `Extension<Scope>`).
///
/// The request's scope is cancelled, with a cause saying why, when
///
/// - its **deadline** passes: the earliest of the `grpc-timeout` header, the
///   [`timeout_header`](RequestScopeLayer::timeout_header) if set, and otherwise the
///   [`default_timeout`](RequestScopeLayer::default_timeout), capped by the
///   [`max_timeout`](RequestScopeLayer::max_timeout). The cause is a deadline
///   ([`CauseKind::DeadlineExceeded`](taskscope::CauseKind::DeadlineExceeded), code
///   `"deadline"`);
/// - the **client goes away**: the server drops the response future before it completes
///   (hyper does so when the connection closes). The cause is [`client_gone`](super::client_gone),
///   and it reaches the scope *before* the handler's future is dropped, so tasks the handler
///   started under the scope see it rather than a "dropped" cause of their own;
/// - the **server shuts down**: the server scope's cause reaches every request's scope. With
///   [`GracefulShutdown`](super::GracefulShutdown), only after in-flight requests had their
///   grace.
///
/// A request whose timeout header cannot be read (not visible ASCII, or not the grammar of
/// [`parse_grpc_timeout`](super::parse_grpc_timeout) or
/// [`parse_millis_timeout`](super::parse_millis_timeout)) is **rejected** without calling the
/// inner service: a client that sent a deadline expects it kept, and running its request with
/// no deadline (or the default) would break that silently. A gRPC request (content type
/// `application/grpc...`) gets HTTP 200 with `grpc-status: 3` (`INVALID_ARGUMENT`) and a
/// percent-encoded `grpc-message`; any other request gets 400 Bad Request with the reason in
/// the [`taskscope-error`](super::ERROR_HEADER) header, e.g.
/// `invalid grpc-timeout header "12x": does not end in a unit (H, M, S, m, u or n)`. Either way
/// the body is empty.
///
/// A request that completes leaves its scope as it is: work the handler left running under it
/// is not cancelled by the response (join it, as a [`TaskGroup`](taskscope::TaskGroup) does).
/// "Completes" means the response head is ready: a streaming body is produced after that, and
/// neither a client leaving mid-body nor [`GracefulShutdown`](super::GracefulShutdown)'s
/// in-flight count sees it. As with every scope, the deadline is noticed by whoever waits on
/// the scope (`or_cancel`, `cancelled()`, a bridged token); a handler that never looks at its
/// scope is not stopped by it.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use taskscope::{Cause, Scope};
/// use taskscope_select::FutureExt;
/// use taskscope_select::tower::RequestScopeLayer;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // A handler as tower sees it; axum's `Extension<Scope>` extractor reads the same extension.
/// let handler = tower::service_fn(|request: Request<()>| async move {
///     let scope = request.extensions().get::<Scope>().unwrap().clone();
///     let report = tokio::time::sleep(Duration::from_secs(30)); // a slow query
///     let status = match report.or_cancel(&scope).await {
///         Ok(()) => 200,
///         Err(cause) => if cause.kind() == taskscope::CauseKind::DeadlineExceeded { 504 } else { 503 },
///     };
///     Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(()).unwrap())
/// });
///
/// let server = Scope::builder().name("http").build();
/// let mut service = RequestScopeLayer::new(&server).layer(handler);
/// let request = Request::builder().header("grpc-timeout", "2S").body(()).unwrap();
/// let response = service.call(request).await.unwrap();
/// assert_eq!(response.status(), 504);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RequestScopeLayer {
    config: Config,
}

#[derive(Debug, Clone)]
pub(super) struct Config {
    parent: Scope,
    timeout_header: Option<HeaderName>,
    default_timeout: Option<Duration>,
    max_timeout: Option<Duration>,
    tracker: Option<Arc<Tracker>>,
}

impl RequestScopeLayer {
    /// Request scopes become children of `server`, and are cancelled when it is.
    pub fn new(server: &Scope) -> Self {
        RequestScopeLayer::with_tracker(server.clone(), None)
    }

    pub(super) fn with_tracker(parent: Scope, tracker: Option<Arc<Tracker>>) -> Self {
        RequestScopeLayer {
            config: Config {
                parent,
                timeout_header: None,
                default_timeout: None,
                max_timeout: None,
                tracker,
            },
        }
    }

    /// Also reads a request's timeout from header `name`, in whole milliseconds (`"1500"`),
    /// as a proxy such as Envoy sends it; the earlier of it and `grpc-timeout` wins.
    pub fn timeout_header(mut self, name: HeaderName) -> Self {
        self.config.timeout_header = Some(name);
        self
    }

    /// The timeout of a request that brings none in its headers. Without it, such a request
    /// has no deadline of its own (it still inherits the server scope's).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.config.default_timeout = Some(timeout);
        self
    }

    /// An upper bound on every request's timeout, whatever its headers ask for: a client cannot
    /// hold a request open for a year by asking for it.
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.config.max_timeout = Some(timeout);
        self
    }
}

impl Config {
    /// The request's timeout, from its headers, the default and the cap; an error if a
    /// timeout header is present but cannot be read.
    fn timeout(&self, headers: &HeaderMap) -> Result<Option<Duration>, InvalidTimeout> {
        let header = |name: &HeaderName, parse: fn(&str) -> Result<Duration, _>| {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            let value = value.to_str().map_err(|_| InvalidTimeout::not_text(name))?;
            parse(value)
                .map(Some)
                .map_err(|error| InvalidTimeout::parse(name, error))
        };
        let grpc = header(&GRPC_TIMEOUT, parse_grpc_timeout)?;
        let custom = match &self.timeout_header {
            Some(name) => header(name, parse_millis_timeout)?,
            None => None,
        };
        let asked = match (grpc, custom) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = asked.or(self.default_timeout);
        Ok(match (timeout, self.max_timeout) {
            (Some(timeout), Some(max)) => Some(timeout.min(max)),
            (None, Some(max)) => Some(max),
            (timeout, None) => timeout,
        })
    }
}

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

impl<S> Layer<S> for RequestScopeLayer {
    type Service = RequestScope<S>;

    fn layer(&self, inner: S) -> RequestScope<S> {
        RequestScope {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service made by [`RequestScopeLayer`].
#[derive(Debug, Clone)]
pub struct RequestScope<S> {
    inner: S,
    config: Arc<Config>,
}

/// `ResBody: Default` is all the layer asks of the response body, for its rejection of a bad
/// timeout header (whose reason goes in a header): axum's `Body`, tonic's `Body`,
/// `http_body_util`'s `Full`, `Empty` and boxed bodies all are `Default`, as tower-http's own
/// middlewares ask. A `From<String>` bound would put the reason in the body, but tonic's body
/// has no such conversion, so a tonic server could not use the layer at all.
impl<S, B, ResBody> Service<Request<B>> for RequestScope<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let config = &self.config;
        let timeout = match config.timeout(request.headers()) {
            Ok(timeout) => timeout,
            Err(invalid) => return ResponseFuture::rejected(invalid.response(request.headers())),
        };
        let mut builder = config.parent.child_builder().name("request");
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let scope = builder.build();
        let tracked = config
            .tracker
            .as_ref()
            .map(|tracker| tracker.track(&request));
        request.extensions_mut().insert(scope.clone());
        ResponseFuture::new(self.inner.call(request), scope, tracked)
    }
}
