//! `or_cancel`: its fairness rule and cancel safety, on paused time.

use std::future::pending;
use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::FutureExt;
use tokio_test::{assert_pending, assert_ready, task};

#[tokio::test(start_paused = true)]
async fn completes_with_the_output_when_not_cancelled() {
    let scope = Scope::new();
    let output = async { 7 }.or_cancel(&scope).await;
    assert_eq!(output.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn ends_with_the_cause_when_cancelled_while_pending() {
    let scope = Scope::new();
    let mut waiting = task::spawn(pending::<()>().or_cancel(&scope));
    assert_pending!(waiting.poll());
    scope.cancel(Cause::new("CLIENT_GONE"));
    assert!(waiting.is_woken());
    assert_eq!(
        assert_ready!(waiting.poll()).unwrap_err().code(),
        "CLIENT_GONE"
    );
}

#[tokio::test(start_paused = true)]
async fn fairness_a_cancelled_scope_beats_a_ready_output() {
    let scope = Scope::new();
    scope.cancel(Cause::plain());
    let started = std::sync::atomic::AtomicBool::new(false);
    let work = async {
        started.store(true, std::sync::atomic::Ordering::SeqCst);
        1
    };
    assert_eq!(
        work.or_cancel(&scope).await.unwrap_err().code(),
        "cancelled"
    );
    assert!(
        !started.load(std::sync::atomic::Ordering::SeqCst),
        "no work starts on a cancelled scope"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_source_stops_at_cancel_and_keeps_its_items() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..1000 {
        tx.send(i).unwrap();
    }
    let scope = Scope::new();
    let mut received = Vec::new();
    while let Ok(Some(item)) = rx.recv().or_cancel(&scope).await {
        received.push(item);
        if item == 9 {
            scope.cancel(Cause::new("STOP"));
        }
    }
    assert_eq!(received, (0..10).collect::<Vec<_>>());
    assert_eq!(
        rx.recv().await,
        Some(10),
        "the next item is still in the channel"
    );
}

#[tokio::test(start_paused = true)]
async fn a_scope_deadline_ends_it_as_a_timeout() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(2));
    let result = tokio::time::sleep(Duration::from_secs(10))
        .or_cancel(&scope)
        .await;
    assert_eq!(result.unwrap_err().kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn dropping_it_drops_the_inner_future_and_loses_nothing() {
    let scope = Scope::new();
    let guard = std::sync::Arc::new(());
    let inner = {
        let guard = guard.clone();
        async move {
            let _guard = guard;
            pending::<()>().await
        }
    };
    let mut waiting = task::spawn(inner.or_cancel(&scope));
    assert_pending!(waiting.poll());
    drop(waiting);
    assert_eq!(std::sync::Arc::strong_count(&guard), 1);
    scope.cancel(Cause::new("LATER"));
    // Level-triggered: a new adapter made after the cancel sees it at once.
    assert_eq!(
        pending::<()>().or_cancel(&scope).await.unwrap_err().code(),
        "LATER"
    );
}

#[tokio::test(start_paused = true)]
async fn works_inside_select() {
    let scope = Scope::new();
    let child = scope.child();
    scope.cancel(Cause::new("STOP"));
    let outcome = tokio::select! {
        biased;
        result = pending::<()>().or_cancel(&child) => result.unwrap_err().code().to_owned(),
        _ = tokio::time::sleep(Duration::from_secs(1)) => "timer".to_owned(),
    };
    assert_eq!(outcome, "STOP");
}

#[tokio::test(start_paused = true)]
async fn timeout_with_cause_ends_as_a_deadline_keeping_the_code() {
    let start = tokio::time::Instant::now();
    let cause = tokio::time::sleep(Duration::from_secs(30))
        .timeout_with_cause(
            Duration::from_secs(2),
            Cause::new("PAYMENT_TIMEOUT").with_detail("gateway slow"),
        )
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.code(), "PAYMENT_TIMEOUT");
    assert_eq!(cause.detail(), Some("gateway slow"));
    assert!(cause.at().is_some(), "stamped with when");
}

#[tokio::test(start_paused = true)]
async fn timeout_with_cause_returns_the_output_in_time() {
    let output = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        "charged"
    }
    .timeout_with_cause(Duration::from_secs(2), Cause::new("PAYMENT_TIMEOUT"))
    .await;
    assert_eq!(output.unwrap(), "charged");
}

#[tokio::test(start_paused = true)]
async fn timeout_with_cause_of_zero_never_polls_the_future() {
    let polled = std::sync::atomic::AtomicBool::new(false);
    let work = async {
        polled.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let cause = work
        .timeout_with_cause(Duration::ZERO, Cause::new("NO_BUDGET"))
        .await
        .unwrap_err();
    assert_eq!(cause.code(), "NO_BUDGET");
    assert!(!polled.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn timeout_with_cause_of_an_absurd_duration_is_no_timeout() {
    let mut waiting =
        task::spawn(pending::<()>().timeout_with_cause(Duration::MAX, Cause::new("NEVER")));
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
    assert_pending!(waiting.poll());
}

#[tokio::test(start_paused = true)]
async fn timeout_with_cause_keeps_the_kind_of_a_deadline_cause_it_is_given() {
    let cause = pending::<()>()
        .timeout_with_cause(
            Duration::from_millis(1),
            Cause::of_kind(CauseKind::DeadlineExceeded),
        )
        .await
        .unwrap_err();
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.code(), "deadline");
}
