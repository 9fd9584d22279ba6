//! loom models of the races in the scope tree. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p taskscope --release --test loom`.
//!
//! The models catch the faults they are for. Each of these mutations of `src/node.rs` was tried
//! and failed the models named:
//! - a loser does not wait for the winner's latch (`latch.wait()` removed):
//!   `concurrent_cancels_agree_on_one_winner`, `root_and_inner_cancelled_at_once_by_two_threads`;
//! - a cancellation does not wait for a region below it that another one is marking:
//!   `root_and_inner_cancelled_at_once_by_two_threads`;
//! - `mark` checks for a cause and sets one in two critical sections (a removed lock, two
//!   winners): `concurrent_cancels_agree_on_one_winner`, `cause_read_races_cancel`,
//!   `parent_and_child_cancelled_at_once_are_consistent`,
//!   `root_and_inner_cancelled_at_once_by_two_threads`.
#![cfg(loom)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use loom::thread;
use taskscope::{Cause, Scope};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(5);
    }
    builder.check(f);
}

/// Concurrent cancels with different causes agree on one winner everywhere, and the loser
/// returns only once the whole subtree is cancelled.
#[test]
fn concurrent_cancels_agree_on_one_winner() {
    model(|| {
        let root = Scope::new();
        let child = root.child();
        let grandchild = child.child();
        let racer = thread::spawn({
            let root = root.clone();
            let grandchild = grandchild.clone();
            move || {
                let won = root.cancel(Cause::new("Y"));
                assert!(
                    grandchild.is_cancelled(),
                    "cancel returned before the subtree was"
                );
                won
            }
        });
        let won_x = root.cancel(Cause::new("X"));
        assert!(
            grandchild.is_cancelled(),
            "cancel returned before the subtree was"
        );
        let won_y = racer.join().unwrap();
        assert!(won_x ^ won_y);
        let winner = if won_x { "X" } else { "Y" };
        for scope in [&root, &child, &grandchild] {
            assert_eq!(scope.cause().unwrap().code(), winner);
        }
    });
}

/// A parent and its child cancelled at once: each scope's cause is the first to reach it, and
/// the outcome is one that some order of the two calls would give.
#[test]
fn parent_and_child_cancelled_at_once_are_consistent() {
    model(|| {
        let root = Scope::new();
        let child = root.child();
        let grandchild = child.child();
        let racer = thread::spawn({
            let child = child.clone();
            move || child.cancel(Cause::new("Y"))
        });
        assert!(root.cancel(Cause::new("X")));
        let child_won = racer.join().unwrap();
        let expected = if child_won { "Y" } else { "X" };
        assert_eq!(child.cause().unwrap().code(), expected);
        assert_eq!(grandchild.cause().unwrap().code(), expected);
        assert_eq!(root.cause().unwrap().code(), "X");
    });
}

/// Every scope of `scopes` is cancelled: what a `cancel` call must see when it returns.
fn all_cancelled(scopes: &[&Scope]) -> bool {
    scopes.iter().all(|scope| scope.is_cancelled())
}

/// A root and an inner scope cancelled at once by two threads with different causes: each call
/// returns only once its whole subtree is marked, also when it loses at its own scope (it waits
/// for the winner's latch) or finds a node below it taken by the other (it waits for that
/// one's); every scope below the inner one agrees with it; and the calls agree on the winners.
#[test]
fn root_and_inner_cancelled_at_once_by_two_threads() {
    model(|| {
        let root = Scope::new();
        let sibling = root.child();
        let inner = root.child();
        let below = inner.child();
        let leaf = below.child();
        let racer = thread::spawn({
            let (inner, below, leaf) = (inner.clone(), below.clone(), leaf.clone());
            move || {
                let won = inner.cancel(Cause::new("Y"));
                assert!(
                    all_cancelled(&[&inner, &below, &leaf]),
                    "the inner cancel returned before its subtree was marked"
                );
                won
            }
        });
        assert!(root.cancel(Cause::new("X")));
        assert!(
            all_cancelled(&[&root, &sibling, &inner, &below, &leaf]),
            "the root cancel returned before its subtree was marked"
        );
        let inner_won = racer.join().unwrap();
        let expected = if inner_won { "Y" } else { "X" };
        for scope in [&inner, &below, &leaf] {
            assert_eq!(scope.cause().unwrap().code(), expected);
        }
        assert_eq!(sibling.cause().unwrap().code(), "X");
    });
}

/// Children made at two levels while the root is cancelled: each is linked in time to be
/// cancelled or born cancelled, always with the root's cause, and nothing stays linked.
#[test]
fn cancel_races_child_creation_at_two_levels() {
    model(|| {
        let root = Scope::new();
        let inner = root.child();
        let maker = thread::spawn({
            let (root, inner) = (root.clone(), inner.clone());
            move || (root.child(), inner.child())
        });
        root.cancel(Cause::new("X"));
        let (top, deep) = maker.join().unwrap();
        for scope in [&inner, &top, &deep] {
            assert_eq!(scope.cause().unwrap().code(), "X");
        }
        assert_eq!(root.live_children(), 0);
        assert_eq!(inner.live_children(), 0);
    });
}

/// A child created while its parent is being cancelled ends up cancelled with the parent's
/// cause, whichever comes first.
#[test]
fn child_creation_races_parent_cancel() {
    model(|| {
        let parent = Scope::new();
        let maker = thread::spawn({
            let parent = parent.clone();
            move || parent.child()
        });
        parent.cancel(Cause::new("X"));
        let child = maker.join().unwrap();
        assert_eq!(child.cause().unwrap().code(), "X");
        assert_eq!(parent.live_children(), 0);
    });
}

/// `cause()` read while another thread cancels sees none or the final cause, never another.
#[test]
fn cause_read_races_cancel() {
    model(|| {
        let parent = Scope::new();
        let child = parent.child();
        let reader = thread::spawn({
            let child = child.clone();
            move || child.cause().map(|cause| cause.code().to_owned())
        });
        let racer = thread::spawn({
            let child = child.clone();
            move || child.cancel(Cause::new("Y"))
        });
        parent.cancel(Cause::new("X"));
        let seen = reader.join().unwrap();
        racer.join().unwrap();
        let last = child.cause().unwrap().code().to_owned();
        if let Some(seen) = seen {
            assert_eq!(seen, last);
        }
    });
}

/// An `on_cancel` callback registered and stopped while another thread cancels runs exactly
/// once or never, and `stop` says which.
#[test]
fn on_cancel_races_cancel_and_stop() {
    model(|| {
        let scope = Scope::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let registrar = thread::spawn({
            let scope = scope.clone();
            let runs = runs.clone();
            move || {
                let handle = scope.on_cancel(move |_| {
                    runs.fetch_add(1, Ordering::SeqCst);
                });
                handle.stop()
            }
        });
        scope.cancel(Cause::new("X"));
        let stopped = registrar.join().unwrap();
        let ran = runs.load(Ordering::SeqCst);
        assert_eq!(ran, if stopped { 0 } else { 1 });
    });
}

/// A waiter that registers while the scope is cancelled is woken or sees the cause: no lost
/// wake-up.
#[test]
fn cancelled_future_races_cancel() {
    one_waiter_races_cancel(false);
}

/// Two waiters (one stored inline, one in the listener slab) registering while the scope is
/// cancelled: each is woken or sees the cause.
#[test]
fn two_waiters_race_cancel() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    model(|| {
        let scope = Scope::new();
        let canceller = thread::spawn({
            let scope = scope.clone();
            move || scope.cancel(Cause::new("X"))
        });
        let woken = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let wakers = woken.clone().map(waker_counting);
        let mut first = pin!(scope.cancelled());
        let mut second = pin!(scope.cancelled());
        let polls = [
            first.as_mut().poll(&mut Context::from_waker(&wakers[0])),
            second.as_mut().poll(&mut Context::from_waker(&wakers[1])),
        ];
        canceller.join().unwrap();
        for (poll, woken) in polls.iter().zip(&woken) {
            if poll.is_pending() {
                assert_eq!(
                    woken.load(Ordering::SeqCst),
                    1,
                    "a pending waiter must be woken"
                );
            }
        }
        for (future, waker) in [(first, &wakers[0]), (second, &wakers[1])] {
            match future.poll(&mut Context::from_waker(waker)) {
                Poll::Ready(cause) => assert_eq!(cause.code(), "X"),
                Poll::Pending => panic!("a cancelled scope's waiter is ready"),
            }
        }
    });
}

fn waker_counting(count: Arc<AtomicUsize>) -> std::task::Waker {
    struct Count(Arc<AtomicUsize>);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    std::task::Waker::from(Arc::new(Count(count)))
}

/// The adapters' fast path (taskscope-select's `or_cancel`): look with `is_cancelled` (no
/// waker), poll the wrapped future, and only if that is pending poll `Cancelled` to register.
/// A cancel landing anywhere in between is seen at the look, at the registration, or wakes
/// the registered waker: never lost.
#[test]
fn look_then_register_races_cancel() {
    one_waiter_races_cancel(true);
}

/// One `Cancelled` polled while another thread cancels its scope, after a look with
/// `is_cancelled` if `look_first` (the adapters' fast path: the wrapped future is pending, so
/// both steps run): ready with the cause, or pending and woken exactly once.
fn one_waiter_races_cancel(look_first: bool) {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    model(move || {
        let scope = Scope::new();
        let canceller = thread::spawn({
            let scope = scope.clone();
            move || scope.cancel(Cause::new("X"))
        });
        let woken = Arc::new(AtomicUsize::new(0));
        let waker = waker_counting(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting = pin!(scope.cancelled());
        let looked = look_first && waiting.is_cancelled();
        let first = waiting.as_mut().poll(&mut cx);
        canceller.join().unwrap();
        if looked {
            assert!(first.is_ready(), "level-triggered: still cancelled");
        }
        match first {
            Poll::Ready(cause) => assert_eq!(cause.code(), "X"),
            Poll::Pending => {
                assert_eq!(
                    woken.load(Ordering::SeqCst),
                    1,
                    "a pending waiter must be woken"
                );
                assert!(waiting.as_mut().poll(&mut cx).is_ready());
            }
        }
    });
}
