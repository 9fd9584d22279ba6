//! taskscope's own `TaskGroup::join` and `Supervisor` restart and shutdown, swept at every
//! await point in both modes: every run a child or task began ends (its future is dropped or
//! returns), nothing outlives the work, and a cancellation is reported as itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use taskscope::{
    BoxError, Cause, ChildSpec, GroupError, Restart, Scope, Strategy, Supervisor, SupervisorError,
    TaskGroup,
};
use taskscope_test::{Report, Sweep};
use tokio::time::sleep;

/// How many runs began, and how many ended (returned, or were dropped).
#[derive(Clone, Default)]
struct Runs(Arc<(AtomicU32, AtomicU32)>);

/// Counts a run as ended when dropped: whether the run returned or was dropped mid-way.
struct Running(Runs);

impl Drop for Running {
    fn drop(&mut self) {
        (self.0).0.1.fetch_add(1, Ordering::SeqCst);
    }
}

impl Runs {
    fn begin(&self) -> Running {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        Running(self.clone())
    }

    async fn all_ended(self) -> Result<(), String> {
        let (began, ended) = (
            self.0.0.load(Ordering::SeqCst),
            self.0.1.load(Ordering::SeqCst),
        );
        if began == ended {
            Ok(())
        } else {
            Err(format!("{began} runs began, {ended} ended"))
        }
    }
}

/// Prints the sweep's line and its points (`--nocapture`), and checks it went through at least
/// `points` points and every run passed.
fn passes_at_every_point(report: &Report, points: usize) {
    eprintln!("{}", report.to_string().lines().next().unwrap_or_default());
    for run in report.runs.iter().step_by(2) {
        eprintln!("  {} {}", run.index, run.point.as_ref().unwrap());
    }
    report.assert_ok();
    assert!(report.points >= points, "{report}");
}

fn runs() -> impl Fn() -> std::future::Ready<Runs> {
    || std::future::ready(Runs::default())
}

#[test]
fn task_group_join_at_every_await_point() {
    let report = Sweep::new(
        "task group join",
        runs(),
        |runs: Runs, scope: Scope| async move {
            let group = TaskGroup::builder(&scope)
                .name("steps")
                .limit(2.try_into().unwrap())
                .grace(Duration::from_millis(100))
                .build();
            for (name, ms) in [("a", 3), ("b", 1), ("c", 2), ("d", 1)] {
                let runs = runs.clone();
                group.spawn(name, move |scope| async move {
                    let _running = runs.begin();
                    for _ in 0..2 {
                        tokio::select! {
                            cause = scope.cancelled() => return Err(cause.into()),
                            () = sleep(Duration::from_millis(ms)) => {}
                        }
                    }
                    Ok(ms)
                });
            }
            group.join().await
        },
    )
    .invariant(Runs::all_ended)
    .reports_cause(|joined: &Result<Vec<u64>, GroupError<BoxError>>| {
        joined
            .as_ref()
            .err()
            .and_then(|error| error.cause().cloned())
    })
    .run();
    passes_at_every_point(&report, 8);
}

#[test]
fn supervisor_restart_and_shutdown_at_every_await_point() {
    let report = Sweep::new(
        "supervisor",
        runs(),
        |runs: Runs, scope: Scope| async move {
            let failures = Arc::new(AtomicU32::new(0));
            let flaky = {
                let runs = runs.clone();
                ChildSpec::new("flaky", move |scope: Scope| {
                    let (runs, failures) = (runs.clone(), failures.clone());
                    async move {
                        let _running = runs.begin();
                        sleep(Duration::from_millis(2)).await;
                        if failures.fetch_add(1, Ordering::SeqCst) < 2 {
                            return Err(BoxError::from("connection reset"));
                        }
                        scope.cancelled().await;
                        Ok(())
                    }
                })
            };
            let steady = {
                let runs = runs.clone();
                ChildSpec::new("steady", move |scope: Scope| {
                    let runs = runs.clone();
                    async move {
                        let _running = runs.begin();
                        let cause = scope.cancelled().await;
                        sleep(Duration::from_millis(1)).await; // flushes before it stops
                        Err(cause.into())
                    }
                })
                .restart(Restart::OnFailure)
            };
            let supervisor = Supervisor::builder()
                .name("workers")
                .strategy(Strategy::OneForOne)
                .backoff(taskscope::Backoff::exponential(Duration::from_millis(1)))
                .child(steady)
                .child(flaky)
                .start(&scope)
                .expect("a valid supervisor");
            let handle = supervisor.handle();
            let stop = async {
                sleep(Duration::from_millis(20)).await;
                handle.shutdown_within(Cause::new("DEPLOY"), Duration::from_millis(50));
            };
            let (joined, ()) = tokio::join!(supervisor.join(), stop);
            joined
        },
    )
    .invariant(Runs::all_ended)
    .reports_cause(|joined: &Result<(), SupervisorError<BoxError>>| {
        joined
            .as_ref()
            .err()
            .and_then(|error| error.cause().cloned())
    })
    .run();
    passes_at_every_point(&report, 8);
}
