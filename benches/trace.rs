//! The cost of `taskscope`'s observer hook and of `taskscope-trace`'s `TraceObserver`, in one
//! process: the same work on a root scope without an observer and on one with an observer.
//!
//! A custom harness (`harness = false`), the same as `scope.rs`'s and `group.rs`'s (shared in
//! `common/mod.rs`): every comparison runs its sides interleaved in rounds (in order, then in
//! reverse order, ...), after one untimed warm-up of each, and reports the median of each side
//! over the rounds. Every runtime is a current-thread tokio runtime, on this thread, so a
//! subscriber installed with `tracing::subscriber::set_default` sees every event. The rows
//! without a subscriber run first: no `tracing` dispatcher exists in the process until the
//! subscriber rows make one.
//!
//! ```text
//! cargo bench -p taskscope-benches --bench trace
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench trace   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Target, drain, interleaved_n, pair, print_table, recorded_pair, row, runtime};
use taskscope::observe::Observer;
use taskscope::{Cause, Scope, TaskGroup};
use taskscope_trace::TraceObserver;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds of the group benchmarks (odd, so the median is a sample).
    rounds: usize,
    /// Rounds of the cancel benchmark, whose samples are expensive.
    cancel_rounds: usize,
    /// Rounds of the child create+cancel+drop benchmark.
    child_rounds: usize,
    /// Tasks per group sample (spawn + join).
    group_tasks: usize,
    /// Parked tasks per cancel sample.
    cancel_tasks: usize,
    /// Children per create+cancel+drop sample.
    child_iters: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 3,
                cancel_rounds: 3,
                child_rounds: 3,
                group_tasks: 1_000,
                cancel_tasks: 1_000,
                child_iters: 20_000,
            }
        } else {
            Config {
                quick,
                rounds: 41,
                cancel_rounds: 21,
                child_rounds: 21,
                group_tasks: 10_000,
                cancel_tasks: 10_000,
                child_iters: 500_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Observers and subscribers
// ---------------------------------------------------------------------------------------------

/// An observer that overrides nothing: every event is the trait's empty default.
struct Noop;

impl Observer for Noop {}

/// A root scope, with `observer` installed if there is one.
fn root(observer: Option<&Arc<dyn Observer>>) -> Scope {
    match observer {
        Some(observer) => Scope::builder().observer(observer.clone()).build(),
        None => Scope::new(),
    }
}

/// A `fmt` subscriber writing to `io::sink`, behind an `EnvFilter` made of `directives`.
fn filtered_fmt(directives: &str) -> impl tracing::Subscriber + Send + Sync + 'static {
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter(EnvFilter::new(directives))
        .finish()
}

// ---------------------------------------------------------------------------------------------
// 1. Spawn + join of trivial tasks
// ---------------------------------------------------------------------------------------------

/// A group on `root` (made outside the clock), `tasks` tasks that return at once, the join and
/// the group's drop.
fn spawn_join(rt: &Runtime, observer: Option<&Arc<dyn Observer>>, tasks: usize) -> Duration {
    let root = root(observer);
    rt.block_on(async {
        let start = Instant::now();
        let group: TaskGroup<()> = TaskGroup::new(&root);
        for _ in 0..tasks {
            group.spawn("task", |_| async { Ok(()) });
        }
        let values = group.join().await.expect("no task fails");
        let elapsed = start.elapsed();
        assert_eq!(values.len(), tasks);
        drain().await;
        elapsed
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Cancel of parked tasks
// ---------------------------------------------------------------------------------------------

/// Tasks of the current sample that have started and are about to wait.
static PARKED: AtomicUsize = AtomicUsize::new(0);

struct Cancelled {
    /// The cancel call alone.
    cancel_call: Duration,
    /// From the cancel call until every task was joined and the group dropped.
    total: Duration,
}

/// `tasks` tasks parked in a group, each on its own scope, each returning its scope's cause once
/// cancelled; times the group's cancel and its join.
///
/// Each sample has a runtime of its own, dropped after the clock stops: an observer that reports
/// tasks slow to stop (`TraceObserver`'s default) spawns a timer task per task when the task's
/// scope is cancelled, which sleeps for the report's delay (2 s) whether or not the task has
/// ended by then. Dropping the runtime drops those timers, so that no sample waits for them or
/// runs them in another's clock.
fn cancel_parked(observer: Option<&Arc<dyn Observer>>, tasks: usize) -> Cancelled {
    let rt = runtime();
    let root = root(observer);
    let sample = rt.block_on(async {
        PARKED.store(0, Ordering::Release);
        let group: TaskGroup<()> = TaskGroup::new(&root);
        for _ in 0..tasks {
            group.spawn("parked", |scope| async move {
                PARKED.fetch_add(1, Ordering::Release);
                Err(scope.cancelled().await.into())
            });
        }
        while PARKED.load(Ordering::Acquire) < tasks {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        group.scope().cancel(Cause::new("BENCH"));
        let cancel_call = start.elapsed();
        let error = group.join().await.expect_err("the group was cancelled");
        let cancelled = error.cancelled().len();
        drop(error);
        let total = start.elapsed();
        assert_eq!(cancelled, tasks);
        Cancelled { cancel_call, total }
    });
    drop(rt);
    sample
}

// ---------------------------------------------------------------------------------------------
// 3. Child create + cancel + drop
// ---------------------------------------------------------------------------------------------

fn child_cancel_drop(parent: &Scope, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let child = black_box(black_box(parent).child());
        black_box(child.cancel(Cause::new("BENCH")));
        drop(child);
    }
    start.elapsed()
}

fn token_cancel_drop(parent: &CancellationToken, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let child = black_box(black_box(parent).child_token());
        child.cancel();
        drop(child);
    }
    start.elapsed()
}

fn child_drop(parent: &Scope, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        drop(black_box(black_box(parent).child()));
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope observer hook and TraceObserver, with vs without ({} mode; {} rounds, {} for \
         cancel and child rows; current-thread runtimes; available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        config.cancel_rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let rt = runtime();
    let mut rows = Vec::new();
    let progress =
        |what: &str| eprintln!("[{:>5.1}s] {what} done", started.elapsed().as_secs_f64());

    let trace: Arc<dyn Observer> = Arc::new(TraceObserver::new());
    let trace_no_slow: Arc<dyn Observer> = Arc::new(TraceObserver::new().slow_to_stop_after(None));
    let noop: Arc<dyn Observer> = Arc::new(Noop);

    // Rows without a subscriber come first: no dispatcher has been made in the process yet.
    assert!(!tracing::dispatcher::has_been_set());

    // 1. Spawn + join, no subscriber.
    {
        let n = config.group_tasks;
        let stats = interleaved_n(
            config.rounds,
            &[n, n, n, n],
            &mut [
                &mut || spawn_join(&rt, None, n),
                &mut || spawn_join(&rt, Some(&trace), n),
                &mut || spawn_join(&rt, Some(&trace_no_slow), n),
                &mut || spawn_join(&rt, Some(&noop), n),
            ],
        );
        rows.push(row(
            format!("1. group {n}, no sub: TraceObserver vs none"),
            "ns/task",
            &pair(&stats, 1, 0),
            Target::AtMost(1.05),
        ));
        rows.push(row(
            "1b. same, slow_to_stop_after(None) vs none",
            "ns/task",
            &pair(&stats, 2, 0),
            Target::None,
        ));
        rows.push(row(
            "1c. same, no-op Observer vs none",
            "ns/task",
            &pair(&stats, 3, 0),
            Target::None,
        ));
        rows.push(row(
            "1d. TraceObserver vs slow_to_stop_after(None)",
            "ns/task",
            &pair(&stats, 1, 2),
            Target::None,
        ));
        progress("spawn+join, no subscriber");
    }

    // 2. Cancel of parked tasks, no subscriber.
    {
        let n = config.cancel_tasks;
        // The cancel call alone, recorded alongside each sample; the first entry is the warm-up.
        let (mut cancel_none, mut cancel_trace) = (Vec::new(), Vec::new());
        let stats = interleaved_n(
            config.cancel_rounds,
            &[n, n, n],
            &mut [
                &mut || {
                    let sample = cancel_parked(None, n);
                    cancel_none.push(sample.cancel_call);
                    sample.total
                },
                &mut || {
                    let sample = cancel_parked(Some(&trace), n);
                    cancel_trace.push(sample.cancel_call);
                    sample.total
                },
                &mut || cancel_parked(Some(&trace_no_slow), n).total,
            ],
        );
        rows.push(row(
            format!("2. cancel {n} parked: TraceObserver vs none"),
            "ns/task",
            &pair(&stats, 1, 0),
            Target::None,
        ));
        rows.push(row(
            "2b. of which the cancel() call",
            "ns/task",
            &recorded_pair(&cancel_trace, &cancel_none, n),
            Target::None,
        ));
        rows.push(row(
            "2c. same, slow_to_stop_after(None) vs none",
            "ns/task",
            &pair(&stats, 2, 0),
            Target::None,
        ));
        progress("cancel, no subscriber");
    }

    // 3. Child create + cancel + drop: the hook's cost on scopes, no subscriber.
    {
        let (bare, with_noop) = (Scope::new(), root(Some(&noop)));
        let token = CancellationToken::new();
        let n = config.child_iters;
        let stats = interleaved_n(
            config.child_rounds,
            &[n, n, n, n, n],
            &mut [
                &mut || child_cancel_drop(&bare, n),
                &mut || token_cancel_drop(&token, n),
                &mut || child_cancel_drop(&with_noop, n),
                &mut || child_drop(&bare, n),
                &mut || child_drop(&with_noop, n),
            ],
        );
        rows.push(row(
            "3a. child create+cancel+drop vs child_token",
            "ns/op",
            &pair(&stats, 0, 1),
            Target::None,
        ));
        rows.push(row(
            "3b. same, no-op Observer on root vs none",
            "ns/op",
            &pair(&stats, 2, 0),
            Target::None,
        ));
        rows.push(row(
            "3c. child create+drop, no-op Observer vs none",
            "ns/op",
            &pair(&stats, 4, 3),
            Target::None,
        ));
        progress("child create+cancel+drop");
    }

    // 4. Spawn + join with a subscriber that filters every taskscope event and span out,
    // installed for both sides, so that only the observer differs.
    {
        let n = config.group_tasks;
        for (i, directives) in ["info,taskscope=off", "warn"].into_iter().enumerate() {
            let _default = tracing::subscriber::set_default(filtered_fmt(directives));
            let stats = interleaved_n(
                config.rounds,
                &[n, n, n],
                &mut [
                    &mut || spawn_join(&rt, None, n),
                    &mut || spawn_join(&rt, Some(&trace), n),
                    &mut || spawn_join(&rt, Some(&trace_no_slow), n),
                ],
            );
            let (name, target) = if i == 0 {
                (
                    format!("4. group {n}, sub {directives:?}: Trace vs none"),
                    Target::AtMost(1.10),
                )
            } else {
                (format!("4c. same, sub {directives:?}"), Target::None)
            };
            rows.push(row(name, "ns/task", &pair(&stats, 1, 0), target));
            rows.push(row(
                format!("4{}. same, slow_to_stop_after(None)", ["b", "d"][i]),
                "ns/task",
                &pair(&stats, 2, 0),
                Target::None,
            ));
            progress(&format!("spawn+join, subscriber {directives:?}"));
        }
    }

    print_table(&rows);
    println!();
    println!(
        "(here \"taskscope\" is the side with the observer named in the row, \"baseline\" the \
         side without, on a root scope made the same way)"
    );
    println!(
        "rows 1-3: no tracing subscriber in the process; rows 4: a fmt subscriber writing to \
         io::sink, set as this thread's default for both sides, whose EnvFilter \
         (\"info,taskscope=off\") disables every taskscope event and span; rows 4c-4d: \
         filter \"warn\", which keeps taskscope's WARN events (failed, aborted, slow tasks), so \
         tasks are observed"
    );
    println!(
        "TraceObserver = TraceObserver::new() (slow to stop after 2 s); rows 2: each sample on a \
         runtime of its own, dropped after the clock stops"
    );
    println!(
        "row 3a: taskscope = a child of a root without observer, baseline = tokio-util \
         child_token; rows 3b-3c: a root with a no-op Observer vs one without (each child \
         clones the inherited observer's Arc; without an observer each hook point is one \
         Option check, which one binary cannot time against the code before the hook: see \
         docs/performance.md)"
    );
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
