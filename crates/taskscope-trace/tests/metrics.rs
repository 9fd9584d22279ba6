//! The metrics of `TraceObserver::metrics`, through a `DebuggingRecorder` installed as the
//! thread's local recorder, on a current-thread runtime with paused time (so every task, timer
//! and observer callback runs on the test's thread).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use taskscope::{Backoff, BoxError, Cause, CauseKind, ChildSpec, Scope, Supervisor, TaskGroup};
use taskscope_trace::TraceObserver;
use taskscope_trace::metrics::{
    CANCEL_LATENCY, CANCELLATIONS, LOST_CANCELS, RESTARTS, TASKS_ABORTED, TASKS_FINISHED,
    TASKS_PENDING, TASKS_RUNNING, TASKS_SLOW_TO_STOP,
};
use tokio::time::sleep;

type Labels = BTreeMap<String, String>;
type MetricKey = (String, Labels);

/// Everything recorded so far. A `DebuggingRecorder` snapshot resets counters and gauges to
/// zero and drains histograms, so snapshots are accumulated here: counters and gauges (only
/// ever incremented and decremented) add up, histogram values are appended.
struct Recorded {
    snapshotter: Snapshotter,
    counters: BTreeMap<MetricKey, u64>,
    gauges: BTreeMap<MetricKey, f64>,
    histograms: BTreeMap<MetricKey, Vec<f64>>,
}

fn key(name: &str, labels: &[(&str, &str)]) -> MetricKey {
    let labels = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    (name.to_owned(), labels)
}

impl Recorded {
    fn new(recorder: &DebuggingRecorder) -> Recorded {
        Recorded {
            snapshotter: recorder.snapshotter(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            histograms: BTreeMap::new(),
        }
    }

    fn collect(&mut self) {
        for (composite, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = composite.into_parts();
            let labels = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            let key = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(key).or_default() += n,
                DebugValue::Gauge(delta) => *self.gauges.entry(key).or_default() += delta.0,
                DebugValue::Histogram(values) => self
                    .histograms
                    .entry(key)
                    .or_default()
                    .extend(values.into_iter().map(|value| value.0)),
            }
        }
    }

    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.collect();
        self.counters.get(&key(name, labels)).copied().unwrap_or(0)
    }

    /// The sum of a counter over all its label sets.
    fn counter_total(&mut self, name: &str) -> u64 {
        self.collect();
        self.counters
            .iter()
            .filter(|((metric, _), _)| metric == name)
            .map(|(_, n)| n)
            .sum()
    }

    fn gauge(&mut self, name: &str) -> f64 {
        self.collect();
        self.gauges.get(&key(name, &[])).copied().unwrap_or(0.0)
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.collect();
        self.histograms
            .get(&key(name, labels))
            .cloned()
            .unwrap_or_default()
    }

    /// The name and labels of every metric recorded.
    fn keys(&mut self) -> Vec<MetricKey> {
        self.collect();
        let counters = self.counters.keys();
        let gauges = self.gauges.keys();
        let histograms = self.histograms.keys();
        counters.chain(gauges).chain(histograms).cloned().collect()
    }

    fn is_empty(&mut self) -> bool {
        self.keys().is_empty()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn orders(observer: TraceObserver) -> Scope {
    Scope::builder()
        .name("orders")
        .observer(Arc::new(observer))
        .build()
}

fn close_to(actual: &[f64], expected: &[f64]) -> bool {
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| (a - e).abs() < 1e-3)
}

#[tokio::test(start_paused = true)]
async fn cancellations_are_counted_by_code_and_kind() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(TraceObserver::new().metrics());

    let first = orders.child_builder().name("order-1").build();
    let _reserve = first.child_builder().name("reserve").build();
    first.cancel(Cause::new("USER_CANCELLED").with_detail("order 1: changed mind"));
    let second = orders.child_builder().name("order-2").build();
    second.cancel(Cause::new("USER_CANCELLED").with_detail("order 2: too slow"));
    let payment = orders
        .child_builder()
        .name("payment")
        .timeout(Duration::from_secs(1))
        .build();
    payment.cancelled().await;
    let batch = orders.child_builder().name("batch").build();
    batch.cancel(Cause::of_kind(CauseKind::Shutdown).with_code("DRAINING"));

    assert_eq!(
        recorded.counter(
            CANCELLATIONS,
            &[("code", "USER_CANCELLED"), ("kind", "explicit")]
        ),
        2
    );
    assert_eq!(
        recorded.counter(
            CANCELLATIONS,
            &[("code", "deadline"), ("kind", "deadline_exceeded")]
        ),
        1
    );
    assert_eq!(
        recorded.counter(CANCELLATIONS, &[("code", "DRAINING"), ("kind", "shutdown")]),
        1
    );
    // Once per cancellation, not per scope it reached.
    assert_eq!(recorded.counter_total(CANCELLATIONS), 4);
    assert_eq!(recorded.counter_total(LOST_CANCELS), 0);
}

#[tokio::test(start_paused = true)]
async fn lost_cancels_are_counted_by_the_code_of_the_cause_that_lost() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(TraceObserver::new().metrics());

    let order = orders.child_builder().name("order-17").build();
    order.cancel(Cause::new("USER_CANCELLED"));
    order.cancel(Cause::new("PAYMENT_DECLINED").with_detail("card expired"));
    order.cancel(Cause::plain());

    assert_eq!(
        recorded.counter(
            LOST_CANCELS,
            &[("code", "PAYMENT_DECLINED"), ("kind", "explicit")]
        ),
        1
    );
    assert_eq!(
        recorded.counter(LOST_CANCELS, &[("code", "cancelled"), ("kind", "explicit")]),
        1
    );
    assert_eq!(recorded.counter_total(LOST_CANCELS), 2);
    assert_eq!(recorded.counter_total(CANCELLATIONS), 1);
}

#[tokio::test(start_paused = true)]
async fn the_latency_histogram_has_the_time_from_cancel_to_exit() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(TraceObserver::new().metrics());

    let mut group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("quick", |_| async { Ok(()) });
    group.spawn("payment", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(300)).await;
        Err(cause.into())
    });
    // `quick` completes before the cancellation: no latency.
    let first = group.join_next().await.unwrap();
    assert_eq!(first.task.name(), "quick");
    group.scope().cancel(Cause::new("USER_CANCELLED"));
    let _ = group.join().await.unwrap_err();

    let latencies = recorded.histogram(CANCEL_LATENCY, &[("outcome", "cancelled")]);
    assert!(close_to(&latencies, &[0.3]), "{latencies:?}");
    assert!(
        recorded
            .histogram(CANCEL_LATENCY, &[("outcome", "completed")])
            .is_empty()
    );
    assert_eq!(
        recorded.counter(TASKS_FINISHED, &[("outcome", "cancelled")]),
        1
    );
    assert_eq!(
        recorded.counter(TASKS_FINISHED, &[("outcome", "completed")]),
        1
    );
    assert_eq!(recorded.counter_total(TASKS_ABORTED), 0);
}

#[tokio::test(start_paused = true)]
async fn running_and_pending_gauges_follow_a_group_with_a_limit() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(TraceObserver::new().metrics());

    let mut group: TaskGroup<u64> = TaskGroup::builder(&orders)
        .name("crawl")
        .limit(2.try_into().unwrap())
        .build();
    for n in 1..=4 {
        group.spawn(format!("page-{n}"), move |_| async move {
            sleep(Duration::from_secs(n)).await;
            Ok(n)
        });
    }
    assert_eq!(recorded.gauge(TASKS_RUNNING), 2.0);
    assert_eq!(recorded.gauge(TASKS_PENDING), 2.0);

    // Each end starts the next pending task.
    let expected = [(2.0, 1.0), (2.0, 0.0), (1.0, 0.0), (0.0, 0.0)];
    for (n, (running, pending)) in (1..).zip(expected) {
        let exit = group.join_next().await.unwrap();
        assert_eq!(exit.task.name(), format!("page-{n}"));
        assert_eq!(
            (recorded.gauge(TASKS_RUNNING), recorded.gauge(TASKS_PENDING)),
            (running, pending),
            "after page-{n} ended"
        );
    }
    assert!(group.join_next().await.is_none());
    drop(group);
    assert_eq!(
        recorded.counter(TASKS_FINISHED, &[("outcome", "completed")]),
        4
    );

    // Pending tasks that a cancellation reaches, and tasks spawned into a cancelled group,
    // leave the gauges too.
    let group: TaskGroup<()> = TaskGroup::builder(&orders)
        .name("crawl-2")
        .limit(1.try_into().unwrap())
        .build();
    for n in 0..3 {
        group.spawn(format!("page-{n}"), |scope| async move {
            Err(scope.cancelled().await.into())
        });
    }
    assert_eq!(recorded.gauge(TASKS_RUNNING), 1.0);
    assert_eq!(recorded.gauge(TASKS_PENDING), 2.0);
    group.scope().cancel(Cause::new("QUOTA_EXCEEDED"));
    assert_eq!(recorded.gauge(TASKS_PENDING), 0.0);
    group.spawn("late", |_| async { Ok(()) });
    assert_eq!(recorded.gauge(TASKS_PENDING), 0.0);
    let _ = group.join().await.unwrap_err();

    assert_eq!(recorded.gauge(TASKS_RUNNING), 0.0);
    assert_eq!(recorded.gauge(TASKS_PENDING), 0.0);
    assert_eq!(
        recorded.counter(TASKS_FINISHED, &[("outcome", "cancelled")]),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn aborted_and_slow_to_stop_tasks_are_counted() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(
        TraceObserver::new()
            .metrics()
            .slow_to_stop_after(Some(ms(500))),
    );

    let group: TaskGroup<()> = TaskGroup::builder(&orders)
        .name("sync")
        .grace(Duration::from_secs(1))
        .build();
    group.spawn("stubborn", |_| async {
        sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    group.spawn("prompt", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    tokio::task::yield_now().await;
    assert_eq!(recorded.gauge(TASKS_RUNNING), 2.0);
    group.scope().cancel(Cause::new("SHUTTING_DOWN"));
    let error = group.join().await.unwrap_err();
    assert_eq!(error.aborted().len(), 1);

    assert_eq!(recorded.counter(TASKS_ABORTED, &[]), 1);
    assert_eq!(recorded.counter(TASKS_SLOW_TO_STOP, &[]), 1);
    assert_eq!(
        recorded.counter(TASKS_FINISHED, &[("outcome", "aborted")]),
        1
    );
    let latencies = recorded.histogram(CANCEL_LATENCY, &[("outcome", "aborted")]);
    assert!(close_to(&latencies, &[1.0]), "{latencies:?}");
    let latencies = recorded.histogram(CANCEL_LATENCY, &[("outcome", "cancelled")]);
    assert!(close_to(&latencies, &[0.0]), "{latencies:?}");
    assert_eq!(recorded.gauge(TASKS_RUNNING), 0.0);
}

#[tokio::test(start_paused = true)]
async fn supervisor_restarts_are_counted() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(TraceObserver::new().metrics());

    let runs = Arc::new(AtomicU32::new(0));
    let feed = ChildSpec::new("feed", {
        let runs = runs.clone();
        move |scope: Scope| {
            let run = runs.fetch_add(1, Ordering::Relaxed);
            async move {
                if run == 0 {
                    sleep(Duration::from_secs(1)).await;
                    return Err(BoxError::from("connection reset"));
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
    sleep(Duration::from_secs(2)).await;
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    assert_eq!(recorded.counter(RESTARTS, &[]), 1);
    assert_eq!(recorded.gauge(TASKS_RUNNING), 1.0);

    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();
    assert_eq!(recorded.counter(RESTARTS, &[]), 1);
    assert_eq!(recorded.gauge(TASKS_RUNNING), 0.0);
    assert_eq!(recorded.gauge(TASKS_PENDING), 0.0);
}

#[tokio::test(start_paused = true)]
async fn no_label_holds_a_detail_a_path_or_a_task_name() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(
        TraceObserver::new()
            .metrics()
            .slow_to_stop_after(Some(ms(10))),
    );

    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("inventory", |_| async {
        sleep(ms(10)).await;
        Err(Cause::new("INVENTORY_SHORTAGE")
            .with_detail("sku-42: 2 left")
            .into())
    });
    group.spawn("payment", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(50)).await;
        Err(cause.into())
    });
    group.spawn("parser", |_| async {
        sleep(ms(20)).await;
        Err("unexpected token at byte 1337".into())
    });
    let _ = group.join().await.unwrap_err();
    let order = orders.child_builder().name("order-18").build();
    order.cancel(Cause::new("USER_CANCELLED").with_detail("customer 991 changed mind"));
    order.cancel(Cause::new("LATE").with_detail("customer 991 again"));

    assert_eq!(
        recorded.counter(
            CANCELLATIONS,
            &[("code", "INVENTORY_SHORTAGE"), ("kind", "task_failed")]
        ),
        1
    );
    let keys = recorded.keys();
    assert!(!keys.is_empty());
    let forbidden = [
        "sku-42",
        "1337",
        "991",
        "orders",
        "order-17",
        "inventory",
        "payment",
        "parser",
    ];
    for (name, labels) in &keys {
        for (label, value) in labels {
            assert!(
                ["code", "kind", "outcome"].contains(&label.as_str()),
                "{name} has label {label}={value}"
            );
            assert!(
                !forbidden.iter().any(|bad| value.contains(bad)),
                "{name} has label {label}={value}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_recorded_without_metrics() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(TraceObserver::new());
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("payment", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    group.scope().cancel(Cause::new("USER_CANCELLED"));
    group.scope().cancel(Cause::new("AGAIN"));
    let _ = group.join().await.unwrap_err();
    assert!(recorded.is_empty(), "{:?}", recorded.keys());
}

#[tokio::test(start_paused = true)]
async fn a_foreign_code_not_known_here_counts_as_other() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let orders = orders(
        TraceObserver::new()
            .metrics()
            .known_codes(["INVENTORY_SHORTAGE"]),
    );
    let from_the_wire = |code: &str| -> Cause {
        serde_json::from_value(serde_json::json!({"v": 1, "kind": "task_failed", "code": code}))
            .unwrap()
    };
    for (n, code) in [
        "INVENTORY_SHORTAGE",
        "SOMETHING_NEW",
        "SOMETHING_ELSE",
        "task_failed",
        "UNAVAILABLE",
    ]
    .into_iter()
    .enumerate()
    {
        let call = orders.child_builder().name(format!("call-{n}")).build();
        call.cancel(from_the_wire(code));
    }
    // Written in this program: by name, known or not.
    orders
        .child_builder()
        .name("local")
        .build()
        .cancel(Cause::new("PAYMENT_DECLINED"));
    let labels = |code| [("code", code), ("kind", "task_failed")];
    assert_eq!(
        recorded.counter(CANCELLATIONS, &labels("INVENTORY_SHORTAGE")),
        1
    );
    assert_eq!(
        recorded.counter(CANCELLATIONS, &labels(taskscope_trace::metrics::OTHER_CODE)),
        2
    );
    assert_eq!(recorded.counter(CANCELLATIONS, &labels("SOMETHING_NEW")), 0);
    // Standard codes are known everywhere: a kind's default, a gRPC status's name.
    assert_eq!(recorded.counter(CANCELLATIONS, &labels("task_failed")), 1);
    assert_eq!(recorded.counter(CANCELLATIONS, &labels("UNAVAILABLE")), 1);
    assert_eq!(
        recorded.counter(
            CANCELLATIONS,
            &[("code", "PAYMENT_DECLINED"), ("kind", "explicit")]
        ),
        1
    );
}
