//! Supervisors: restart kinds, strategies, backoff, intensity, the restart predicate, ordered
//! shutdown, nesting and snapshots. Paused time throughout.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildSpec, ChildState, Restart, Scope, Strategy,
    Supervisor, SupervisorBuilder, SupervisorState,
};
use tokio::time::{Instant, sleep};

mod children;
use children::{Log, flaky, quick, worker};

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(quick())
        .child(worker("a", &log))
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .child(worker("c", &log))
        .start(&app)
        .unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        log.take(),
        ["a start", "b start", "c start", "b fails", "b start"]
    );

    let snapshot = supervisor.snapshot();
    assert_eq!(snapshot.path, "app/workers");
    assert_eq!(snapshot.state, SupervisorState::Running);
    let b = snapshot.child("b").unwrap();
    assert_eq!(b.state, ChildState::Running);
    assert_eq!(b.restarts, 1);
    assert_eq!(b.last_failure.as_deref(), Some("connection reset #0"));
    let cause = b.last_cause.as_ref().unwrap();
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cause.origin(), Some("app/workers/b"));
    // Restarted 1 s + 100 ms after the start, up since.
    assert_eq!(b.uptime, Some(Duration::from_millis(900)));
    assert_eq!(snapshot.child("a").unwrap().restarts, 0);
    assert_eq!(
        snapshot.child("a").unwrap().uptime,
        Some(Duration::from_secs(2))
    );

    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();
    assert_eq!(
        log.take(),
        ["c stop: shutdown", "b stop: shutdown", "a stop: shutdown"]
    );
}

/// A failure's text and cause are made when first read, not when the child fails: each read
/// sees the same text and the very same cause, stamped with the child's path and a time.
#[tokio::test(start_paused = true)]
async fn a_failure_read_later_is_made_once() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let before = std::time::SystemTime::now();
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(quick())
        .child(flaky("b", &log, 1, Duration::ZERO))
        .start(&app)
        .unwrap();
    sleep(Duration::from_secs(30)).await;
    let first = supervisor.snapshot();
    let second = supervisor.snapshot();
    let (first, second) = (first.child("b").unwrap(), second.child("b").unwrap());
    assert_eq!((first.state, first.restarts), (ChildState::Running, 1));
    assert_eq!(first.last_failure.as_deref(), Some("connection reset #0"));
    assert_eq!(second.last_failure, first.last_failure);
    let cause = first.last_cause.as_ref().unwrap();
    assert!(cause.ptr_eq(second.last_cause.as_ref().unwrap()));
    assert_eq!(cause.origin(), Some("app/workers/b"));
    assert!(cause.at().unwrap() >= before);
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn one_for_all_stops_the_others_in_reverse_order_and_restarts_all_in_order() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("pipeline")
        .strategy(Strategy::OneForAll)
        .backoff(quick())
        .child(worker("a", &log))
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .child(worker("c", &log))
        .start(&app)
        .unwrap();
    sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        log.take(),
        [
            "a start",
            "b start",
            "c start",
            "b fails",
            // The siblings are told why: b's failure.
            "c stop: task_failed",
            "a stop: task_failed",
        ]
    );
    let snapshot = supervisor.snapshot();
    for child in &snapshot.children {
        assert_eq!(child.state, ChildState::Restarting, "{snapshot}");
        assert_eq!(child.restart_in, Some(Duration::from_millis(50)));
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(log.take(), ["a start", "b start", "c start"]);
    let snapshot = supervisor.snapshot();
    assert!(snapshot.children.iter().all(|c| c.restarts == 1));
    // The siblings' last cause is b's failure, which names b.
    let a_cause = snapshot.child("a").unwrap().last_cause.clone().unwrap();
    assert_eq!(a_cause.origin(), Some("app/pipeline/b"));
    assert!(a_cause.detail().unwrap().contains("task 'b' failed"));
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_failed_child_and_those_started_after_it() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .strategy(Strategy::RestForOne)
        .backoff(quick())
        .child(worker("a", &log))
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .child(worker("c", &log))
        .child(worker("d", &log))
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        log.take(),
        [
            "a start",
            "b start",
            "c start",
            "d start",
            "b fails",
            "d stop: task_failed",
            "c stop: task_failed",
            "b start",
            "c start",
            "d start",
        ]
    );
    let snapshot = supervisor.snapshot();
    let restarts: Vec<u32> = snapshot.children.iter().map(|c| c.restarts).collect();
    assert_eq!(restarts, [0, 1, 1, 1]);
    drop(supervisor);
}

/// Starts a supervisor with one child that fails at once, `runs` times, and returns when each
/// run started, relative to the first.
async fn restart_times(backoff: Backoff, seed: u64, runs: u32) -> Vec<Duration> {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let spec = {
        let starts = starts.clone();
        ChildSpec::new("flaky", move |_scope: Scope| {
            starts.lock().unwrap().push(Instant::now());
            let run = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if run + 1 < runs {
                    Err(BoxError::from("transient"))
                } else {
                    Ok(())
                }
            }
        })
        .restart(Restart::OnFailure)
    };
    let supervisor = Supervisor::builder()
        .backoff(backoff)
        .jitter_seed(seed)
        .intensity(100, Duration::from_secs(3600))
        .child(spec)
        .start(&Scope::new())
        .unwrap();
    supervisor.join().await.unwrap();
    let starts = starts.lock().unwrap();
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_schedule_is_exact_under_a_seeded_jitter() {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .factor(2.0)
        .max(Duration::from_secs(1))
        .jitter(0.5);
    let delays = restart_times(backoff.clone(), 42, 7).await;
    let expected: Vec<Duration> = backoff.delays(42).take(6).collect();
    assert_eq!(delays, expected);
    // Each within [d/2, d] of the un-jittered schedule 100, 200, 400, 800, 1000, 1000 ms.
    let full = [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis);
    for (delay, full) in delays.iter().zip(full) {
        assert!(
            *delay <= full && *delay >= full / 2,
            "{delay:?} vs {full:?}"
        );
    }
    // The schedule for seed 42, pinned: a change here changes every user's restarts.
    let pinned: Vec<u128> = delays.iter().map(Duration::as_micros).collect();
    assert_eq!(pinned, PINNED_SEED_42);
    // Another seed, another schedule.
    assert_ne!(restart_times(backoff, 43, 7).await, delays);
}

const PINNED_SEED_42: [u128; 6] = [62_000, 184_000, 344_000, 662_000, 980_000, 565_000];

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_a_healthy_uptime() {
    let backoff =
        Backoff::exponential(Duration::from_millis(100)).reset_after(Duration::from_secs(30));
    let log = Log::default();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    // Runs 0, 1, 2 fail at once (backoff 100, 200, 400 ms); run 3 fails after 40 s (healthy:
    // back to 100 ms); run 4 runs until cancelled.
    let spec = {
        let starts = starts.clone();
        ChildSpec::new("poller", move |scope: Scope| {
            starts.lock().unwrap().push(Instant::now());
            let run = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                match run {
                    0..=2 => Err(BoxError::from("transient")),
                    3 => {
                        sleep(Duration::from_secs(40)).await;
                        Err(BoxError::from("transient"))
                    }
                    _ => {
                        scope.cancelled().await;
                        Ok(())
                    }
                }
            }
        })
    };
    let supervisor = Supervisor::builder()
        .backoff(backoff)
        .child(spec)
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_secs(60)).await;
    let starts = starts.lock().unwrap().clone();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps, [ms(100), ms(200), ms(400), ms(40_100)]);
    assert_eq!(supervisor.snapshot().children[0].restarts, 4);
    drop(log);
}

#[tokio::test(start_paused = true)]
async fn too_many_restarts_escalate_naming_the_child_and_its_last_failure() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(Backoff::none())
        .intensity(3, Duration::from_secs(10))
        .child(worker("a", &log))
        .child(flaky("b", &log, u32::MAX, Duration::from_secs(1)))
        .child(worker("c", &log))
        .start(&app)
        .unwrap();
    let handle = supervisor.handle();
    let error = supervisor.join().await.unwrap_err();
    // Four failures, one a second: the fourth would be the fourth restart within 10 s.
    let entries = log.take();
    assert_eq!(entries.iter().filter(|e| *e == "b fails").count(), 4);
    assert_eq!(
        entries[entries.len() - 2..],
        ["c stop: restart_intensity", "a stop: restart_intensity"]
    );

    assert!(error.is_escalation());
    assert_eq!(error.child().unwrap().name(), "b");
    assert_eq!(
        error.last_failure().unwrap().error().unwrap().to_string(),
        "connection reset #3"
    );
    let cause = error.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cause.code(), "restart_intensity");
    assert_eq!(cause.origin(), Some("app/workers/b"));
    assert_eq!(
        cause.detail(),
        Some("child 'b' needed more than 3 restarts within 10s; last failure: connection reset #3")
    );
    // The last failure's cause is the escalation's source.
    let source = std::error::Error::source(cause).unwrap();
    assert!(
        source.to_string().contains("connection reset #3"),
        "{source}"
    );
    assert!(
        error
            .to_string()
            .starts_with("supervisor escalated: task failed (restart_intensity)"),
        "{error}"
    );

    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, SupervisorState::Escalated);
    assert_eq!(
        snapshot.cause.as_ref().map(Cause::code),
        Some("restart_intensity")
    );
    let b = snapshot.child("b").unwrap();
    assert_eq!((b.state, b.restarts), (ChildState::Failed, 3));
    let a = snapshot.child("a").unwrap();
    assert_eq!(a.state, ChildState::Cancelled);
    assert_eq!(
        a.last_cause.as_ref().map(Cause::code),
        Some("restart_intensity")
    );
    assert!(
        app.cause().is_none(),
        "escalation stops at the supervisor's scope"
    );
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_out_in_time_do_not_escalate() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .backoff(Backoff::none())
        .intensity(2, Duration::from_secs(10))
        // A failure every 6 s: never more than 2 restarts within 10 s.
        .child(flaky("b", &log, 10, Duration::from_secs(6)))
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_secs(61)).await;
    let snapshot = supervisor.snapshot();
    assert_eq!(snapshot.state, SupervisorState::Running);
    assert_eq!(snapshot.children[0].restarts, 10);
    drop(supervisor);
}

#[derive(Debug)]
enum WatchError {
    Connection,
    Unauthorized,
}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WatchError::Connection => "connection reset",
            WatchError::Unauthorized => "401 unauthorized",
        })
    }
}

impl std::error::Error for WatchError {}

impl taskscope::TaskError for WatchError {}

#[tokio::test(start_paused = true)]
async fn the_restart_predicate_retries_what_is_recoverable_and_escalates_the_rest() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let spec = {
        let calls = calls.clone();
        let seen = seen.clone();
        ChildSpec::new("pod-watcher", move |_scope: Scope| {
            let run = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                sleep(Duration::from_secs(1)).await;
                match run {
                    0 | 1 => Err(WatchError::Connection),
                    _ => Err(WatchError::Unauthorized),
                }
            }
        })
        .restart(Restart::OnFailure)
        .restart_if(move |failure, cause| {
            seen.lock()
                .unwrap()
                .push((cause.kind(), cause.detail().unwrap().to_owned()));
            matches!(failure.error(), Some(WatchError::Connection))
        })
    };
    let app = Scope::builder().name("k8s").build();
    let supervisor = SupervisorBuilder::new()
        .name("watchers")
        .backoff(quick())
        .child(spec)
        .start(&app)
        .unwrap();
    let error = supervisor.join().await.unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                CauseKind::TaskFailed,
                "task 'pod-watcher' failed: connection reset".to_owned()
            ),
            (
                CauseKind::TaskFailed,
                "task 'pod-watcher' failed: connection reset".to_owned()
            ),
            (
                CauseKind::TaskFailed,
                "task 'pod-watcher' failed: 401 unauthorized".to_owned()
            ),
        ]
    );
    assert!(matches!(
        error.last_failure().unwrap().error(),
        Some(WatchError::Unauthorized)
    ));
    let cause = error.cause().unwrap();
    assert_eq!(cause.origin(), Some("k8s/watchers/pod-watcher"));
    assert_eq!(
        cause.detail(),
        Some("child 'pod-watcher' failed and may not be restarted: 401 unauthorized")
    );
    // The user's error is reachable from the escalation's cause.
    let failure_cause = cause.downcast_ref::<Cause>().unwrap();
    assert!(matches!(
        failure_cause.downcast_ref::<WatchError>(),
        Some(WatchError::Unauthorized)
    ));
}

#[tokio::test(start_paused = true)]
async fn an_escalation_lends_the_code_of_a_failure_that_is_a_cause() {
    let spec = ChildSpec::new("payments", |_scope: Scope| async {
        Err::<(), _>(Cause::new("UNAUTHORIZED").with_detail("token expired"))
    })
    .restart_if(|_failure, cause| cause.code() != "UNAUTHORIZED");
    let supervisor = SupervisorBuilder::new()
        .child(spec)
        .start(&Scope::new())
        .unwrap();
    let error = supervisor.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "UNAUTHORIZED");
    assert_eq!(error.cause().unwrap().kind(), CauseKind::TaskFailed);
}

#[tokio::test(start_paused = true)]
async fn restart_kinds_decide_what_comes_back() {
    let runs = |name: &'static str, counter: &Arc<AtomicU32>, result: Result<(), &'static str>| {
        let counter = counter.clone();
        ChildSpec::new(name, move |_scope: Scope| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move { result.map_err(BoxError::from) }
        })
    };
    let always_ok = Arc::new(AtomicU32::new(0));
    let on_failure_ok = Arc::new(AtomicU32::new(0));
    let never_err = Arc::new(AtomicU32::new(0));
    let supervisor = Supervisor::builder()
        .backoff(Backoff::exponential(Duration::from_secs(1)).factor(1.0))
        .intensity(1000, Duration::from_secs(1))
        .child(runs("always", &always_ok, Ok(())).restart(Restart::Always))
        .child(runs("on-failure", &on_failure_ok, Ok(())).restart(Restart::OnFailure))
        .child(runs("never", &never_err, Err("boom")).restart(Restart::Never))
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_millis(10_500)).await;
    assert_eq!(always_ok.load(Ordering::Relaxed), 11);
    assert_eq!(on_failure_ok.load(Ordering::Relaxed), 1);
    assert_eq!(never_err.load(Ordering::Relaxed), 1);
    let snapshot = supervisor.snapshot();
    assert_eq!(
        snapshot.child("on-failure").unwrap().state,
        ChildState::Completed
    );
    let never = snapshot.child("never").unwrap();
    assert_eq!(never.state, ChildState::Failed);
    assert_eq!(never.last_failure.as_deref(), Some("boom"));
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_whose_children_are_all_done_ends_by_itself() {
    let supervisor = Supervisor::builder()
        .child(ChildSpec::new("once", |_scope: Scope| async { Ok(()) }).restart(Restart::OnFailure))
        .child(
            ChildSpec::new("oops", |_scope: Scope| async { Err(BoxError::from("bad")) })
                .restart(Restart::Never),
        )
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    supervisor.join().await.unwrap();
    assert!(handle.is_stopped());
    assert_eq!(handle.snapshot().state, SupervisorState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_child_stopped_by_its_own_scope_is_never_restarted() {
    let calls = Arc::new(AtomicU32::new(0));
    let spec = {
        let calls = calls.clone();
        ChildSpec::new("quitter", move |scope: Scope| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                scope.cancel(Cause::new("DONE_HERE"));
                Err(BoxError::from(scope.cause().unwrap()))
            }
        })
    };
    let supervisor = Supervisor::builder()
        .child(spec)
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    supervisor.join().await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let child = handle.snapshot().children[0].clone();
    assert_eq!(child.state, ChildState::Cancelled);
    assert_eq!(
        child.last_cause.map(|c| c.code().to_owned()).as_deref(),
        Some("DONE_HERE")
    );
    assert_eq!(child.last_failure, None);
}

#[tokio::test(start_paused = true)]
async fn panics_are_failures_and_are_restarted() {
    let calls = Arc::new(AtomicU32::new(0));
    let spec = {
        let calls = calls.clone();
        ChildSpec::new("fragile", move |scope: Scope| {
            let run = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if run == 0 {
                    panic!("boom");
                }
                scope.cancelled().await;
                Ok::<(), BoxError>(())
            }
        })
    };
    let supervisor = Supervisor::builder()
        .backoff(Backoff::none())
        .child(spec)
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    let child = supervisor.snapshot().children[0].clone();
    assert_eq!((child.state, child.restarts), (ChildState::Running, 1));
    assert_eq!(child.last_failure.as_deref(), Some("panicked: boom"));
    assert_eq!(child.last_cause.unwrap().kind(), CauseKind::TaskPanicked);
    drop(supervisor);
}

/// A child that ignores cancellation for `delay` after it sees it.
fn slow(name: &'static str, log: &Log, delay: Duration, grace: Duration) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        async move {
            let started = Instant::now();
            let _guard = DropLog(log.clone(), name, started);
            let cause = scope.cancelled().await;
            log.push(format!(
                "{name} sees {} at {:?}",
                cause.code(),
                started.elapsed()
            ));
            sleep(delay).await;
            Ok(())
        }
    })
    .grace(grace)
}

/// Logs when a child's future is dropped (returned or aborted), with the time since it started.
struct DropLog(Log, &'static str, Instant);

impl Drop for DropLog {
    fn drop(&mut self) {
        self.0
            .push(format!("{} gone at {:?}", self.1, self.2.elapsed()));
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_children_in_reverse_order_each_within_its_grace() {
    let log = Log::default();
    let secs = Duration::from_secs;
    let supervisor = Supervisor::builder()
        .child(slow("a", &log, secs(1), secs(5)))
        .child(slow("b", &log, secs(60), secs(2)))
        .child(slow("c", &log, secs(1), secs(5)))
        .start(&Scope::new())
        .unwrap();
    sleep(secs(10)).await;
    let shutdown = Cause::of_kind(CauseKind::Shutdown).with_detail("deploy");
    assert!(supervisor.shutdown(shutdown));
    let handle = supervisor.handle();
    sleep(secs(2)).await;
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, SupervisorState::ShuttingDown);
    let states: Vec<ChildState> = snapshot.children.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            ChildState::Running,
            ChildState::Stopping,
            ChildState::Cancelled
        ]
    );

    let error = supervisor.join().await.unwrap_err();
    assert_eq!(
        log.take(),
        [
            "c sees shutdown at 10s",
            "c gone at 11s",
            "b sees shutdown at 11s",
            // b ignores it: aborted after its 2 s grace.
            "b gone at 13s",
            "a sees shutdown at 13s",
            "a gone at 14s",
        ]
    );
    assert!(!error.is_escalation());
    let aborted: Vec<&str> = error.aborted().iter().map(|c| c.name()).collect();
    assert_eq!(aborted, ["b"]);
    assert_eq!(error.cause().unwrap().detail(), Some("deploy"));
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, SupervisorState::Stopped);
    let states: Vec<ChildState> = snapshot.children.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            ChildState::Cancelled,
            ChildState::Aborted,
            ChildState::Cancelled
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn every_child_sees_the_very_shutdown_cause() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut builder = Supervisor::builder();
    for name in ["a", "b", "c"] {
        let seen = seen.clone();
        builder = builder.child(ChildSpec::new(name, move |scope: Scope| {
            let seen = seen.clone();
            async move {
                let cause = scope.cancelled().await;
                seen.lock().unwrap().push(cause.clone());
                // Echoing the cause is a cancellation, not a failure.
                Err(BoxError::from(cause))
            }
        }));
    }
    let app = Scope::new();
    let supervisor = builder.start(&app).unwrap();
    let handle = supervisor.handle();
    app.cancel(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM"));
    supervisor.join().await.unwrap();
    let snapshot = handle.snapshot();
    let cause = snapshot.cause.clone().unwrap();
    assert_eq!(cause.code(), "SIGTERM");
    // Set on an unnamed scope, it takes the supervisor's path as its origin.
    assert_eq!(cause.origin(), Some("supervisor"));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|c| c.ptr_eq(&cause)));
    assert!(
        snapshot
            .children
            .iter()
            .all(|c| c.state == ChildState::Cancelled && c.last_failure.is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn abort_skips_the_graces() {
    let log = Log::default();
    let hour = Duration::from_secs(3600);
    let supervisor = Supervisor::builder()
        .child(slow("a", &log, hour, hour))
        .child(slow("b", &log, hour, hour))
        .start(&Scope::new())
        .unwrap();
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown).with_code("SIGINT"));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(log.take(), ["b sees SIGINT at 0ns"]);
    supervisor.abort();
    let error = supervisor.join().await.unwrap_err();
    // a is aborted before it is polled again: it never gets to see the cause.
    assert_eq!(log.take(), ["b gone at 1s", "a gone at 1s"]);
    let mut aborted: Vec<&str> = error.aborted().iter().map(|c| c.name()).collect();
    aborted.sort_unstable();
    assert_eq!(aborted, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn nested_supervisors_shut_down_their_own_children_first() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let payments = Supervisor::builder()
        .name("payments")
        .strategy(Strategy::OneForAll)
        .child(worker("gateway", &log))
        .child(worker("poller", &log));
    let supervisor = Supervisor::builder()
        .name("root")
        .child(worker("db", &log))
        .child(ChildSpec::supervisor(payments))
        .child(worker("http", &log))
        .start(&app)
        .unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        log.take(),
        ["db start", "gateway start", "poller start", "http start"]
    );

    let snapshot = supervisor.snapshot();
    let nested = snapshot
        .child("payments")
        .unwrap()
        .supervisor
        .as_ref()
        .unwrap();
    assert_eq!(nested.path, "app/root/payments");
    assert_eq!(nested.strategy, Strategy::OneForAll);
    assert_eq!(nested.children.len(), 2);
    assert_eq!(
        snapshot.to_string(),
        "app/root (one-for-one): running\n\
         \x20 db: running, up 5s\n\
         \x20 payments: running, up 5s\n\
         \x20   app/root/payments (one-for-all): running\n\
         \x20     gateway: running, up 5s\n\
         \x20     poller: running, up 5s\n\
         \x20 http: running, up 5s\n"
    );

    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();
    assert_eq!(
        log.take(),
        [
            "http stop: shutdown",
            "poller stop: shutdown",
            "gateway stop: shutdown",
            "db stop: shutdown",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_nested_supervisor_that_escalates_is_restarted_by_its_parent() {
    let log = Log::default();
    let nested = Supervisor::builder()
        .name("inner")
        .backoff(Backoff::none())
        .intensity(1, Duration::from_secs(60))
        .child(flaky("flaky", &log, 2, Duration::from_secs(1)));
    let supervisor = Supervisor::builder()
        .backoff(quick())
        .child(ChildSpec::supervisor(nested))
        .start(&Scope::new())
        .unwrap();
    // flaky fails at 1 s (restarted), at 2 s (too many: `inner` escalates), `inner` restarts
    // after 100 ms with a fresh intensity, and flaky (whose runs go on counting) stays up.
    sleep(Duration::from_secs(5)).await;
    let snapshot = supervisor.snapshot();
    let inner = snapshot.child("inner").unwrap();
    assert_eq!((inner.state, inner.restarts), (ChildState::Running, 1));
    assert!(
        inner
            .last_failure
            .as_deref()
            .unwrap()
            .starts_with("supervisor escalated: task failed (restart_intensity)")
    );
    let flaky = &inner.supervisor.as_ref().unwrap().children[0];
    assert_eq!((flaky.state, flaky.restarts), (ChildState::Running, 0));
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_supervisor_shuts_it_down() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .child(worker("b", &log))
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    drop(supervisor);
    handle.stopped().await;
    assert_eq!(
        log.take(),
        ["a start", "b start", "b stop: dropped", "a stop: dropped"]
    );
}

#[tokio::test(start_paused = true)]
async fn starting_in_a_cancelled_scope_starts_nothing() {
    let log = Log::default();
    let app = Scope::new();
    app.cancel(Cause::plain());
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .start(&app)
        .unwrap();
    supervisor.join().await.unwrap();
    assert!(log.take().is_empty());
}

#[tokio::test]
async fn bad_configurations_are_clear_errors() {
    let ok = || ChildSpec::new("a", |_scope: Scope| async { Ok::<(), BoxError>(()) });
    let error = |builder: taskscope::SupervisorBuilder| {
        builder.start(&Scope::new()).unwrap_err().to_string()
    };
    assert_eq!(
        error(Supervisor::builder().child(ok()).child(ok())),
        "invalid supervisor configuration: two children are named 'a'"
    );
    assert_eq!(
        error(Supervisor::builder().child(ChildSpec::new("", |_scope: Scope| async { Ok(()) }))),
        "invalid supervisor configuration: a child needs a name"
    );
    assert_eq!(
        error(Supervisor::builder().intensity(3, Duration::ZERO)),
        "invalid supervisor configuration: the restart intensity window must be longer than zero"
    );
    assert_eq!(
        error(Supervisor::builder().backoff(Backoff::default().factor(f64::NAN))),
        "invalid supervisor configuration: backoff factor must be finite and at least 1, got NaN"
    );
    assert_eq!(
        error(Supervisor::builder().backoff(Backoff::default().factor(0.5))),
        "invalid supervisor configuration: backoff factor must be finite and at least 1, got 0.5"
    );
    assert_eq!(
        error(Supervisor::builder().backoff(Backoff::default().jitter(1.5))),
        "invalid supervisor configuration: backoff jitter must be between 0 and 1, got 1.5"
    );
    let nested = Supervisor::builder().name("inner").child(ok()).child(ok());
    assert_eq!(
        error(Supervisor::builder().child(ChildSpec::supervisor(nested))),
        "invalid supervisor configuration: two children are named 'a'"
    );
}

#[test]
fn absurd_backoffs_stay_in_range() {
    let delays: Vec<Duration> = Backoff::exponential(Duration::from_secs(1))
        .factor(1e300)
        .max(Duration::MAX)
        .delays(1)
        .take(4)
        .collect();
    assert_eq!(delays[0], Duration::from_secs(1));
    assert!(delays[1..].iter().all(|d| *d <= Duration::MAX));
    let capped: Vec<Duration> = Backoff::exponential(Duration::MAX)
        .max(Duration::from_secs(5))
        .delays(1)
        .take(2)
        .collect();
    assert_eq!(capped, [Duration::from_secs(5); 2]);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_children_start_and_shut_down() {
    let started = Arc::new(AtomicU32::new(0));
    let mut builder = Supervisor::builder();
    for i in 0..10_000 {
        let started = started.clone();
        builder = builder.child(ChildSpec::new(format!("w{i}"), move |scope: Scope| {
            started.fetch_add(1, Ordering::Relaxed);
            async move {
                scope.cancelled().await;
                Ok(())
            }
        }));
    }
    let app = Scope::new();
    let supervisor = builder.start(&app).unwrap();
    assert_eq!(started.load(Ordering::Relaxed), 10_000);
    app.cancel(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();
    assert_eq!(app.live_children(), 0);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn snapshots_serialize() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .name("workers")
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .jitter_seed(1)
        .backoff(quick())
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_millis(1050)).await;
    let json = serde_json::to_value(supervisor.snapshot()).unwrap();
    assert_eq!(json["path"], "workers");
    assert_eq!(json["strategy"], "one_for_one");
    assert_eq!(json["state"], "running");
    let child = &json["children"][0];
    assert_eq!(child["name"], "b");
    assert_eq!(child["state"], "restarting");
    assert_eq!(child["restart_in_ms"], 50);
    assert_eq!(child["uptime_ms"], serde_json::Value::Null);
    assert_eq!(child["last_failure"], "connection reset #0");
    assert_eq!(child["last_cause"]["kind"], "task_failed");
    assert_eq!(child["last_cause"]["origin"], "workers/b");
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn a_nested_supervisor_out_of_grace_is_forced_and_names_what_it_aborted() {
    let log = Log::default();
    let hour = Duration::from_secs(3600);
    let payments = Supervisor::builder()
        .name("payments")
        .child(worker("gateway", &log))
        .child(slow("ledger", &log, hour, hour));
    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("root")
        .child(worker("db", &log))
        .child(ChildSpec::supervisor(payments).grace(Duration::from_secs(2)))
        .start(&app)
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    log.take();
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    let handle = supervisor.handle();
    let error = supervisor.join().await.unwrap_err();
    assert_eq!(
        log.take(),
        [
            "ledger sees shutdown at 1s",
            // The nested supervisor's 2 s grace is over: forced, it aborts ledger at once and
            // never asks gateway nicely.
            "ledger gone at 3s",
            "db stop: shutdown",
        ]
    );
    let aborted: Vec<&str> = error.aborted().iter().map(|c| c.name()).collect();
    assert_eq!(aborted, ["payments/ledger", "payments/gateway"]);
    let snapshot = handle.snapshot();
    let nested = snapshot
        .child("payments")
        .unwrap()
        .supervisor
        .as_ref()
        .unwrap();
    assert_eq!(nested.state, SupervisorState::Stopped);
    let ledger = nested.child("ledger").unwrap();
    assert_eq!(ledger.state, ChildState::Aborted);
}

#[tokio::test(start_paused = true)]
async fn one_builder_started_twice_makes_two_independent_trees() {
    let log = Log::default();
    let builder = Supervisor::builder().child(ChildSpec::supervisor(
        Supervisor::builder().name("inner").child(worker("w", &log)),
    ));
    let one = builder.clone().name("one").start(&Scope::new()).unwrap();
    let two = builder.name("two").start(&Scope::new()).unwrap();
    let nested = |s: &Supervisor| {
        s.snapshot().children[0]
            .supervisor
            .as_ref()
            .unwrap()
            .path
            .clone()
    };
    assert_eq!(nested(&one), "one/inner");
    assert_eq!(nested(&two), "two/inner");
}

#[tokio::test(start_paused = true)]
async fn children_never_started_are_not_shown_running() {
    let log = Log::default();
    let app = Scope::new();
    app.cancel(Cause::plain());
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .start(&app)
        .unwrap();
    let handle = supervisor.handle();
    supervisor.join().await.unwrap();
    assert_eq!(handle.snapshot().children[0].state, ChildState::Cancelled);
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct Rude;

impl std::fmt::Display for Rude {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("no Display for you")
    }
}

impl taskscope::TaskError for Rude {}

#[tokio::test(start_paused = true)]
async fn an_error_whose_display_panics_does_not_take_the_supervisor_down() {
    let calls = Arc::new(AtomicU32::new(0));
    let spec = {
        let calls = calls.clone();
        ChildSpec::new("rude", move |scope: Scope| {
            let run = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if run == 0 {
                    return Err(Rude);
                }
                scope.cancelled().await;
                Ok(())
            }
        })
    };
    let supervisor = SupervisorBuilder::new()
        .backoff(Backoff::none())
        .child(spec)
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    let child = supervisor.snapshot().children[0].clone();
    assert_eq!((child.state, child.restarts), (ChildState::Running, 1));
    assert_eq!(
        child.last_failure.as_deref(),
        Some("(its Display panicked)")
    );
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();
}

#[test]
fn no_backoff_stays_none_however_many_restarts() {
    assert!(
        Backoff::none()
            .delays(3)
            .take(5_000)
            .all(|delay| delay.is_zero())
    );
}

/// Runs `test` in a paused current-thread runtime on a thread with the default 2 MiB stack.
fn on_a_2mib_stack<F>(test: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(test())
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A supervisor named `leaf` with the one child `work`, under `depth` supervisors each the only
/// child of the next.
fn nested_supervisors(depth: usize, work: ChildSpec) -> taskscope::SupervisorBuilder {
    let mut builder = Supervisor::builder().name("leaf").child(work);
    for level in 0..depth {
        builder = Supervisor::builder()
            .name(format!("level-{level}"))
            .child(ChildSpec::supervisor(builder));
    }
    builder
}

/// Supervisors nest 10 000 deep on a default 2 MiB thread stack: built, started, shut down,
/// joined and dropped without recursion (each nested supervisor starts its children in its own
/// task).
#[test]
fn supervisors_nest_ten_thousand_deep() {
    on_a_2mib_stack(|| async {
        let started = Arc::new(AtomicUsize::new(0));
        let work = ChildSpec::new("work", {
            let started = started.clone();
            move |scope: Scope| {
                started.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = scope.cancelled().await;
                    Ok(())
                }
            }
        });
        let root = Scope::builder().name("app").build();
        let supervisor = nested_supervisors(10_000, work).start(&root).unwrap();
        // Paused time advances only once every level has started.
        sleep(Duration::from_millis(1)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "the leaf's child runs");
        supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
        supervisor.join().await.unwrap();
    });
}

/// A snapshot of supervisors nested 1 000 deep is built and printed without recursion, on a
/// 2 MiB stack.
#[test]
fn a_deep_tree_snapshots_and_prints() {
    const DEPTH: usize = 1_000;
    on_a_2mib_stack(|| async {
        let work = ChildSpec::new("work", |scope: Scope| async move {
            let _ = scope.cancelled().await;
            Ok(())
        });
        let supervisor = nested_supervisors(DEPTH, work)
            .start(&Scope::new())
            .unwrap();
        sleep(Duration::from_millis(1)).await;
        let snapshot = supervisor.snapshot();
        let mut depth = 0;
        let mut level = &snapshot;
        while let Some(nested) = level.children[0].supervisor.as_deref() {
            depth += 1;
            level = nested;
        }
        assert_eq!(depth, DEPTH);
        let text = snapshot.to_string();
        assert_eq!(text.lines().count(), 2 * (DEPTH + 1));
        assert!(
            text.lines()
                .last()
                .unwrap()
                .trim_start()
                .starts_with("work: running")
        );
        drop(snapshot);
        supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
        supervisor.join().await.unwrap();
    });
}

/// Nested supervisors escalating one into the other: each level's cause quotes at most the
/// start of the failure below it, so the detail stays short however deep the chain; the whole
/// chain is in the causes' sources.
#[tokio::test(start_paused = true)]
async fn an_escalation_chain_quotes_only_the_start_of_each_failure() {
    let mut builder = Supervisor::builder()
        .name("leaf")
        .intensity(0, Duration::from_secs(1))
        .child(
            ChildSpec::new("work", |_| async { Err("x".repeat(1_000).into()) })
                .restart(Restart::Never),
        );
    for level in 0..20 {
        builder = Supervisor::builder()
            .name(format!("l{level}"))
            .intensity(0, Duration::from_secs(1))
            .child(ChildSpec::supervisor(builder).restart_if(|_, _| false));
    }
    let error = builder
        .start(&Scope::new())
        .unwrap()
        .join()
        .await
        .unwrap_err();
    let detail = error.cause().unwrap().detail().unwrap().to_owned();
    assert!(detail.len() < 600, "{} bytes: {detail}", detail.len());
    assert!(detail.ends_with('…'), "{detail}");
}

/// A child that logs its start and its cause, then takes `linger` to return.
fn slow_to_stop(name: &'static str, log: &Log, linger: Duration) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        async move {
            log.push(format!("{name} start"));
            let cause = scope.cancelled().await;
            log.push(format!("{name} stop: {}", cause.code()));
            sleep(linger).await;
            log.push(format!("{name} returned"));
            Ok(())
        }
    })
    .grace(Duration::from_secs(5))
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_within_a_budget_clips_the_graces_and_names_what_it_aborted() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(slow_to_stop("a", &log, Duration::from_secs(1)))
        .child(slow_to_stop("b", &log, Duration::from_secs(60)))
        .child(slow_to_stop("c", &log, Duration::from_secs(2)))
        .start(&Scope::builder().name("app").build())
        .expect("valid supervisor");
    tokio::task::yield_now().await;
    let handle = supervisor.handle();
    let started = Instant::now();
    let cause = Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM");
    assert!(handle.shutdown_within(cause, Duration::from_secs(7)));
    // A second budget only shortens it: this one is later and changes nothing.
    assert!(!handle.shutdown_within(Cause::new("LATER"), Duration::from_secs(60)));

    let error = supervisor.join().await.expect_err("b was aborted");
    // c stops in 2 s; b gets the 5 s left of the budget, not its 5 s grace plus a's turn;
    // a, never asked in time, is aborted with b when the budget is spent.
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    let mut aborted: Vec<&str> = error.aborted().iter().map(|task| task.name()).collect();
    aborted.sort_unstable();
    assert_eq!(aborted, ["a", "b"]);
    assert_eq!(error.cause().map(Cause::code), Some("SIGTERM"));
    let log = log.take();
    assert!(log.contains(&"c returned".to_owned()), "{log:?}");
    assert!(!log.iter().any(|entry| entry == "b returned"), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_within_a_budget_that_suffices_ends_like_a_shutdown() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(slow_to_stop("a", &log, Duration::from_secs(1)))
        .child(slow_to_stop("b", &log, Duration::from_secs(1)))
        .start(&Scope::new())
        .expect("valid supervisor");
    tokio::task::yield_now().await;
    let started = Instant::now();
    supervisor.shutdown_within(Cause::of_kind(CauseKind::Shutdown), Duration::from_secs(30));
    supervisor
        .join()
        .await
        .expect("every child stopped in time");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        log.take(),
        [
            "a start",
            "b start",
            "b stop: shutdown",
            "b returned",
            "a stop: shutdown",
            "a returned"
        ]
    );
}
