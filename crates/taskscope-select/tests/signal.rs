//! Real signals, raised in this process, stop a supervisor: the first in order with a cause
//! naming the signal, a second at once.
//!
//! A test binary of its own, so that the signals raised here reach no other test. Its tests
//! take `SIGNALS` in turn: one test's signal must not be received by the other's listener.

#![cfg(all(unix, feature = "signal"))]

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use taskscope::{BoxError, Cause, CauseKind, ChildSpec, Scope, Supervisor, SupervisorHandle};
use taskscope_select::ScopeExt;
use taskscope_select::signal::{self, Signals, shutdown_on_signals};
use tokio::time::Instant;

static SIGNALS: Mutex<()> = Mutex::new(());

/// Runs `test` alone among this file's tests, on a current-thread runtime with paused time.
fn run_alone(test: impl Future<Output = ()>) {
    let _alone = SIGNALS.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(test);
}

/// Delivers `signal` to this process; it is pending for tokio's signal driver when this returns.
fn raise(signal: libc::c_int) {
    // SAFETY: `raise` has no memory-safety preconditions; the handler tokio installed for
    // `Signals` only records the signal.
    assert_eq!(unsafe { libc::raise(signal) }, 0, "raise failed");
}

/// Yields until `done()`, so that the signal driver and the other tasks run. The test's task
/// stays ready throughout, so paused time never auto-advances: no grace can run out meanwhile.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("still waiting for {what}");
}

type Log = Arc<Mutex<Vec<(&'static str, Cause)>>>;

/// A child that records the cause it sees when cancelled, then returns.
fn recording(name: &'static str, log: &Log) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        async move {
            let cause = scope.cancelled().await;
            log.lock().unwrap().push((name, cause));
            Ok::<(), BoxError>(())
        }
    })
}

fn stopped(handle: &SupervisorHandle) -> impl FnMut() -> bool + '_ {
    || handle.is_stopped()
}

#[test]
fn sigterm_shuts_down_in_reverse_start_order_with_its_cause() {
    run_alone(async {
        let installed_at = line!() + 1;
        let signals = Signals::new().expect("signal handlers");
        let log = Log::default();
        let app = Scope::builder().name("app").build();
        let supervisor = Supervisor::builder()
            .name("workers")
            .child(recording("a", &log))
            .child(recording("b", &log))
            .child(recording("c", &log))
            .start(&app)
            .expect("valid supervisor");
        let handle = supervisor.handle();
        let listener = tokio::spawn(shutdown_on_signals(handle.clone(), signals));

        raise(libc::SIGTERM);
        until("the supervisor to stop", stopped(&handle)).await;

        supervisor.join().await.expect("a graceful shutdown");
        listener.await.expect("listener");
        let log = log.lock().unwrap();
        let order: Vec<_> = log.iter().map(|(name, _)| *name).collect();
        assert_eq!(order, ["c", "b", "a"]);
        for (name, cause) in log.iter() {
            assert_eq!(cause.kind(), CauseKind::Shutdown, "{name}");
            assert_eq!(cause.code(), "SIGTERM", "{name}");
            assert_eq!(cause.detail(), Some("received SIGTERM"), "{name}");
        }
        let cause = handle.scope().cause().expect("cancelled");
        assert_eq!(cause.code(), "SIGTERM");
        assert_eq!(cause.origin(), Some("app/workers"));
        // Where the application installed its signal handling, not inside taskscope-select.
        let location = cause.location().expect("a location");
        assert_eq!((location.file(), location.line()), (file!(), installed_at));
    });
}

#[test]
fn second_sigterm_aborts_a_child_that_ignores_the_first() {
    const GRACE: Duration = Duration::from_secs(60 * 60);
    run_alone(async {
        let signals = Signals::new().expect("signal handlers");
        let log = Log::default();
        let told = log.clone();
        let stubborn = ChildSpec::new("stubborn", move |scope: Scope| {
            let told = told.clone();
            async move {
                let cause = scope.cancelled().await;
                told.lock().unwrap().push(("stubborn", cause));
                std::future::pending::<()>().await;
                Ok::<(), BoxError>(())
            }
        })
        .grace(GRACE);
        let app = Scope::builder().name("app").build();
        let supervisor = Supervisor::builder()
            .name("workers")
            .child(recording("a", &log))
            .child(stubborn)
            .start(&app)
            .expect("valid supervisor");
        let handle = supervisor.handle();
        let listener = tokio::spawn(shutdown_on_signals(handle.clone(), signals));
        let start = Instant::now();

        raise(libc::SIGTERM);
        // The first signal has been received, and the last child started is being stopped.
        until("'stubborn' to be told", || !log.lock().unwrap().is_empty()).await;
        assert!(!handle.is_stopped());
        raise(libc::SIGTERM);
        until("the supervisor to stop", stopped(&handle)).await;

        let error = supervisor.join().await.expect_err("a forced shutdown");
        listener.await.expect("listener");
        assert!(start.elapsed() < GRACE, "waited {:?}", start.elapsed());
        assert!(
            error.aborted().iter().any(|task| task.name() == "stubborn"),
            "{error}"
        );
        assert!(!error.is_escalation());
        let cause = error.cause().expect("a cause");
        assert_eq!(cause.code(), "SIGTERM");
        let (name, told) = &log.lock().unwrap()[0];
        assert_eq!(*name, "stubborn");
        assert_eq!(told.code(), "SIGTERM");
    });
}

#[test]
fn cancel_on_a_signal_cancels_the_scope_naming_it() {
    run_alone(async {
        let app = Scope::builder().name("app").build();
        let worker = app.child();
        let hangup = app.cancel_on(signal::hangup().expect("signal handler"));
        let terminate = app.cancel_on(signal::terminate().expect("signal handler"));
        tokio::task::yield_now().await;
        assert!(!app.is_cancelled());

        raise(libc::SIGHUP);
        until("the scope to be cancelled", || app.is_cancelled()).await;
        let cause = worker.cause().expect("cancelled");
        assert_eq!(cause.kind(), CauseKind::Shutdown);
        assert_eq!(cause.code(), "SIGHUP");
        assert_eq!(cause.origin(), Some("app"));
        assert!(hangup.await.expect("bridge"), "SIGHUP's cause won");
        assert!(
            !terminate.await.expect("bridge"),
            "the other listener ended with the scope"
        );
    });
}

#[test]
fn one_sigterm_with_a_budget_aborts_what_outlives_it() {
    const BUDGET: Duration = Duration::from_millis(200);
    run_alone(async {
        let signals = Signals::new().expect("signal handlers");
        let stubborn = ChildSpec::new("stubborn", |scope: Scope| async move {
            scope.cancelled().await;
            std::future::pending::<()>().await;
            Ok::<(), BoxError>(())
        })
        .grace(Duration::from_secs(60 * 60));
        let supervisor = Supervisor::builder()
            .child(stubborn)
            .start(&Scope::new())
            .expect("valid supervisor");
        let handle = supervisor.handle();
        let listener = tokio::spawn(shutdown_on_signals(handle.clone(), signals).within(BUDGET));
        let start = Instant::now();

        raise(libc::SIGTERM);
        until("the shutdown to start", || handle.scope().is_cancelled()).await;
        // Paused time runs on to the end of the budget, not of the grace.
        handle.stopped().await;

        let error = supervisor.join().await.expect_err("the budget ran out");
        listener.await.expect("listener");
        assert_eq!(start.elapsed(), BUDGET);
        assert_eq!(error.aborted()[0].name(), "stubborn");
        assert_eq!(error.cause().map(Cause::code), Some("SIGTERM"));
    });
}
