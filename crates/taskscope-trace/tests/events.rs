//! The `tracing` events and spans of `TraceObserver`, one story per test, asserted through a
//! capturing layer (`common`). Paused tokio time throughout: tests wait on events or on virtual
//! time, never on real time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Capture, CapturedEvent, site};
use taskscope::observe::Observer;
use taskscope::{Backoff, BoxError, Cause, CauseKind, ChildSpec, Scope, Supervisor, TaskGroup};
use taskscope_trace::{CANCEL_TARGET, GROUP_TARGET, SUPERVISOR_TARGET, TASK_TARGET, TraceObserver};
use tokio::time::{Instant, sleep};
use tracing::Level;

/// This file, to find the columns of call sites in.
const SOURCE: &str = include_str!("events.rs");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The root scope `orders`, observed by `observer`.
fn orders(observer: TraceObserver) -> Scope {
    Scope::builder()
        .name("orders")
        .observer(Arc::new(observer))
        .build()
}

fn cancel_events(capture: &Capture) -> Vec<CapturedEvent> {
    capture.events_of(CANCEL_TARGET, "")
}

fn finished(capture: &Capture, task: &str) -> CapturedEvent {
    capture.the_event(TASK_TARGET, "task finished", "task.name", task)
}

fn slow_events(capture: &Capture) -> Vec<CapturedEvent> {
    capture.events_of(TASK_TARGET, "task slow to stop")
}

#[tokio::test(start_paused = true)]
async fn an_explicit_cancel_is_one_info_event_for_the_scope_it_was_aimed_at() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let order = orders.child_builder().name("order-17").build();
    let reserve = order.child_builder().name("reserve").build();
    let ship = order.child_builder().name("ship").build();
    let _grandchild = reserve.child_builder().name("lock").build();

    let line = line!() + 1;
    let won = order.cancel(Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42: 2 left"));
    assert!(won);
    assert!(reserve.is_cancelled() && ship.is_cancelled());

    let events = capture.events();
    assert_eq!(events.len(), 1, "descendants add no event: {events:#?}");
    let event = &events[0];
    assert_eq!(event.target, CANCEL_TARGET);
    assert_eq!(event.target, "taskscope::cancel");
    assert_eq!(event.level, Level::INFO);
    assert_eq!(event.message, "scope cancelled");
    assert_eq!(event.field("scope"), "orders/order-17");
    assert_eq!(event.field("cause.kind"), "explicit");
    assert_eq!(event.field("cause.code"), "INVENTORY_SHORTAGE");
    assert_eq!(event.field("cause.detail"), "sku-42: 2 left");
    assert_eq!(event.field("cause.origin"), "orders/order-17");
    assert_eq!(
        event.field("cause.location"),
        site(SOURCE, file!(), line, "cancel(")
    );
    assert!(!orders.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_cause_without_detail_has_no_detail_field() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    orders.cancel(Cause::of_kind(CauseKind::Shutdown));

    let events = cancel_events(&capture);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::INFO);
    assert_eq!(events[0].field("scope"), "orders");
    assert_eq!(events[0].field("cause.kind"), "shutdown");
    assert_eq!(events[0].field("cause.code"), "shutdown");
    assert!(!events[0].has("cause.detail"), "{events:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_is_reported_when_noticed_with_its_owner_as_origin() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let line = line!() + 1;
    let payment = orders
        .child_builder()
        .name("payment")
        .timeout(Duration::from_secs(2))
        .build();
    let charge = payment.child_builder().name("charge").build();
    assert!(cancel_events(&capture).is_empty());

    let start = Instant::now();
    let cause = charge.cancelled().await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);

    let events = cancel_events(&capture);
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::INFO);
    assert_eq!(event.message, "scope cancelled");
    assert_eq!(event.field("scope"), "orders/payment");
    assert_eq!(event.field("cause.kind"), "deadline_exceeded");
    assert_eq!(event.field("cause.code"), "deadline");
    assert_eq!(event.field("cause.origin"), "orders/payment");
    assert!(
        !event.has("cause.detail"),
        "no detail, no field: {event:#?}"
    );
    assert_eq!(
        event.field("cause.location"),
        site(SOURCE, file!(), line, "build(")
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_noticed_late_counts_latency_from_when_it_passed() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let payment = orders
        .child_builder()
        .name("payment")
        .timeout(Duration::from_secs(1))
        .build();
    let group: TaskGroup<()> = TaskGroup::builder(&payment).name("charge").build();
    group.spawn("card", |scope| async move {
        // Busy for 1.5 s, then looks: the deadline passed 0.5 s ago.
        sleep(ms(1500)).await;
        scope.check()?;
        Ok(())
    });
    // Nobody joins the group meanwhile: the task is the first to notice.
    capture.wait_for_event(TASK_TARGET, "task finished").await;
    let _ = group.join().await.unwrap_err();

    let events = cancel_events(&capture);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].field("scope"), "orders/payment");
    assert_eq!(events[0].field("cause.kind"), "deadline_exceeded");
    // Noticed by the task's code, so inside its span.
    assert_eq!(events[0].parent_name(), Some("taskscope.task"));
    let card = finished(&capture, "card");
    assert_eq!(card.field("task.outcome"), "cancelled");
    assert_eq!(card.field("cause.kind"), "deadline_exceeded");
    assert_eq!(card.field("cause.code"), "deadline");
    assert_eq!(card.field("cause.origin"), "orders/payment");
    assert_eq!(card.u64("task.elapsed_us"), 1_500_000);
    assert_eq!(card.u64("cancel.latency_us"), 500_000);
}

#[tokio::test(start_paused = true)]
async fn a_task_failure_is_a_warning_with_the_code_of_the_task_s_own_cause() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();

    let inventory_line = line!() + 1;
    group.spawn("inventory", |_| async {
        sleep(ms(10)).await;
        Err(Cause::new("INVENTORY_SHORTAGE")
            .with_detail("sku-42: 2 left")
            .into())
    });
    let payment_line = line!() + 1;
    group.spawn("payment", |scope| async move {
        let cause = scope.cancelled().await;
        // Cleaning up takes a while.
        sleep(ms(250)).await;
        Err(cause.into())
    });
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "INVENTORY_SHORTAGE");
    let inventory_site = site(SOURCE, file!(), inventory_line, "spawn(");
    let payment_site = site(SOURCE, file!(), payment_line, "spawn(");

    let events = cancel_events(&capture);
    assert_eq!(events.len(), 1, "{events:#?}");
    let cancel = &events[0];
    assert_eq!(cancel.level, Level::WARN);
    assert_eq!(cancel.message, "scope cancelled");
    assert_eq!(cancel.field("scope"), "orders/order-17");
    assert_eq!(cancel.field("cause.kind"), "task_failed");
    assert_eq!(cancel.field("cause.code"), "INVENTORY_SHORTAGE");
    assert_eq!(
        cancel.field("cause.detail"),
        "task 'inventory' failed: sku-42: 2 left"
    );
    assert_eq!(cancel.field("cause.origin"), "orders/order-17/inventory");
    // A failure cancels from where the failing task was spawned.
    assert_eq!(cancel.field("cause.location"), inventory_site);

    let inventory = finished(&capture, "inventory");
    assert_eq!(inventory.level, Level::WARN);
    assert_eq!(inventory.field("scope"), "orders/order-17/inventory");
    assert_eq!(inventory.field("task.id"), "0");
    assert_eq!(inventory.field("task.spawned_at"), inventory_site);
    assert_eq!(inventory.field("task.outcome"), "failed");
    assert_eq!(
        inventory.field("task.error"),
        "cancelled (INVENTORY_SHORTAGE): sku-42: 2 left"
    );
    assert_eq!(inventory.u64("task.elapsed_us"), 10_000);
    // Its own failure is not what stopped it.
    assert!(!inventory.has("cause.code"), "{inventory:#?}");
    assert!(!inventory.has("cancel.latency_us"), "{inventory:#?}");

    let payment = finished(&capture, "payment");
    assert_eq!(payment.level, Level::DEBUG);
    assert_eq!(payment.field("scope"), "orders/order-17/payment");
    assert_eq!(payment.field("task.id"), "1");
    assert_eq!(payment.field("task.spawned_at"), payment_site);
    assert_eq!(payment.field("task.outcome"), "cancelled");
    assert_eq!(payment.field("cause.kind"), "task_failed");
    assert_eq!(payment.field("cause.code"), "INVENTORY_SHORTAGE");
    assert_eq!(payment.field("cause.origin"), "orders/order-17/inventory");
    assert_eq!(
        payment.field("cause.detail"),
        "task 'inventory' failed: sku-42: 2 left"
    );
    assert_eq!(payment.u64("cancel.latency_us"), 250_000);
    assert_eq!(payment.u64("task.elapsed_us"), 260_000);
    assert!(!payment.has("task.error"), "{payment:#?}");
}

/// Panics on empty input: a bug in a task.
fn parse(input: &str) -> Result<(), BoxError> {
    if input.is_empty() {
        panic!("empty input");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_reported_as_task_panicked() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("import").build();
    let line = line!() + 1;
    group.spawn("parser", |_| async { parse("") });
    group.spawn("loader", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    let error = group.join().await.unwrap_err();
    assert!(error.first_failure().unwrap().failure.is_panic());

    let events = cancel_events(&capture);
    assert_eq!(events.len(), 1, "{events:#?}");
    let cancel = &events[0];
    assert_eq!(cancel.level, Level::WARN);
    assert_eq!(cancel.field("scope"), "orders/import");
    assert_eq!(cancel.field("cause.kind"), "task_panicked");
    assert_eq!(cancel.field("cause.code"), "panicked");
    assert_eq!(
        cancel.field("cause.detail"),
        "task 'parser' panicked: empty input"
    );
    assert_eq!(cancel.field("cause.origin"), "orders/import/parser");

    let parser = finished(&capture, "parser");
    assert_eq!(parser.level, Level::WARN);
    assert_eq!(parser.field("task.outcome"), "panicked");
    assert_eq!(parser.field("task.error"), "empty input");
    assert_eq!(
        parser.field("task.spawned_at"),
        site(SOURCE, file!(), line, "spawn(")
    );
    assert!(!parser.has("cause.code"), "{parser:#?}");

    let loader = finished(&capture, "loader");
    assert_eq!(loader.level, Level::DEBUG);
    assert_eq!(loader.field("task.outcome"), "cancelled");
    assert_eq!(loader.field("cause.kind"), "task_panicked");
    assert_eq!(loader.u64("cancel.latency_us"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_task_still_running_after_the_grace_is_aborted_with_a_warning() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<()> = TaskGroup::builder(&orders)
        .name("sync")
        .grace(Duration::from_secs(1))
        .build();
    let line = line!() + 1;
    group.spawn("stubborn", |_| async {
        // Ignores its cancellation.
        sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    group
        .scope()
        .cancel(Cause::new("SHUTTING_DOWN").with_detail("deploy"));
    let error = group.join().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(error.aborted()[0].name(), "stubborn");

    let stubborn = finished(&capture, "stubborn");
    assert_eq!(stubborn.level, Level::WARN);
    assert_eq!(stubborn.field("scope"), "orders/sync/stubborn");
    assert_eq!(stubborn.field("task.outcome"), "aborted");
    assert_eq!(
        stubborn.field("task.spawned_at"),
        site(SOURCE, file!(), line, "spawn(")
    );
    assert_eq!(stubborn.field("cause.kind"), "explicit");
    assert_eq!(stubborn.field("cause.code"), "SHUTTING_DOWN");
    assert_eq!(stubborn.field("cause.detail"), "deploy");
    assert_eq!(stubborn.field("cause.origin"), "orders/sync");
    let latency = stubborn.u64("cancel.latency_us");
    assert!(
        (1_000_000..=1_001_000).contains(&latency),
        "cancel.latency_us = {latency}"
    );
    assert!(!stubborn.has("task.error"), "{stubborn:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_task_slow_to_stop_is_reported_once_with_its_name_and_spawn_site() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new().slow_to_stop_after(Some(ms(500))));
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("sync").build();
    let line = line!() + 1;
    group.spawn("stubborn", |_| async {
        // Ignores its cancellation for 2 s.
        sleep(Duration::from_secs(2)).await;
        Ok(())
    });
    group.spawn("prompt", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    group.scope().cancel(Cause::new("SHUTTING_DOWN"));

    capture
        .wait_for_event(TASK_TARGET, "task slow to stop")
        .await;
    assert_eq!(start.elapsed(), ms(500));
    let _ = group.join().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let slow = slow_events(&capture);
    assert_eq!(slow.len(), 1, "once, for the stubborn task only: {slow:#?}");
    let slow = &slow[0];
    assert_eq!(slow.level, Level::WARN);
    assert_eq!(slow.message, "task slow to stop");
    assert_eq!(slow.field("scope"), "orders/sync/stubborn");
    assert_eq!(slow.field("task.name"), "stubborn");
    assert_eq!(slow.field("task.id"), "0");
    assert_eq!(
        slow.field("task.spawned_at"),
        site(SOURCE, file!(), line, "spawn(")
    );
    assert_eq!(slow.field("cause.kind"), "explicit");
    assert_eq!(slow.field("cause.code"), "SHUTTING_DOWN");
    assert_eq!(slow.field("cause.origin"), "orders/sync");
    assert_eq!(slow.u64("cancel.elapsed_us"), 500_000);
    assert_eq!(slow.parent_name(), Some("taskscope.task"));

    // It did stop, late, and without an error.
    let stubborn = finished(&capture, "stubborn");
    assert_eq!(stubborn.level, Level::DEBUG);
    assert_eq!(stubborn.field("task.outcome"), "completed");
    assert_eq!(stubborn.u64("cancel.latency_us"), 2_000_000);
    assert_eq!(stubborn.field("cause.code"), "SHUTTING_DOWN");
}

#[tokio::test(start_paused = true)]
async fn a_prompt_task_is_not_slow_to_stop() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new().slow_to_stop_after(Some(ms(500))));
    let mut group: TaskGroup<()> = TaskGroup::builder(&orders).name("sync").build();
    group.spawn("prompt", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(100)).await;
        Err(cause.into())
    });
    tokio::task::yield_now().await;
    group.scope().cancel(Cause::new("SHUTTING_DOWN"));
    while group.join_next().await.is_some() {}
    // Well past the threshold, with the group still alive.
    sleep(Duration::from_secs(5)).await;
    assert!(slow_events(&capture).is_empty(), "{:#?}", capture.events());
    assert_eq!(
        finished(&capture, "prompt").u64("cancel.latency_us"),
        100_000
    );
    drop(group);
}

#[tokio::test(start_paused = true)]
async fn no_slow_to_stop_report_when_it_is_turned_off() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new().slow_to_stop_after(None));
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("sync").build();
    group.spawn("stubborn", |_| async {
        sleep(Duration::from_secs(4)).await;
        Ok(())
    });
    tokio::task::yield_now().await;
    group.scope().cancel(Cause::new("SHUTTING_DOWN"));
    let _ = group.join().await.unwrap_err();

    assert!(slow_events(&capture).is_empty(), "{:#?}", capture.events());
    assert_eq!(
        finished(&capture, "stubborn").u64("cancel.latency_us"),
        4_000_000
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_that_loses_is_a_debug_event_and_is_counted() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let observer = Arc::new(TraceObserver::new());
    let orders = Scope::builder()
        .name("orders")
        .observer(observer.clone() as Arc<dyn Observer>)
        .build();
    let order = orders.child_builder().name("order-17").build();
    assert!(order.cancel(Cause::new("USER_CANCELLED")));
    assert_eq!(observer.lost_cancels(), 0);
    let line = line!() + 1;
    let won = order.cancel(Cause::new("PAYMENT_DECLINED").with_detail("card expired"));
    assert!(!won);
    assert_eq!(order.cause().unwrap().code(), "USER_CANCELLED");

    let won = capture.events_of(CANCEL_TARGET, "scope cancelled");
    assert_eq!(won.len(), 1, "{won:#?}");
    let lost = capture.events_of(CANCEL_TARGET, "cancel lost");
    assert_eq!(lost.len(), 1, "{lost:#?}");
    let lost = &lost[0];
    assert_eq!(lost.level, Level::DEBUG);
    assert_eq!(lost.message, "cancel lost");
    assert_eq!(lost.field("scope"), "orders/order-17");
    assert_eq!(lost.field("cause.kind"), "explicit");
    assert_eq!(lost.field("cause.code"), "PAYMENT_DECLINED");
    assert_eq!(lost.field("cause.detail"), "card expired");
    assert_eq!(lost.field("cause.origin"), "orders/order-17");
    assert_eq!(
        lost.field("cause.location"),
        site(SOURCE, file!(), line, "cancel(")
    );
    assert_eq!(lost.field("winner.kind"), "explicit");
    assert_eq!(lost.field("winner.code"), "USER_CANCELLED");
    assert_eq!(lost.field("winner.origin"), "orders/order-17");
    assert_eq!(observer.lost_cancels(), 1);

    order.cancel(Cause::plain());
    assert_eq!(observer.lost_cancels(), 2);
    assert_eq!(capture.events_of(CANCEL_TARGET, "cancel lost").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_task_failing_after_its_group_was_cancelled_loses_and_keeps_the_winner_as_cause() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let observer = Arc::new(TraceObserver::new());
    let orders = Scope::builder()
        .name("orders")
        .observer(observer.clone() as Arc<dyn Observer>)
        .build();
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("payment", |scope| async move {
        scope.cancelled().await;
        sleep(ms(20)).await;
        Err("gateway closed the connection".into())
    });
    tokio::task::yield_now().await;
    group.scope().cancel(Cause::new("USER_CANCELLED"));
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "USER_CANCELLED");

    assert_eq!(capture.events_of(CANCEL_TARGET, "scope cancelled").len(), 1);
    let lost = capture.events_of(CANCEL_TARGET, "cancel lost");
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(lost[0].field("scope"), "orders/order-17");
    assert_eq!(lost[0].field("cause.kind"), "task_failed");
    assert_eq!(lost[0].field("cause.code"), "task_failed");
    assert_eq!(lost[0].field("cause.origin"), "orders/order-17/payment");
    assert_eq!(
        lost[0].field("cause.detail"),
        "task 'payment' failed: gateway closed the connection"
    );
    assert_eq!(lost[0].field("winner.kind"), "explicit");
    assert_eq!(lost[0].field("winner.code"), "USER_CANCELLED");
    assert_eq!(lost[0].field("winner.origin"), "orders/order-17");
    assert_eq!(observer.lost_cancels(), 1);

    // A failure, though the cancellation came first: the cause is the winner's.
    let payment = finished(&capture, "payment");
    assert_eq!(payment.level, Level::WARN);
    assert_eq!(payment.field("task.outcome"), "failed");
    assert_eq!(payment.field("task.error"), "gateway closed the connection");
    assert_eq!(payment.field("cause.code"), "USER_CANCELLED");
    assert_eq!(payment.u64("cancel.latency_us"), 20_000);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_losing_to_a_passed_deadline_is_a_lost_cancel() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let observer = Arc::new(TraceObserver::new());
    let orders = Scope::builder()
        .name("orders")
        .observer(observer.clone() as Arc<dyn Observer>)
        .build();
    let payment = orders
        .child_builder()
        .name("payment")
        .timeout(Duration::from_secs(1))
        .build();
    // The deadline passes; nobody looks.
    sleep(Duration::from_secs(2)).await;
    let won = payment.cancel(Cause::new("USER_CANCELLED"));
    // First cause wins, by time: the deadline.
    assert!(!won);
    assert_eq!(payment.cause().unwrap().kind(), CauseKind::DeadlineExceeded);

    let cancelled = capture.events_of(CANCEL_TARGET, "scope cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:#?}");
    assert_eq!(cancelled[0].field("cause.kind"), "deadline_exceeded");
    // `cancel` said it lost; the observer should hear of it.
    let lost = capture.events_of(CANCEL_TARGET, "cancel lost");
    assert_eq!(lost.len(), 1, "{:#?}", capture.events());
    assert_eq!(lost[0].field("cause.code"), "USER_CANCELLED");
    assert_eq!(lost[0].field("winner.code"), "deadline");
    assert_eq!(observer.lost_cancels(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_reported_once_for_its_owner_when_a_descendant_is_cancelled() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let payment = orders
        .child_builder()
        .name("payment")
        .timeout(Duration::from_secs(1))
        .build();
    let charge = payment.child_builder().name("charge").build();
    let fired = Arc::new(AtomicU32::new(0));
    let _on_cancel = payment.on_cancel({
        let fired = fired.clone();
        move |_| {
            fired.fetch_add(1, Ordering::Relaxed);
        }
    });
    sleep(Duration::from_secs(2)).await;
    assert!(!charge.cancel(Cause::new("USER_CANCELLED")));
    // The cancellation reached a scope past its (inherited) deadline: that notices the
    // deadline, which cancels its owner with its subtree and callbacks (concepts guide).
    assert_eq!(fired.load(Ordering::Relaxed), 1, "the owner's callback ran");
    let cancelled = capture.events_of(CANCEL_TARGET, "scope cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:#?}");
    assert!(payment.is_cancelled());

    let cancelled = capture.events_of(CANCEL_TARGET, "scope cancelled");
    let scopes: Vec<_> = cancelled.iter().map(|event| event.field("scope")).collect();
    assert_eq!(
        scopes,
        ["orders/payment"],
        "one deadline, one report, for its owner: {cancelled:#?}"
    );
    assert_eq!(capture.events_of(CANCEL_TARGET, "cancel lost").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_returned_ok_is_restarted_without_a_cause() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let ticks = Arc::new(AtomicU32::new(0));
    let tick = ChildSpec::new("tick", {
        let ticks = ticks.clone();
        move |_: Scope| {
            ticks.fetch_add(1, Ordering::Relaxed);
            async {
                sleep(ms(500)).await;
                Ok(())
            }
        }
    });
    let supervisor = Supervisor::builder()
        .name("cron")
        .backoff(Backoff::exponential(ms(100)).factor(1.0))
        .child(tick)
        .start(&orders)
        .unwrap();
    capture
        .wait_for_event(SUPERVISOR_TARGET, "child restarting")
        .await;
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    let restart = &capture.events_of(SUPERVISOR_TARGET, "child restarting")[0];
    assert_eq!(restart.field("child.name"), "tick");
    assert_eq!(restart.u64("child.restarts"), 1, "the first restart");
    for field in ["cause.kind", "cause.code", "cause.detail", "cause.origin"] {
        assert!(!restart.has(field), "{field}: {restart:#?}");
    }
    assert!(ticks.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_restart_is_an_info_event_naming_the_child_and_the_failure() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let runs = Arc::new(AtomicU32::new(0));
    let feed = ChildSpec::new("feed", {
        let runs = runs.clone();
        move |scope: Scope| {
            let run = runs.fetch_add(1, Ordering::Relaxed);
            async move {
                if run == 0 {
                    sleep(Duration::from_secs(1)).await;
                    return Err(BoxError::from(
                        Cause::new("CONNECTION_RESET").with_detail("peer hung up"),
                    ));
                }
                scope.cancelled().await;
                Ok(())
            }
        }
    });
    let supervisor = Supervisor::builder()
        .name("ingest")
        .backoff(Backoff::exponential(ms(100)).factor(1.0))
        .child(feed)
        .start(&orders)
        .unwrap();

    capture
        .wait_for_event(SUPERVISOR_TARGET, "child restarting")
        .await;
    // Its backoff (virtual time), then it runs again.
    sleep(ms(200)).await;
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    let restarts = capture.events_of(SUPERVISOR_TARGET, "");
    assert_eq!(restarts.len(), 1, "{restarts:#?}");
    let restart = &restarts[0];
    assert_eq!(restart.target, "taskscope::supervisor");
    assert_eq!(restart.level, Level::INFO);
    assert_eq!(restart.message, "child restarting");
    assert_eq!(restart.field("scope"), "orders/ingest");
    assert_eq!(restart.field("child.name"), "feed");
    assert_eq!(restart.u64("child.restarts"), 1, "the first restart");
    assert_eq!(restart.u64("restart.delay_us"), 100_000);
    assert_eq!(restart.field("cause.kind"), "task_failed");
    assert_eq!(restart.field("cause.code"), "CONNECTION_RESET");
    assert_eq!(
        restart.field("cause.detail"),
        "task 'feed' failed: peer hung up"
    );
    assert_eq!(restart.field("cause.origin"), "orders/ingest/feed");
}

#[tokio::test(start_paused = true)]
async fn group_and_task_spans_nest_and_record_how_the_task_ended() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let request = tracing::info_span!("request", request.id = 17);
    let group: TaskGroup<()> =
        request.in_scope(|| TaskGroup::builder(&orders).name("order-17").build());
    let line = line!() + 1;
    group.spawn("payment", |scope| {
        tracing::info!(target: "orders::payment", "preparing");
        async move {
            tracing::info!(target: "orders::payment", "charging card");
            let cause = scope.cancelled().await;
            sleep(ms(40)).await;
            tracing::info!(target: "orders::payment", "refunding");
            Err(cause.into())
        }
    });
    capture
        .wait_for_event("orders::payment", "charging card")
        .await;

    let request_span = &capture.spans_named("request")[0];
    let groups = capture.spans_named("taskscope.group");
    assert_eq!(groups.len(), 1, "{groups:#?}");
    let group_span = &groups[0];
    assert_eq!(group_span.target, GROUP_TARGET);
    assert_eq!(group_span.target, "taskscope::group");
    assert_eq!(group_span.level, Level::INFO);
    assert_eq!(group_span.field("scope"), "orders/order-17");
    assert_eq!(group_span.parent_key(), Some(request_span.key));
    assert!(group_span.recorded.is_empty(), "{group_span:#?}");

    let tasks = capture.spans_named("taskscope.task");
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let task_span = &tasks[0];
    assert_eq!(task_span.target, TASK_TARGET);
    assert_eq!(task_span.level, Level::INFO);
    assert_eq!(task_span.parent_key(), Some(group_span.key));
    // The path is its group span's, the spawn site its events': a log line repeats neither.
    assert!(task_span.get("scope").is_none() && task_span.get("task.spawned_at").is_none());
    assert_eq!(task_span.field("task.name"), "payment");
    assert_eq!(task_span.field("task.id"), "0");
    let spawn_site = site(SOURCE, file!(), line, "spawn(");
    assert!(task_span.recorded.is_empty(), "{task_span:#?}");
    assert!(!task_span.closed);

    group
        .scope()
        .cancel(Cause::new("USER_CANCELLED").with_detail("customer clicked cancel"));
    let _ = group.join().await.unwrap_err();

    // The task's own events nest under its span: in its closure and in every poll.
    for message in ["preparing", "charging card", "refunding"] {
        let events = capture.events_of("orders::payment", message);
        assert_eq!(events.len(), 1, "{events:#?}");
        let parent = events[0].parent.as_ref().expect("a parent span");
        assert_eq!(parent.key, task_span.key, "{message}");
        assert_eq!(parent.name, "taskscope.task");
    }
    // So do the observer's events about the task.
    let spawned = capture.the_event(TASK_TARGET, "task spawned", "task.name", "payment");
    assert_eq!(spawned.level, Level::TRACE);
    assert_eq!(spawned.field("scope"), "orders/order-17/payment");
    assert_eq!(spawned.field("task.pending"), "false");
    assert_eq!(spawned.field("task.spawned_at"), spawn_site);
    let started = capture.the_event(TASK_TARGET, "task started", "task.name", "payment");
    assert_eq!(started.level, Level::TRACE);
    assert_eq!(started.field("task.id"), "0");
    assert_eq!(started.parent.as_ref().unwrap().key, task_span.key);
    let finished = finished(&capture, "payment");
    assert_eq!(finished.parent.as_ref().unwrap().key, task_span.key);

    // The task span recorded how it ended, and closed.
    let task_span = capture.span(task_span.key);
    assert_eq!(task_span.recorded("task.outcome"), "cancelled");
    assert_eq!(task_span.recorded("cause.kind"), "explicit");
    assert_eq!(task_span.recorded("cause.code"), "USER_CANCELLED");
    assert_eq!(
        task_span.recorded("cause.detail"),
        "customer clicked cancel"
    );
    assert_eq!(task_span.recorded("cause.origin"), "orders/order-17");
    assert_eq!(task_span.recorded("cancel.latency_us"), "40000");
    assert!(task_span.closed, "{task_span:#?}");

    // The group span, when the group was dropped (by `join`).
    let group_span = capture.span(group_span.key);
    assert_eq!(group_span.recorded("cause.kind"), "explicit");
    assert_eq!(group_span.recorded("cause.code"), "USER_CANCELLED");
    assert_eq!(
        group_span.recorded("cause.detail"),
        "customer clicked cancel"
    );
    assert_eq!(group_span.recorded("cause.origin"), "orders/order-17");
    assert!(group_span.closed, "{group_span:#?}");
    assert!(!capture.span(request_span.key).closed);
}

#[tokio::test(start_paused = true)]
async fn spans_of_a_group_that_completes_record_no_cause() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<u32> = TaskGroup::builder(&orders).name("sums").build();
    group.spawn("one", |_| async { Ok(1) });
    group.spawn("two", |_| async {
        sleep(ms(5)).await;
        Ok(2)
    });
    assert_eq!(group.join().await.unwrap(), [1, 2]);

    let group_span = &capture.spans_named("taskscope.group")[0];
    assert_eq!(group_span.parent, None, "no span was current");
    assert!(group_span.recorded.is_empty(), "{group_span:#?}");
    assert!(group_span.closed);
    let tasks = capture.spans_named("taskscope.task");
    assert_eq!(tasks.len(), 2);
    for task in &tasks {
        assert_eq!(task.parent_key(), Some(group_span.key));
        assert_eq!(task.recorded("task.outcome"), "completed");
        assert!(!task.recorded.contains_key("cause.code"), "{task:#?}");
        assert!(
            !task.recorded.contains_key("cancel.latency_us"),
            "{task:#?}"
        );
        assert!(task.closed);
    }
    for name in ["one", "two"] {
        let event = finished(&capture, name);
        assert_eq!(event.level, Level::DEBUG);
        assert_eq!(event.field("task.outcome"), "completed");
        assert!(!event.has("cause.code") && !event.has("cancel.latency_us"));
    }
    assert_eq!(finished(&capture, "two").u64("task.elapsed_us"), 5_000);
}

#[tokio::test(start_paused = true)]
async fn a_pending_task_cancelled_before_it_starts_is_cancelled_without_a_span() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<()> = TaskGroup::builder(&orders)
        .name("crawl")
        .limit(1.try_into().unwrap())
        .build();
    group.spawn("first", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    group.spawn("second", |_| async { Ok(()) });
    let pending = capture.the_event(TASK_TARGET, "task spawned", "task.name", "second");
    assert_eq!(pending.field("task.pending"), "true");
    group.scope().cancel(Cause::new("QUOTA_EXCEEDED"));
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cancelled().len(), 2);

    let second = finished(&capture, "second");
    assert_eq!(second.level, Level::DEBUG);
    assert_eq!(second.field("task.outcome"), "cancelled");
    assert_eq!(second.field("cause.code"), "QUOTA_EXCEEDED");
    assert_eq!(second.u64("task.elapsed_us"), 0);
    assert!(!second.has("cancel.latency_us"), "{second:#?}");
    let tasks = capture.spans_named("taskscope.task");
    assert_eq!(tasks.len(), 1, "only the task that started: {tasks:#?}");
    assert_eq!(tasks[0].field("task.name"), "first");
}

#[tokio::test(start_paused = true)]
async fn without_a_listener_for_task_events_tasks_are_not_reported_but_scopes_are() {
    // Everything but the `taskscope::task` target.
    let capture = Capture::filtered(|metadata| metadata.target() != TASK_TARGET);
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new().slow_to_stop_after(Some(ms(100))));
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("inventory", |_| async {
        tracing::info!(target: "orders::inventory", "reserving");
        sleep(ms(10)).await;
        Err(Cause::new("INVENTORY_SHORTAGE").into())
    });
    group.spawn("slow", |_| async {
        sleep(Duration::from_secs(1)).await;
        Ok(())
    });
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "INVENTORY_SHORTAGE");

    let cancelled = cancel_events(&capture);
    assert_eq!(cancelled.len(), 1, "{cancelled:#?}");
    assert_eq!(cancelled[0].field("cause.code"), "INVENTORY_SHORTAGE");
    assert_eq!(
        cancelled[0].field("cause.origin"),
        "orders/order-17/inventory"
    );
    assert!(
        capture
            .events()
            .iter()
            .all(|event| event.target != TASK_TARGET),
        "{:#?}",
        capture.events()
    );
    assert!(capture.spans_named("taskscope.task").is_empty());
    // The group span is still made; the task's own events have no task span to nest in.
    let group_span = &capture.spans_named("taskscope.group")[0];
    assert_eq!(group_span.recorded("cause.code"), "INVENTORY_SHORTAGE");
    let reserving = &capture.events_of("orders::inventory", "reserving")[0];
    assert_eq!(reserving.parent, None);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_disables_everything_captures_nothing_and_groups_still_work() {
    let capture = Capture::disabled();
    let _guard = capture.set_default();
    let observer = Arc::new(TraceObserver::new().slow_to_stop_after(Some(ms(100))));
    let orders = Scope::builder()
        .name("orders")
        .observer(observer.clone() as Arc<dyn Observer>)
        .build();

    let group: TaskGroup<u32> = TaskGroup::builder(&orders)
        .name("sums")
        .limit(1.try_into().unwrap())
        .build();
    group.spawn("one", |_| async { Ok(1) });
    group.spawn("two", |_| async { Ok(2) });
    assert_eq!(group.join().await.unwrap(), [1, 2]);

    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("inventory", |_| async {
        sleep(ms(10)).await;
        Err(Cause::new("INVENTORY_SHORTAGE").into())
    });
    group.spawn("slow", |_| async {
        sleep(Duration::from_secs(1)).await;
        Ok(())
    });
    let error = group.join().await.unwrap_err();
    assert_eq!(error.cause().unwrap().code(), "INVENTORY_SHORTAGE");
    assert_eq!(
        error.cause().unwrap().origin(),
        Some("orders/order-17/inventory")
    );

    orders.cancel(Cause::new("SHUTTING_DOWN"));
    orders.cancel(Cause::new("AGAIN"));
    assert_eq!(observer.lost_cancels(), 1);
    assert!(
        capture.is_empty(),
        "{:#?} {:#?}",
        capture.events(),
        capture.spans()
    );
}

/// Scope and task names and task errors are text fields, escaped by the subscriber like codes
/// and details: a name holding a line break cannot forge a log line.
#[tokio::test(start_paused = true)]
async fn names_and_errors_cannot_forge_log_lines() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::DEBUG)
        .without_time()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    const FORGED: &str = "\n ERROR taskscope::cancel: forged";
    let forged = FORGED;
    let orders = Scope::builder()
        .name(format!("orders{forged}"))
        .observer(Arc::new(TraceObserver::new()))
        .build();
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-1").build();
    group.spawn(format!("pay{forged}"), |_| async {
        Err(format!("declined{FORGED}").into())
    });
    let _ = group.join().await.unwrap_err();
    orders.cancel(Cause::new("SHUTDOWN"));

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let forged_lines: Vec<_> = logs
        .lines()
        .filter(|line| line.starts_with(" ERROR taskscope::cancel: forged"))
        .collect();
    assert!(forged_lines.is_empty(), "{logs}");
    assert!(logs.contains(r"orders\n ERROR"), "{logs}");
    assert!(logs.contains(r"pay\n ERROR"), "{logs}");
    assert!(logs.contains(r"declined\n ERROR"), "{logs}");
}

#[tokio::test(start_paused = true)]
async fn a_task_is_reported_if_a_subscriber_listens_when_it_is_spawned_not_when_its_group_was_made()
{
    // The group is made while nobody listens: its first task is not observed...
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("batch").build();
    group.spawn("before", |_| async { Ok(()) });
    // ...the subscriber comes later: the tasks spawned from then on are.
    let capture = Capture::new();
    let _guard = capture.set_default();
    group.spawn("after", |_| async { Ok(()) });
    group.join().await.expect("both complete");

    let finished = capture.events_of(TASK_TARGET, "task finished");
    let names: Vec<&str> = finished.iter().map(|e| e.field("task.name")).collect();
    assert_eq!(names, ["after"]);
    assert_eq!(capture.spans_named("taskscope.task").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_supervisors_children_run_in_a_supervisor_span() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let app = orders(TraceObserver::new());
    let supervisor = Supervisor::builder()
        .name("ingest")
        .child(ChildSpec::new("feed", |scope: Scope| async move {
            scope.cancelled().await;
            Ok::<(), BoxError>(())
        }))
        .start(&app)
        .unwrap();
    tokio::task::yield_now().await;
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    assert!(capture.spans_named("taskscope.group").is_empty());
    let span = &capture.spans_named("taskscope.supervisor")[0];
    assert_eq!(span.target, SUPERVISOR_TARGET);
    assert_eq!(span.field("scope"), "orders/ingest");
    let feed = &capture.spans_named("taskscope.task")[0];
    assert_eq!(feed.parent_key(), Some(span.key));
}

/// OpenTelemetry's `error.type`: a bounded name on the events that report an error, none on
/// those that report a cancellation someone asked for.
#[tokio::test(start_paused = true)]
async fn error_type_names_errors_with_a_bounded_code() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let orders = orders(TraceObserver::new().known_codes(["INVENTORY_SHORTAGE"]));
    let from_the_wire = |code: &str| -> Cause {
        serde_json::from_value(serde_json::json!({"v": 1, "kind": "task_failed", "code": code}))
            .unwrap()
    };
    let cancel = |name: &str, cause: Cause| {
        orders.child_builder().name(name).build().cancel(cause);
    };
    cancel("asked", Cause::new("USER_CANCELLED"));
    cancel("known", from_the_wire("INVENTORY_SHORTAGE"));
    cancel("unknown", from_the_wire("SOMETHING_NEW"));
    let group = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("payment", |_| async {
        Err::<(), BoxError>(Cause::new("PAYMENT_DECLINED").into())
    });
    let _ = group.join().await;

    let error_type = |scope: &str| {
        let event = capture.the_event(CANCEL_TARGET, "scope cancelled", "scope", scope);
        event
            .has("error.type")
            .then(|| event.field("error.type").to_owned())
    };
    assert_eq!(error_type("orders/asked"), None);
    assert_eq!(
        error_type("orders/known").as_deref(),
        Some("INVENTORY_SHORTAGE")
    );
    assert_eq!(
        error_type("orders/unknown").as_deref(),
        Some(taskscope_trace::OTHER_CODE)
    );
    assert_eq!(
        error_type("orders/order-17").as_deref(),
        Some("PAYMENT_DECLINED")
    );
    assert_eq!(finished(&capture, "payment").field("error.type"), "failed");
}
