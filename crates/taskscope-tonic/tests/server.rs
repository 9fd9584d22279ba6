//! `AnswerLayer` over a stand-in handler: a call whose scope ends first is answered with the
//! cause at once; a handler that answers first keeps its answer. Paused time.

use std::convert::Infallible;
use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_tonic::{AnswerLayer, StatusPolicy, remote_cause};
use tonic::{Code, Status};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

fn call_under(scope: &Scope) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(scope.clone());
    request
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_ignores_its_scope_is_answered_for_at_its_deadline() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handler = service_fn({
        let dropped = dropped.clone();
        move |_request: Request<()>| {
            let dropped = dropped.clone();
            async move {
                struct OnDrop(Arc<AtomicBool>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _dropped = OnDrop(dropped);
                pending::<()>().await; // never looks at its scope
                Ok::<_, Infallible>(Response::new(()))
            }
        }
    });
    let scope = Scope::builder()
        .name("request-1")
        .timeout(Duration::from_millis(200))
        .build();
    let started = tokio::time::Instant::now();
    let response = AnswerLayer::new(StatusPolicy::default())
        .layer(handler)
        .oneshot(call_under(&scope))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert!(dropped.load(Ordering::SeqCst), "the handler was dropped");
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let cause = remote_cause(&status, "/x.Y/Z");
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.origin(), Some("x.Y/Z > request-1"));
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_answers_first_keeps_its_answer() {
    let handler = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Status::not_found("no such sku").into_http::<()>())
    });
    let scope = Scope::new();
    let response = AnswerLayer::default()
        .layer(handler)
        .oneshot(call_under(&scope))
        .await
        .unwrap();
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::NotFound);

    // A scope cancelled before the call: answered without running the handler to its end.
    scope.cancel(Cause::of_kind(CauseKind::Shutdown));
    let slow = service_fn(|_request: Request<()>| async {
        pending::<()>().await;
        Ok::<_, Infallible>(Response::new(()))
    });
    let response = AnswerLayer::default()
        .layer(slow)
        .oneshot(call_under(&scope))
        .await
        .unwrap();
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::Unavailable);
}
