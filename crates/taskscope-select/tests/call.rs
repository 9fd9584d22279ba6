//! `CallScopeLayer` (HTTP) over a stand-in upstream: the budget it sends, and a request dropped
//! with its scope. Paused time, so budgets are exact.

#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, Request, Response};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::tower::{CallError, CallScopeLayer};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

const BUDGET: HeaderName = HeaderName::from_static("x-timeout-ms");

fn request(scope: Option<&Scope>, own: Option<&str>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(scope) = scope {
        request.extensions_mut().insert(scope.clone());
    }
    if let Some(own) = own {
        request.headers_mut().insert(BUDGET, own.parse().unwrap());
    }
    request
}

/// The budget header the upstream got.
async fn sent(request: Request<()>) -> Option<String> {
    let upstream = service_fn(|request: Request<()>| async move {
        let budget = request
            .headers()
            .get(BUDGET)
            .map(|value| value.to_str().unwrap().to_owned());
        Ok::<_, Infallible>(Response::new(budget))
    });
    let response = CallScopeLayer::new(BUDGET)
        .layer(upstream)
        .oneshot(request)
        .await
        .unwrap();
    response.into_body()
}

#[tokio::test(start_paused = true)]
async fn a_request_carries_its_scopes_remaining_time_never_more_than_its_own() {
    let scope = Scope::new().child_with_timeout(Duration::from_millis(750));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        sent(request(Some(&scope), None)).await.as_deref(),
        Some("500")
    );
    assert_eq!(
        sent(request(Some(&scope), Some("100"))).await.as_deref(),
        Some("100")
    );
    assert_eq!(
        sent(request(Some(&scope), Some("9000"))).await.as_deref(),
        Some("500")
    );
    assert_eq!(sent(request(Some(&Scope::new()), None)).await, None);
    assert_eq!(
        sent(request(None, Some("9000"))).await.as_deref(),
        Some("9000")
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_is_dropped_when_its_scope_is_cancelled_or_not_sent_at_all() {
    let (calls, dropped) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let upstream = service_fn({
        let (calls, dropped) = (calls.clone(), dropped.clone());
        move |_request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let dropped = dropped.clone();
            async move {
                struct OnDrop(Arc<AtomicBool>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _closed = OnDrop(dropped);
                pending::<()>().await;
                Ok::<_, Infallible>(Response::new(()))
            }
        }
    });
    let client = CallScopeLayer::new(BUDGET).layer(upstream);
    let scope = Scope::builder().name("gateway").build();
    let call = tokio::spawn(client.clone().oneshot(request(Some(&scope), None)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    scope.cancel(Cause::new("USER_CANCELLED"));
    let Err(CallError::Cancelled(cause)) = call.await.unwrap() else {
        panic!("the call should fail with its scope's cause");
    };
    assert_eq!(cause.code(), "USER_CANCELLED");
    assert!(dropped.load(Ordering::SeqCst), "the request was dropped");

    let closed = Scope::new();
    closed.cancel(Cause::of_kind(CauseKind::Shutdown));
    let Err(CallError::Cancelled(cause)) = client.oneshot(request(Some(&closed), None)).await
    else {
        panic!("a request under a cancelled scope fails");
    };
    assert_eq!(cause.kind(), CauseKind::Shutdown);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second request was not sent"
    );
}
