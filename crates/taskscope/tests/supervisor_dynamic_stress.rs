//! Seeded stress test of children started, terminated, restarted and deleted at runtime from
//! one task while another shuts the supervisor down (or forces it, drops it, cancels its
//! parent), on two worker threads.
//!
//! Each seed picks the children, the requests and how the round ends; the two workers pick the
//! interleaving. Every round checks that the supervisor ends, that every child started was
//! stopped (no child's future outlives it), that a request made after the shutdown is refused
//! with the shutdown's cause, that nothing starts after the end, and that the snapshot shows
//! every child stopped. A failing round prints its seed; `TASKSCOPE_STRESS_SEED=<seed>` replays
//! it, `TASKSCOPE_STRESS_ROUNDS=<n>` runs more.

mod common;

use common::{Live, Rng, replaying, run_seeds, yields};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildRequestError, ChildSpec, ChildState, Restart, Scope,
    Strategy, Supervisor, SupervisorState,
};

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Waits for the cancellation and returns it as its error.
    Echo,
    /// Fails after some yields.
    Fails,
    /// Returns `Ok` after some yields.
    Completes,
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

#[derive(Clone, Copy, Debug)]
enum Op {
    Start(usize, Behaviour, Restart),
    Terminate(usize),
    Restart(usize),
    Delete(usize),
}

/// Yields until `done` holds, for at most 10 s of real time: teardown that happens on the other
/// worker thread, which a loaded machine may not run for a while.
async fn settle(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

fn behaviour(rng: &mut Rng) -> Behaviour {
    match rng.below(4) {
        0 => Behaviour::Echo,
        1 => Behaviour::Fails,
        2 => Behaviour::Completes,
        _ => Behaviour::Stubborn,
    }
}

fn restart(rng: &mut Rng) -> Restart {
    match rng.below(3) {
        0 => Restart::Always,
        1 => Restart::OnFailure,
        _ => Restart::Never,
    }
}

/// A child named `name` that behaves as told, counted while its future lives and at each start.
fn child(
    name: String,
    behaviour: Behaviour,
    restart: Restart,
    delay: u64,
    live: &Arc<AtomicUsize>,
    starts: &Arc<AtomicUsize>,
) -> ChildSpec {
    let (live, starts) = (live.clone(), starts.clone());
    ChildSpec::new(name, move |scope: Scope| {
        starts.fetch_add(1, Ordering::SeqCst);
        let live = Live::new(&live);
        async move {
            let _live = live;
            yields(delay).await;
            match behaviour {
                Behaviour::Echo => Err(scope.cancelled().await.into()),
                Behaviour::Fails => Err(BoxError::from("failed")),
                Behaviour::Completes => Ok(()),
                Behaviour::Stubborn => std::future::pending().await,
            }
        }
    })
    .restart(restart)
    .grace(Duration::ZERO)
}

async fn round(seed: u64) {
    let mut rng = Rng::new(seed);
    let until_shutdown = rng.below(2) == 0;
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
    let statics = rng.below(3) as usize;
    let names = 4;
    let ops: Vec<(u64, Op)> = (0..rng.below(12))
        .map(|_| {
            let name = rng.below(names) as usize;
            let op = match rng.below(4) {
                0 => Op::Start(name, behaviour(&mut rng), restart(&mut rng)),
                1 => Op::Terminate(name),
                2 => Op::Restart(name),
                _ => Op::Delete(name),
            };
            (rng.below(4), op)
        })
        .collect();
    let live = Arc::new(AtomicUsize::new(0));
    let starts = Arc::new(AtomicUsize::new(0));

    let app = Scope::builder().name("app").build();
    let mut builder = Supervisor::builder()
        .name("sup")
        .strategy(strategy)
        .backoff(Backoff::none())
        .intensity(1 + rng.below(6) as u32, Duration::from_secs(3600));
    if until_shutdown {
        builder = builder.run_until_shutdown();
    }
    for i in 0..statics {
        let spec = child(
            format!("s{i}"),
            behaviour(&mut rng),
            restart(&mut rng),
            rng.below(4),
            &live,
            &starts,
        );
        builder = builder.child(spec);
    }
    let context = format!(
        "seed {seed}: {statics} static, {strategy:?}, {ending:?}, until shutdown \
         {until_shutdown}, ops {ops:?}"
    );
    if replaying() {
        eprintln!("{context}");
    }

    let supervisor = builder.start(&app).unwrap();
    let handle = supervisor.handle();
    // Set once the shutdown has been asked for: requests made after it must be refused.
    let shut = Arc::new(AtomicBool::new(false));
    let operator = {
        let (starter, handle, shut) = (supervisor.starter(), handle.clone(), shut.clone());
        let (live, starts) = (live.clone(), starts.clone());
        let delays: Vec<u64> = ops.iter().map(|_| rng.below(4)).collect();
        tokio::spawn(async move {
            let mut late_accepted = Vec::new();
            for ((pause, op), delay) in ops.into_iter().zip(delays) {
                yields(pause).await;
                let after_shutdown = shut.load(Ordering::SeqCst);
                let answer = match op {
                    Op::Start(name, behaviour, restart) => {
                        let spec = child(
                            format!("d{name}"),
                            behaviour,
                            restart,
                            delay,
                            &live,
                            &starts,
                        );
                        starter.start_child(spec).await
                    }
                    Op::Terminate(name) => handle.terminate_child(&format!("d{name}")).await,
                    Op::Restart(name) => handle.restart_child(&format!("d{name}")).await,
                    Op::Delete(name) => handle.delete_child(&format!("d{name}")).await,
                };
                let refused = matches!(
                    &answer,
                    Err(ChildRequestError::Stopped { cause: Some(cause) })
                        if cause.code() == "STRESS" || cause.kind() == CauseKind::Dropped
                );
                if after_shutdown && !refused {
                    late_accepted.push(format!("{op:?}: {answer:?}"));
                }
            }
            late_accepted
        })
    };
    let stopper = {
        let (app, handle, shut) = (app.clone(), handle.clone(), shut.clone());
        let delay = rng.below(16);
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
                    shut.store(true, Ordering::SeqCst);
                    yields(second).await;
                    handle.abort();
                }
                Ending::Abort => handle.abort(),
                Ending::CancelParent => {
                    app.cancel(cause());
                }
            }
            // `abort` shuts down with a plain cause of its own, unless it came second.
            if !matches!(ending, Ending::Abort) {
                shut.store(true, Ordering::SeqCst);
            }
        })
    };
    if matches!(ending, Ending::Drop) {
        yields(rng.below(6)).await;
        drop(supervisor);
        handle.stopped().await;
    } else {
        let _ = supervisor.join().await;
    }
    stopper.await.unwrap();
    let late_accepted = operator.await.unwrap();
    assert!(
        late_accepted.is_empty(),
        "{context}: accepted after the shutdown: {late_accepted:?}"
    );

    // Aborted children are dropped on the runtime, maybe on the other worker thread.
    settle(|| live.load(Ordering::SeqCst) == 0).await;
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "{context}: a child outlived its supervisor"
    );
    let started = starts.load(Ordering::SeqCst);
    let refused = supervisor_refuses(&handle).await;
    assert!(refused, "{context}: a request was served after the end");
    yields(20).await;
    assert_eq!(
        starts.load(Ordering::SeqCst),
        started,
        "{context}: a child started after the end"
    );

    let snapshot = handle.snapshot();
    assert!(
        matches!(
            snapshot.state,
            SupervisorState::Stopped | SupervisorState::Escalated
        ),
        "{context}: {snapshot}"
    );
    for child in &snapshot.children {
        assert!(
            !matches!(
                child.state,
                ChildState::Running | ChildState::Stopping | ChildState::Restarting
            ),
            "{context}: {} still {} after the end\n{snapshot}",
            child.name,
            child.state
        );
    }
    drop(handle);
    // The children's tokio tasks release the supervisor's scope as they finish.
    settle(|| app.live_children() == 0).await;
    assert_eq!(app.live_children(), 0, "{context}: a scope is still linked");
}

/// Whether every kind of request is refused, as after the end it must be.
async fn supervisor_refuses(handle: &taskscope::SupervisorHandle) -> bool {
    let answers = [
        handle.terminate_child("d0").await,
        handle.restart_child("d0").await,
        handle.delete_child("d0").await,
    ];
    answers
        .iter()
        .all(|answer| matches!(answer, Err(ChildRequestError::Stopped { .. })))
}

#[test]
fn runtime_changes_race_a_shutdown() {
    run_seeds(3_000, round);
}
