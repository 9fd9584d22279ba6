//! Bridges: `to_token` (no task), `cancel_on` and `to_scope` (one task that ends with the
//! scope), and round trips that leave nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::{ScopeExt, TokenExt};
use tokio_util::sync::CancellationToken;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Lets spawned tasks run until none is left (or fails).
async fn until_no_task_is_alive() {
    for _ in 0..1000 {
        if alive_tasks() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} task(s) still alive", alive_tasks());
}

/// Set when dropped: shows that a source future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn to_token_is_cancelled_with_the_scope_and_spawns_nothing() {
    let parent = Scope::new();
    let scope = parent.child();
    let tokens: Vec<_> = (0..100).map(|_| scope.to_token()).collect();
    assert_eq!(alive_tasks(), 0, "no task per call");
    assert!(tokens.iter().all(|token| !token.is_cancelled()));
    parent.cancel(Cause::new("SHUTDOWN"));
    assert!(
        tokens.iter().all(CancellationToken::is_cancelled),
        "synchronously, when cancel returns"
    );
}

#[tokio::test]
async fn to_token_of_a_cancelled_scope_is_born_cancelled() {
    let scope = Scope::new();
    scope.cancel(Cause::plain());
    assert!(scope.to_token().is_cancelled());
}

#[tokio::test]
async fn to_token_does_not_keep_its_scope_alive() {
    let parent = Scope::new();
    let child = parent.child();
    let token = child.to_token();
    drop(child);
    assert_eq!(
        parent.live_children(),
        0,
        "the child was freed with its callback"
    );
    parent.cancel(Cause::plain());
    assert!(
        !token.is_cancelled(),
        "the freed child no longer cancels it"
    );
}

#[tokio::test]
async fn cancel_on_cancels_with_the_sources_cause() {
    let scope = Scope::builder().name("consumer").build();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let bridge = scope.cancel_on(async move {
        let _ = rx.await;
        Cause::of_kind(CauseKind::Shutdown).with_code("REBALANCE")
    });
    assert!(!scope.is_cancelled());
    tx.send(()).unwrap();
    assert!(bridge.await.unwrap(), "the source's cause won");
    let cause = scope.cause().unwrap();
    assert_eq!(cause.code(), "REBALANCE");
    assert_eq!(cause.origin(), Some("consumer"));
    assert_eq!(alive_tasks(), 0);
}

#[tokio::test]
async fn cancel_on_ends_and_drops_the_source_when_the_scope_is_cancelled_first() {
    let scope = Scope::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let bridge = scope.cancel_on(async move {
        let _flag = flag;
        std::future::pending::<Cause>().await
    });
    tokio::task::yield_now().await;
    scope.cancel(Cause::new("FIRST"));
    assert!(!bridge.await.unwrap(), "another cause won");
    assert!(dropped.load(Ordering::SeqCst), "the source was dropped");
    assert_eq!(scope.cause().unwrap().code(), "FIRST");
}

#[tokio::test]
async fn cancel_on_ends_when_the_scope_is_freed_and_never_keeps_it_alive() {
    let parent = Scope::new();
    let child = parent.child();
    let weak = child.downgrade();
    let bridge = child.cancel_on(std::future::pending());
    drop(child);
    assert!(weak.upgrade().is_none(), "the task holds the scope weakly");
    assert_eq!(parent.live_children(), 0);
    assert!(!bridge.await.unwrap());
}

#[tokio::test]
async fn cancel_on_a_cancelled_scope_ends_at_once() {
    let scope = Scope::new();
    scope.cancel(Cause::new("DONE"));
    let bridge = scope.cancel_on(async { Cause::new("LATE") });
    assert!(!bridge.await.unwrap());
    assert_eq!(scope.cause().unwrap().code(), "DONE");
}

#[tokio::test]
async fn to_scope_takes_a_plain_cause_and_to_scope_with_the_given_one() {
    let token = CancellationToken::new();
    let plain = token.to_scope();
    let given = token.to_scope_with(Cause::of_kind(CauseKind::Shutdown).with_code("DEPLOY"));
    token.cancel();
    let plain = plain.cancelled().await;
    assert_eq!(plain.kind(), CauseKind::Explicit);
    assert_eq!(plain.code(), "cancelled");
    assert!(plain.detail().unwrap().contains("CancellationToken"));
    let given = given.cancelled().await;
    assert_eq!(given.kind(), CauseKind::Shutdown);
    assert_eq!(given.code(), "DEPLOY");
    until_no_task_is_alive().await;
}

#[tokio::test]
async fn to_scope_of_a_cancelled_token_is_born_cancelled_without_a_task() {
    let token = CancellationToken::new();
    token.cancel();
    let scope = token.to_scope_with(Cause::new("ALREADY"));
    assert_eq!(scope.cause().unwrap().code(), "ALREADY");
    assert_eq!(alive_tasks(), 0);
}

#[tokio::test]
async fn a_child_token_of_the_source_cancels_the_scope_too() {
    let root = CancellationToken::new();
    let scope = root.child_token().to_scope_with(Cause::new("ROOT"));
    root.cancel();
    assert_eq!(scope.cancelled().await.code(), "ROOT");
}

#[tokio::test]
async fn round_trips_leave_no_task_and_no_scope_behind() {
    // token -> scope -> token
    let token = CancellationToken::new();
    for _ in 0..1000 {
        let scope = token.to_scope();
        let back = scope.to_token();
        let weak = scope.downgrade();
        drop((scope, back));
        assert!(weak.upgrade().is_none());
    }
    until_no_task_is_alive().await;

    // scope -> token -> scope
    let parent = Scope::new();
    for _ in 0..1000 {
        let child = parent.child();
        let token = child.to_token();
        let again = token.to_scope();
        let weak = again.downgrade();
        drop((child, token, again));
        assert!(weak.upgrade().is_none());
    }
    assert_eq!(parent.live_children(), 0);
    until_no_task_is_alive().await;

    // And a round trip still carries a cancellation through.
    let token = CancellationToken::new();
    let scope = token.to_scope_with(Cause::new("THROUGH"));
    let child = scope.child();
    let back = child.to_token();
    token.cancel();
    back.cancelled().await;
    assert_eq!(scope.cause().unwrap().code(), "THROUGH");
}

/// A source resolving while another thread cancels the scope: the bridge reports `true`
/// exactly when the source's cause is the scope's.
#[test]
fn cancel_on_agrees_with_the_scope_on_who_won_under_races() {
    let rounds: u64 = std::env::var("TASKSCOPE_STRESS_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 0..rounds {
            let scope = Scope::new();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let bridge = scope.cancel_on(async move {
                let _ = rx.await;
                Cause::new("SOURCE")
            });
            let canceller = tokio::spawn({
                let scope = scope.clone();
                async move { scope.cancel(Cause::new("OTHER")) }
            });
            if round % 2 == 0 {
                tokio::task::yield_now().await;
            }
            let _ = tx.send(());
            let other_won = canceller.await.unwrap();
            let source_won = bridge.await.unwrap();
            assert_ne!(other_won, source_won, "round {round}: exactly one wins");
            let code = scope.cause().unwrap().code().to_owned();
            assert_eq!(code == "SOURCE", source_won, "round {round}");
        }
    });
}

#[tokio::test(start_paused = true)]
async fn to_token_is_cancelled_at_the_scopes_deadline_own_or_inherited() {
    let root = Scope::new();
    let request = root.child_with_timeout(Duration::from_millis(100));
    let own = request.to_token();
    let child = request.child();
    let inherited = child.to_token();
    tokio::time::sleep(Duration::from_millis(99)).await;
    assert!(!own.is_cancelled());
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert!(
        own.is_cancelled(),
        "nobody looked at the scope: the bridge did"
    );
    assert!(inherited.is_cancelled());
    assert_eq!(request.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
    until_no_task_is_alive().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_on_ends_at_the_scopes_deadline() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(1));
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let bridge = scope.cancel_on(async move {
        let _flag = flag;
        std::future::pending::<Cause>().await
    });
    assert!(!bridge.await.unwrap(), "the deadline came first");
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(scope.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_freed_scope_with_a_deadline_leaves_no_timer_task() {
    let parent = Scope::new();
    let child = parent.child_with_timeout(Duration::from_secs(3600));
    let token = child.to_token();
    assert_eq!(alive_tasks(), 1, "one timer for the deadline");
    drop(child);
    until_no_task_is_alive().await;
    assert!(!token.is_cancelled());
}

/// Where `cause` says it was asked for: file and line.
fn site(cause: &Cause) -> (String, u32) {
    let location = cause.location().expect("a location");
    (location.file().to_owned(), location.line())
}

#[tokio::test]
async fn causes_from_bridges_name_the_callers_line() {
    // `cancel_on`: the line of the call, unless the source's cause has a location.
    let scope = Scope::new();
    let line = line!() + 1;
    let bridge = scope.cancel_on(async { Cause::new("REBALANCE") });
    assert!(bridge.await.expect("the bridge task"));
    let location = site(&scope.cause().expect("cancelled"));
    assert_eq!(location, (file!().to_owned(), line));

    let own = std::panic::Location::caller();
    let scope = Scope::new();
    let bridge = scope.cancel_on(async move { Cause::new("OWN").with_location(own) });
    assert!(bridge.await.expect("the bridge task"));
    let location = site(&scope.cause().expect("cancelled"));
    assert_eq!(location.1, own.line());

    // `to_scope_with`, cancelled later and already cancelled.
    let token = CancellationToken::new();
    let line = line!() + 1;
    let scope = token.to_scope_with(Cause::new("DEPLOY"));
    token.cancel();
    let location = site(&scope.cancelled().await);
    assert_eq!(location, (file!().to_owned(), line));
    let line = line!() + 1;
    let scope = token.to_scope();
    let location = site(&scope.cause().expect("born cancelled"));
    assert_eq!(location, (file!().to_owned(), line));
}
