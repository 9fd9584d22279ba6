//! `TaskGroup`: values in spawn order, the first failure or the cause, echoes, panics, limits,
//! grace and aborts, drops, snapshots, nesting.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use taskscope::{
    BoxError, Cause, CauseKind, Failure, Outcome, Scope, TaskGroup, TaskGroupBuilder, TaskState,
};
use tokio::time::{Instant, sleep};
use tokio_test::{assert_pending, assert_ready, task};

#[derive(Debug)]
struct Shortage {
    sku: &'static str,
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is out of stock", self.sku)
    }
}

impl std::error::Error for Shortage {}

fn limit(n: usize) -> std::num::NonZeroUsize {
    n.try_into().unwrap()
}

#[tokio::test(start_paused = true)]
async fn join_returns_values_in_spawn_order() {
    let group: TaskGroup<u64> = TaskGroup::new(&Scope::new());
    for n in 0..5u64 {
        // Later tasks end first.
        group.spawn(format!("task-{n}"), move |_| async move {
            sleep(Duration::from_millis(100 - n * 10)).await;
            Ok(n)
        });
    }
    assert_eq!(group.join().await.unwrap(), [0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn first_error_cancels_siblings_with_a_task_failed_cause() {
    let orders = Scope::builder().name("orders").build();
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    let spawned_on = line!() + 1;
    group.spawn("inventory", |_| async {
        Err(Shortage { sku: "sku-42" }.into())
    });
    let seen = Arc::new(std::sync::Mutex::new(None));
    group.spawn("payment", {
        let seen = seen.clone();
        move |scope| async move {
            let cause = scope.cancelled().await;
            *seen.lock().unwrap() = Some(cause.clone());
            Err(cause.into())
        }
    });

    let error = group.join().await.unwrap_err();
    let cause = error.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cause.code(), "task_failed");
    assert_eq!(
        cause.detail(),
        Some("task 'inventory' failed: sku-42 is out of stock")
    );
    assert_eq!(cause.origin(), Some("orders/order-17/inventory"));
    assert_eq!(
        cause.location().unwrap().line(),
        spawned_on,
        "set at the spawn site"
    );
    assert_eq!(cause.downcast_ref::<Shortage>().unwrap().sku, "sku-42");
    assert!(
        seen.lock().unwrap().as_ref().unwrap().ptr_eq(cause),
        "the sibling saw it"
    );
    assert!(!orders.is_cancelled(), "the failure stays inside the group");

    let first = error.first_failure().unwrap();
    assert_eq!(first.task.name(), "inventory");
    assert_eq!(first.task.spawned_at().line(), spawned_on);
    let boxed = first.failure.error().unwrap();
    assert_eq!(boxed.downcast_ref::<Shortage>().unwrap().sku, "sku-42");
    assert_eq!(error.failures().len(), 1, "the echo is not a failure");
    assert_eq!(error.cancelled().len(), 1);
    assert_eq!(error.cancelled()[0].name(), "payment");
    assert!(error.aborted().is_empty());
    assert_eq!(
        error.to_string(),
        "task 'inventory' failed: sku-42 is out of stock"
    );
    // The group error's source is the cause, whose source is the task's error.
    let source = std::error::Error::source(&error).unwrap();
    let shortage = std::error::Error::source(source).unwrap();
    assert_eq!(shortage.to_string(), "sku-42 is out of stock");
}

/// The seed case: the shortage is what `join` returns, although payment also said "cancelled".
#[tokio::test(start_paused = true)]
async fn an_inventory_shortage_wins_over_the_echoes_it_causes() {
    let group: TaskGroup<&str> = TaskGroup::builder(&Scope::new()).name("order-17").build();
    group.spawn("payment", |scope| async move {
        tokio::select! {
            cause = scope.cancelled() => Err(cause.into()),
            () = sleep(Duration::from_secs(10)) => Ok("charged"),
        }
    });
    group.spawn("inventory", |_| async {
        sleep(Duration::from_millis(5)).await;
        Err(Cause::new("INVENTORY_SHORTAGE")
            .with_detail("sku-42: 2 left, 5 wanted")
            .into())
    });
    group.spawn("validate", |_| async { Ok("valid") });

    let error = group.join().await.unwrap_err();
    let cause = error.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    assert_eq!(
        cause.code(),
        "INVENTORY_SHORTAGE",
        "the task's own cause lends its code"
    );
    assert_eq!(
        cause.detail(),
        Some("task 'inventory' failed: sku-42: 2 left, 5 wanted")
    );
    assert_eq!(
        cause.downcast_ref::<Cause>().unwrap().code(),
        "INVENTORY_SHORTAGE"
    );
    assert_eq!(error.first_failure().unwrap().task.name(), "inventory");
    assert_eq!(error.failures().len(), 1);
    let cancelled: Vec<_> = error.cancelled().iter().map(|t| t.name()).collect();
    assert_eq!(cancelled, ["payment"]);
}

/// The seed case: an order step timing out cancels the inventory worker before it commits.
#[tokio::test(start_paused = true)]
async fn a_timeout_in_one_worker_cancels_the_others_before_they_commit() {
    let committed = Arc::new(AtomicBool::new(false));
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new()).name("order-17").build();
    group.spawn("payment", |scope| async move {
        let call = scope
            .child_builder()
            .name("gateway")
            .timeout(Duration::from_millis(200))
            .deadline_cause(Cause::new("PAYMENT_TIMEOUT"))
            .build();
        // The gateway never answers.
        let cause = call.cancelled().await;
        Err(cause.into())
    });
    group.spawn("inventory", {
        let committed = committed.clone();
        move |scope| async move {
            tokio::select! {
                cause = scope.cancelled() => return Err(cause.into()),
                () = sleep(Duration::from_secs(1)) => {}
            }
            committed.store(true, Ordering::SeqCst);
            Ok(())
        }
    });

    let start = Instant::now();
    let error = group.join().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert!(!committed.load(Ordering::SeqCst));
    let cause = error.cause().unwrap();
    // Payment's own timeout is a real failure of payment, not an echo of the group's cancel.
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cause.code(), "PAYMENT_TIMEOUT");
    assert_eq!(error.first_failure().unwrap().task.name(), "payment");
    assert_eq!(error.cancelled()[0].name(), "inventory");
    assert!(!error.is_timeout(), "the group itself did not time out");
}

#[tokio::test(start_paused = true)]
async fn a_parent_cancel_is_reported_as_the_cause() {
    let orders = Scope::builder().name("orders").build();
    let group: TaskGroup<()> = TaskGroup::new(&orders);
    group.spawn("worker", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    tokio::task::yield_now().await;
    orders.cancel(Cause::new("SHUTTING_DOWN"));

    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "SHUTTING_DOWN");
    assert!(error.failures().is_empty());
    assert_eq!(error.cancelled().len(), 1);
    assert_eq!(
        error.to_string(),
        "task group stopped: cancelled (SHUTTING_DOWN)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_reported_as_a_timeout() {
    let order = Scope::new().child_with_timeout(Duration::from_secs(2));
    let group: TaskGroup<()> = TaskGroup::new(&order);
    group.spawn("slow", |scope| async move {
        tokio::select! {
            cause = scope.cancelled() => Err(cause.into()),
            () = sleep(Duration::from_secs(10)) => Ok(()),
        }
    });
    let start = Instant::now();
    let error = group.join().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(error.is_timeout());
    assert_eq!(error.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_group_whose_tasks_all_finish_is_ok_even_if_cancelled_late() {
    let scope = Scope::new();
    let group: TaskGroup<u8> = TaskGroup::new(&scope);
    group.spawn("quick", |_| async { Ok(1) });
    tokio::task::yield_now().await;
    scope.cancel(Cause::plain());
    assert_eq!(group.join().await.unwrap(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_while_tasks_run_is_reported_even_if_they_return_ok() {
    let order = Scope::new().child_with_timeout(Duration::from_secs(2));
    let group: TaskGroup<u8> = TaskGroup::new(&order);
    group.spawn("ignores-the-deadline", |_| async {
        sleep(Duration::from_secs(3)).await;
        Ok(1)
    });
    let error = group.join().await.unwrap_err();
    assert!(
        error.is_timeout(),
        "a timeout is never mistaken for success"
    );
    assert!(error.failures().is_empty() && error.cancelled().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_empty_group_of_a_cancelled_scope_reports_the_cause() {
    let scope = Scope::new();
    scope.cancel(Cause::new("CLOSED"));
    let group: TaskGroup<()> = TaskGroup::new(&scope);
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "CLOSED");
}

#[derive(Debug)]
struct Unprintable;

impl std::fmt::Display for Unprintable {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("Display is not implemented yet")
    }
}

impl taskscope::TaskError for Unprintable {}

#[tokio::test(start_paused = true)]
async fn an_error_whose_display_panics_is_reported_as_a_panic() {
    let group: TaskGroup<(), Unprintable> = TaskGroupBuilder::new(&Scope::new()).build();
    group.spawn("odd", |_| async { Err(Unprintable) });
    group.spawn("sibling", |scope| async move {
        let _ = scope.cancelled().await;
        Ok(())
    });
    let error = tokio::time::timeout(Duration::from_secs(60), group.join())
        .await
        .expect("join ends")
        .unwrap_err();
    assert_eq!(error.cause().unwrap().kind(), CauseKind::TaskPanicked);
    assert!(error.first_failure().unwrap().failure.is_panic());
}

/// A snapshot formats stored errors; one whose `Display` panics shows a placeholder instead of
/// taking the caller down.
#[tokio::test(start_paused = true)]
async fn a_snapshot_survives_an_error_whose_display_panics() {
    let group: TaskGroup<(), Unprintable> =
        TaskGroupBuilder::new(&Scope::new()).collect_all().build();
    group.spawn("odd", |_| async { Err(Unprintable) });
    group.spawn("waits", |scope| async move {
        let _ = scope.cancelled().await;
        Ok(())
    });
    tokio::task::yield_now().await;
    let snapshot = group.snapshot();
    let odd = snapshot
        .tasks
        .iter()
        .find(|t| t.task.name() == "odd")
        .unwrap();
    assert!(
        matches!(&odd.state, TaskState::Failed(text) if text == "(its Display panicked)"),
        "{:?}",
        odd.state
    );
    assert!(snapshot.to_string().contains("(its Display panicked)"));
    group.scope().cancel(Cause::plain());
    let _ = group.join().await;
}

/// Names, details and errors are escaped in a snapshot's text: none can forge a row.
#[tokio::test(start_paused = true)]
async fn a_snapshot_escapes_names_and_details() {
    let scope = Scope::builder()
        .name("orders\ngroup forged: running")
        .build();
    let group: TaskGroup<()> = TaskGroup::new(&scope);
    group.spawn(
        "pay\n  #9 forged (x.rs:1:1): completed",
        |scope| async move {
            let _ = scope.cancelled().await;
            Ok(())
        },
    );
    tokio::task::yield_now().await;
    scope.cancel(Cause::new("X").with_detail("line one\nline two"));
    let text = group.snapshot().to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(r"orders\ngroup forged"), "{text}");
    assert!(text.contains(r"pay\n  #9 forged"), "{text}");
    assert!(text.contains(r"line one\nline two"), "{text}");
    // A literal backslash-n and a right-to-left override cannot pass for something else.
    let disguised = TaskGroup::<()>::new(&Scope::builder().name("a\\nb\u{202E}c").build());
    let text = disguised.snapshot().to_string();
    assert!(text.contains(r"a\\nb\u{202e}c"), "{text}");
    let _ = group.join().await;
}

#[tokio::test(start_paused = true)]
async fn panics_are_failures_with_their_message() {
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new()).name("g").build();
    group.spawn("boom", |_| async { panic!("ledger corrupted") });
    group.spawn("bystander", |scope| async move {
        Err(scope.cancelled().await.into())
    });

    let error = group.join().await.unwrap_err();
    let cause = error.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::TaskPanicked);
    assert_eq!(
        cause.detail(),
        Some("task 'boom' panicked: ledger corrupted")
    );
    assert_eq!(cause.origin(), Some("g/boom"));
    let first = error.first_failure().unwrap();
    assert!(first.failure.is_panic());
    assert!(matches!(&first.failure, Failure::Panic(m) if m == "ledger corrupted"));
    assert_eq!(error.to_string(), "task 'boom' panicked: ledger corrupted");
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_spawn_closure_is_a_failure_too() {
    let group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    group.spawn("eager", |_| -> std::future::Ready<Result<(), BoxError>> {
        panic!("bad config")
    });
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().kind(), CauseKind::TaskPanicked);
    assert_eq!(error.first_failure().unwrap().task.name(), "eager");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_panics_re_raises_in_the_joiner_after_every_task_ended() {
    let other_done = Arc::new(AtomicBool::new(false));
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new()).resume_panics().build();
    group.spawn("boom", |_| async { panic!("ledger corrupted") });
    group.spawn("other", {
        let other_done = other_done.clone();
        move |scope| async move {
            let _ = scope.cancelled().await;
            other_done.store(true, Ordering::SeqCst);
            Ok(())
        }
    });
    let joined = tokio::spawn(group.join()).await.unwrap_err();
    assert!(joined.is_panic());
    let payload = joined.into_panic();
    assert_eq!(*payload.downcast_ref::<&str>().unwrap(), "ledger corrupted");
    assert!(other_done.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn later_real_failures_are_kept() {
    let group: TaskGroup<(), std::io::Error> = TaskGroupBuilder::new(&Scope::new()).build();
    group.spawn("first", |_| async {
        Err(std::io::Error::other("disk full"))
    });
    group.spawn("second", |scope| async move {
        let _ = scope.cancelled().await;
        // Cleanup after the cancel fails for a reason of its own: a real failure.
        Err(std::io::Error::other("rollback failed"))
    });
    let error = group.join().await.unwrap_err();
    let names: Vec<_> = error.failures().iter().map(|f| f.task.name()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(
        error.to_string(),
        "task 'first' failed: disk full (and 1 later failure)"
    );
    // A typed error is reachable through the cause too.
    let io = error
        .cause()
        .unwrap()
        .downcast_ref::<std::io::Error>()
        .unwrap();
    assert_eq!(io.to_string(), "disk full");
}

#[tokio::test(start_paused = true)]
async fn collect_all_runs_every_task_and_reports_every_failure() {
    let group: TaskGroup<u32> = TaskGroup::builder(&Scope::new()).collect_all().build();
    for n in 0..6u32 {
        group.spawn(format!("fetch-{n}"), move |_| async move {
            sleep(Duration::from_millis(u64::from(n))).await;
            if n % 2 == 0 {
                Err(format!("fetch {n} failed").into())
            } else {
                Ok(n)
            }
        });
    }
    let scope = group.scope().clone();
    let error = group.join().await.unwrap_err();
    assert!(error.cause().is_none());
    assert!(!scope.is_cancelled());
    let names: Vec<_> = error.failures().iter().map(|f| f.task.name()).collect();
    assert_eq!(names, ["fetch-0", "fetch-2", "fetch-4"]);
}

#[tokio::test(start_paused = true)]
async fn join_next_streams_exits_in_the_order_tasks_end() {
    let mut group: TaskGroup<u64> = TaskGroup::builder(&Scope::new()).collect_all().build();
    for (name, ms) in [("slow", 30), ("fast", 10), ("bad", 20)] {
        group.spawn(name, move |_| async move {
            sleep(Duration::from_millis(ms)).await;
            if name == "bad" {
                Err("bad input".into())
            } else {
                Ok(ms)
            }
        });
    }
    let mut order = Vec::new();
    while let Some(exit) = group.join_next().await {
        let label = match exit.outcome {
            Outcome::Completed(ms) => format!("{}={ms}", exit.task.name()),
            Outcome::Failed(failure) => format!("{} {failure}", exit.task.name()),
            other => panic!("unexpected {other:?}"),
        };
        order.push(label);
    }
    assert_eq!(order, ["fast=10", "bad failed: bad input", "slow=30"]);
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn join_next_is_cancel_safe() {
    let mut group: TaskGroup<u8> = TaskGroup::new(&Scope::new());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    group.spawn("waits", |_| async move {
        rx.await.unwrap();
        Ok(7)
    });
    {
        let mut next = task::spawn(group.join_next());
        assert_pending!(next.poll());
    } // dropped while waiting, as a losing select! branch is
    tx.send(()).unwrap();
    let mut next = task::spawn(group.join_next());
    let exit = loop {
        tokio::task::yield_now().await;
        if let std::task::Poll::Ready(exit) = next.poll() {
            break exit.unwrap();
        }
    };
    assert!(matches!(exit.outcome, Outcome::Completed(7)));
    drop(next);
    assert!(group.join_next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_limit_of_10_with_1025_tasks_never_runs_more_than_10() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let group: TaskGroup<usize> = TaskGroup::builder(&Scope::new()).limit(limit(10)).build();
    for n in 0..1025 {
        let (running, peak) = (running.clone(), peak.clone());
        group.spawn(format!("job-{n}"), move |_| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            async move {
                sleep(Duration::from_millis(1 + (n % 7) as u64)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(n)
            }
        });
    }
    let snapshot = group.snapshot();
    let states =
        |wanted: fn(&TaskState) -> bool| snapshot.tasks.iter().filter(|t| wanted(&t.state)).count();
    assert_eq!(states(|s| matches!(s, TaskState::Running)), 10);
    assert_eq!(states(|s| matches!(s, TaskState::Pending)), 1015);

    let values = group.join().await.unwrap();
    assert_eq!(values, (0..1025).collect::<Vec<_>>());
    assert_eq!(peak.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn a_slot_frees_when_a_task_ends_not_at_join() {
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new()).limit(limit(1)).build();
    let second_started = Arc::new(AtomicBool::new(false));
    group.spawn("first", |_| async { Ok(()) });
    group.spawn("second", {
        let second_started = second_started.clone();
        move |_| {
            second_started.store(true, Ordering::SeqCst);
            async { Ok(()) }
        }
    });
    assert!(!second_started.load(Ordering::SeqCst));
    tokio::task::yield_now().await;
    assert!(
        second_started.load(Ordering::SeqCst),
        "started without anyone joining"
    );
    group.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pending_tasks_of_a_cancelled_group_never_start() {
    let started = Arc::new(AtomicUsize::new(0));
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new()).limit(limit(1)).build();
    group.spawn("fails", |_| async {
        sleep(Duration::from_millis(10)).await;
        Err("payment declined".into())
    });
    for n in 0..5 {
        let started = started.clone();
        group.spawn(format!("queued-{n}"), move |_| {
            started.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
    }
    let error = group.join().await.unwrap_err();
    assert_eq!(started.load(Ordering::SeqCst), 0);
    assert_eq!(error.cancelled().len(), 5);
    assert_eq!(error.cancelled()[0].name(), "queued-0");
    assert_eq!(error.failures().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn spawning_into_a_cancelled_group_does_not_start_the_task() {
    let mut group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    group.scope().cancel(Cause::new("CLOSED"));
    let called = Arc::new(AtomicBool::new(false));
    group.spawn("late", {
        let called = called.clone();
        move |_| {
            called.store(true, Ordering::SeqCst);
            async { Ok(()) }
        }
    });
    let exit = group.join_next().await.unwrap();
    assert!(matches!(&exit.outcome, Outcome::Cancelled(c) if c.code() == "CLOSED"));
    assert!(!called.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn try_spawn_refuses_when_full_or_cancelled() {
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new()).limit(limit(1)).build();
    group
        .try_spawn("one", |_| async { pending().await })
        .unwrap();
    let refused = group.try_spawn("two", |_| async { Ok(()) }).unwrap_err();
    assert!(refused.is_full());
    assert_eq!(
        refused.to_string(),
        "task group is at its concurrency limit"
    );
    let _closure = refused.into_task();
    assert_eq!(group.len(), 1, "a refused task is not tracked");

    group.scope().cancel(Cause::new("CLOSED"));
    let refused = group.try_spawn("three", |_| async { Ok(()) }).unwrap_err();
    assert!(!refused.is_full());
    assert_eq!(refused.cause().unwrap().code(), "CLOSED");

    // A deadline that passed unobserved counts as a cancellation too.
    let late = Scope::new().child_with_timeout(Duration::from_secs(1));
    let group: TaskGroup<()> = TaskGroup::new(&late);
    sleep(Duration::from_secs(2)).await;
    let refused = group.try_spawn("late", |_| async { Ok(()) }).unwrap_err();
    assert_eq!(refused.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
}

/// The seed case: a worker that ignores cancellation is aborted after the grace and named.
#[tokio::test(start_paused = true)]
async fn a_worker_that_ignores_cancellation_is_aborted_after_the_grace() {
    let dropped = Arc::new(AtomicBool::new(false));
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
        .name("order-17")
        .grace(Duration::from_secs(3))
        .build();
    group.spawn("fails", |_| async {
        sleep(Duration::from_secs(1)).await;
        Err("card declined".into())
    });
    group.spawn("polite", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    let stubborn_line = line!() + 1;
    group.spawn("stubborn", {
        let dropped = dropped.clone();
        move |_| async move {
            let _flag = SetOnDrop(dropped);
            sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    });

    let start = Instant::now();
    let error = group.join().await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(4),
        "1 s to fail, then the 3 s grace"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the straggler's future was dropped"
    );
    assert_eq!(error.aborted().len(), 1);
    let straggler = &error.aborted()[0];
    assert_eq!(straggler.name(), "stubborn");
    assert_eq!(straggler.spawned_at().line(), stubborn_line);
    assert_eq!(error.cancelled()[0].name(), "polite");
    let text = error.to_string();
    assert!(
        text.starts_with("task 'fails' failed: card declined; aborted: 'stubborn' ("),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_grace_counts_from_the_cancel_not_from_the_join() {
    let scope = Scope::new();
    let group: TaskGroup<()> = TaskGroup::builder(&scope)
        .grace(Duration::from_secs(3))
        .build();
    group.spawn("stubborn", |_| async { pending().await });
    tokio::task::yield_now().await;
    scope.cancel(Cause::plain());
    sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    let error = group.join().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(error.aborted().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_grace_aborts_at_once_and_an_endless_one_never() {
    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
        .grace(Duration::ZERO)
        .build();
    group.spawn("stubborn", |_| async { pending().await });
    group.scope().cancel(Cause::plain());
    let start = Instant::now();
    let error = group.join().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(error.aborted().len(), 1);

    let group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
        .grace(Duration::MAX)
        .build();
    group.spawn("slow-but-honest", |_| async {
        sleep(Duration::from_secs(86_400)).await;
        Ok(())
    });
    group.scope().cancel(Cause::plain());
    let start = Instant::now();
    let error = group.join().await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(86_400),
        "never aborted"
    );
    assert!(error.aborted().is_empty() && error.failures().is_empty());
    assert_eq!(error.cause().unwrap().kind(), CauseKind::Explicit);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_group_cancels_it_with_dropped_and_aborts_its_tasks() {
    let dropped = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(None));
    let group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    let scope = group.scope().clone();
    group.spawn("watcher", {
        let seen = seen.clone();
        move |scope| async move {
            *seen.lock().unwrap() = Some(scope);
            pending::<()>().await;
            Ok(())
        }
    });
    group.spawn("holder", {
        let dropped = dropped.clone();
        move |_| async move {
            let _flag = SetOnDrop(dropped);
            pending().await
        }
    });
    tokio::task::yield_now().await;
    drop(group);
    assert_eq!(scope.cause().unwrap().kind(), CauseKind::Dropped);
    let watcher = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        watcher.cause().unwrap().kind(),
        CauseKind::Dropped,
        "tasks see why"
    );
    tokio::task::yield_now().await;
    assert!(dropped.load(Ordering::SeqCst), "aborted, not left running");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_join_future_drops_the_group() {
    let dropped = Arc::new(AtomicBool::new(false));
    let group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    let scope = group.scope().clone();
    group.spawn("forever", {
        let dropped = dropped.clone();
        move |_| async move {
            let _flag = SetOnDrop(dropped);
            pending().await
        }
    });
    let mut join = task::spawn(group.join());
    assert_pending!(join.poll());
    tokio::task::yield_now().await;
    drop(join);
    assert_eq!(scope.cause().unwrap().kind(), CauseKind::Dropped);
    tokio::task::yield_now().await;
    assert!(dropped.load(Ordering::SeqCst), "the task was aborted");
}

#[tokio::test(start_paused = true)]
async fn a_joined_group_is_not_cancelled_when_dropped() {
    let mut group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    group.spawn("quick", |_| async { Ok(()) });
    assert!(group.join_next().await.is_some());
    let scope = group.scope().clone();
    drop(group);
    assert!(!scope.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn snapshots_follow_each_task_through_its_states() {
    let mut group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
        .name("pipeline")
        .limit(limit(4))
        .grace(Duration::from_secs(1))
        .collect_all()
        .build();
    group.spawn("completes", |_| async { Ok(()) });
    group.spawn("fails", |_| async { Err("bad row".into()) });
    group.spawn("panics", |_| async { panic!("oops") });
    group.spawn("stubborn", |_| async { pending().await });
    group.spawn("queued", |_| async { Ok(()) });
    let snapshot = group.snapshot();
    let states: Vec<_> = snapshot.tasks.iter().map(|t| t.state.to_string()).collect();
    assert_eq!(
        states,
        ["running", "running", "running", "running", "pending"]
    );

    sleep(Duration::from_millis(1)).await;
    let snapshot = group.snapshot();
    let states: Vec<_> = snapshot.tasks.iter().map(|t| t.state.to_string()).collect();
    assert_eq!(
        states,
        [
            "completed",
            "failed: bad row",
            "panicked: oops",
            "running",
            "completed"
        ]
    );
    group.scope().cancel(Cause::new("STOP"));
    let text = group.snapshot().to_string();
    assert!(
        text.starts_with("group pipeline: cancelled: cancelled (STOP)\n"),
        "{text}"
    );
    assert!(text.contains("  #3 stubborn ("), "{text}");

    let mut aborted = None;
    while let Some(exit) = group.join_next().await {
        if let Outcome::Aborted = exit.outcome {
            aborted = Some(exit.task.name().to_owned());
        }
    }
    assert_eq!(aborted.as_deref(), Some("stubborn"));
}

#[tokio::test(start_paused = true)]
async fn nested_groups_cancel_inwards_and_report_echoes_outwards() {
    let root = Scope::builder().name("svc").build();
    let outer: TaskGroup<()> = TaskGroup::builder(&root).name("outer").build();
    let inner_scope = Arc::new(std::sync::Mutex::new(None));
    outer.spawn("fans-out", {
        let inner_scope = inner_scope.clone();
        move |scope| async move {
            let inner: TaskGroup<()> = TaskGroup::builder(&scope).name("inner").build();
            *inner_scope.lock().unwrap() = Some(inner.scope().clone());
            for n in 0..3 {
                inner.spawn(format!("leaf-{n}"), |scope| async move {
                    Err(scope.cancelled().await.into())
                });
            }
            inner.join().await?;
            Ok(())
        }
    });
    outer.spawn("fails", |_| async {
        sleep(Duration::from_millis(1)).await;
        Err("upstream gone".into())
    });
    let error = outer.join().await.unwrap_err();
    assert_eq!(
        error.failures().len(),
        1,
        "the inner group's error is only an echo"
    );
    assert_eq!(error.cancelled()[0].name(), "fans-out");
    let inner = inner_scope.lock().unwrap().clone().unwrap();
    assert_eq!(inner.path(), "svc/outer/fans-out/inner");
    assert!(inner.cause().unwrap().ptr_eq(error.cause().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_tasks_join_cleanly() {
    let group: TaskGroup<u32> = TaskGroup::new(&Scope::new());
    let scope = group.scope().clone();
    for n in 0..100_000u32 {
        group.spawn("n", move |_| async move { Ok(n) });
    }
    let values = group.join().await.unwrap();
    assert_eq!(values.len(), 100_000);
    assert!(values.iter().enumerate().all(|(i, &v)| i as u32 == v));
    assert_eq!(scope.live_children(), 0, "every task scope was unlinked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_parked_tasks_are_cancelled_and_joined() {
    let group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    for _ in 0..100_000 {
        group.spawn("parked", |scope| async move {
            Err(scope.cancelled().await.into())
        });
    }
    group.scope().cancel(Cause::new("DRAIN"));
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cancelled().len(), 100_000);
    assert!(error.failures().is_empty() && error.aborted().is_empty());
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn join_is_pending_until_every_task_ends() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let group: TaskGroup<()> = TaskGroup::new(&Scope::new());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    group.spawn("waits", |_| async move {
        rx.await.unwrap();
        Ok(())
    });
    let mut join = task::spawn(group.join());
    assert_pending!(join.poll());
    tx.send(()).unwrap();
    rt.block_on(tokio::task::yield_now());
    assert!(join.is_woken());
    assert_ready!(join.poll()).unwrap();
}

/// A value a task's closure captured, whose `Drop` panics.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("a captured value's drop panicked");
    }
}

/// A group of limit 1 from `builder`: `first` runs until the group is cancelled, and `pending`
/// waits for its slot holding a value whose drop panics.
fn a_pending_task_that_panics_when_dropped(
    builder: taskscope::TaskGroupBuilder<'_, (), taskscope::BoxError>,
) -> TaskGroup<()> {
    let group = builder.limit(std::num::NonZeroUsize::MIN).build();
    group.spawn("first", |scope| async move {
        let _ = scope.cancelled().await;
        Ok(())
    });
    let captured = PanicsOnDrop;
    group.spawn("pending", move |_| async move {
        let _keep = &captured;
        Ok(())
    });
    group
}

/// Observes every task, and keeps how each ended.
#[derive(Default)]
struct Watching(std::sync::Mutex<Vec<(String, taskscope::observe::TaskOutcome)>>);

impl taskscope::observe::Observer for Watching {
    fn task_finished(&self, event: &taskscope::observe::TaskFinished<'_>) {
        let ended = (event.task.name().to_owned(), event.outcome);
        self.0.lock().unwrap().push(ended);
    }
}

/// A root scope, observed by `watching` if given.
fn root_watched_by(watching: Option<Arc<Watching>>) -> Scope {
    match watching {
        Some(watching) => Scope::builder().observer(watching).build(),
        None => Scope::new(),
    }
}

/// A task that never starts (pending under the limit, or spawned into a cancelled group) and
/// whose closure panics when dropped: the panic stays inside the group and is that task's,
/// `cancel` returns normally and `join` ends, with or without an observer watching the tasks.
#[test]
fn a_never_started_task_whose_closure_panics_on_drop_does_not_hang_or_unwind() {
    for watched in [false, true] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let watching = Arc::new(Watching::default());
            let root = root_watched_by(watched.then(|| watching.clone()));
            let group = a_pending_task_that_panics_when_dropped(TaskGroup::builder(&root));
            tokio::task::yield_now().await;
            let cancel = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                group.scope().cancel(Cause::plain())
            }));
            assert!(
                cancel.is_ok(),
                "watched {watched}: the drop's panic reached `cancel`"
            );
            let late = PanicsOnDrop;
            group.spawn("late", move |_| async move {
                let _keep = &late;
                Ok(())
            });
            let error = tokio::time::timeout(Duration::from_secs(60), group.join())
                .await
                .unwrap_or_else(|_| panic!("watched {watched}: join hangs"))
                .unwrap_err();
            // Each is reported as its own panic.
            let panicked: Vec<(&str, String)> = error
                .failures()
                .iter()
                .map(|failure| (failure.task.name(), failure.failure.to_string()))
                .collect();
            assert_eq!(
                panicked,
                [
                    (
                        "pending",
                        "panicked: a captured value's drop panicked".to_owned()
                    ),
                    (
                        "late",
                        "panicked: a captured value's drop panicked".to_owned()
                    ),
                ],
                "watched {watched}: {error:?}"
            );
            if watched {
                use taskscope::observe::TaskOutcome;
                let ended = watching.0.lock().unwrap().clone();
                assert!(
                    ended.contains(&("pending".to_owned(), TaskOutcome::Panicked)),
                    "{ended:?}"
                );
                assert!(
                    ended.contains(&("late".to_owned(), TaskOutcome::Panicked)),
                    "{ended:?}"
                );
            }
        });
    }
}

/// A group's running task lives on a runtime that shuts down: the task is reported aborted,
/// the pending tasks waiting for its slot end with it, aborted without starting (however many:
/// on a 2 MiB stack), and `join` on another runtime ends.
#[test]
fn a_runtime_shutting_down_under_a_running_task_does_not_hang_join() {
    const PENDING: usize = 20_000;
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let other = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let main = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let group: TaskGroup<()> = main.block_on(async {
                TaskGroup::builder(&Scope::new())
                    .limit(std::num::NonZeroUsize::MIN)
                    .build()
            });
            let started = Arc::new(AtomicUsize::new(0));
            other.block_on(async {
                group.spawn("on-other", |_| async {
                    pending::<()>().await;
                    Ok(())
                });
                for n in 0..PENDING {
                    let started = started.clone();
                    group.spawn(format!("queued-{n}"), move |_| {
                        started.fetch_add(1, Ordering::SeqCst);
                        async { Ok(()) }
                    });
                }
                tokio::task::yield_now().await;
            });
            drop(other);
            let error = main.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), group.join())
                    .await
                    .expect("join ends")
                    .unwrap_err()
            });
            assert_eq!(error.aborted().len(), PENDING + 1);
            assert_eq!(error.aborted()[0].name(), "on-other");
            assert_eq!(
                started.load(Ordering::SeqCst),
                0,
                "no closure runs on a dying runtime"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A task joins a group with a limit and a backlog; its multi-thread runtime is dropped. The
/// workers' 2 MiB stacks survive it.
#[test]
fn dropping_a_runtime_under_a_group_with_a_backlog() {
    for _ in 0..3 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let joining = Arc::new(AtomicBool::new(false));
        runtime.spawn({
            let joining = joining.clone();
            async move {
                let group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
                    .limit(4.try_into().unwrap())
                    .build();
                for n in 0..3_004 {
                    group.spawn(format!("crawl-{n}"), |_| async {
                        pending::<()>().await;
                        Ok(())
                    });
                }
                joining.store(true, Ordering::SeqCst);
                let _ = group.join().await;
            }
        });
        while !joining.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        drop(runtime);
    }
}

/// A joiner's waker that cancels the group the first time it is woken: woken by a task's
/// report, after its slot went to the next pending task and before that one starts.
struct CancelOnWake {
    scope: Scope,
    done: AtomicBool,
}

impl std::task::Wake for CancelOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.scope.cancel(Cause::plain());
        }
    }
}

/// A pending task taken into a freed slot and cancelled before it starts: its closure's drop
/// panic is its panic too, as when it is drained from the queue.
#[test]
fn a_pending_task_cancelled_on_its_way_to_start_keeps_its_drop_panic() {
    for watched in [false, true] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let watching = Arc::new(Watching::default());
            let root = root_watched_by(watched.then(|| watching.clone()));
            let mut group: TaskGroup<()> = TaskGroup::builder(&root)
                .limit(std::num::NonZeroUsize::MIN)
                .build();
            group.spawn("first", |_| async { Ok(()) });
            let captured = PanicsOnDrop;
            group.spawn("pending", move |_| async move {
                let _keep = &captured;
                pending::<()>().await;
                Ok(())
            });
            let waker = std::task::Waker::from(Arc::new(CancelOnWake {
                scope: group.scope().clone(),
                done: AtomicBool::new(false),
            }));
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(group.poll_join_next(&mut cx).is_pending());
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            let mut ended = Vec::new();
            while let Some(exit) = group.join_next().await {
                let panicked =
                    matches!(&exit.outcome, Outcome::Failed(failure) if failure.is_panic());
                ended.push((exit.task.name().to_owned(), panicked));
            }
            assert!(
                ended.contains(&("pending".to_owned(), true)),
                "watched {watched}: {ended:?}"
            );
            if watched {
                use taskscope::observe::TaskOutcome;
                let seen = watching.0.lock().unwrap().clone();
                assert!(
                    seen.contains(&("pending".to_owned(), TaskOutcome::Panicked)),
                    "{seen:?}"
                );
            }
        });
    }
}

/// With `resume_panics`, the first panic re-raised by `join` may be a never-started task's
/// closure panicking when dropped.
#[test]
fn resume_panics_resumes_a_never_started_tasks_drop_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let joined = runtime.block_on(async {
        let group = a_pending_task_that_panics_when_dropped(
            TaskGroup::builder(&Scope::new()).resume_panics(),
        );
        tokio::task::yield_now().await;
        group.scope().cancel(Cause::plain());
        tokio::spawn(group.join()).await
    });
    let panic = joined.expect_err("join re-raises the panic").into_panic();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"a captured value's drop panicked")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_within_clips_the_grace_to_the_budget_and_names_what_it_aborted() {
    for (grace, budget, took) in [(10, 3, 3), (2, 30, 2)] {
        let group: TaskGroup<()> = TaskGroup::builder(&Scope::new())
            .grace(Duration::from_secs(grace))
            .build();
        group.spawn("tidy", |scope| async move {
            scope.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        });
        group.spawn("stubborn", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let cause = Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM");
        let error = group
            .shutdown_within(cause, Duration::from_secs(budget))
            .await
            .expect_err("the group was shut down");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(took),
            "grace {grace}s"
        );
        assert_eq!(error.cause().map(Cause::code), Some("SIGTERM"));
        let aborted: Vec<&str> = error.aborted().iter().map(|task| task.name()).collect();
        assert_eq!(aborted, ["stubborn"]);
    }
}

/// `join` keeps polling its scope's deadline timer: a timer polled by a task that has spent its
/// cooperative budget returns pending without registering, so the next poll must try again.
#[tokio::test(start_paused = true)]
async fn join_notices_a_deadline_after_a_poll_without_cooperative_budget() {
    use std::future::{Future, poll_fn};
    use std::pin::pin;

    let root = Scope::new();
    let group: TaskGroup<()> = TaskGroup::builder(&root.child_with_timeout(Duration::from_secs(1)))
        .grace(Duration::from_secs(1))
        .build();
    group.spawn("stubborn", |_| async {
        pending::<()>().await;
        Ok(())
    });
    let start = Instant::now();
    let mut join = pin!(group.join());
    let mut first = true;
    let joined = poll_fn(|cx| {
        if std::mem::take(&mut first) {
            // Spend the budget, so that the deadline's timer cannot register this time.
            while pin!(tokio::task::consume_budget()).poll(cx).is_ready() {}
        }
        join.as_mut().poll(cx)
    });
    let joined = tokio::time::timeout(Duration::from_secs(30), joined).await;
    assert!(joined.is_ok(), "join never noticed the deadline");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_spawner_is_refused_with_the_reason_once_the_group_is_cancelled_joined_or_dropped() {
    let group = TaskGroup::new(&Scope::new());
    let spawner = group.spawner();
    spawner
        .spawn("first", |_| async { Ok(1) })
        .expect("spawned");
    assert_eq!(group.join().await.expect("completes"), [1]);
    let refused = spawner.spawn("late", |_| async { Ok(2) }).unwrap_err();
    assert_eq!(refused.cause().map(Cause::kind), Some(CauseKind::Dropped));
    let task = refused.into_task();
    let value = task(Scope::new())
        .await
        .expect("the closure comes back whole");
    assert_eq!(value, 2);

    let group: TaskGroup<u32> = TaskGroup::new(&Scope::new());
    let spawner = group.spawner();
    group.scope().cancel(Cause::new("STOP"));
    let refused = spawner.spawn("after", |_| async { Ok(3) }).unwrap_err();
    assert_eq!(refused.cause().map(Cause::code), Some("STOP"));
    drop(group);

    let group: TaskGroup<u32> = TaskGroup::new(&Scope::new());
    let spawner = group.spawner();
    drop(group);
    let refused = spawner.spawn("orphan", |_| async { Ok(4) }).unwrap_err();
    assert_eq!(refused.cause().map(Cause::kind), Some(CauseKind::Dropped));
}

#[tokio::test(start_paused = true)]
async fn tasks_named_alike_each_have_their_path() {
    let root = Scope::builder().name("orders").build();
    let group: TaskGroup<String> = TaskGroup::builder(&root).name("orders").build();
    let spawner = group.spawner();
    let path = |scope: Scope| async move { Ok(scope.path().to_string()) };
    // Literal names repeat, an empty one adds no segment, an owned one is not literal, and a
    // task may be named as its group.
    group.spawn("fetch", path);
    spawner.spawn("fetch", path).unwrap();
    group.spawn("", path);
    group.spawn("orders", path);
    group.spawn(String::from("fetch"), path);
    group.spawn("fetch", path);
    group.spawn("store", path);
    let paths = group.join().await.unwrap();
    assert_eq!(
        paths,
        [
            "orders/orders/fetch",
            "orders/orders/fetch",
            "orders/orders",
            "orders/orders/orders",
            "orders/orders/fetch",
            "orders/orders/fetch",
            "orders/orders/store",
        ]
    );
}
