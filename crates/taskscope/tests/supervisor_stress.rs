//! Seeded stress test of the races between children failing, panicking, completing or
//! ignoring cancellation on worker threads, and the supervisor restarting them, shutting down,
//! being forced, dropped, or escalating.
//!
//! Each seed picks the children's behaviours, the strategy and how the round ends; the two
//! worker threads pick the interleaving. Every round checks that the supervisor ends, that no
//! child's future outlives it, that nothing starts after it ended, that its snapshot shows every
//! child stopped with restarts matching the starts, and that no scope is left linked. A failing
//! round prints its seed; `TASKSCOPE_STRESS_SEED=<seed>` replays it,
//! `TASKSCOPE_STRESS_ROUNDS=<n>` runs more.

mod common;

use common::{Live, Rng, replaying, run_seeds, yields};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildSpec, ChildState, Restart, Scope, Strategy,
    Supervisor, SupervisorState,
};

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Fails after some yields, this many times, then waits for the cancellation.
    Flaky(u32),
    /// Panics once, then waits for the cancellation.
    Panics,
    /// Returns `Ok` after some yields.
    Completes,
    /// Waits for the cancellation and returns it as its error.
    Echo,
    /// Ignores the cancellation: only an abort ends it.
    Stubborn,
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    Shutdown,
    ShutdownThenAbort,
    Abort,
    Drop,
    CancelParent,
}

/// Yields until `done` holds, for at most 10 s of real time: teardown that happens on the other
/// worker thread, which a loaded machine may not run for a while.
async fn settle(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

async fn round(seed: u64) {
    let mut rng = Rng::new(seed);
    let count = 1 + rng.below(6) as usize;
    let behaviours: Vec<Behaviour> = (0..count)
        .map(|_| match rng.below(5) {
            0 => Behaviour::Flaky(1 + rng.below(4) as u32),
            1 => Behaviour::Panics,
            2 => Behaviour::Completes,
            3 => Behaviour::Echo,
            _ => Behaviour::Stubborn,
        })
        .collect();
    let strategy = match rng.below(3) {
        0 => Strategy::OneForOne,
        1 => Strategy::OneForAll,
        _ => Strategy::RestForOne,
    };
    let ending = match rng.below(5) {
        0 => Ending::Shutdown,
        1 => Ending::ShutdownThenAbort,
        2 => Ending::Abort,
        3 => Ending::Drop,
        _ => Ending::CancelParent,
    };
    let max_restarts = rng.below(6) as u32;
    let live = Arc::new(AtomicUsize::new(0));
    let starts: Arc<Vec<AtomicU32>> = Arc::new((0..count).map(|_| AtomicU32::new(0)).collect());

    let app = Scope::builder().name("app").build();
    let mut builder = Supervisor::builder()
        .name("sup")
        .strategy(strategy)
        .backoff(Backoff::none())
        .intensity(max_restarts, Duration::from_secs(3600));
    for (i, behaviour) in behaviours.iter().copied().enumerate() {
        let delay = rng.below(4);
        let restart = match rng.below(3) {
            0 => Restart::Always,
            1 => Restart::OnFailure,
            _ => Restart::Never,
        };
        let (live, starts) = (live.clone(), starts.clone());
        let spec = ChildSpec::new(format!("c{i}"), move |scope: Scope| {
            let run = starts[i].fetch_add(1, Ordering::SeqCst);
            let live = Live::new(&live);
            async move {
                let _live = live;
                yields(delay).await;
                match behaviour {
                    Behaviour::Flaky(times) if run < times => {
                        Err(BoxError::from(format!("c{i} failed")))
                    }
                    Behaviour::Panics if run == 0 => panic!("c{i} panicked"),
                    Behaviour::Completes => Ok(()),
                    Behaviour::Echo => Err(scope.cancelled().await.into()),
                    Behaviour::Stubborn => std::future::pending().await,
                    Behaviour::Flaky(_) | Behaviour::Panics => {
                        scope.cancelled().await;
                        Ok(())
                    }
                }
            }
        })
        .restart(restart)
        .grace(Duration::ZERO);
        builder = builder.child(spec);
    }
    let context = format!(
        "seed {seed}: {behaviours:?}, {strategy:?}, {ending:?}, max {max_restarts} restarts"
    );
    if replaying() {
        eprintln!("{context}");
    }

    let supervisor = builder.start(&app).unwrap();
    let handle = supervisor.handle();
    let stopper = {
        let (app, handle) = (app.clone(), handle.clone());
        let delay = rng.below(8);
        let second = rng.below(4);
        tokio::spawn(async move {
            yields(delay).await;
            let cause = || Cause::of_kind(CauseKind::Shutdown).with_code("STRESS");
            match ending {
                Ending::Shutdown | Ending::Drop => {
                    handle.shutdown(cause());
                }
                Ending::ShutdownThenAbort => {
                    handle.shutdown(cause());
                    yields(second).await;
                    handle.abort();
                }
                Ending::Abort => handle.abort(),
                Ending::CancelParent => {
                    app.cancel(cause());
                }
            }
        })
    };
    let result = if matches!(ending, Ending::Drop) {
        yields(rng.below(6)).await;
        drop(supervisor);
        handle.stopped().await;
        None
    } else {
        Some(supervisor.join().await)
    };
    stopper.await.unwrap();

    // Aborted children are dropped on the runtime, maybe on the other worker thread.
    settle(|| live.load(Ordering::SeqCst) == 0).await;
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "{context}: a child outlived its supervisor"
    );
    let started: Vec<u32> = starts.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    yields(20).await;
    let later: Vec<u32> = starts.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    assert_eq!(started, later, "{context}: a child started after the end");

    let snapshot = handle.snapshot();
    assert!(
        matches!(
            snapshot.state,
            SupervisorState::Stopped | SupervisorState::Escalated
        ),
        "{context}: {snapshot}"
    );
    for (i, child) in snapshot.children.iter().enumerate() {
        assert!(
            !matches!(
                child.state,
                ChildState::Running | ChildState::Stopping | ChildState::Restarting
            ),
            "{context}: c{i} still {} after the end\n{snapshot}",
            child.state
        );
        if started[i] > 0 {
            assert_eq!(
                child.restarts + 1,
                started[i],
                "{context}: c{i} restarts vs starts\n{snapshot}"
            );
        }
    }
    if let Some(Err(error)) = &result {
        if error.is_escalation() {
            assert_eq!(snapshot.state, SupervisorState::Escalated, "{context}");
            let kind = error.cause().unwrap().kind();
            assert!(
                matches!(kind, CauseKind::TaskFailed | CauseKind::TaskPanicked),
                "{context}: escalated with {kind:?}"
            );
        }
        let mut aborted: Vec<&str> = error.aborted().iter().map(|c| c.name()).collect();
        let total = aborted.len();
        aborted.sort_unstable();
        aborted.dedup();
        assert_eq!(aborted.len(), total, "{context}: a child aborted twice");
    }
    if let Some(Ok(())) = &result {
        assert_eq!(snapshot.state, SupervisorState::Stopped, "{context}");
    }
    drop(handle);
    // The children's tokio tasks release the supervisor's scope as they finish.
    settle(|| app.live_children() == 0).await;
    assert_eq!(app.live_children(), 0, "{context}: a scope is still linked");
}

#[test]
fn children_race_restarts_and_shutdowns() {
    run_seeds(3_000, round);
}
