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
async fn a_server_span_is_an_error_only_for_the_servers_own_failures() {
    // The caller gave up, or asked for what cannot be: not the server's failure.
    let cancelled = StatusPolicy::default().status(&Cause::new("USER_CANCELLED"));
    let shortage = StatusPolicy::default().status(
        &serde_json::from_value::<Cause>(serde_json::json!({
            "v": 1, "kind": "task_failed", "code": "INVENTORY_SHORTAGE",
        }))
        .unwrap(),
    );
    for (status, name) in [
        (cancelled.clone(), "CANCELLED"),
        (shortage.clone(), "FAILED_PRECONDITION"),
    ] {
        let server = span_of(RpcSpanLayer::server(), Some(status)).await;
        let attrs = attributes(&server);
        assert_eq!(attrs["rpc.response.status_code"], name);
        assert!(!attrs.contains_key("error.type"), "{attrs:?}");
        assert_eq!(server.status, SpanStatus::Unset);
    }
    // On a client span they are; a code the layer does not know is `_OTHER`.
    let client = span_of(RpcSpanLayer::client(), Some(shortage.clone())).await;
    assert!(matches!(client.status, SpanStatus::Error { .. }));
    assert_eq!(attributes(&client)["error.type"], "_OTHER");
    let knowing = RpcSpanLayer::client().known_codes(["INVENTORY_SHORTAGE"]);
    let client = span_of(knowing, Some(shortage)).await;
    assert_eq!(attributes(&client)["error.type"], "INVENTORY_SHORTAGE");
}

#[tokio::test]
async fn a_path_that_is_no_grpc_method_makes_no_new_span_name() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = tracing::subscriber::set_default(subscriber);
    let service = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Status::unimplemented("").into_http::<()>())
    });
    for path in [
        "/wp-admin/install.php",
        "/a/b/c",
        &format!("/x.Y/{}", "z".repeat(200)),
    ] {
        let request = Request::builder().uri(path).body(()).unwrap();
        RpcSpanLayer::server()
            .layer(service)
            .oneshot(request)
            .await
            .unwrap();
    }
    drop(guard);
    provider.force_flush().unwrap();
    let names: Vec<_> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .map(|span| span.name.into_owned())
        .collect();
    assert_eq!(names, ["_OTHER", "_OTHER", "_OTHER"]);
}
