//! [`RequestScopeLayer`]: a child scope per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, Request, Response};
use taskscope::Scope;
use tower_layer::Layer;
use tower_service::Service;

use super::ResponseFuture;
use super::budget::Budget;
use super::deadline::{parse_connect_timeout, parse_grpc_timeout, parse_millis_timeout};
use super::reject::InvalidTimeout;
use super::shutdown::Tracker;

/// A tower [`Layer`] that runs each request under its own child [`Scope`] of a server scope,
/// put in the request's extensions for the handler (axum: `Extension<Scope>`).
///
/// The request's scope is cancelled, with a cause saying why, when
///
/// - its **deadline** passes. A caller can only shorten its budget: the deadline is the
///   earliest of every budget the caller sent (the `grpc-timeout` header, the Connect
///   protocol's `Connect-Timeout-Ms`, and the
///   [`timeout_header`](RequestScopeLayer::timeout_header) if set), or the
///   [`default_timeout`](RequestScopeLayer::default_timeout) if it sent none, always capped by
///   the [`max_timeout`](RequestScopeLayer::max_timeout). The cause is a deadline
///   ([`CauseKind::DeadlineExceeded`](taskscope::CauseKind::DeadlineExceeded), code
///   `"deadline"`) whose [`detail`](taskscope::Cause::detail) says where the budget came
///   from: `grpc-timeout 750ms from caller`, `connect-timeout-ms 200ms from caller`,
///   `x-timeout-ms 200ms from caller` (the configured header), `server default 30s` or
///   `server maximum 60s`. On a tie the caller's header is named (the maximum only when it cut
///   a budget short), and among the caller's headers the first in the order above. Durations
///   are exact: whole seconds in `s`; otherwise below 10 s in `ms` (or `us`, `ns` if finer);
///   otherwise decimal seconds (`12.5s`);
/// - the **client goes away**: the server drops the response future before it completes
///   (hyper does so when the connection closes). The cause is [`client_gone`](super::client_gone),
///   and it reaches the scope *before* the handler's future is dropped, so tasks the handler
///   started under the scope see it rather than a "dropped" cause of their own;
/// - the **server shuts down**: the server scope's cause reaches every request's scope. With
///   [`GracefulShutdown`](super::GracefulShutdown), only after in-flight requests had their
///   grace.
///
/// A request whose timeout header cannot be read (not visible ASCII, or not the grammar of
/// [`parse_grpc_timeout`](super::parse_grpc_timeout),
/// [`parse_connect_timeout`](super::parse_connect_timeout) or
/// [`parse_millis_timeout`](super::parse_millis_timeout)) is **rejected** without calling the
/// inner service: a client that sent a deadline expects it kept, and running its request with
/// no deadline (or the default) would break that silently. A gRPC request (content type
/// `application/grpc...`) gets HTTP 200 with `grpc-status: 3` (`INVALID_ARGUMENT`) and a
/// percent-encoded `grpc-message`; any other request gets 400 Bad Request with the reason in
/// the [`taskscope-error`](super::ERROR_HEADER) header, e.g.
/// `invalid grpc-timeout header "12x": does not end in a unit (H, M, S, m, u or n)`. Either way
/// the body is empty.
///
/// Each request's scope is named `request-{n}`, `n` counting the requests this layer (and its
/// clones, and every service it made) has seen from 1, so a cause's
/// [`origin`](taskscope::Cause::origin) tells requests apart (`http/request-17`). With
/// [`request_id_header`](RequestScopeLayer::request_id_header), a request that brings a valid
/// id adds it: `http/request-17:4bf92f3577b34da6`. The path and other headers are never part of
/// the name: a client controls them, without bound.
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
/// use taskscope::{CauseKind, Scope};
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
///     let response = match report.or_cancel(&scope).await {
///         Ok(()) => Response::new("the report".to_owned()),
///         Err(cause) => {
///             let status = if cause.kind() == CauseKind::DeadlineExceeded { 504 } else { 503 };
///             Response::builder().status(status).body(cause.to_string()).unwrap()
///         }
///     };
///     Ok::<_, std::convert::Infallible>(response)
/// });
///
/// let server = Scope::builder().name("http").build();
/// let mut service = RequestScopeLayer::new(&server).layer(handler);
/// let request = Request::builder().header("grpc-timeout", "2S").body(()).unwrap();
/// let response = service.call(request).await.unwrap();
/// assert_eq!(response.status(), 504);
/// assert_eq!(response.body(), "deadline exceeded: grpc-timeout 2s from caller");
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
    request_id_header: Option<HeaderName>,
    /// The last request number given out, shared by the layer's clones and services.
    numbered: Arc<AtomicU64>,
    tracker: Option<Arc<Tracker>>,
}

impl RequestScopeLayer {
    /// Request scopes become children of `server`, and are cancelled when it is.
    pub fn new(server: &Scope) -> Self {
        RequestScopeLayer::with_tracker(server.clone(), None, Arc::default())
    }

    pub(super) fn with_tracker(
        parent: Scope,
        tracker: Option<Arc<Tracker>>,
        numbered: Arc<AtomicU64>,
    ) -> Self {
        RequestScopeLayer {
            config: Config {
                parent,
                timeout_header: None,
                default_timeout: None,
                max_timeout: None,
                request_id_header: None,
                numbered,
                tracker,
            },
        }
    }

    /// Also reads a request's timeout from header `name`, in whole milliseconds (`"1500"`),
    /// as a proxy such as Envoy sends it; the earliest of it, `grpc-timeout` and
    /// `Connect-Timeout-Ms` wins. A deadline it sets is named after it:
    /// `x-timeout-ms 200ms from caller`.
    pub fn timeout_header(mut self, name: HeaderName) -> Self {
        self.config.timeout_header = Some(name);
        self
    }

    /// The timeout of a request that brings none in its headers; a request that brings one is
    /// not given more time by it. Without it, such a request has no deadline of its own (it
    /// still inherits the server scope's). A deadline it sets is `server default 30s`.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.config.default_timeout = Some(timeout);
        self
    }

    /// An upper bound on every request's timeout, whatever its headers ask for: a client cannot
    /// hold a request open for a year by asking for it. A request with no timeout of its own
    /// gets this one. A deadline it sets (only when it is shorter than the asked or default
    /// timeout) is `server maximum 60s`.
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.config.max_timeout = Some(timeout);
        self
    }

    /// Adds the request id in header `name` (commonly `x-request-id`) to the name of the
    /// request's scope, `request-17:{id}`, so that a cause's origin can be matched with the
    /// logs of the services the request went through.
    ///
    /// An id is used only if it is 1 to 64 ASCII letters, digits, `-`, `_` or `.` (a UUID, a
    /// W3C trace id, a ULID all are); otherwise it is left out and the scope is named
    /// `request-17` as without this option. The request is never rejected for it.
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.config.request_id_header = Some(name);
        self
    }
}

impl Config {
    /// The request's budget, from its headers, the default and the cap; an error if a
    /// timeout header is present but cannot be read.
    fn budget(&self, headers: &HeaderMap) -> Result<Option<Budget>, InvalidTimeout> {
        let header = |name: &HeaderName, parse: fn(&str) -> Result<Duration, _>| {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            let value = value.to_str().map_err(|_| InvalidTimeout::not_text(name))?;
            parse(value)
                .map(|timeout| Some(Budget::from_caller(name, timeout)))
                .map_err(|error| InvalidTimeout::parse(name, error))
        };
        // In this order, which names the source on a tie (as the layer's doc says).
        let grpc = header(&GRPC_TIMEOUT, parse_grpc_timeout)?;
        let connect = header(&CONNECT_TIMEOUT_MS, parse_connect_timeout)?;
        let custom = match &self.timeout_header {
            Some(name) => header(name, parse_millis_timeout)?,
            None => None,
        };
        let asked = [grpc, connect, custom].into_iter().flatten();
        Ok(Budget::choose(
            asked,
            self.default_timeout,
            self.max_timeout,
        ))
    }

    /// The next request's scope name: `request-{n}`, and its id if it has a valid one.
    fn name(&self, headers: &HeaderMap) -> String {
        // Relaxed: the number only has to be unique, not ordered with anything else.
        let n = self.numbered.fetch_add(1, Ordering::Relaxed) + 1;
        let id = self
            .request_id_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .map(|value| value.as_bytes())
            .filter(|id| is_request_id(id));
        match id {
            // Checked to be ASCII by `is_request_id`.
            Some(id) => format!("request-{n}:{}", String::from_utf8_lossy(id)),
            None => format!("request-{n}"),
        }
    }
}

/// Whether `id` is fit for a scope name: short, and with no character that a path, a log line
/// or a metric would have to escape.
fn is_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const CONNECT_TIMEOUT_MS: HeaderName = HeaderName::from_static("connect-timeout-ms");

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
        let budget = match config.budget(request.headers()) {
            Ok(budget) => budget,
            Err(invalid) => return ResponseFuture::rejected(invalid.response(request.headers())),
        };
        let mut builder = config
            .parent
            .child_builder()
            .name(config.name(request.headers()));
        if let Some(budget) = budget {
            builder = builder
                .timeout(budget.timeout)
                .deadline_cause(budget.cause());
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
