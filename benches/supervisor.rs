//! `taskscope::Supervisor`: the cost of a restart against a fresh spawn in a `TaskGroup`, and
//! start and shutdown of many children, against themselves at ten times the size and against
//! `tokio-graceful-shutdown`, in one process.
//!
//! A custom harness (`harness = false`), the same as `group.rs`'s (shared in `common/mod.rs`):
//! every comparison runs its sides interleaved in rounds (in order, then in reverse order, ...),
//! after one untimed warm-up of each, and reports the median of each side over the rounds.
//! Every runtime is a current-thread tokio runtime on real time: supervisors restart with no
//! backoff, so no delay is measured, and with an intensity no run reaches.
//!
//! ```text
//! cargo bench -p taskscope-benches --bench supervisor
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench supervisor   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Target, drain, interleaved_n, interleaved_phases, pair, phase_pair, print_table, row, runtime,
};
use taskscope::{
    Backoff, BoxError, Cause, ChildSpec, Outcome, Restart, Scope, Supervisor, TaskGroupBuilder,
};
use taskscope::{SupervisorBuilder, TaskGroup};
use tokio::runtime::Runtime;
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds of the restart benchmark (odd, so the median is a sample).
    rounds: usize,
    /// Runs of the restarted child per sample: one start and `runs - 1` restarts.
    runs: u64,
    /// Rounds of the start and shutdown benchmark.
    scale_rounds: usize,
    /// Children of the start and shutdown benchmark; the second is ten times the first.
    children: [usize; 2],
    /// A larger supervisor, alone, measured after the rest; none in the smoke run.
    largest: Option<usize>,
    largest_rounds: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 3,
                runs: 1_000,
                scale_rounds: 3,
                children: [100, 1_000],
                largest: None,
                largest_rounds: 0,
            }
        } else {
            Config {
                quick,
                rounds: 21,
                runs: 10_000,
                scale_rounds: 21,
                children: [1_000, 10_000],
                largest: Some(100_000),
                largest_rounds: 9,
            }
        }
    }
}

/// A child's error that costs nothing to make, so that a sample measures the supervisor, not
/// the error.
#[derive(Debug)]
struct Transient;

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("transient")
    }
}

impl taskscope::TaskError for Transient {}

/// `future`'s output; panics after a minute, so that restarts delayed by a backoff fail the
/// benchmark instead of stalling it (`Backoff::none()` once waited 10 s from the 1025th
/// consecutive restart on).
async fn within_a_minute<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("restarts with no backoff take well under a minute")
}

// ---------------------------------------------------------------------------------------------
// 1. Restart cost
// ---------------------------------------------------------------------------------------------

/// Runs of the current restart sample.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// A supervisor whose one child fails at once until its `runs`-th run, which returns `Ok`:
/// restarted on failure, so the supervisor then ends. Times `start` until `join` returns.
fn restart_on_failure(rt: &Runtime, runs: u64) -> Duration {
    rt.block_on(async {
        RUNS.store(0, Ordering::Relaxed);
        let root = Scope::new();
        let start = Instant::now();
        let supervisor = SupervisorBuilder::<Transient>::new()
            .name("bench")
            .backoff(Backoff::none())
            .intensity(u32::MAX, Duration::from_secs(1))
            .child(
                ChildSpec::new("flaky", move |_| async move {
                    if RUNS.fetch_add(1, Ordering::Relaxed) + 1 < runs {
                        Err(Transient)
                    } else {
                        Ok(())
                    }
                })
                .restart(Restart::OnFailure),
            )
            .start(&root)
            .expect("a valid supervisor");
        within_a_minute(supervisor.join())
            .await
            .expect("ends without escalating");
        let elapsed = start.elapsed();
        assert_eq!(RUNS.load(Ordering::Relaxed), runs);
        drain().await;
        elapsed
    })
}

/// A supervisor whose one child returns `Ok` at once and is restarted always, `runs - 1`
/// times; its last run fails, which its restart predicate refuses, so the supervisor
/// escalates and ends. No failure to record on the way.
fn restart_always(rt: &Runtime, runs: u64) -> Duration {
    rt.block_on(async {
        RUNS.store(0, Ordering::Relaxed);
        let root = Scope::new();
        let start = Instant::now();
        let supervisor = SupervisorBuilder::<Transient>::new()
            .name("bench")
            .backoff(Backoff::none())
            .intensity(u32::MAX, Duration::from_secs(1))
            .child(
                ChildSpec::new("steady", move |_| async move {
                    if RUNS.fetch_add(1, Ordering::Relaxed) + 1 < runs {
                        Ok(())
                    } else {
                        Err(Transient)
                    }
                })
                .restart(Restart::Always)
                .restart_if(|_, _| false),
            )
            .start(&root)
            .expect("a valid supervisor");
        let error = within_a_minute(supervisor.join())
            .await
            .expect_err("the last run escalates");
        let elapsed = start.elapsed();
        assert!(error.child().is_some());
        assert_eq!(RUNS.load(Ordering::Relaxed), runs);
        drain().await;
        elapsed
    })
}

/// `runs` trivial tasks spawned into one group one after the other: spawn, `join_next`, spawn
/// again, the shape of consecutive restarts. `fail`: each task returns `Err` instead, in a
/// group that collects failures instead of cancelling on the first.
fn respawn_group(rt: &Runtime, runs: u64, fail: bool) -> Duration {
    rt.block_on(async {
        RUNS.store(0, Ordering::Relaxed);
        let root = Scope::new();
        let start = Instant::now();
        let builder = TaskGroupBuilder::new(&root);
        let mut group: TaskGroup<(), Transient> = if fail {
            builder.collect_all().build()
        } else {
            builder.build()
        };
        for _ in 0..runs {
            group.spawn("flaky", move |_| async move {
                RUNS.fetch_add(1, Ordering::Relaxed);
                if fail { Err(Transient) } else { Ok(()) }
            });
            let exit = group.join_next().await.expect("one task to join");
            assert_eq!(matches!(exit.outcome, Outcome::Failed(_)), fail);
        }
        drop(group);
        let elapsed = start.elapsed();
        assert_eq!(RUNS.load(Ordering::Relaxed), runs);
        drain().await;
        elapsed
    })
}

/// `runs` trivial tasks, each `tokio::spawn`ed and awaited before the next.
fn respawn_tokio(rt: &Runtime, runs: u64) -> Duration {
    rt.block_on(async {
        RUNS.store(0, Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..runs {
            tokio::spawn(async {
                RUNS.fetch_add(1, Ordering::Relaxed);
                Ok::<(), Transient>(())
            })
            .await
            .expect("no task panics")
            .expect("no task fails");
        }
        let elapsed = start.elapsed();
        assert_eq!(RUNS.load(Ordering::Relaxed), runs);
        drain().await;
        elapsed
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Start and shutdown of many children
// ---------------------------------------------------------------------------------------------

/// Children of the current sample that have started and are about to wait.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// Yields until `children` children have been polled once and are parked.
async fn wait_started(children: usize) {
    while STARTED.load(Ordering::Acquire) < children {
        tokio::task::yield_now().await;
    }
}

/// Distinct child names (a supervisor refuses two children of one name), made outside the
/// timed region, and moved into the supervisor or the subsystems.
fn names(children: usize) -> Vec<String> {
    (0..children).map(|i| format!("child-{i}")).collect()
}

/// A supervisor with `children` children, each parked on its scope. Times from building the
/// child specs until every child has started, then from `shutdown` until `join` returns: the
/// children stop one after the other, last started first.
fn scale_supervisor(rt: &Runtime, children: usize) -> [Duration; 2] {
    let names = names(children);
    rt.block_on(async {
        STARTED.store(0, Ordering::Release);
        let root = Scope::new();
        let start = Instant::now();
        let mut builder: SupervisorBuilder = Supervisor::builder().name("bench");
        for name in names {
            builder = builder.child(ChildSpec::new(name, |scope: Scope| async move {
                STARTED.fetch_add(1, Ordering::Release);
                scope.cancelled().await;
                Ok(())
            }));
        }
        let supervisor = builder.start(&root).expect("a valid supervisor");
        wait_started(children).await;
        let started = start.elapsed();
        let stop = Instant::now();
        supervisor.shutdown(Cause::new("BENCH"));
        supervisor
            .join()
            .await
            .expect("every child returns in its grace");
        let stopped = stop.elapsed();
        drain().await;
        [started, stopped]
    })
}

/// A toplevel whose root subsystem starts `children` subsystems, each parked until shutdown
/// is requested. Times from `Toplevel::new` until every subsystem has started, then from the
/// shutdown token's cancel until `handle_shutdown_requests` returns: every subsystem is told
/// at once.
fn scale_tgs(rt: &Runtime, children: usize) -> [Duration; 2] {
    let names = names(children);
    rt.block_on(async {
        STARTED.store(0, Ordering::Release);
        let token = CancellationToken::new();
        let start = Instant::now();
        let toplevel = Toplevel::new_with_shutdown_token(
            async move |s: &mut SubsystemHandle| {
                for name in names {
                    s.start(SubsystemBuilder::new(
                        name,
                        async |s: &mut SubsystemHandle| {
                            STARTED.fetch_add(1, Ordering::Release);
                            s.on_shutdown_requested().await;
                            Ok::<(), BoxError>(())
                        },
                    ));
                }
            },
            token.clone(),
        );
        let running = tokio::spawn(toplevel.handle_shutdown_requests(Duration::from_secs(5)));
        wait_started(children).await;
        let started = start.elapsed();
        let stop = Instant::now();
        token.cancel();
        running
            .await
            .expect("no panic")
            .expect("every subsystem returns in time");
        let stopped = stop.elapsed();
        drain().await;
        [started, stopped]
    })
}

/// The floor of an unordered shutdown: `children` tasks parked in a group, all cancelled at
/// once. Times the spawns until every task has started, then the cancel until `join` returns.
fn scale_group(rt: &Runtime, children: usize) -> [Duration; 2] {
    rt.block_on(async {
        STARTED.store(0, Ordering::Release);
        let root = Scope::new();
        let start = Instant::now();
        let group: TaskGroup<(), Transient> = TaskGroupBuilder::new(&root).build();
        for _ in 0..children {
            group.spawn("child", |scope| async move {
                STARTED.fetch_add(1, Ordering::Release);
                scope.cancelled().await;
                Ok(())
            });
        }
        wait_started(children).await;
        let started = start.elapsed();
        let stop = Instant::now();
        group.scope().cancel(Cause::new("BENCH"));
        // Cancelled while they ran: the group reports the cause though every task returns Ok.
        let error = group.join().await.expect_err("the group was cancelled");
        assert!(error.failures().is_empty() && error.aborted().is_empty());
        let stopped = stop.elapsed();
        drain().await;
        [started, stopped]
    })
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope Supervisor vs TaskGroup, tokio and tokio-graceful-shutdown ({} mode; {} \
         rounds, {} for start/shutdown; current-thread runtimes; available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        config.scale_rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let rt = runtime();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let progress =
        |what: &str| eprintln!("[{:>5.1}s] {what} done", started.elapsed().as_secs_f64());

    // 1.
    {
        let runs = config.runs;
        let ops = runs as usize;
        let stats = interleaved_n(
            config.rounds,
            &[ops; 5],
            &mut [
                &mut || restart_on_failure(&rt, runs),
                &mut || respawn_group(&rt, runs, false),
                &mut || restart_always(&rt, runs),
                &mut || respawn_group(&rt, runs, true),
                &mut || respawn_tokio(&rt, runs),
            ],
        );
        rows.push(row(
            format!("1. {runs} failing runs: restart vs group respawn"),
            "ns/run",
            &pair(&stats, 0, 1),
            Target::AtMost(1.2),
        ));
        rows.push(row(
            "1b. Ok runs, Restart::Always vs group respawn",
            "ns/run",
            &pair(&stats, 2, 1),
            Target::None,
        ));
        rows.push(row(
            "1c. failing: restart vs respawn failing in group",
            "ns/run",
            &pair(&stats, 0, 3),
            Target::None,
        ));
        rows.push(row(
            "1d. failing: restart vs tokio spawn + await",
            "ns/run",
            &pair(&stats, 0, 4),
            Target::None,
        ));
        rows.push(row(
            "1e. group respawn vs tokio spawn + await",
            "ns/run",
            &pair(&stats, 1, 4),
            Target::None,
        ));
        notes.push(format!(
            "rows 1: per run of the child ({runs} runs = 1 start + {} restarts per sample); \
             restart - group respawn = {:+.1} ns (failing), {:+.1} ns (Ok, Restart::Always)",
            runs - 1,
            stats[0].median - stats[1].median,
            stats[2].median - stats[1].median,
        ));
        progress("restart");
    }

    // 2.
    {
        let [small, large] = config.children;
        let stats = interleaved_phases(
            config.scale_rounds,
            &[small, small, large, large, large],
            &mut [
                &mut || scale_supervisor(&rt, small),
                &mut || scale_tgs(&rt, small),
                &mut || scale_supervisor(&rt, large),
                &mut || scale_tgs(&rt, large),
                &mut || scale_group(&rt, large),
            ],
        );
        let phase = |a, b, phase| phase_pair(&stats, a, b, phase);
        for (what, p) in [("start", 0), ("shutdown", 1)] {
            rows.push(row(
                format!("2. {what}: per child at {large} vs at {small}"),
                "ns/child",
                &phase(2, 0, p),
                Target::AtMost(2.0),
            ));
            for (n, ours, tgs) in [(small, 0, 1), (large, 2, 3)] {
                rows.push(row(
                    format!("2b. {what} {n}: supervisor vs t-g-s"),
                    "ns/child",
                    &phase(ours, tgs, p),
                    Target::None,
                ));
            }
            rows.push(row(
                format!("2c. {what} {large}: supervisor vs group"),
                "ns/child",
                &phase(2, 4, p),
                Target::None,
            ));
        }
        rows.push(row(
            format!("2d. t-g-s alone, start at {large} vs {small}"),
            "ns/child",
            &phase(3, 1, 0),
            Target::None,
        ));
        rows.push(row(
            format!("2d. t-g-s alone, shutdown at {large} vs {small}"),
            "ns/child",
            &phase(3, 1, 1),
            Target::None,
        ));
        progress("start/shutdown");

        if let Some(largest) = config.largest {
            let big = interleaved_phases(
                config.largest_rounds,
                &[largest, large, largest, large],
                &mut [
                    &mut || scale_supervisor(&rt, largest),
                    &mut || scale_supervisor(&rt, large),
                    &mut || scale_group(&rt, largest),
                    &mut || scale_group(&rt, large),
                ],
            );
            let big_pair = |a, b, phase| phase_pair(&big, a, b, phase);
            for (what, p) in [("start", 0), ("shutdown", 1)] {
                rows.push(row(
                    format!("2e. {what}: per child at {largest} vs at {large}"),
                    "ns/child",
                    &big_pair(0, 1, p),
                    Target::AtMost(2.0),
                ));
                rows.push(row(
                    format!("2f. group alone, {what} at {largest} vs {large}"),
                    "ns/child",
                    &big_pair(2, 3, p),
                    Target::None,
                ));
            }
            notes.push(format!(
                "rows 2e-2f: {} rounds of their own, after the rest",
                config.largest_rounds
            ));
            progress("start/shutdown, largest");
        }
    }

    print_table(&rows);
    println!();
    println!(
        "rows 2: start = building the child specs (or subsystems) until every child has run; \
         shutdown = the shutdown call until join returns. The supervisor stops its children \
         one at a time, last started first; t-g-s and the group cancel all at once"
    );
    for note in &notes {
        println!("{note}");
    }
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
