//! [`RpcSpanLayer`]: a `tracing` span per call, with OpenTelemetry's RPC attributes.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;

use crate::DOMAIN;
use crate::remote::code_name;
use taskscope::CauseKind;

/// Whether a span is a server's or a client's: OpenTelemetry's span kind, which decides
/// whether `CANCELLED` is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The span of a call this process serves. A `CANCELLED` call is not an error here: the
    /// caller gave up, the server did nothing wrong.
    Server,
    /// The span of a call this process makes. Every status but `OK` is an error.
    Client,
}

/// A tower [`Layer`] that runs each gRPC call in a `tracing` span named `rpc`, with the
/// attributes of OpenTelemetry's RPC semantic conventions, which `tracing-opentelemetry` turns
/// into the span's: `otel.name` (`taskscope.demo.v1.Inventory/Reserve`; `_OTHER` for a path
/// that is no plausible gRPC method, so that random paths make no new names), `otel.kind`
/// (`server` or `client`), `rpc.system` (`grpc`), `rpc.service`, `rpc.method`, and once the
/// call is answered:
///
/// - `rpc.response.status_code`: the status's name (`DEADLINE_EXCEEDED`); `CANCELLED` for a
///   call dropped unanswered (its client went away);
/// - for a failed call, `error.type` and `otel.status_code = ERROR`. On a client span every
///   status but `OK` is a failure; on a server span only the server's own: `UNKNOWN`,
///   `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` (not
///   `CANCELLED`, `NOT_FOUND`, `FAILED_PRECONDITION`...). `error.type` is the code of the
///   taskscope cause the status carries when it is a kind's default code (`deadline`,
///   `shutdown`, ...) or one of [`known_codes`](RpcSpanLayer::known_codes), `_OTHER` for any
///   other cause, else the status's name: a list that a peer cannot grow; a transport failure
///   is `transport`.
///
/// The status is read from the response's head: a unary call's failure (and a stream's that
/// fails before its first message) is a "trailers-only" response, whose head holds it. A
/// stream that fails after its first message is recorded as `OK`, and the span ends when the
/// head is sent, not the body.
#[derive(Clone, Debug)]
pub struct RpcSpanLayer {
    kind: SpanKind,
    known: Arc<HashSet<&'static str>>,
}

impl RpcSpanLayer {
    /// Spans of a server (`otel.kind = server`).
    pub fn server() -> Self {
        RpcSpanLayer {
            kind: SpanKind::Server,
            known: Arc::default(),
        }
    }

    /// Spans of a client (`otel.kind = client`).
    pub fn client() -> Self {
        RpcSpanLayer {
            kind: SpanKind::Client,
            known: Arc::default(),
        }
    }

    /// Cause codes `error.type` names as they are (`INVENTORY_SHORTAGE`); any other code a
    /// status carries, but a kind's default code, is `_OTHER`.
    pub fn known_codes(mut self, codes: impl IntoIterator<Item = &'static str>) -> Self {
        Arc::make_mut(&mut self.known).extend(codes);
        self
    }
}

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> RpcSpan<S> {
        RpcSpan {
            inner,
            kind: self.kind,
            known: self.known.clone(),
        }
    }
}

/// The service made by [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpan<S> {
    inner: S,
    kind: SpanKind,
    known: Arc<HashSet<&'static str>>,
}

impl<S, B, ResBody> Service<Request<B>> for RpcSpan<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = SpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (path, service, method) = method_of(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = path,
            otel.kind = match self.kind {
                SpanKind::Server => "server",
                SpanKind::Client => "client",
            },
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.response.status_code = Empty,
            error.type = Empty,
        );
        let inner = span.in_scope(|| self.inner.call(request));
        SpanFuture {
            inner,
            span,
            kind: self.kind,
            known: self.known.clone(),
            answered: false,
        }
    }
}

pin_project! {
    /// The response future of [`RpcSpan`]: the call, polled in its span.
    pub struct SpanFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        kind: SpanKind,
        known: Arc<HashSet<&'static str>>,
        answered: bool,
    }

    impl<F> PinnedDrop for SpanFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped unanswered: the caller went away (on a server), or gave up (on a client).
            if !*this.answered {
                this.span.record("rpc.response.status_code", code_name(Code::Cancelled));
                if *this.kind == SpanKind::Client {
                    this.span.record("error.type", "cancelled");
                    this.span.record("otel.status_code", "ERROR");
                }
            }
        }
    }
}

impl<F, ResBody, E> Future for SpanFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let output = std::task::ready!(this.inner.poll(cx));
        *this.answered = true;
        match &output {
            Ok(response) => {
                let status = Status::from_header_map(response.headers());
                record(this.span, *this.kind, status.as_ref(), this.known);
            }
            // The transport failed: no status came back.
            Err(_) => {
                this.span.record("error.type", "transport");
                this.span.record("otel.status_code", "ERROR");
            }
        }
        Poll::Ready(output)
    }
}

/// The status codes that are errors on a server span, as OpenTelemetry's gRPC conventions say:
/// the server's own failures, not the caller's (`NOT_FOUND`, `FAILED_PRECONDITION`, ...).
const SERVER_ERRORS: [Code; 6] = [
    Code::Unknown,
    Code::DeadlineExceeded,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
];

/// Records how the call ended on its span.
fn record(span: &Span, kind: SpanKind, status: Option<&Status>, known: &HashSet<&'static str>) {
    let code = status.map_or(Code::Ok, Status::code);
    span.record("rpc.response.status_code", code_name(code));
    let failed = match kind {
        SpanKind::Server => SERVER_ERRORS.contains(&code),
        SpanKind::Client => code != Code::Ok,
    };
    if !failed {
        return;
    }
    let reason = status
        .and_then(|status| status.get_details_error_info())
        .filter(|info| info.domain == DOMAIN)
        .map(|info| info.reason);
    let error_type = match reason {
        Some(reason) => bounded(&reason, known),
        None => code_name(code),
    };
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// `reason` if it is a code this program knows (a kind's default code, or one of the layer's
/// [`known_codes`](RpcSpanLayer::known_codes)), else `_OTHER`: a peer cannot grow the set.
fn bounded(reason: &str, known: &HashSet<&'static str>) -> &'static str {
    if let Some(kind) = CauseKind::ALL
        .into_iter()
        .find(|kind| kind.default_code() == reason)
    {
        return kind.default_code();
    }
    known.get(reason).copied().unwrap_or("_OTHER")
}

/// The span's name and `rpc.service`/`rpc.method`: the request's path when it is a plausible
/// gRPC method (`package.Service/Method`, at most 128 bytes of ASCII letters, digits, `.`, `_`
/// and `/`), else `_OTHER`, so that a scanner's random paths do not make new span names.
fn method_of(path: &str) -> (&str, &str, &str) {
    let path = path.trim_start_matches('/');
    let plausible = path.len() <= 128
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/'))
        && path.matches('/').count() == 1;
    match path.split_once('/') {
        Some((service, method)) if plausible && !service.is_empty() && !method.is_empty() => {
            (path, service, method)
        }
        _ => ("_OTHER", "_OTHER", "_OTHER"),
    }
}
