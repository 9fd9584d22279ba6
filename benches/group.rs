//! `taskscope::TaskGroup` against tokio's `JoinSet` and against `tokio-graceful-shutdown`, in one
//! process.
//!
//! A custom harness (`harness = false`), the same as `scope.rs`'s (shared in `common/mod.rs`):
//! every comparison runs its sides interleaved in rounds (in order, then in reverse order, ...),
//! after one untimed warm-up of each, and reports the median of each side over the rounds.
//! Memory is measured with a counting global allocator. Every runtime is a current-thread tokio
//! runtime.
//!
//! ```text
//! cargo bench -p taskscope-benches --bench group
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench group   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Target, drain, interleaved_n, interleaved_samples, pair, print_table, recorded_pair, row,
    runtime,
};
use taskscope::{BoxError, Cause, Scope, TaskGroup};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds of the spawn, sibling and nesting benchmarks (odd, so the median is a sample).
    rounds: usize,
    /// Rounds of the fan-out benchmark, whose samples are expensive.
    fanout_rounds: usize,
    /// Rounds of the memory measurements (after a warm-up of each side).
    memory_rounds: usize,
    /// Task counts of the spawn + join benchmark; the last also gets the reference sides.
    spawn_tasks: [usize; 2],
    sibling_tasks: [usize; 2],
    /// The nesting depths compared; the first and last are checked for linearity.
    depths: [usize; 3],
    /// Levels per nesting sample: `levels / depth` nests of each depth.
    levels_per_sample: usize,
    fanout_tasks: usize,
    memory_tasks: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 3,
                fanout_rounds: 3,
                memory_rounds: 1,
                spawn_tasks: [100, 1_000],
                sibling_tasks: [100, 1_000],
                // tokio-graceful-shutdown's nesting is quadratic: depth 1000 would take seconds
                // in a debug build.
                depths: [10, 50, 200],
                levels_per_sample: 200,
                fanout_tasks: 10_000,
                memory_tasks: 10_000,
            }
        } else {
            Config {
                quick,
                rounds: 21,
                fanout_rounds: 21,
                memory_rounds: 3,
                spawn_tasks: [1_000, 10_000],
                sibling_tasks: [1_000, 10_000],
                depths: [10, 100, 1_000],
                levels_per_sample: 1_000,
                fanout_tasks: 100_000,
                memory_tasks: 100_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Spawn + join of trivial tasks
// ---------------------------------------------------------------------------------------------

fn spawn_join_group(rt: &Runtime, tasks: usize) -> Duration {
    rt.block_on(async {
        let root = Scope::new();
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

/// Joins every task of `set`, handing each output to `check`; returns how many there were.
async fn join_every<T: 'static>(set: &mut JoinSet<T>, check: impl Fn(T)) -> usize {
    let mut joined = 0;
    while let Some(result) = set.join_next().await {
        check(result.expect("no task panics"));
        joined += 1;
    }
    joined
}

fn spawn_join_joinset(rt: &Runtime, tasks: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..tasks {
            set.spawn(async { Ok::<(), BoxError>(()) });
        }
        let joined = join_every(&mut set, |result| result.expect("no task fails")).await;
        let elapsed = start.elapsed();
        assert_eq!(joined, tasks);
        drain().await;
        elapsed
    })
}

/// The `JoinSet` with what a group gives each task besides: a scope of its own, a child of one
/// root, made before the spawn and dropped when the task ends.
fn spawn_join_joinset_scoped(rt: &Runtime, tasks: usize) -> Duration {
    rt.block_on(async {
        let root = Scope::new();
        let start = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..tasks {
            let scope = root.child();
            set.spawn(async move {
                drop(scope);
                Ok::<(), BoxError>(())
            });
        }
        let joined = join_every(&mut set, |result| result.expect("no task fails")).await;
        let elapsed = start.elapsed();
        assert_eq!(joined, tasks);
        drain().await;
        elapsed
    })
}

fn spawn_join_handles(rt: &Runtime, tasks: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<JoinHandle<Result<(), BoxError>>> =
            (0..tasks).map(|_| tokio::spawn(async { Ok(()) })).collect();
        for handle in handles {
            handle
                .await
                .expect("no task panics")
                .expect("no task fails");
        }
        let elapsed = start.elapsed();
        drain().await;
        elapsed
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Sibling and nested subsystems, against tokio-graceful-shutdown
// ---------------------------------------------------------------------------------------------

/// A root scope, a group in it, `tasks` tasks that return at once, and the join.
fn siblings_group(rt: &Runtime, tasks: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let root = Scope::new();
        let group: TaskGroup<()> = TaskGroup::new(&root);
        for _ in 0..tasks {
            group.spawn("child", |_| async { Ok(()) });
        }
        group.join().await.expect("no task fails");
        let elapsed = start.elapsed();
        drain().await;
        elapsed
    })
}

/// A toplevel whose root subsystem starts `tasks` subsystems that return at once. The toplevel
/// ends by itself once every subsystem has: no shutdown is requested.
fn siblings_tgs(rt: &Runtime, tasks: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        Toplevel::new(async move |s: &mut SubsystemHandle| {
            for _ in 0..tasks {
                s.start(SubsystemBuilder::new(
                    "child",
                    async |_: &mut SubsystemHandle| Ok::<(), BoxError>(()),
                ));
            }
        })
        .handle_shutdown_requests(Duration::from_secs(5))
        .await
        .expect("no subsystem fails");
        let elapsed = start.elapsed();
        drain().await;
        elapsed
    })
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// `depth` nested groups: each level's task opens a group with one task, the next level, named
/// `name`, and joins it; the last level's task returns at once.
fn nest_group(scope: Scope, depth: usize, name: &'static str) -> BoxFuture<'static> {
    Box::pin(async move {
        if depth == 0 {
            return Ok(());
        }
        let group: TaskGroup<()> = TaskGroup::new(&scope);
        group.spawn(name, move |scope| nest_group(scope, depth - 1, name));
        group.join().await?;
        Ok(())
    })
}

type SubsystemFn = Box<dyn for<'a> FnOnce(&'a mut SubsystemHandle) -> BoxFuture<'a> + Send>;

/// A subsystem that starts `below` levels of nested subsystems under it and returns; its
/// runner waits for them, as tokio-graceful-shutdown does for every subsystem's children.
fn nest_tgs(below: usize) -> SubsystemFn {
    Box::new(move |s: &mut SubsystemHandle| -> BoxFuture<'_> {
        Box::pin(async move {
            if below > 0 {
                s.start(SubsystemBuilder::new("level", nest_tgs(below - 1)));
            }
            Ok(())
        })
    })
}

fn nested_group(rt: &Runtime, depth: usize, nests: usize, name: &'static str) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..nests {
            nest_group(Scope::new(), depth, name)
                .await
                .expect("no task fails");
        }
        let elapsed = start.elapsed();
        drain().await;
        elapsed
    })
}

fn nested_tgs(rt: &Runtime, depth: usize, nests: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..nests {
            Toplevel::new(async move |s: &mut SubsystemHandle| {
                s.start(SubsystemBuilder::new("level", nest_tgs(depth - 1)));
            })
            .handle_shutdown_requests(Duration::from_secs(5))
            .await
            .expect("no subsystem fails");
        }
        let elapsed = start.elapsed();
        drain().await;
        elapsed
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Cancel fan-out
// ---------------------------------------------------------------------------------------------

/// Tasks of the current sample that have started and are about to wait.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Yields until `tasks` tasks have been polled once and are parked.
async fn wait_parked(tasks: usize) {
    while PARKED.load(Ordering::Acquire) < tasks {
        tokio::task::yield_now().await;
    }
}

struct FanOut {
    /// The cancel call alone.
    cancel_call: Duration,
    /// From the cancel call until every task was joined.
    total: Duration,
}

/// `tasks` tasks parked in a group, each on its own scope; times the group's cancel and its
/// join. `echo`: each task returns its scope's cause as its error (the idiomatic way to stop),
/// else `Ok(())`.
fn fanout_group(rt: &Runtime, tasks: usize, echo: bool) -> FanOut {
    rt.block_on(async {
        PARKED.store(0, Ordering::Release);
        let root = Scope::new();
        let group: TaskGroup<()> = TaskGroup::new(&root);
        for _ in 0..tasks {
            group.spawn("parked", move |scope| async move {
                PARKED.fetch_add(1, Ordering::Release);
                let cause = scope.cancelled().await;
                if echo { Err(cause.into()) } else { Ok(()) }
            });
        }
        wait_parked(tasks).await;
        let start = Instant::now();
        group.scope().cancel(Cause::new("BENCH"));
        let cancel_call = start.elapsed();
        let result = group.join().await;
        let cancelled = match &result {
            Ok(values) => values.len(),
            Err(error) if echo => error.cancelled().len(),
            // Every task returned `Ok` after the cancel: the group reports the cause, and no
            // task as failed, cancelled or aborted.
            Err(error) => {
                assert!(error.cancelled().is_empty() && error.aborted().is_empty());
                tasks
            }
        };
        drop(result);
        let total = start.elapsed();
        assert_eq!(cancelled, tasks);
        drain().await;
        FanOut { cancel_call, total }
    })
}

/// `tasks` tasks in a `JoinSet`, each parked on its own child token of one parent; times the
/// parent's cancel and joining every task.
fn fanout_joinset(rt: &Runtime, tasks: usize) -> FanOut {
    rt.block_on(async {
        PARKED.store(0, Ordering::Release);
        let parent = CancellationToken::new();
        let mut set = JoinSet::new();
        for _ in 0..tasks {
            let token = parent.child_token();
            set.spawn(async move {
                PARKED.fetch_add(1, Ordering::Release);
                token.cancelled().await;
            });
        }
        wait_parked(tasks).await;
        let start = Instant::now();
        parent.cancel();
        let cancel_call = start.elapsed();
        let joined = join_every(&mut set, drop).await;
        let total = start.elapsed();
        assert_eq!(joined, tasks);
        drain().await;
        FanOut { cancel_call, total }
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Memory
// ---------------------------------------------------------------------------------------------

/// Live heap bytes per task of `tasks` tasks spawned into a group and parked on their scopes.
fn memory_group_parked(rt: &Runtime, tasks: usize) -> f64 {
    let root = Scope::new();
    let (bytes, group) = common::live_bytes_added(|| {
        rt.block_on(async {
            PARKED.store(0, Ordering::Release);
            let group: TaskGroup<()> = TaskGroup::new(&root);
            for _ in 0..tasks {
                group.spawn("parked", |scope| async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    scope.cancelled().await;
                    Ok(())
                });
            }
            wait_parked(tasks).await;
            group
        })
    });
    rt.block_on(async {
        group.scope().cancel(Cause::new("BENCH"));
        // Cancelled while they ran, so the group reports the cause even though they return Ok.
        let error = group.join().await.expect_err("the group was cancelled");
        assert!(error.failures().is_empty() && error.aborted().is_empty());
        drain().await;
    });
    bytes as f64 / tasks as f64
}

/// Live heap bytes per task of `tasks` tasks spawned into a `JoinSet` and parked on a token:
/// each on its own child token of one parent (`own_child`), or all on clones of the parent.
fn memory_joinset_parked(rt: &Runtime, tasks: usize, own_child: bool) -> f64 {
    let parent = CancellationToken::new();
    let (bytes, mut set) = common::live_bytes_added(|| {
        rt.block_on(async {
            PARKED.store(0, Ordering::Release);
            let mut set = JoinSet::new();
            for _ in 0..tasks {
                let token = if own_child {
                    parent.child_token()
                } else {
                    parent.clone()
                };
                set.spawn(async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    token.cancelled().await;
                });
            }
            wait_parked(tasks).await;
            set
        })
    });
    rt.block_on(async {
        parent.cancel();
        join_every(&mut set, drop).await;
        drain().await;
    });
    bytes as f64 / tasks as f64
}

/// Live heap bytes per pending task: `tasks` tasks spawned into a group with a limit of 1 whose
/// one slot is taken by a parked task.
fn memory_group_pending(rt: &Runtime, tasks: usize) -> f64 {
    let root = Scope::new();
    rt.block_on(async {
        PARKED.store(0, Ordering::Release);
        let group: TaskGroup<()> = TaskGroup::builder(&root).limit(NonZeroUsize::MIN).build();
        group.spawn("running", |scope| async move {
            PARKED.fetch_add(1, Ordering::Release);
            scope.cancelled().await;
            Ok(())
        });
        wait_parked(1).await;
        let (bytes, ()) = common::live_bytes_added(|| {
            for _ in 0..tasks {
                group.spawn("pending", |_| async { Ok(()) });
            }
        });
        assert_eq!(group.len(), tasks + 1);
        group.scope().cancel(Cause::new("BENCH"));
        let error = group.join().await.expect_err("the pending tasks never ran");
        assert_eq!(error.cancelled().len(), tasks);
        drain().await;
        bytes as f64 / tasks as f64
    })
}

/// Live heap bytes per waiting task: `tasks` tasks spawned into a `JoinSet`, each parked on a
/// `Semaphore` of one permit, which is held elsewhere: the tokio way to run one at a time.
fn memory_joinset_semaphore(rt: &Runtime, tasks: usize) -> f64 {
    let semaphore = Arc::new(Semaphore::new(1));
    let permit = semaphore
        .clone()
        .try_acquire_owned()
        .expect("a free permit");
    let (bytes, mut set) = common::live_bytes_added(|| {
        rt.block_on(async {
            PARKED.store(0, Ordering::Release);
            let mut set = JoinSet::new();
            for _ in 0..tasks {
                let semaphore = semaphore.clone();
                set.spawn(async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    let _permit = semaphore.acquire().await.expect("never closed");
                });
            }
            wait_parked(tasks).await;
            set
        })
    });
    drop(permit);
    rt.block_on(async {
        join_every(&mut set, drop).await;
        drain().await;
    });
    bytes as f64 / tasks as f64
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// 5. Shared producers: tasks spawned from several tasks while the owner waits
// ---------------------------------------------------------------------------------------------

/// Producers on a runtime of two workers, each spawning `per_producer` trivial tasks; timed
/// until every task has been joined.
const PRODUCERS: usize = 4;

fn producers_spawner(rt: &tokio::runtime::Runtime, per_producer: usize) -> Duration {
    rt.block_on(async {
        let root = Scope::new();
        let start = Instant::now();
        let group = TaskGroup::new(&root);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let spawner = group.spawner();
                tokio::spawn(async move {
                    for _ in 0..per_producer {
                        let spawned = spawner.spawn("task", |_| async { Ok(()) });
                        assert!(spawned.is_ok(), "the group is neither cancelled nor joined");
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await.expect("producer");
        }
        let values = group.join().await.expect("no task fails");
        let elapsed = start.elapsed();
        assert_eq!(values.len(), PRODUCERS * per_producer);
        elapsed
    })
}

fn producers_mutex_joinset(rt: &tokio::runtime::Runtime, per_producer: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let set = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let set = set.clone();
                tokio::spawn(async move {
                    for _ in 0..per_producer {
                        set.lock().unwrap().spawn(async { Ok::<(), BoxError>(()) });
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await.expect("producer");
        }
        let mut set = Arc::into_inner(set).unwrap().into_inner().unwrap();
        let joined = join_every(&mut set, |result| result.expect("no task fails")).await;
        let elapsed = start.elapsed();
        assert_eq!(joined, PRODUCERS * per_producer);
        elapsed
    })
}

fn producers_task_tracker(rt: &tokio::runtime::Runtime, per_producer: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let tracker = tokio_util::task::TaskTracker::new();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    for _ in 0..per_producer {
                        tracker.spawn(async { Ok::<(), BoxError>(()) });
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await.expect("producer");
        }
        tracker.close();
        tracker.wait().await;
        start.elapsed()
    })
}

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope TaskGroup vs tokio JoinSet and tokio-graceful-shutdown ({} mode; {} rounds, \
         {} for fan-out; current-thread runtimes; available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        config.fanout_rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let rt = runtime();
    let mut rows = Vec::new();
    // Printed under the table.
    let mut notes = Vec::new();
    let progress =
        |what: &str| eprintln!("[{:>5.1}s] {what} done", started.elapsed().as_secs_f64());

    // 1.
    {
        let [small, large] = config.spawn_tasks;
        let stats = interleaved_n(
            config.rounds,
            &[small, small, large, large, large, large],
            &mut [
                &mut || spawn_join_group(&rt, small),
                &mut || spawn_join_joinset(&rt, small),
                &mut || spawn_join_group(&rt, large),
                &mut || spawn_join_joinset(&rt, large),
                &mut || spawn_join_handles(&rt, large),
                &mut || spawn_join_joinset_scoped(&rt, large),
            ],
        );
        for (n, group, joinset) in [(small, 0, 1), (large, 2, 3)] {
            rows.push(row(
                format!("1. spawn+join {n}: group vs JoinSet"),
                "ns/task",
                &pair(&stats, group, joinset),
                Target::AtMost(1.10),
            ));
        }
        rows.push(row(
            format!("1b. {large}: group vs spawn + await JoinHandles"),
            "ns/task",
            &pair(&stats, 2, 4),
            Target::None,
        ));
        rows.push(row(
            format!("1c. {large}: group vs JoinSet + child Scope each"),
            "ns/task",
            &pair(&stats, 2, 5),
            Target::None,
        ));
        progress("spawn+join");
    }

    // 2.
    {
        let [small, large] = config.sibling_tasks;
        let stats = interleaved_n(
            config.rounds,
            &[small, small, large, large],
            &mut [
                &mut || siblings_group(&rt, small),
                &mut || siblings_tgs(&rt, small),
                &mut || siblings_group(&rt, large),
                &mut || siblings_tgs(&rt, large),
            ],
        );
        for (n, group, tgs) in [(small, 0, 1), (large, 2, 3)] {
            rows.push(row(
                format!("2. {n} siblings: group vs t-g-s subsystems"),
                "ns/task",
                &pair(&stats, group, tgs),
                Target::AtMost(1.0 / 10.0),
            ));
        }
        progress("siblings");

        let levels = config.levels_per_sample;
        let depths = config.depths;
        let nests = depths.map(|depth| levels.div_ceil(depth));
        let (first, last) = (0, depths.len() - 1);
        let mut ops: Vec<usize> = (0..6).map(|i| depths[i / 2] * nests[i / 2]).collect();
        ops.extend([depths[first] * nests[first], depths[last] * nests[last]]);
        let stats = interleaved_n(
            config.rounds,
            &ops,
            &mut [
                &mut || nested_group(&rt, depths[0], nests[0], "level"),
                &mut || nested_tgs(&rt, depths[0], nests[0]),
                &mut || nested_group(&rt, depths[1], nests[1], "level"),
                &mut || nested_tgs(&rt, depths[1], nests[1]),
                &mut || nested_group(&rt, depths[2], nests[2], "level"),
                &mut || nested_tgs(&rt, depths[2], nests[2]),
                &mut || nested_group(&rt, depths[first], nests[first], "l"),
                &mut || nested_group(&rt, depths[last], nests[last], "l"),
            ],
        );
        for (i, depth) in depths.iter().enumerate() {
            rows.push(row(
                format!("2b. nested depth {depth}: group vs t-g-s"),
                "ns/level",
                &pair(&stats, 2 * i, 2 * i + 1),
                Target::None,
            ));
        }
        let (shallow, deep) = (depths[first], depths[last]);
        rows.push(row(
            format!("2c. group nested, depth {deep} vs {shallow}"),
            "ns/level",
            &pair(&stats, 2 * last, 2 * first),
            Target::AtMost(2.0),
        ));
        rows.push(row(
            format!("2d. same, 1-char task names, {deep} vs {shallow}"),
            "ns/level",
            &pair(&stats, 7, 6),
            Target::None,
        ));
        rows.push(row(
            format!("2e. t-g-s alone nested, depth {deep} vs {shallow}"),
            "ns/level",
            &pair(&stats, 2 * last + 1, 2 * first + 1),
            Target::None,
        ));
        progress("nesting");
    }

    // 3.
    {
        let n = config.fanout_tasks;
        // The cancel call alone, recorded alongside each sample; the first entry is the warm-up.
        let (mut cancel_a, mut cancel_b) = (Vec::new(), Vec::new());
        let mut totals_ok = Vec::new();
        let stats = interleaved_n(
            config.fanout_rounds,
            &[n, n, n],
            &mut [
                &mut || {
                    let sample = fanout_group(&rt, n, true);
                    cancel_a.push(sample.cancel_call);
                    sample.total
                },
                &mut || {
                    let sample = fanout_joinset(&rt, n);
                    cancel_b.push(sample.cancel_call);
                    sample.total
                },
                &mut || {
                    let sample = fanout_group(&rt, n, false);
                    totals_ok.push(sample.total);
                    sample.total
                },
            ],
        );
        let cancel_only = recorded_pair(&cancel_a, &cancel_b, n);
        rows.push(row(
            format!("3. fan-out {n}: group vs JoinSet+child tokens"),
            "ns/task",
            &pair(&stats, 0, 1),
            Target::AtMost(1.3),
        ));
        rows.push(row(
            "3b. of which the cancel() call",
            "ns/task",
            &cancel_only,
            Target::None,
        ));
        rows.push(row(
            "3c. same, group tasks return Ok(()) instead",
            "ns/task",
            &pair(&stats, 2, 1),
            Target::None,
        ));
        progress("cancel fan-out");
    }

    // 4.
    {
        let n = config.memory_tasks;
        let stats = interleaved_samples(
            config.memory_rounds,
            &mut [
                &mut || memory_group_parked(&rt, n),
                &mut || memory_joinset_parked(&rt, n, true),
                &mut || memory_joinset_parked(&rt, n, false),
                &mut || memory_group_pending(&rt, n),
                &mut || memory_joinset_semaphore(&rt, n),
            ],
        );
        let memory_row = |name: String, a: usize, b: usize, target: Target| {
            let mut row = row(name, "B/task", &pair(&stats, a, b), target);
            if stats[a].min == stats[a].max && stats[b].min == stats[b].max {
                row.spread = None;
            }
            row
        };
        notes.push(format!(
            "row 4a: group - JoinSet+child token = {:+.1} B/task (target <= +96); \
             row 4a': group - JoinSet+shared token = {:+.1} B/task",
            stats[0].median - stats[1].median,
            stats[0].median - stats[2].median,
        ));
        rows.push(memory_row(
            format!("4a. parked, {n}: group vs JoinSet+child token"),
            0,
            1,
            Target::AtMostPlus(96.0),
        ));
        rows.push(memory_row(
            "4a'. parked: group vs JoinSet+shared token".to_owned(),
            0,
            2,
            Target::None,
        ));
        rows.push(memory_row(
            "4b. pending (limit 1) vs JoinSet on Semaphore(1)".to_owned(),
            3,
            4,
            Target::OursAtMost(128.0),
        ));
        progress("memory");
    }

    // 5.
    {
        let two = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("two-worker runtime");
        let per_producer = config.spawn_tasks[1] / PRODUCERS;
        let tasks = PRODUCERS * per_producer;
        let stats = interleaved_n(
            config.rounds,
            &[tasks, tasks, tasks],
            &mut [
                &mut || producers_spawner(&two, per_producer),
                &mut || producers_mutex_joinset(&two, per_producer),
                &mut || producers_task_tracker(&two, per_producer),
            ],
        );
        rows.push(row(
            format!(
                "5. {PRODUCERS} producers x {per_producer}, 2 workers: Spawner vs Mutex<JoinSet>"
            ),
            "ns/task",
            &pair(&stats, 0, 1),
            Target::AtMost(1.1),
        ));
        rows.push(row(
            "5b. the same: Spawner vs TaskTracker".to_owned(),
            "ns/task",
            &pair(&stats, 0, 2),
            Target::AtMost(1.5),
        ));
        progress("shared producers");
    }

    print_table(&rows);
    println!();
    println!(
        "rows 2b-2e: \"level\" task and subsystem names unless said; 2d's two sides are taskscope \
         with 1-char names, 2e's two sides are both tokio-graceful-shutdown (t-g-s)"
    );
    println!(
        "rows 4: live heap bytes per task while all are alive, median of {} measurement(s) \
         after a warm-up",
        config.memory_rounds
    );
    for note in &notes {
        println!("{note}");
    }
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
