//! [`RpcSpanLayer`]: a `tracing` span per call, with OpenTelemetry's RPC attributes.

use std::future::Future;
use std::pin::Pin;
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
/// into the span's: `otel.name` (`taskscope.demo.v1.Inventory/Reserve`), `otel.kind`
/// (`server` or `client`), `rpc.system` (`grpc`), `rpc.service`, `rpc.method`, and once the
/// call is answered:
///
/// - `rpc.response.status_code`: the status's name (`DEADLINE_EXCEEDED`);
/// - `error.type`, for a failed call: the code of the taskscope cause the status carries (its
///   `ErrorInfo`'s reason: `deadline`, `INVENTORY_SHORTAGE`), else the status's name. Cause
///   codes are few and stable by design, so the attribute keeps a low cardinality; a reason that
///   is not a well-formed code counts as `_OTHER`;
/// - `otel.status_code`: `ERROR` for a failed call, except `CANCELLED` on a server span.
///
/// The status is read from the response's head: a unary call's failure (and a stream's that
/// fails before its first message) is a "trailers-only" response, whose head holds it; a head
/// without a status is a call that succeeded (`OK`).
#[derive(Clone, Copy, Debug)]
pub struct RpcSpanLayer {
    kind: SpanKind,
}

impl RpcSpanLayer {
    /// Spans of a server (`otel.kind = server`).
    pub fn server() -> Self {
        RpcSpanLayer {
            kind: SpanKind::Server,
        }
    }

    /// Spans of a client (`otel.kind = client`).
    pub fn client() -> Self {
        RpcSpanLayer {
            kind: SpanKind::Client,
        }
    }
}

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> RpcSpan<S> {
        RpcSpan {
            inner,
            kind: self.kind,
        }
    }
}

/// The service made by [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpan<S> {
    inner: S,
    kind: SpanKind,
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
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
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
        let status = match &output {
            Ok(response) => Status::from_header_map(response.headers()),
            // The transport failed: no answer came.
            Err(_) => Some(Status::unavailable("transport error")),
        };
        record(this.span, *this.kind, status.as_ref());
        Poll::Ready(output)
    }
}

/// Records how the call ended on its span.
fn record(span: &Span, kind: SpanKind, status: Option<&Status>) {
    let code = status.map_or(Code::Ok, Status::code);
    span.record("rpc.response.status_code", code_name(code));
    if code == Code::Ok {
        return;
    }
    let error_type = status
        .and_then(|status| status.get_details_error_info())
        .filter(|info| info.domain == DOMAIN)
        .map(|info| {
            if crate::remote::is_code(&info.reason) {
                info.reason
            } else {
                "_OTHER".to_owned()
            }
        })
        .unwrap_or_else(|| code_name(code).to_owned());
    span.record("error.type", error_type.as_str());
    if !(kind == SpanKind::Server && code == Code::Cancelled) {
        span.record("otel.status_code", "ERROR");
    }
}
