//! Supervisor children changed at runtime (start, terminate, restart, delete), the option to
//! stay up with no child, and the stream of changes. Paused time throughout.

use std::time::Duration;

use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildRequestError, ChildSpec, ChildState, Restart, Scope,
    Strategy, Supervisor, SupervisorState,
};
use tokio::time::{Instant, sleep};

mod children;
use children::{Log, flaky, quick, worker};

/// A child that fails every `after`, unless it is cancelled first.
fn failing(name: &'static str, log: &Log, after: Duration) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        async move {
            log.push(format!("{name} start"));
            tokio::select! {
                cause = scope.cancelled() => {
                    log.push(format!("{name} stop: {}", cause.code()));
                    Ok(())
                }
                () = sleep(after) => {
                    log.push(format!("{name} fails"));
                    Err(BoxError::from("connection reset"))
                }
            }
        }
    })
}

/// A child that takes `linger` to return once cancelled.
fn lingering(name: &'static str, log: &Log, linger: Duration) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        async move {
            log.push(format!("{name} start"));
            let cause = scope.cancelled().await;
            sleep(linger).await;
            log.push(format!("{name} stop: {}", cause.code()));
            Ok(())
        }
    })
}

fn shutdown() -> Cause {
    Cause::of_kind(CauseKind::Shutdown).with_code("deploy")
}

#[tokio::test(start_paused = true)]
async fn a_started_child_restarts_under_the_strategy_and_counts_towards_intensity() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("workers")
        .strategy(Strategy::RestForOne)
        .backoff(quick())
        .intensity(2, Duration::from_secs(3600))
        .child(worker("a", &log))
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .start(&app)
        .unwrap();
    supervisor
        .start_child(failing("c", &log, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(log.take(), ["a start", "b start", "c start"]);
    let c = supervisor.snapshot();
    assert_eq!(c.children.len(), 3);
    assert_eq!(c.child("c").unwrap().state, ChildState::Running);

    // b fails: rest-for-one restarts c, started after it, too.
    sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        log.take(),
        ["b fails", "c stop: task_failed", "b start", "c start"]
    );
    assert_eq!(supervisor.snapshot().child("c").unwrap().restarts, 1);

    // c's own failures count towards the same intensity: the second restart is one too many.
    let error = supervisor.join().await.unwrap_err();
    assert!(error.is_escalation());
    assert_eq!(error.child().unwrap().name(), "c");
    let cause = error.cause().unwrap();
    assert_eq!(cause.code(), "restart_intensity");
    assert_eq!(cause.origin(), Some("app/workers/c"));
}

#[tokio::test(start_paused = true)]
async fn a_started_child_stops_first_in_an_ordered_shutdown() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .child(worker("b", &log))
        .start(&Scope::new())
        .unwrap();
    let starter = supervisor.starter();
    tokio::spawn(async move { starter.start_child(worker("c", &log.clone())).await })
        .await
        .unwrap()
        .unwrap();
    let names: Vec<String> = supervisor
        .snapshot()
        .children
        .into_iter()
        .map(|child| child.name)
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    supervisor.shutdown(shutdown());
    supervisor.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_order_puts_started_children_last_started_first() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .child(worker("b", &log))
        .start(&Scope::new())
        .unwrap();
    supervisor.start_child(worker("c", &log)).await.unwrap();
    supervisor.start_child(worker("d", &log)).await.unwrap();
    supervisor.shutdown(shutdown());
    supervisor.join().await.unwrap();
    assert_eq!(
        log.take(),
        [
            "a start",
            "b start",
            "c start",
            "d start",
            "d stop: deploy",
            "c stop: deploy",
            "b stop: deploy",
            "a stop: deploy",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn terminate_restart_and_delete() {
    let log = Log::default();
    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("workers")
        .child(worker("a", &log))
        .child(lingering("b", &log, Duration::from_secs(1)).grace(Duration::from_secs(2)))
        .child(worker("c", &log))
        .start(&app)
        .unwrap();
    sleep(Duration::from_millis(10)).await;
    log.take();

    // Terminated with its grace: b takes 1 s to stop, and the answer comes then.
    let started = Instant::now();
    supervisor.terminate_child("b").await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(log.take(), ["b stop: terminate"]);
    let snapshot = supervisor.snapshot();
    let b = snapshot.child("b").unwrap();
    assert_eq!(b.state, ChildState::Cancelled);
    let cause = b.last_cause.as_ref().unwrap();
    assert_eq!(cause.kind(), CauseKind::Shutdown);
    assert_eq!(cause.origin(), Some("app/workers"));
    assert!(
        cause
            .location()
            .unwrap()
            .file()
            .ends_with("supervisor_dynamic.rs")
    );
    // Not restarted, although it is `Restart::Always`.
    sleep(Duration::from_secs(60)).await;
    assert!(log.take().is_empty());
    // Terminating it again changes nothing.
    supervisor.terminate_child("b").await.unwrap();

    // Wrong states and unknown names are clear errors.
    let error = supervisor.restart_child("a").await.unwrap_err();
    assert!(matches!(
        &error,
        ChildRequestError::NotTerminated { name, state: ChildState::Running } if name == "a"
    ));
    assert_eq!(error.to_string(), "child 'a' is running, not terminated");
    let error = supervisor.delete_child("c").await.unwrap_err();
    assert!(matches!(error, ChildRequestError::NotTerminated { .. }));
    for error in [
        supervisor.terminate_child("z").await.unwrap_err(),
        supervisor.restart_child("z").await.unwrap_err(),
        supervisor.delete_child("z").await.unwrap_err(),
    ] {
        assert!(matches!(&error, ChildRequestError::NotFound { name } if name == "z"));
        assert_eq!(error.to_string(), "no child named 'z'");
    }

    // Restarted: a run more, in its place.
    supervisor.restart_child("b").await.unwrap();
    assert_eq!(log.take(), ["b start"]);
    let b = supervisor.snapshot().child("b").unwrap().clone();
    assert_eq!((b.state, b.restarts), (ChildState::Running, 1));

    // Deleted: gone, its name free again, the others in order.
    supervisor.terminate_child("b").await.unwrap();
    supervisor.delete_child("b").await.unwrap();
    let names: Vec<String> = supervisor
        .snapshot()
        .children
        .into_iter()
        .map(|child| child.name)
        .collect();
    assert_eq!(names, ["a", "c"]);
    supervisor.start_child(worker("b", &log)).await.unwrap();
    log.take();
    supervisor.shutdown(shutdown());
    supervisor.join().await.unwrap();
    assert_eq!(
        log.take(),
        ["b stop: deploy", "c stop: deploy", "a stop: deploy"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_terminated_child_that_ignores_its_cause_is_aborted_after_its_grace() {
    let stubborn = ChildSpec::new("stubborn", |_scope: Scope| async {
        sleep(Duration::from_secs(3600)).await;
        Ok::<(), BoxError>(())
    })
    .grace(Duration::from_secs(2));
    let supervisor = Supervisor::builder()
        .run_until_shutdown()
        .child(stubborn)
        .start(&Scope::new())
        .unwrap();
    let started = Instant::now();
    supervisor.terminate_child("stubborn").await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let snapshot = supervisor.snapshot();
    assert_eq!(
        snapshot.child("stubborn").unwrap().state,
        ChildState::Aborted
    );
    assert_eq!(snapshot.state, SupervisorState::Running);
    supervisor.shutdown(shutdown());
    // Aborted by a termination, not by the shutdown: `join` is `Ok`.
    supervisor.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_child_backing_off_is_terminated_at_once() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .backoff(Backoff::exponential(Duration::from_secs(10)))
        .run_until_shutdown()
        .child(flaky("b", &log, 5, Duration::ZERO))
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        supervisor.snapshot().child("b").unwrap().state,
        ChildState::Restarting
    );
    let started = Instant::now();
    supervisor.terminate_child("b").await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(log.take(), ["b start", "b fails"]);
    let b = supervisor.snapshot().child("b").unwrap().clone();
    assert_eq!(b.state, ChildState::Cancelled);
    assert_eq!(b.last_cause.unwrap().code(), "terminate");
    supervisor.restart_child("b").await.unwrap();
    assert_eq!(log.take()[0], "b start");
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn a_terminated_child_is_not_brought_back_by_a_siblings_restart() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .strategy(Strategy::OneForAll)
        .backoff(quick())
        .child(worker("a", &log))
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .child(worker("c", &log))
        .start(&Scope::new())
        .unwrap();
    supervisor.terminate_child("c").await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        log.take(),
        [
            "a start",
            "b start",
            "c start",
            "c stop: terminate",
            "b fails",
            "a stop: task_failed",
            "a start",
            "b start",
        ]
    );
    let states: Vec<ChildState> = supervisor
        .snapshot()
        .children
        .iter()
        .map(|child| child.state)
        .collect();
    assert_eq!(
        states,
        [
            ChildState::Running,
            ChildState::Running,
            ChildState::Cancelled
        ]
    );
    drop(supervisor);
}

/// A deleted child's place closes up: the strategy and the timers follow the children after it.
#[tokio::test(start_paused = true)]
async fn after_a_delete_restarts_reach_the_right_children() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .strategy(Strategy::RestForOne)
        .backoff(quick())
        .child(flaky("a", &log, 1, Duration::from_secs(5)))
        .child(worker("b", &log))
        .child(worker("c", &log))
        .child(flaky("d", &log, 1, Duration::from_secs(2)))
        .start(&Scope::new())
        .unwrap();
    supervisor.terminate_child("b").await.unwrap();
    supervisor.delete_child("b").await.unwrap();
    log.take();
    // d fails at 2 s: alone, as the last child.
    sleep(Duration::from_millis(2500)).await;
    assert_eq!(log.take(), ["d fails", "d start"]);
    // a fails at 5 s: c and d restart with it, b is gone.
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        log.take(),
        [
            "a fails",
            "d stop: task_failed",
            "c stop: task_failed",
            "a start",
            "c start",
            "d start",
        ]
    );
    let restarts: Vec<(String, u32)> = supervisor
        .snapshot()
        .children
        .into_iter()
        .map(|child| (child.name, child.restarts))
        .collect();
    assert_eq!(
        restarts,
        [("a".into(), 1), ("c".into(), 1), ("d".into(), 2)]
    );
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_or_nameless_child_is_a_clear_error() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .start(&Scope::new())
        .unwrap();
    let error = supervisor.start_child(worker("a", &log)).await.unwrap_err();
    assert!(matches!(&error, ChildRequestError::AlreadyPresent { name } if name == "a"));
    assert_eq!(error.to_string(), "a child named 'a' already exists");
    let nameless = ChildSpec::new("", |_scope: Scope| async { Ok::<(), BoxError>(()) });
    let error = supervisor.start_child(nameless).await.unwrap_err();
    assert!(matches!(error, ChildRequestError::Invalid(_)));
    assert_eq!(
        error.to_string(),
        "invalid supervisor configuration: a child needs a name"
    );
    // Names are escaped when written.
    let error = supervisor.terminate_child("x\ny").await.unwrap_err();
    assert_eq!(error.to_string(), "no child named 'x\\ny'");
    assert_eq!(supervisor.snapshot().children.len(), 1);
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn changes_are_refused_with_the_cause_once_the_supervisor_shuts_down() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(lingering("a", &log, Duration::from_secs(1)))
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    let starter = supervisor.starter();
    supervisor.shutdown(shutdown());
    // Refused at once, before the supervisor has even looked.
    for error in [
        starter.start_child(worker("b", &log)).await.unwrap_err(),
        handle.terminate_child("a").await.unwrap_err(),
        handle.restart_child("a").await.unwrap_err(),
        handle.delete_child("a").await.unwrap_err(),
    ] {
        let ChildRequestError::Stopped { cause: Some(cause) } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(cause.code(), "deploy");
        assert!(
            error.to_string().starts_with("supervisor stopped: "),
            "{error}"
        );
    }
    supervisor.join().await.unwrap();
    let error = starter.start_child(worker("b", &log)).await.unwrap_err();
    assert!(matches!(
        error,
        ChildRequestError::Stopped { cause: Some(_) }
    ));
    assert_eq!(log.take(), ["a start", "a stop: deploy"]);
}

#[tokio::test(start_paused = true)]
async fn a_request_queued_before_the_shutdown_is_refused_with_its_cause() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .start(&Scope::new())
        .unwrap();
    // Queued, not served yet: the supervisor's task has not run.
    let request = supervisor.start_child(worker("b", &log));
    supervisor.shutdown(shutdown());
    let error = request.await.unwrap_err();
    let ChildRequestError::Stopped { cause: Some(cause) } = error else {
        panic!("{error:?}");
    };
    assert_eq!(cause.code(), "deploy");
    supervisor.join().await.unwrap();
    assert_eq!(log.take(), ["a start", "a stop: deploy"]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_is_still_served() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .run_until_shutdown()
        .start(&Scope::new())
        .unwrap();
    drop(supervisor.start_child(worker("a", &log)));
    drop(supervisor.terminate_child("a"));
    sleep(Duration::from_millis(1)).await;
    assert_eq!(log.take(), ["a start", "a stop: terminate"]);
    let a = supervisor.snapshot().child("a").unwrap().state;
    assert_eq!(a, ChildState::Cancelled);
    drop(supervisor);
}

#[tokio::test(start_paused = true)]
async fn without_the_option_a_supervisor_with_no_child_left_ends_and_refuses_children() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    // Terminating its last child ends it.
    handle.terminate_child("a").await.unwrap();
    handle.stopped().await;
    assert_eq!(handle.snapshot().state, SupervisorState::Stopped);
    let error = supervisor.start_child(worker("b", &log)).await.unwrap_err();
    assert!(matches!(error, ChildRequestError::Stopped { cause: None }));
    assert_eq!(error.to_string(), "supervisor stopped");
    supervisor.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn run_until_shutdown_stays_up_with_no_child() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .run_until_shutdown()
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    sleep(Duration::from_secs(3600)).await;
    assert!(!handle.is_stopped());
    assert_eq!(handle.snapshot().state, SupervisorState::Running);

    let once = ChildSpec::new("once", |_scope: Scope| async { Ok::<(), BoxError>(()) })
        .restart(Restart::Never);
    supervisor.start_child(once).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.child("once").unwrap().state, ChildState::Completed);
    assert_eq!(snapshot.state, SupervisorState::Running);
    // A completed child may run again.
    supervisor.restart_child("once").await.unwrap();
    supervisor.start_child(worker("a", &log)).await.unwrap();
    supervisor.shutdown(shutdown());
    supervisor.join().await.unwrap();
    assert_eq!(log.take(), ["a start", "a stop: deploy"]);
    assert_eq!(handle.snapshot().child("once").unwrap().restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn the_changes_stream_follows_a_child_and_ends_on_the_final_state() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(quick())
        .child(flaky("b", &log, 1, Duration::from_secs(1)))
        .start(&Scope::new())
        .unwrap();
    let mut changes = supervisor.changes();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(snapshot) = changes.next().await {
            let child = snapshot.child("b").map(|child| child.state);
            let seen_now = (snapshot.state, child);
            if seen.last() != Some(&seen_now) {
                seen.push(seen_now);
            }
        }
        seen
    });
    sleep(Duration::from_secs(2)).await;
    supervisor.shutdown(shutdown());
    supervisor.join().await.unwrap();
    use ChildState::{Cancelled, Restarting, Running};
    use SupervisorState::{ShuttingDown, Stopped};
    let seen = watcher.await.unwrap();
    // Latest value only: what matters is that each step is there, in order, ending with the
    // final state.
    let expected = [
        (SupervisorState::Running, Some(Running)),
        (SupervisorState::Running, Some(Restarting)),
        (SupervisorState::Running, Some(Running)),
        (Stopped, Some(Cancelled)),
    ];
    let mut steps = seen.iter();
    for step in &expected {
        assert!(
            steps.any(|seen| seen == step),
            "{step:?} missing from {seen:?}"
        );
    }
    assert_eq!(seen.last(), expected.last());
    // Nothing waits to restart once the shutdown has begun.
    assert!(
        seen.iter()
            .all(|(state, child)| *state != ShuttingDown || *child != Some(Restarting))
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_sees_the_current_state_first_and_none_after_the_end() {
    let supervisor = Supervisor::builder()
        .run_until_shutdown()
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    let mut changes = handle.changes();
    let first = changes.next().await.unwrap();
    assert_eq!(first.state, SupervisorState::Running);
    assert!(first.children.is_empty());
    // Nothing changed: it waits.
    let mut next = tokio_test::task::spawn(changes.next());
    tokio_test::assert_pending!(next.poll());
    drop(next);
    let log = Log::default();
    supervisor.start_child(worker("a", &log)).await.unwrap();
    let added = changes.next().await.unwrap();
    assert_eq!(added.child("a").unwrap().state, ChildState::Running);
    supervisor.shutdown(shutdown());
    supervisor.join().await.unwrap();
    let last = changes.next().await.unwrap();
    assert_eq!(last.state, SupervisorState::Stopped);
    assert_eq!(last.child("a").unwrap().state, ChildState::Cancelled);
    assert!(changes.next().await.is_none());
    assert!(changes.next().await.is_none());
    // A subscriber that comes after the end sees the final state, then the end.
    let mut late = handle.changes();
    assert_eq!(late.next().await.unwrap().state, SupervisorState::Stopped);
    assert!(late.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_subscriber_is_woken_by_a_change() {
    let log = Log::default();
    let supervisor = Supervisor::builder()
        .child(worker("a", &log))
        .start(&Scope::new())
        .unwrap();
    let mut changes = supervisor.changes();
    changes.next().await.unwrap();
    let mut next = tokio_test::task::spawn(changes.next());
    tokio_test::assert_pending!(next.poll());
    supervisor.terminate_child("a").await.unwrap();
    assert!(next.is_woken());
    let snapshot = tokio_test::assert_ready!(next.poll()).unwrap();
    assert_eq!(snapshot.child("a").unwrap().state, ChildState::Cancelled);
    drop(next);
    supervisor.join().await.unwrap();
}
