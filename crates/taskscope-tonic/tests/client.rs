//! `CallScopeLayer` over a stand-in for a channel: the budget it sends, and a call cancelled
//! with its scope. Paused time, so budgets are exact.

use std::convert::Infallible;
use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_tonic::{CallScopeLayer, remote_cause};
use tonic::{Code, Status};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

/// The `grpc-timeout` a call was sent with, through the layer.
async fn sent_timeout(request: Request<()>) -> Option<String> {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let channel = service_fn({
        let seen = seen.clone();
        move |request: Request<()>| {
            let timeout = request
                .headers()
                .get("grpc-timeout")
                .map(|value| value.to_str().unwrap().to_owned());
            *seen.lock().unwrap() = timeout;
            async { Ok::<_, Infallible>(Response::new(())) }
        }
    });
    let mut client = CallScopeLayer::new().layer(channel);
    client.ready().await.unwrap().call(request).await.unwrap();
    seen.lock().unwrap().take()
}

fn request_under(scope: Option<&Scope>, explicit: Option<&str>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(scope) = scope {
        request.extensions_mut().insert(scope.clone());
    }
    if let Some(explicit) = explicit {
        request
            .headers_mut()
            .insert("grpc-timeout", explicit.parse().unwrap());
    }
    request
}

#[tokio::test(start_paused = true)]
async fn a_call_carries_its_scopes_remaining_time_never_more_than_the_callers_own() {
    let scope = Scope::new().child_with_timeout(Duration::from_millis(750));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // 500 ms left.
    let sent = sent_timeout(request_under(Some(&scope), None)).await;
    assert_eq!(sent.as_deref(), Some("500000u"));
    // The caller's shorter timeout stays; a longer one is cut to the budget.
    let sent = sent_timeout(request_under(Some(&scope), Some("100m"))).await;
    assert_eq!(sent.as_deref(), Some("100m"));
    let sent = sent_timeout(request_under(Some(&scope), Some("5S"))).await;
    assert_eq!(sent.as_deref(), Some("500000u"));
    // No deadline: the caller's own, or none.
    let open = Scope::new();
    assert_eq!(
        sent_timeout(request_under(Some(&open), Some("5S")))
            .await
            .as_deref(),
        Some("5S")
    );
    assert_eq!(sent_timeout(request_under(Some(&open), None)).await, None);
    // No scope: untouched.
    assert_eq!(sent_timeout(request_under(None, None)).await, None);
}

/// A channel whose calls never answer; counts the calls made and says when one was dropped.
fn silent_channel(
    calls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |_request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let dropped = dropped.clone();
        async move {
            struct OnDrop(Arc<AtomicBool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _reset = OnDrop(dropped);
            pending::<()>().await;
            Ok::<_, Infallible>(Response::new(()))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_call_is_dropped_when_its_scope_is_cancelled_and_fails_with_the_cause() {
    let (calls, dropped) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut client = CallScopeLayer::new().layer(silent_channel(calls.clone(), dropped.clone()));
    let scope = Scope::builder().name("gateway").build();
    let call = tokio::spawn(
        client
            .ready()
            .await
            .unwrap()
            .call(request_under(Some(&scope), None)),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    scope.cancel(Cause::new("USER_CANCELLED"));
    let response = call.await.unwrap().unwrap();
    assert!(
        dropped.load(Ordering::SeqCst),
        "the call was dropped: its stream reset"
    );
    let status = Status::from_header_map(response.headers()).expect("a trailers-only status");
    assert_eq!(status.code(), Code::Cancelled);
    let cause = remote_cause(&status, "/taskscope.demo.v1.Inventory/Reserve");
    assert_eq!(cause.code(), "USER_CANCELLED");
    assert_eq!(
        cause.origin(),
        Some("taskscope.demo.v1.Inventory/Reserve > gateway")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_fails_with_deadline_exceeded() {
    let (calls, dropped) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut client = CallScopeLayer::new().layer(silent_channel(calls, dropped.clone()));
    let scope = Scope::new().child_with_timeout(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let response = client
        .ready()
        .await
        .unwrap()
        .call(request_under(Some(&scope), None))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert!(dropped.load(Ordering::SeqCst));
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let cause = remote_cause(&status, "/x.Y/Z");
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_call_under_a_cancelled_scope_is_not_sent() {
    let (calls, dropped) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut client = CallScopeLayer::new().layer(silent_channel(calls.clone(), dropped));
    let scope = Scope::new();
    scope.cancel(Cause::of_kind(CauseKind::Shutdown));
    let response = client
        .ready()
        .await
        .unwrap()
        .call(request_under(Some(&scope), None))
        .await
        .unwrap();
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_callers_own_shorter_timeout_fails_the_call_as_a_deadline() {
    for scope in [
        Scope::new().child_with_timeout(Duration::from_secs(5)),
        Scope::new(),
    ] {
        let (calls, dropped) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut client = CallScopeLayer::new().layer(silent_channel(calls, dropped.clone()));
        let started = tokio::time::Instant::now();
        let response = client
            .ready()
            .await
            .unwrap()
            .call(request_under(Some(&scope), Some("300m")))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(dropped.load(Ordering::SeqCst));
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            !scope.is_cancelled(),
            "the scope goes on: only the call timed out"
        );
    }
}
