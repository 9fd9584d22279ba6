//! Deadlines: inheritance, observation, timers and tasks. All on paused time.

use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};
use tokio::time::{Instant, advance};
use tokio_test::{assert_pending, assert_ready, task};

#[tokio::test(start_paused = true)]
async fn effective_deadline_is_the_earliest_ancestors() {
    let root = Scope::builder().name("root").build();
    let order = root
        .child_builder()
        .name("order")
        .timeout(Duration::from_secs(5))
        .build();
    let late = order
        .child_builder()
        .name("late")
        .timeout(Duration::from_secs(60))
        .build();
    let early = order
        .child_builder()
        .name("early")
        .timeout(Duration::from_secs(1))
        .build();
    let start = Instant::now();

    assert_eq!(root.deadline(), None);
    assert_eq!(late.deadline(), Some(start + Duration::from_secs(5)));
    assert_eq!(early.deadline(), Some(start + Duration::from_secs(1)));

    advance(Duration::from_secs(1)).await;
    assert_eq!(early.cause().unwrap().origin(), Some("root/order/early"));
    assert!(!late.is_cancelled());

    advance(Duration::from_secs(4)).await;
    let cause = late.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(
        cause.origin(),
        Some("root/order"),
        "the inherited deadline is the order's"
    );
    assert!(cause.ptr_eq(&order.cause().unwrap()));
    assert!(!root.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn remaining_counts_down_to_zero() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(10));
    assert_eq!(scope.remaining(), Some(Duration::from_secs(10)));
    advance(Duration::from_secs(4)).await;
    assert_eq!(scope.remaining(), Some(Duration::from_secs(6)));
    advance(Duration::from_secs(20)).await;
    assert_eq!(scope.remaining(), Some(Duration::ZERO));
    assert_eq!(Scope::new().remaining(), None);
}

#[tokio::test(start_paused = true)]
async fn cancelled_resolves_at_the_deadline() {
    let scope = Scope::builder()
        .name("payment")
        .timeout(Duration::from_millis(1500))
        .deadline_cause(Cause::new("PAYMENT_TIMEOUT"))
        .build();
    let start = Instant::now();
    let cause = scope.cancelled().await;
    assert_eq!(Instant::now() - start, Duration::from_millis(1500));
    assert_eq!(cause.code(), "PAYMENT_TIMEOUT");
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert!(cause.at().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_child_observes_an_inherited_deadline_for_its_owner() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let order = Scope::new().child_with_timeout(Duration::from_secs(2));
    let sibling = order.child();
    let step = order.child().child();
    let order_callbacks = Arc::new(AtomicUsize::new(0));
    let _ = order.on_cancel({
        let order_callbacks = order_callbacks.clone();
        move |_| {
            order_callbacks.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut waiting = task::spawn(step.cancelled());
    assert_pending!(waiting.poll());
    advance(Duration::from_secs(2)).await;
    assert!(waiting.is_woken());
    let cause = assert_ready!(waiting.poll());
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    // Observed through `step`, the deadline cancelled its owner and the owner's subtree: read
    // nothing from `order` or `sibling` that would observe it themselves.
    assert_eq!(order_callbacks.load(Ordering::SeqCst), 1);
    assert_eq!(order.live_children(), 0);
    assert!(format!("{sibling:?}").contains("DeadlineExceeded"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_callback_is_not_resumed_in_an_observer() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(1));
    let _ = scope.on_cancel(|_| panic!("callback bug"));
    advance(Duration::from_secs(1)).await;
    assert!(
        format!("{scope:?}").contains("cause: None"),
        "Debug does not observe"
    );
    assert!(
        scope.is_cancelled(),
        "the observer is not hit by the callback's panic"
    );
}

#[tokio::test(start_paused = true)]
async fn explicit_cancel_after_an_unobserved_deadline_loses() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(1));
    advance(Duration::from_secs(1)).await;
    assert!(!scope.cancel(Cause::new("TOO_LATE")));
    assert_eq!(scope.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn deadlines_spawn_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let root = Scope::new();
    let scopes: Vec<_> = (0..1000)
        .map(|i| root.child_with_timeout(Duration::from_secs(i + 1)))
        .collect();
    let mut waiting: Vec<_> = scopes.iter().map(|s| task::spawn(s.cancelled())).collect();
    for w in &mut waiting {
        let _ = w.poll();
    }
    assert_eq!(metrics.num_alive_tasks(), 0);
    root.cancel(Cause::new("DONE"));
    for w in &mut waiting {
        assert_eq!(assert_ready!(w.poll()).code(), "DONE");
    }
}

#[tokio::test(start_paused = true)]
async fn no_timer_is_left_once_cancelled() {
    // The only timer is the one a waiting future arms. Once the scope is cancelled it is gone:
    // a live timer would wake this task's waker when the old deadline passes.
    let scope = Scope::new().child_with_timeout(Duration::from_secs(3600));
    let mut waiting = task::spawn(scope.cancelled());
    assert_pending!(waiting.poll());
    scope.cancel(Cause::new("DONE"));
    assert!(waiting.is_woken());
    assert_eq!(assert_ready!(waiting.poll()).code(), "DONE");
    advance(Duration::from_secs(7200)).await;
    assert!(!waiting.is_woken(), "a timer outlived the cancellation");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_takes_its_timer_along() {
    let scope = Scope::new().child_with_timeout(Duration::from_secs(3600));
    let mut first = task::spawn(scope.cancelled());
    assert_pending!(first.poll());
    drop(first);
    let mut second = task::spawn(scope.cancelled());
    assert_pending!(second.poll());
    advance(Duration::from_secs(3600)).await;
    assert!(second.is_woken());
    assert_eq!(
        assert_ready!(second.poll()).kind(),
        CauseKind::DeadlineExceeded
    );
}

#[tokio::test(start_paused = true)]
async fn an_absurd_timeout_means_no_deadline() {
    let scope = Scope::new().child_with_timeout(Duration::MAX);
    assert_eq!(scope.deadline(), None);
    assert!(!scope.is_cancelled());
    let inherited = Scope::new()
        .child_with_timeout(Duration::from_secs(1))
        .child_with_timeout(Duration::MAX);
    assert!(
        inherited.deadline().is_some(),
        "an ancestor's deadline still applies"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_in_the_past_is_already_expired() {
    let past = Instant::now();
    advance(Duration::from_secs(5)).await;
    let scope = Scope::new().child_with_deadline(past);
    assert_eq!(scope.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn detached_child_does_not_inherit_the_deadline() {
    let order = Scope::new().child_with_timeout(Duration::from_secs(1));
    let compensation = order.detached_child();
    assert_eq!(compensation.deadline(), None);
    let budget = compensation.child_with_timeout(Duration::from_secs(30));
    advance(Duration::from_secs(2)).await;
    assert!(order.is_cancelled());
    assert!(!compensation.is_cancelled());
    assert!(!budget.is_cancelled());
    assert_eq!(
        budget.parent_cause().map(|c| c.kind()),
        None,
        "the budget's parent is the compensation scope, which is not cancelled"
    );
    assert_eq!(
        compensation.parent_cause().unwrap().kind(),
        CauseKind::DeadlineExceeded
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_cause_is_stamped_at_the_deadline() {
    let scope = Scope::builder()
        .name("slow")
        .timeout(Duration::from_secs(60))
        .build();
    let expected = std::time::SystemTime::now() + Duration::from_secs(60);
    advance(Duration::from_secs(600)).await;
    let at = scope.cause().unwrap().at().unwrap();
    let skew = match at.duration_since(expected) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        skew < Duration::from_secs(5),
        "at() is the deadline, not the observation"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cause_is_located_where_the_scope_was_built() {
    let line = line!() + 1;
    let scope = Scope::builder().timeout(Duration::from_secs(1)).build();
    let child = scope.child_with_timeout(Duration::from_millis(10));
    advance(Duration::from_secs(2)).await;
    let location = scope.cause().unwrap().location().cloned().unwrap();
    assert_eq!((location.file(), location.line()), (file!(), line));
    let location = child.cause().unwrap().location().cloned().unwrap();
    assert_eq!(
        location.file(),
        file!(),
        "child_with_timeout passes on its caller"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_descendant_past_an_inherited_deadline_cancels_the_deadlines_owner() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let payment = Scope::builder()
        .name("payment")
        .timeout(Duration::from_secs(1))
        .build();
    let charge = payment.child_builder().name("charge").build();
    let calls = Arc::new(AtomicUsize::new(0));
    let _watch = payment.on_cancel({
        let calls = calls.clone();
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        }
    });
    advance(Duration::from_secs(2)).await;

    assert!(
        !charge.cancel(Cause::new("USER_CANCELLED")),
        "the deadline came first"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the owner's callback ran");
    let cause = payment.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.origin(), Some("payment"));
    assert!(charge.cause().unwrap().ptr_eq(&cause));
}
