//! `Scope::on_cancel`: Go's `AfterFunc`, with a deregistration handle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};

fn counter() -> (Arc<AtomicUsize>, impl Fn() + Send + Sync + Clone + 'static) {
    let count = Arc::new(AtomicUsize::new(0));
    let bump = {
        let count = count.clone();
        move || {
            count.fetch_add(1, Ordering::SeqCst);
        }
    };
    (count, bump)
}

#[test]
fn runs_once_with_the_scopes_cause() {
    let parent = Scope::new();
    let child = parent.child();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _handle = child.on_cancel({
        let seen = seen.clone();
        move |cause| seen.lock().unwrap().push(cause.code().to_owned())
    });
    parent.cancel(Cause::new("X"));
    parent.cancel(Cause::new("Y"));
    child.cancel(Cause::new("Z"));
    assert_eq!(*seen.lock().unwrap(), ["X"]);
}

#[test]
fn runs_at_once_when_already_cancelled() {
    let scope = Scope::new();
    scope.cancel(Cause::new("X"));
    let (count, bump) = counter();
    let handle = scope.on_cancel(move |_| bump());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(!handle.stop());
}

#[test]
fn stop_deregisters_and_releases_the_capture() {
    let scope = Scope::new();
    let captured = Arc::new(());
    let (count, bump) = counter();
    let handle = scope.on_cancel({
        let captured = captured.clone();
        move |_| {
            let _keep = &captured;
            bump();
        }
    });
    assert_eq!(Arc::strong_count(&captured), 2);
    assert!(handle.stop());
    assert_eq!(Arc::strong_count(&captured), 1, "stop drops the callback");
    scope.cancel(Cause::plain());
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[test]
fn dropping_the_handle_keeps_the_callback() {
    let scope = Scope::new();
    let (count, bump) = counter();
    drop(scope.on_cancel(move |_| bump()));
    scope.cancel(Cause::plain());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn callbacks_run_after_the_whole_subtree_is_cancelled() {
    let root = Scope::new();
    let a = root.child();
    let leaf = a.child().child();
    let checked = Arc::new(AtomicUsize::new(0));
    for scope in [&root, &a] {
        let leaf = leaf.clone();
        let checked = checked.clone();
        let _ = scope.on_cancel(move |_| {
            assert!(leaf.is_cancelled());
            checked.fetch_add(1, Ordering::SeqCst);
        });
    }
    root.cancel(Cause::plain());
    assert_eq!(
        checked.load(Ordering::SeqCst),
        2,
        "every callback had run when cancel returned"
    );
}

#[test]
fn callbacks_may_call_back_into_scopes() {
    let root = Scope::new();
    let other = Scope::new();
    let _ = root.on_cancel({
        let root = root.clone();
        let other = other.clone();
        move |cause| {
            // Same tree and another tree: no lock is held while callbacks run.
            assert!(root.child().is_cancelled());
            assert!(!root.cancel(Cause::plain()));
            other.cancel(cause.clone());
        }
    });
    root.cancel(Cause::new("CASCADE"));
    assert_eq!(other.cause().unwrap().code(), "CASCADE");
}

#[test]
fn a_panicking_callback_does_not_stop_the_others() {
    let root = Scope::new();
    let child = root.child();
    let (count, bump) = counter();
    let _ = root.on_cancel(|_| panic!("callback bug"));
    let _ = child.on_cancel({
        let bump = bump.clone();
        move |_| bump()
    });
    let _ = root.on_cancel(move |_| bump());
    let result = std::panic::catch_unwind(|| root.cancel(Cause::plain()));
    assert!(result.is_err(), "the panic is resumed in the canceller");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(child.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_fires_callbacks_when_observed() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(1));
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let _ = scope.on_cancel({
        let kinds = kinds.clone();
        move |cause| kinds.lock().unwrap().push(cause.kind())
    });
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        kinds.lock().unwrap().is_empty(),
        "nothing runs in the background"
    );
    assert!(scope.is_cancelled());
    assert_eq!(*kinds.lock().unwrap(), [CauseKind::DeadlineExceeded]);
}

#[test]
fn a_dropped_scope_drops_its_callbacks_unrun() {
    let captured = Arc::new(());
    {
        let scope = Scope::new();
        let captured = captured.clone();
        let handle = scope.on_cancel(move |_| drop(captured));
        // The handle keeps the scope alive; without it the callback goes with the scope.
        drop(handle);
    }
    assert_eq!(Arc::strong_count(&captured), 1);
}
