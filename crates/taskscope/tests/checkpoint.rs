//! `Scope::check` (the loop checkpoint) and `Scope::drop_guard`.

use std::time::Duration;

use taskscope::{BoxError, Cause, CauseKind, Scope};

#[test]
fn check_is_ok_until_cancelled_then_the_cause() {
    let parent = Scope::new();
    let scope = parent.child();
    assert!(scope.check().is_ok());
    parent.cancel(Cause::new("DRAINING"));
    let cause = scope.check().unwrap_err();
    assert_eq!(cause.code(), "DRAINING");
    assert!(cause.ptr_eq(&scope.cause().unwrap()), "the very cause");
}

#[tokio::test(start_paused = true)]
async fn check_reports_a_passed_deadline_unobserved() {
    let scope = Scope::new().child_with_timeout(Duration::from_millis(5));
    assert!(scope.check().is_ok());
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_eq!(
        scope.check().unwrap_err().kind(),
        CauseKind::DeadlineExceeded
    );
}

#[test]
fn check_converts_into_a_boxed_error_with_question_mark() {
    fn step(scope: &Scope) -> Result<u32, BoxError> {
        scope.check()?;
        Ok(1)
    }
    let scope = Scope::new();
    assert_eq!(step(&scope).unwrap(), 1);
    scope.cancel(Cause::new("STOP"));
    let error = step(&scope).unwrap_err();
    assert_eq!(error.downcast_ref::<Cause>().unwrap().code(), "STOP");
}

#[test]
fn a_dropped_guard_cancels_with_its_cause_and_location() {
    let scope = Scope::builder().name("request").build();
    let child = scope.child();
    let line = line!() + 1;
    let guard = scope.clone().drop_guard(Cause::new("HANDLER_RETURNED"));
    assert!(!scope.is_cancelled(), "armed, not fired");
    drop(guard);
    let cause = child.cause().unwrap();
    assert_eq!(cause.code(), "HANDLER_RETURNED");
    assert_eq!(cause.origin(), Some("request"));
    let location = cause.location().unwrap();
    assert!(location.file().ends_with("checkpoint.rs"));
    assert_eq!(location.line(), line, "named where the guard was made");
}

#[test]
fn a_disarmed_guard_gives_the_scope_back_uncancelled() {
    let scope = Scope::new();
    let back = scope.clone().drop_guard(Cause::plain()).disarm();
    drop(back);
    assert!(!scope.is_cancelled());
}

#[test]
fn a_guard_on_a_cancelled_scope_keeps_the_first_cause() {
    let scope = Scope::new();
    scope.cancel(Cause::new("FIRST"));
    drop(scope.clone().drop_guard(Cause::new("SECOND")));
    assert_eq!(scope.cause().unwrap().code(), "FIRST");
}

#[test]
fn a_guard_dropped_while_unwinding_does_not_abort_on_a_panicking_callback() {
    let scope = Scope::new();
    let _ = scope.on_cancel(|_| panic!("callback"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _guard = scope.clone().drop_guard(Cause::new("UNWIND"));
        panic!("handler");
    }));
    let payload = result.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"handler"));
    assert_eq!(scope.cause().unwrap().code(), "UNWIND");
}
