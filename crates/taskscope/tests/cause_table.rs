//! One test per row of the cause table in DESIGN.md (P = parent, C = child of P).

use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};

fn parent() -> Scope {
    Scope::builder().name("p").build()
}

#[test]
fn parent_cancelled_then_child_made_is_born_cancelled() {
    let p = parent();
    assert!(p.cancel(Cause::new("X")));
    let c = p.child_builder().name("c").build();
    assert!(c.is_cancelled());
    let cause = c.cause().unwrap();
    assert_eq!(cause.code(), "X");
    assert!(cause.ptr_eq(&p.cause().unwrap()));
    assert_eq!(
        p.live_children(),
        0,
        "a born-cancelled child is never linked"
    );
}

#[test]
fn parent_cancelled_then_child_cancelled_keeps_parents_cause() {
    let p = parent();
    let c = p.child();
    assert!(p.cancel(Cause::new("X")));
    assert!(!c.cancel(Cause::new("Y")));
    assert_eq!(c.cause().unwrap().code(), "X");
}

#[test]
fn child_cancelled_then_parent_cancelled_keeps_childs_cause() {
    let p = parent();
    let c = p.child();
    assert!(c.cancel(Cause::new("Y")));
    assert!(p.cancel(Cause::new("X")));
    assert_eq!(c.cause().unwrap().code(), "Y");
    assert_eq!(p.cause().unwrap().code(), "X");
}

#[test]
fn child_cancelled_plain_then_parent_cancelled_stays_plain() {
    let p = parent();
    let c = p.child();
    assert!(c.cancel(Cause::plain()));
    p.cancel(Cause::new("X"));
    let cause = c.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::Explicit);
    assert_eq!(cause.code(), "cancelled");
}

#[tokio::test(start_paused = true)]
async fn child_with_zero_timeout_is_deadline_exceeded() {
    let p = parent();
    let c = p.child_builder().name("c").timeout(Duration::ZERO).build();
    assert!(c.is_cancelled());
    let cause = c.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.code(), "deadline");
    assert_eq!(cause.origin(), Some("p/c"));
    assert!(!p.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn child_with_zero_timeout_reports_its_custom_deadline_cause() {
    let p = parent();
    let c = p
        .child_builder()
        .timeout(Duration::ZERO)
        .deadline_cause(Cause::new("T"))
        .build();
    let cause = c.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.code(), "T");
}

#[tokio::test(start_paused = true)]
async fn child_with_zero_timeout_and_cause_then_parent_cancelled_keeps_t() {
    let p = parent();
    let c = p
        .child_builder()
        .timeout(Duration::ZERO)
        .deadline_cause(Cause::new("T"))
        .build();
    p.cancel(Cause::new("X"));
    assert_eq!(c.cause().unwrap().code(), "T");
}

#[tokio::test(start_paused = true)]
async fn child_with_long_timeout_then_parent_cancelled_reports_x() {
    let p = parent();
    let c = p
        .child_builder()
        .timeout(Duration::from_secs(3600))
        .deadline_cause(Cause::new("T"))
        .build();
    p.cancel(Cause::new("X"));
    tokio::time::advance(Duration::from_secs(7200)).await;
    assert_eq!(c.cause().unwrap().code(), "X");
}

#[tokio::test(start_paused = true)]
async fn child_cancelled_plain_before_its_deadline_stays_plain() {
    let p = parent();
    let c = p.child_with_timeout(Duration::from_secs(1));
    assert!(c.cancel(Cause::plain()));
    tokio::time::advance(Duration::from_secs(2)).await;
    let cause = c.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::Explicit);
    assert_eq!(cause.code(), "cancelled");
}

#[tokio::test(start_paused = true)]
async fn deadline_passed_unobserved_then_parent_cancelled_reports_deadline() {
    let p = parent();
    let c = p.child_with_timeout(Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(2)).await;
    // Nobody looked at `c` yet: time order decides, not observation order.
    assert!(p.cancel(Cause::new("X")));
    let cause = c.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(p.cause().unwrap().code(), "X");
}

#[test]
fn detached_child_is_not_cancelled_but_reads_the_parents_cause() {
    let p = parent();
    let c = p.detached_child();
    assert!(c.parent_cause().is_none());
    p.cancel(Cause::new("X"));
    assert!(!c.is_cancelled());
    assert!(c.cause().is_none());
    assert_eq!(c.parent_cause().unwrap().code(), "X");
}

#[test]
fn cause_read_while_another_thread_cancels_is_none_or_final() {
    // A stress complement to the loom model `cause_read_races_cancel`.
    for round in 0..200 {
        let p = parent();
        let c = p.child().child();
        let reader = std::thread::spawn({
            let c = c.clone();
            move || {
                let mut seen = Vec::new();
                for _ in 0..50 {
                    seen.push(c.cause());
                }
                seen
            }
        });
        let (x, y) = (Cause::new("X"), Cause::new("Y"));
        let other = std::thread::spawn({
            let p = p.clone();
            move || p.cancel(y)
        });
        let won_x = p.cancel(x);
        let won_y = other.join().unwrap();
        assert!(won_x ^ won_y, "round {round}: exactly one cancel wins");
        let last = c.cause().unwrap();
        for cause in reader.join().unwrap().into_iter().flatten() {
            assert!(
                cause.ptr_eq(&last),
                "round {round}: saw {cause}, final {last}"
            );
        }
    }
}
