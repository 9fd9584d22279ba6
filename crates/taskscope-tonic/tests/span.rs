//! `RpcSpanLayer`'s spans as OpenTelemetry exports them (through `tracing-opentelemetry`, to an
//! in-memory exporter): the RPC attributes, `error.type` from the cause's code, and `CANCELLED`
//! not an error on a server span.

use std::collections::HashMap;
use std::convert::Infallible;

use http::{Request, Response};
use opentelemetry::trace::{SpanKind, Status as SpanStatus, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use taskscope::{Cause, CauseKind};
use taskscope_tonic::{RpcSpanLayer, StatusPolicy};
use tonic::Status;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// The span a call to a service answering `answer` left, through `layer`.
async fn span_of(layer: RpcSpanLayer, answer: Option<Status>) -> SpanData {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = tracing::subscriber::set_default(subscriber);
    let service = service_fn(move |_request: Request<()>| {
        let answer = answer.clone();
        async move {
            Ok::<_, Infallible>(match answer {
                Some(status) => status.into_http(),
                None => Response::new(()),
            })
        }
    });
    let request = Request::builder()
        .uri("http://inventory/taskscope.demo.v1.Inventory/Reserve")
        .body(())
        .unwrap();
    layer.layer(service).oneshot(request).await.unwrap();
    drop(guard);
    provider.force_flush().unwrap();
    let mut spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    spans.remove(0)
}

fn attributes(span: &SpanData) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

#[tokio::test]
async fn a_call_answered_ok_has_the_rpc_attributes_and_no_error() {
    let span = span_of(RpcSpanLayer::server(), None).await;
    assert_eq!(span.name, "taskscope.demo.v1.Inventory/Reserve");
    assert_eq!(span.span_kind, SpanKind::Server);
    let attrs = attributes(&span);
    assert_eq!(attrs["rpc.system"], "grpc");
    assert_eq!(attrs["rpc.service"], "taskscope.demo.v1.Inventory");
    assert_eq!(attrs["rpc.method"], "Reserve");
    assert_eq!(attrs["rpc.response.status_code"], "OK");
    assert!(!attrs.contains_key("error.type"));
    assert_eq!(span.status, SpanStatus::Unset);
}

#[tokio::test]
async fn a_failed_call_has_its_causes_code_as_error_type() {
    let deadline = StatusPolicy::default().status(&Cause::of_kind(CauseKind::DeadlineExceeded));
    let span = span_of(RpcSpanLayer::server(), Some(deadline)).await;
    let attrs = attributes(&span);
    assert_eq!(attrs["rpc.response.status_code"], "DEADLINE_EXCEEDED");
    assert_eq!(attrs["error.type"], "deadline");
    assert!(matches!(span.status, SpanStatus::Error { .. }));

    // A status without a taskscope cause: its name.
    let span = span_of(
        RpcSpanLayer::client(),
        Some(Status::not_found("no such sku")),
    )
    .await;
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(attributes(&span)["error.type"], "NOT_FOUND");
}

#[tokio::test]
async fn cancelled_is_an_error_on_a_client_span_only() {
    let cancelled = StatusPolicy::default().status(&Cause::new("USER_CANCELLED"));
    let server = span_of(RpcSpanLayer::server(), Some(cancelled.clone())).await;
    assert_eq!(attributes(&server)["rpc.response.status_code"], "CANCELLED");
    assert_eq!(attributes(&server)["error.type"], "USER_CANCELLED");
    assert_eq!(server.status, SpanStatus::Unset);
    let client = span_of(RpcSpanLayer::client(), Some(cancelled)).await;
    assert!(matches!(client.status, SpanStatus::Error { .. }));
}
