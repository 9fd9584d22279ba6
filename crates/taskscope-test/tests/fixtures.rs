//! The harness tested on work that is not cancel safe: each defect is caught, at the right
//! point, in the modes it shows in; and the cancel-safe version of the same work passes
//! everywhere.

use std::future::pending;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskscope::{BoxError, Cause, GroupError, Scope, TaskGroup, TaskGroupBuilder};
use taskscope_test::{Mode, Report, RunReport, Sample, Sweep};
use tokio::time::sleep;

/// A payment service's books: what was charged, and the record of each charge.
#[derive(Clone, Default)]
struct Books(Arc<Mutex<Vec<&'static str>>>);

impl Books {
    fn write(&self, entry: &'static str) {
        self.0.lock().unwrap().push(entry);
    }

    /// Every charge is recorded, or refunded.
    async fn balanced(self) -> Result<(), String> {
        let entries = self.0.lock().unwrap().clone();
        let count = |what| entries.iter().filter(|e| **e == what).count();
        let (charged, settled) = (count("charged"), count("recorded") + count("refunded"));
        if charged == settled {
            Ok(())
        } else {
            Err(format!("{charged} charged, {settled} recorded or refunded"))
        }
    }
}

fn books() -> impl Fn() -> std::future::Ready<Books> {
    || std::future::ready(Books::default())
}

/// Charges, then records the charge after an await: a cancellation between the two leaves a
/// charge nobody recorded.
async fn charge_then_record(books: Books, scope: Scope) -> Result<(), GroupError<BoxError>> {
    let group = TaskGroup::new(&scope);
    group.spawn("pay", move |scope| async move {
        sleep(Duration::from_millis(1)).await; // the gateway's answer
        scope.check()?;
        books.write("charged");
        sleep(Duration::from_millis(1)).await; // the ledger's connection
        scope.check()?;
        books.write("recorded");
        Ok(())
    });
    group.join().await.map(drop)
}

/// The same, cancel safe: the record is written with the charge, whatever happens next.
async fn charge_and_record(books: Books, scope: Scope) -> Result<(), GroupError<BoxError>> {
    let group = TaskGroup::new(&scope);
    group.spawn("pay", move |scope| async move {
        sleep(Duration::from_millis(1)).await;
        scope.check()?;
        books.write("charged");
        books.write("recorded");
        sleep(Duration::from_millis(1)).await;
        scope.check()?;
        Ok(())
    });
    group.join().await.map(drop)
}

fn failing(report: &Report) -> Vec<(usize, String, String)> {
    report
        .failures()
        .map(|run: &RunReport| {
            let task = run
                .point
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{}@{}", p.task, p.suspension));
            (run.index, task, run.mode.clone())
        })
        .collect()
}

#[test]
fn a_commit_before_an_await_without_compensation_is_caught_where_it_is_in_both_modes() {
    let report = Sweep::new("charge then record", books(), charge_then_record)
        .invariant(Books::balanced)
        .run();
    // The points: the work waits on `join` (1); `pay` waits for the gateway (2), then for the
    // ledger after charging (3). The work is woken once, when `pay` ends, and returns.
    let points: Vec<_> = report
        .runs
        .iter()
        .step_by(2)
        .map(|run| {
            let point = run.point.as_ref().unwrap();
            format!("{}@{}", point.task, point.suspension)
        })
        .collect();
    assert_eq!(points, ["work@1", "sweep/pay#1@1", "sweep/pay#1@2"]);
    // Interrupted after the charge and before the record, in both modes; nowhere else.
    assert_eq!(
        failing(&report),
        [
            (
                3,
                "sweep/pay#1@2".to_owned(),
                "cancel root (SWEEP)".to_owned()
            ),
            (3, "sweep/pay#1@2".to_owned(), "abort".to_owned()),
        ],
        "{report}"
    );
    let run = report.failures().next().unwrap();
    assert_eq!(
        run.violations,
        ["invariant: 1 charged, 0 recorded or refunded"]
    );
}

#[test]
fn the_cancel_safe_version_passes_at_every_point_in_both_modes() {
    let report = Sweep::new("charge and record", books(), charge_and_record)
        .invariant(Books::balanced)
        .reports_cause(|result: &Result<(), GroupError<BoxError>>| {
            result
                .as_ref()
                .err()
                .and_then(|error| error.cause().cloned())
        })
        .run();
    report.assert_ok();
    assert_eq!(report.points, 3);
    assert_eq!(report.runs.len(), 6);
    assert!(report.runs.iter().all(|run| run.reached));
}

#[test]
fn a_task_spawned_outside_the_group_is_caught_even_uninterrupted() {
    let report = Sweep::new(
        "raw spawn",
        books(),
        |_books: Books, scope: Scope| async move {
            // A background "flush" that outlives the work, and holds its scope.
            tokio::spawn(async move {
                let _scope = scope;
                sleep(Duration::from_secs(120)).await;
            });
            sleep(Duration::from_millis(1)).await;
        },
    )
    .run();
    let baseline = &report.baseline;
    assert_eq!(
        baseline.violations,
        [
            "1 tokio task(s) still alive 60s after the run began",
            "the root scope outlived the work: a handle of it, or a scope under it, is still \
             held (0 child scope(s) linked)",
        ]
    );
    // Every interrupted run too: dropping the work does not stop a task it did not own.
    assert_eq!(report.failures().count(), 1 + report.runs.len());
}

#[test]
fn a_task_that_ends_soon_after_the_work_is_no_leak() {
    let report = Sweep::new(
        "short flush",
        books(),
        |_books: Books, _scope: Scope| async {
            tokio::spawn(sleep(Duration::from_secs(1)));
            sleep(Duration::from_millis(1)).await;
        },
    )
    .run();
    report.assert_ok();
}

#[test]
fn a_cause_swallowed_and_replaced_is_caught_when_cancelled() {
    let report = Sweep::new(
        "swallow",
        books(),
        |_books: Books, scope: Scope| async move {
            let group = TaskGroup::new(&scope);
            group.spawn("wait", |scope| async move {
                sleep(Duration::from_millis(5)).await;
                scope.check()?;
                Ok(())
            });
            // Whatever stopped the group, reports a timeout of its own.
            group
                .join()
                .await
                .map(drop)
                .map_err(|_| Cause::new("TIMEOUT"))
        },
    )
    .reports_cause(|result: &Result<(), Cause>| result.as_ref().err().cloned())
    .modes([Mode::cancel_root(Cause::new("DEPLOY"))])
    .run();
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), report.runs.len(), "{report}");
    assert_eq!(
        failures[0].violations,
        ["reported the cause TIMEOUT (explicit), not the injected DEPLOY (explicit)"]
    );
}

#[test]
fn a_group_dropped_unjoined_on_cancel_is_caught() {
    let report = Sweep::new(
        "early return",
        books(),
        |_books: Books, scope: Scope| async move {
            let group = TaskGroup::<(), BoxError>::new(&scope);
            group.spawn("slow", |_| async {
                sleep(Duration::from_millis(50)).await;
                Ok(())
            });
            // Returns as soon as it is cancelled, dropping the group with its task running.
            tokio::select! {
                _ = scope.cancelled() => Err(()),
                _ = group.join() => Ok(()),
            }
        },
    )
    .modes([Mode::cancel_root(Cause::new("DEPLOY"))])
    .run();
    assert!(report.baseline.is_ok());
    let run = report.failures().next().expect("caught");
    assert_eq!(
        run.violations,
        [
            "the task sweep/slow was aborted: its group was dropped before it ended (not \
             joined), or it outlived the group's shutdown grace"
        ]
    );
}

#[test]
fn work_that_ignores_its_cancellation_is_caught_hanging() {
    let report = Sweep::new("deaf", books(), |_books: Books, scope: Scope| async move {
        for _ in 0..3 {
            sleep(Duration::from_millis(5)).await;
            if scope.is_cancelled() {
                pending::<()>().await; // waits on what will never come
            }
        }
    })
    .modes([Mode::cancel_root(Cause::new("DEPLOY"))])
    .within(Duration::from_secs(10))
    .run();
    assert!(report.baseline.is_ok());
    let run = report.failures().next().expect("caught");
    assert_eq!(
        run.violations,
        ["did not end within 10s: it hangs, or waits on something that never comes"]
    );
}

#[test]
fn a_task_that_ignores_its_cancellation_is_aborted_after_its_grace_and_caught() {
    let report = Sweep::new(
        "deaf task",
        books(),
        |_books: Books, scope: Scope| async move {
            let group = TaskGroup::<(), BoxError>::new(&scope);
            group.spawn("deaf", |scope| async move {
                sleep(Duration::from_millis(5)).await;
                if scope.is_cancelled() {
                    pending::<()>().await;
                }
                Ok(())
            });
            group.join().await.map(drop)
        },
    )
    .modes([Mode::cancel_root(Cause::new("DEPLOY"))])
    .run();
    let run = report.failures().next().expect("caught");
    assert_eq!(
        run.violations,
        [
            "the task sweep/deaf was aborted: its group was dropped before it ended (not \
             joined), or it outlived the group's shutdown grace"
        ]
    );
    // The group's 5 s grace, not the sweep's bound, ended it.
    assert_eq!(run.took, Duration::from_secs(5));
}

#[test]
fn a_named_scope_can_be_the_one_cancelled() {
    let report = Sweep::new("named", books(), |_books: Books, scope: Scope| async move {
        let group = TaskGroupBuilder::<(), BoxError>::new(&scope)
            .name("jobs")
            .build();
        group.spawn("a", |scope| async move {
            sleep(Duration::from_millis(5)).await;
            scope.check()?;
            Ok(())
        });
        group.join().await.map(drop)
    })
    .reports_cause(|result: &Result<(), GroupError<BoxError>>| {
        result
            .as_ref()
            .err()
            .and_then(|error| error.cause().cloned())
    })
    .modes([Mode::cancel_scope("sweep/jobs", Cause::new("JOBS_PAUSED"))])
    .run();
    report.assert_ok();
    assert!(
        report
            .runs
            .iter()
            .any(|run| run.mode == "cancel sweep/jobs (JOBS_PAUSED)")
    );
}

#[test]
fn sampling_picks_the_same_points_for_a_seed() {
    let sweep = || {
        Sweep::new("many", books(), |_books: Books, _scope: Scope| async {
            for _ in 0..40 {
                sleep(Duration::from_millis(1)).await;
            }
        })
        .modes([Mode::Abort])
    };
    let picked = |report: Report| report.runs.iter().map(|run| run.index).collect::<Vec<_>>();
    let random = Sample::Random { count: 5, seed: 7 };
    let first = picked(sweep().sample(random).run());
    assert_eq!(first.len(), 5);
    assert_eq!(first, picked(sweep().sample(random).run()));
    assert_ne!(
        first,
        picked(sweep().sample(Sample::Random { count: 5, seed: 8 }).run())
    );
    let every_tenth = picked(
        sweep()
            .sample(Sample::EveryNth(NonZeroUsize::new(10).unwrap()))
            .run(),
    );
    assert_eq!(every_tenth, [1, 11, 21, 31]);
}

#[test]
fn the_json_report_names_each_point() {
    let report = Sweep::new("charge then record", books(), charge_then_record)
        .invariant(Books::balanced)
        .modes([Mode::Abort])
        .run();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["points"], 3);
    let run = &json["runs"][2];
    assert_eq!(run["index"], 3);
    assert_eq!(run["point"]["task"], "sweep/pay#1");
    assert_eq!(run["point"]["suspension"], 2);
    assert!(
        run["point"]["spawned_at"]
            .as_str()
            .unwrap()
            .starts_with("crates/taskscope-test/tests/fixtures.rs:")
    );
    assert_eq!(run["mode"], "abort");
    assert_eq!(
        run["violations"][0],
        "invariant: 1 charged, 0 recorded or refunded"
    );
}

#[test]
fn a_cause_that_won_before_the_injected_one_is_a_fair_report() {
    // A step fails with a cause of its own; what is cancelled after that keeps it (first
    // cause wins), and the work reports it.
    let report = Sweep::new(
        "first cause wins",
        books(),
        |_books: Books, scope: Scope| async move {
            let group = TaskGroup::<(), BoxError>::new(&scope);
            group.spawn("reserve", |_| async {
                sleep(Duration::from_millis(1)).await;
                Err(Cause::new("INVENTORY_SHORTAGE").into())
            });
            group.spawn("charge", |scope| async move {
                sleep(Duration::from_millis(5)).await;
                scope.check()?;
                Ok(())
            });
            let cancelled = group.join().await.err().and_then(|e| e.cause().cloned());
            // Cleanup after the failure: an await point where the root's cancellation comes
            // second.
            sleep(Duration::from_millis(1)).await;
            cancelled
        },
    )
    .reports_cause(Option::clone)
    .modes([Mode::cancel_root(Cause::new("DEPLOY"))])
    .run();
    // Cancelled before the shortage, it reports the injected cause; after it (the work's
    // third suspension, in its cleanup), the shortage.
    report.assert_ok();
    let last = report.runs.last().unwrap().point.as_ref().unwrap();
    assert_eq!((last.task.as_str(), last.suspension), ("work", 3));
}
