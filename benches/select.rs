//! `taskscope-select` against tokio-util's `CancellationToken`, in one process: the
//! `or_cancel` adapter against `run_until_cancelled`, and the token bridges against
//! `child_token`.
//!
//! A custom harness (`harness = false`), the same as `scope.rs`'s (shared in `common/mod.rs`):
//! every comparison runs its sides interleaved in rounds (in order, then in reverse order, ...),
//! after one untimed warm-up of each, and reports the median of each side over the rounds.
//! Every runtime is a current-thread tokio runtime.
//!
//! ```text
//! cargo bench -p taskscope-benches --bench select
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench select   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{
    Row, Target, drain, interleaved_n, interleaved_phases, live_bytes_added, pair, phase_pair,
    print_table, row, runtime,
};
use taskscope::{Cause, Scope};
use taskscope_select::{FutureExt, ScopeExt, TokenExt};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds of every timed benchmark (odd, so the median is a sample).
    rounds: usize,
    /// Adapter calls per sample when the inner future is ready at once.
    ready_iters: usize,
    /// Adapter calls per sample when the inner future yields once.
    yield_iters: usize,
    /// Bridged tokens (child tokens) made and dropped per sample.
    bridge_iters: usize,
    /// Bridged tokens (child tokens) made, then cancelled at once, per sample.
    fanout_tokens: usize,
    /// Scopes made from a token (child tokens) per sample.
    to_scope_iters: usize,
    memory_tokens: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 3,
                ready_iters: 20_000,
                yield_iters: 5_000,
                bridge_iters: 5_000,
                fanout_tokens: 5_000,
                to_scope_iters: 1_000,
                memory_tokens: 5_000,
            }
        } else {
            Config {
                quick,
                rounds: 21,
                ready_iters: 500_000,
                yield_iters: 200_000,
                bridge_iters: 200_000,
                fanout_tokens: 100_000,
                to_scope_iters: 20_000,
                memory_tokens: 100_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. `or_cancel` vs `run_until_cancelled`
// ---------------------------------------------------------------------------------------------

/// The inner future that is ready at the first poll: the adapter is polled once.
fn ready(value: usize) -> std::future::Ready<usize> {
    std::future::ready(black_box(value))
}

/// The inner future that is pending at the first poll (`yield_now`) and ready at the second:
/// the adapter is polled twice, with a trip through the scheduler between.
async fn yield_once(value: usize) -> usize {
    tokio::task::yield_now().await;
    black_box(value)
}

fn or_cancel<F: Future<Output = usize>>(
    rt: &Runtime,
    scope: &Scope,
    inner: impl Fn(usize) -> F,
    iters: usize,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            black_box(inner(i).or_cancel(black_box(scope)).await)
                .expect("the scope is never cancelled");
        }
        start.elapsed()
    })
}

fn run_until_cancelled<F: Future<Output = usize>>(
    rt: &Runtime,
    token: &CancellationToken,
    inner: impl Fn(usize) -> F,
    iters: usize,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            black_box(black_box(token).run_until_cancelled(inner(i)).await)
                .expect("the token is never cancelled");
        }
        start.elapsed()
    })
}

/// The inner future alone, awaited the same way: what the adapters add is the difference.
fn bare<F: Future<Output = usize>>(
    rt: &Runtime,
    inner: impl Fn(usize) -> F,
    iters: usize,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            black_box(inner(i).await);
        }
        start.elapsed()
    })
}

/// Benchmark 1 for one inner future: `or_cancel`, `run_until_cancelled` and the bare future,
/// interleaved; pushes its two rows.
fn bench_or_cancel<F: Future<Output = usize>>(
    rows: &mut Vec<Row>,
    rt: &Runtime,
    rounds: usize,
    (n, label): (&str, &str),
    inner: impl Fn(usize) -> F + Copy,
    iters: usize,
) {
    let scope = Scope::new();
    let token = CancellationToken::new();
    let stats = interleaved_n(
        rounds,
        &[iters; 3],
        &mut [
            &mut || or_cancel(rt, &scope, inner, iters),
            &mut || run_until_cancelled(rt, &token, inner, iters),
            &mut || bare(rt, inner, iters),
        ],
    );
    rows.push(row(
        format!("{n}. or_cancel vs run_until_cancelled, {label}"),
        "ns/call",
        &pair(&stats, 0, 1),
        Target::AtMost(1.15),
    ));
    rows.push(row(
        format!("{n}'. or_cancel vs the bare future, {label}"),
        "ns/call",
        &pair(&stats, 0, 2),
        Target::None,
    ));
}

// ---------------------------------------------------------------------------------------------
// 2. `to_token` vs `child_token`
// ---------------------------------------------------------------------------------------------

/// Panics unless every task of the current runtime has ended: `to_token` must spawn nothing
/// (invariant 1 of `taskscope-select`'s `bridge` module). A task it spawned would still be
/// alive here, since the sample's `block_on` never yields to the scheduler.
fn assert_no_task(what: &str) {
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(alive, 0, "{what} left {alive} tasks alive");
}

/// A child scope and its bridged token, made and dropped, `iters` times.
fn bridge_create_drop(rt: &Runtime, parent: &Scope, iters: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let child = black_box(parent).child();
            let token = black_box(child.to_token());
            drop(token);
            drop(child);
        }
        let elapsed = start.elapsed();
        assert_no_task("to_token");
        elapsed
    })
}

/// The child scope alone, made and dropped: the share of row 2a that is not the bridge.
fn child_scope_create_drop(rt: &Runtime, parent: &Scope, iters: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            drop(black_box(black_box(parent).child()));
        }
        start.elapsed()
    })
}

fn child_token_create_drop(rt: &Runtime, parent: &CancellationToken, iters: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            drop(black_box(black_box(parent).child_token()));
        }
        start.elapsed()
    })
}

/// The phases of one make-then-cancel sample: making every token, cancelling the root, and the
/// sum of the two (a phase of its own so that its median is a sample's).
type MakeCancel = [Duration; 3];

fn make_cancel(make: Duration, cancel: Duration) -> MakeCancel {
    [make, cancel, make + cancel]
}

/// `tokens` tokens bridged from one scope (`scope.to_token()` each), then the scope cancelled.
fn bridge_fanout_one_scope(rt: &Runtime, tokens: usize) -> MakeCancel {
    rt.block_on(async {
        let root = Scope::new();
        let mut held = Vec::with_capacity(tokens);
        let start = Instant::now();
        held.extend((0..tokens).map(|_| root.to_token()));
        let make = start.elapsed();
        let start = Instant::now();
        root.cancel(Cause::new("BENCH"));
        let cancel = start.elapsed();
        assert!(held.iter().all(CancellationToken::is_cancelled));
        assert_no_task("to_token");
        make_cancel(make, cancel)
    })
}

/// `tokens` child scopes of one root, each with its bridged token (the per-request shape
/// `to_token`'s docs advise), then the root cancelled.
fn bridge_fanout_children(rt: &Runtime, tokens: usize) -> MakeCancel {
    rt.block_on(async {
        let root = Scope::new();
        let mut held = Vec::with_capacity(tokens);
        let start = Instant::now();
        held.extend((0..tokens).map(|_| {
            let child = root.child();
            let token = child.to_token();
            (child, token)
        }));
        let make = start.elapsed();
        let start = Instant::now();
        root.cancel(Cause::new("BENCH"));
        let cancel = start.elapsed();
        assert!(held.iter().all(|(_, token)| token.is_cancelled()));
        assert_no_task("to_token");
        make_cancel(make, cancel)
    })
}

fn child_token_fanout(rt: &Runtime, tokens: usize) -> MakeCancel {
    rt.block_on(async {
        let root = CancellationToken::new();
        let mut held = Vec::with_capacity(tokens);
        let start = Instant::now();
        held.extend((0..tokens).map(|_| root.child_token()));
        let make = start.elapsed();
        let start = Instant::now();
        root.cancel();
        let cancel = start.elapsed();
        assert!(held.iter().all(CancellationToken::is_cancelled));
        make_cancel(make, cancel)
    })
}

fn memory_bridge(tokens: usize) -> f64 {
    let root = Scope::new();
    let mut held = Vec::with_capacity(tokens);
    let (bytes, ()) = live_bytes_added(|| {
        held.extend((0..tokens).map(|_| {
            let child = root.child();
            let token = child.to_token();
            (child, token)
        }));
    });
    drop(held);
    bytes as f64 / tokens as f64
}

fn memory_child_token(tokens: usize) -> f64 {
    let root = CancellationToken::new();
    let mut held = Vec::with_capacity(tokens);
    let (bytes, ()) = live_bytes_added(|| held.extend((0..tokens).map(|_| root.child_token())));
    drop(held);
    bytes as f64 / tokens as f64
}

// ---------------------------------------------------------------------------------------------
// 3. `to_scope_with` vs `child_token`
// ---------------------------------------------------------------------------------------------

/// A scope made from a token and dropped, `iters` times; the clock runs until every bridge task
/// has seen its scope freed and ended, since that task is part of the bridge's cost.
fn to_scope_create_drop(rt: &Runtime, token: &CancellationToken, iters: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            drop(black_box(
                black_box(token).to_scope_with(Cause::new("SHUTDOWN")),
            ));
        }
        drain().await;
        start.elapsed()
    })
}

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope-select vs tokio-util CancellationToken ({} mode; {} rounds; available \
         parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let rt = runtime();
    let mut rows = Vec::new();

    // 1.
    bench_or_cancel(
        &mut rows,
        &rt,
        config.rounds,
        ("1a", "ready"),
        ready,
        config.ready_iters,
    );
    eprintln!(
        "[{:>5.1}s] or_cancel, ready at once done",
        started.elapsed().as_secs_f64()
    );
    bench_or_cancel(
        &mut rows,
        &rt,
        config.rounds,
        ("1b", "1 yield"),
        yield_once,
        config.yield_iters,
    );
    eprintln!(
        "[{:>5.1}s] or_cancel, yields once done",
        started.elapsed().as_secs_f64()
    );

    // 2.
    {
        let scope = Scope::new();
        let token = CancellationToken::new();
        let n = config.bridge_iters;
        let stats = interleaved_n(
            config.rounds,
            &[n; 3],
            &mut [
                &mut || bridge_create_drop(&rt, &scope, n),
                &mut || child_token_create_drop(&rt, &token, n),
                &mut || child_scope_create_drop(&rt, &scope, n),
            ],
        );
        rows.push(row(
            "2a. child+to_token+drop vs child_token+drop",
            "ns/op",
            &pair(&stats, 0, 1),
            Target::AtMost(2.0),
        ));
        rows.push(row(
            "2a'. … vs the child scope alone",
            "ns/op",
            &pair(&stats, 0, 2),
            Target::None,
        ));

        let n = config.fanout_tokens;
        let stats = interleaved_phases(
            config.rounds,
            &[n; 3],
            &mut [
                &mut || bridge_fanout_one_scope(&rt, n),
                &mut || bridge_fanout_children(&rt, n),
                &mut || child_token_fanout(&rt, n),
            ],
        );
        let phase = |a, b, phase| phase_pair(&stats, a, b, phase);
        rows.push(row(
            format!("2b. {n}× scope.to_token+cancel vs child_token"),
            "ns/token",
            &phase(0, 2, 2),
            Target::AtMost(2.0),
        ));
        rows.push(row(
            "2b'. … of which making the tokens",
            "ns/token",
            &phase(0, 2, 0),
            Target::None,
        ));
        rows.push(row(
            "2b''. … of which the cancel",
            "ns/token",
            &phase(0, 2, 1),
            Target::None,
        ));
        rows.push(row(
            format!("2c. {n}× child+to_token+cancel vs child_token"),
            "ns/token",
            &phase(1, 2, 2),
            Target::None,
        ));
        rows.push(row(
            "2c'. … of which making the tokens",
            "ns/token",
            &phase(1, 2, 0),
            Target::None,
        ));
        rows.push(row(
            "2c''. … of which the cancel",
            "ns/token",
            &phase(1, 2, 1),
            Target::None,
        ));

        // Deterministic for a given allocator and toolchain; measured once per side.
        let n = config.memory_tokens;
        rows.push(Row {
            name: format!("2d. heap, {n}× child+to_token vs child_token"),
            unit: "B/token",
            ours: memory_bridge(n),
            theirs: memory_child_token(n),
            target: Target::None,
            spread: None,
        });
        eprintln!("[{:>5.1}s] to_token done", started.elapsed().as_secs_f64());
    }

    // 3.
    {
        let token = CancellationToken::new();
        let n = config.to_scope_iters;
        let stats = interleaved_n(
            config.rounds,
            &[n; 2],
            &mut [&mut || to_scope_create_drop(&rt, &token, n), &mut || {
                child_token_create_drop(&rt, &token, n)
            }],
        );
        rows.push(row(
            "3. to_scope_with+drop vs child_token+drop",
            "ns/op",
            &pair(&stats, 0, 1),
            Target::None,
        ));
        eprintln!(
            "[{:>5.1}s] to_scope_with done",
            started.elapsed().as_secs_f64()
        );
    }

    print_table(&rows);
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
