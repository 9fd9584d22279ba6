//! `taskscope::Scope` against `tokio_util::sync::CancellationToken`, in one process.
//!
//! A custom harness (`harness = false`). Every comparison runs its two sides interleaved in
//! rounds (A then B, then B then A, ...), after one untimed warm-up of each, and reports the
//! median of each side over the rounds, so drift on a shared machine hits both sides alike.
//! Memory is measured with a counting global allocator. The harness is shared with the other
//! benchmarks, in `common/mod.rs`.
//!
//! ```text
//! cargo bench -p taskscope-benches --bench scope
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench scope   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Row, Target, interleaved, live_bytes_added, print_table, recorded_pair, row};
use taskscope::{Cause, Scope};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds of the cheap micro-benchmarks (odd, so the median is a sample).
    rounds: usize,
    /// Rounds of the fan-out benchmark, whose samples are expensive.
    fanout_rounds: usize,
    child_iters: usize,
    fanout_tasks: usize,
    chain_depth: usize,
    /// Chains built and cancelled per sample of the deep-chain benchmark.
    chains_per_sample: usize,
    cause_iters: usize,
    cause_depth: usize,
    memory_children: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 3,
                fanout_rounds: 3,
                child_iters: 20_000,
                fanout_tasks: 10_000,
                chain_depth: 1_000,
                chains_per_sample: 2,
                cause_iters: 100_000,
                cause_depth: 1_000,
                memory_children: 10_000,
            }
        } else {
            Config {
                quick,
                rounds: 21,
                fanout_rounds: 21,
                child_iters: 500_000,
                fanout_tasks: 100_000,
                chain_depth: 10_000,
                chains_per_sample: 10,
                cause_iters: 2_000_000,
                cause_depth: 1_000,
                memory_children: 100_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Child create + drop
// ---------------------------------------------------------------------------------------------

fn child_scope(parent: &Scope, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        drop(black_box(black_box(parent).child()));
    }
    start.elapsed()
}

fn child_token(parent: &CancellationToken, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        drop(black_box(black_box(parent).child_token()));
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// 2. Cancel fan-out
// ---------------------------------------------------------------------------------------------

/// Tasks of the current fan-out sample that have started and are about to wait.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Yields until every spawned task has been polled once and is parked in its `cancelled()`
/// future, then times the cancel of the root and the join of every task. Returns the time the
/// cancel call took and the total time until every task was joined.
async fn park_then_time(
    tasks: usize,
    handles: Vec<JoinHandle<()>>,
    cancel: impl FnOnce(),
) -> FanOut {
    while PARKED.load(Ordering::Acquire) < tasks {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    cancel();
    let cancel_call = start.elapsed();
    for handle in handles {
        handle.await.expect("fan-out task panicked");
    }
    FanOut {
        cancel_call,
        total: start.elapsed(),
    }
}

struct FanOut {
    /// The root's cancel call alone.
    cancel_call: Duration,
    /// From the cancel call until every task was joined.
    total: Duration,
}

fn fanout_scope(rt: &Runtime, tasks: usize) -> FanOut {
    rt.block_on(async {
        PARKED.store(0, Ordering::Release);
        let root = Scope::new();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let scope = root.child();
                tokio::spawn(async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    black_box(scope.cancelled().await);
                })
            })
            .collect();
        park_then_time(tasks, handles, || {
            root.cancel(Cause::new("BENCH"));
        })
        .await
    })
}

fn fanout_token(rt: &Runtime, tasks: usize) -> FanOut {
    rt.block_on(async {
        PARKED.store(0, Ordering::Release);
        let root = CancellationToken::new();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let token = root.child_token();
                tokio::spawn(async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    token.cancelled().await;
                    black_box(());
                })
            })
            .collect();
        park_then_time(tasks, handles, || root.cancel()).await
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Deep-chain cancel
// ---------------------------------------------------------------------------------------------

/// Builds `chains` chains of `depth` nested levels (every handle kept alive), times cancelling
/// the top of each; building and dropping are outside the timed region.
fn chain_scope(depth: usize, chains: usize) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..chains {
        let mut levels = Vec::with_capacity(depth);
        levels.push(Scope::new());
        for _ in 1..depth {
            let child = levels[levels.len() - 1].child();
            levels.push(child);
        }
        let start = Instant::now();
        black_box(levels[0].cancel(Cause::new("BENCH")));
        total += start.elapsed();
        assert!(levels[depth - 1].is_cancelled());
        drop(levels);
    }
    total
}

fn chain_token(depth: usize, chains: usize) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..chains {
        let mut levels = Vec::with_capacity(depth);
        levels.push(CancellationToken::new());
        for _ in 1..depth {
            let child = levels[levels.len() - 1].child_token();
            levels.push(child);
        }
        let start = Instant::now();
        levels[0].cancel();
        total += start.elapsed();
        assert!(levels[depth - 1].is_cancelled());
        drop(levels);
    }
    total
}

// ---------------------------------------------------------------------------------------------
// 4. `cause()` on a cancelled scope
// ---------------------------------------------------------------------------------------------

/// A cancelled scope at `depth` below its root (the root is depth 0), with every level alive.
fn cancelled_at_depth(depth: usize) -> (Scope, Vec<Scope>) {
    let mut levels = vec![Scope::new()];
    for _ in 0..depth {
        let child = levels[levels.len() - 1].child();
        levels.push(child);
    }
    levels[0].cancel(Cause::new("BENCH"));
    let leaf = levels[depth].clone();
    assert_eq!(
        leaf.cause().map(|c| c.code().to_owned()).as_deref(),
        Some("BENCH")
    );
    (leaf, levels)
}

fn cause_calls(scope: &Scope, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(scope).cause());
    }
    start.elapsed()
}

fn token_is_cancelled_calls(token: &CancellationToken, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(token).is_cancelled());
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// 5. Memory per child
// ---------------------------------------------------------------------------------------------

fn memory_scope(children: usize) -> f64 {
    let parent = Scope::new();
    let mut held = Vec::with_capacity(children);
    let (bytes, ()) = live_bytes_added(|| held.extend((0..children).map(|_| parent.child())));
    assert_eq!(parent.live_children(), children);
    drop(held);
    bytes as f64 / children as f64
}

fn memory_token(children: usize) -> f64 {
    let parent = CancellationToken::new();
    let mut held = Vec::with_capacity(children);
    let (bytes, ()) = live_bytes_added(|| held.extend((0..children).map(|_| parent.child_token())));
    drop(held);
    bytes as f64 / children as f64
}

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope vs tokio-util CancellationToken ({} mode; {} rounds, {} for fan-out; \
         available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        config.fanout_rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut rows = Vec::new();

    // 1.
    {
        let scope = Scope::new();
        let token = CancellationToken::new();
        let n = config.child_iters;
        let pair = interleaved(
            config.rounds,
            n,
            || child_scope(&scope, n),
            || child_token(&token, n),
        );
        rows.push(row(
            "1. child create+drop vs child_token",
            "ns/op",
            &pair,
            Target::AtMost(1.5),
        ));
        eprintln!(
            "[{:>5.1}s] child create+drop done",
            started.elapsed().as_secs_f64()
        );
    }

    // 2.
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("current-thread runtime");
        let n = config.fanout_tasks;
        // The cancel call alone, recorded alongside each sample; the first entry is the warm-up.
        let (mut cancel_a, mut cancel_b) = (Vec::new(), Vec::new());
        let pair = interleaved(
            config.fanout_rounds,
            n,
            || {
                let sample = fanout_scope(&rt, n);
                cancel_a.push(sample.cancel_call);
                sample.total
            },
            || {
                let sample = fanout_token(&rt, n);
                cancel_b.push(sample.cancel_call);
                sample.total
            },
        );
        let cancel_only = recorded_pair(&cancel_a, &cancel_b, n);
        rows.push(row(
            format!("2. cancel fan-out, {n} parked tasks"),
            "ns/task",
            &pair,
            Target::AtMost(1.3),
        ));
        rows.push(row(
            "2b. of which the root's cancel() call",
            "ns/task",
            &cancel_only,
            Target::None,
        ));
        eprintln!(
            "[{:>5.1}s] cancel fan-out done",
            started.elapsed().as_secs_f64()
        );
    }

    // 3.
    {
        let (depth, chains) = (config.chain_depth, config.chains_per_sample);
        let pair = interleaved(
            config.rounds,
            depth * chains,
            || chain_scope(depth, chains),
            || chain_token(depth, chains),
        );
        rows.push(row(
            format!("3. deep-chain cancel, {depth} levels"),
            "ns/level",
            &pair,
            Target::AtMost(2.0),
        ));
        eprintln!(
            "[{:>5.1}s] deep-chain cancel done",
            started.elapsed().as_secs_f64()
        );
    }

    // 4.
    {
        let n = config.cause_iters;
        let deep = config.cause_depth;
        let (shallow_scope, _shallow_tree) = cancelled_at_depth(1);
        let (deep_scope, _deep_tree) = cancelled_at_depth(deep);
        let token = CancellationToken::new();
        token.cancel();
        let shallow = interleaved(
            config.rounds,
            n,
            || cause_calls(&shallow_scope, n),
            || token_is_cancelled_calls(&token, n),
        );
        let deep_vs_token = interleaved(
            config.rounds,
            n,
            || cause_calls(&deep_scope, n),
            || token_is_cancelled_calls(&token, n),
        );
        let deep_vs_shallow = interleaved(
            config.rounds,
            n,
            || cause_calls(&deep_scope, n),
            || cause_calls(&shallow_scope, n),
        );
        rows.push(row(
            "4a. cause() depth 1 vs token.is_cancelled()",
            "ns/call",
            &shallow,
            Target::None,
        ));
        rows.push(row(
            format!("4b. cause() depth {deep} vs token.is_cancelled()"),
            "ns/call",
            &deep_vs_token,
            Target::None,
        ));
        rows.push(row(
            format!("4c. cause() depth {deep} vs depth 1 (O(1))"),
            "ns/call",
            &deep_vs_shallow,
            Target::Equal(1.25),
        ));
        eprintln!("[{:>5.1}s] cause() done", started.elapsed().as_secs_f64());
    }

    // 5. Deterministic for a given allocator and toolchain; measured once per side.
    {
        let n = config.memory_children;
        let ours = memory_scope(n);
        let theirs = memory_token(n);
        rows.push(Row {
            name: format!("5. live heap per child, {n} held"),
            unit: "B/child",
            ours,
            theirs,
            target: Target::AtMost(2.0),
            spread: None,
        });
    }

    print_table(&rows);
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
