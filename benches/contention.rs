//! `taskscope::Scope` against `tokio_util::sync::CancellationToken` where a server hurts: many
//! tasks cancelling siblings of one root at once, a leaf cancel, a deep chain of timeouts, and
//! the memory an idle request holds.
//!
//! 1. 10 000 children of one root, cancelled by 4 tasks at once (a quarter each), on a 1- and a
//!    2-worker runtime and on 4 OS threads; the scaling from 1 to 2 workers.
//! 2. Cancelling a childless leaf: create, cancel and drop; cancel alone; cancel alone with the
//!    cause allocated beforehand (what a cancel costs besides its cause).
//! 3. An 80 000-deep chain of `child_with_timeout` scopes built and cancelled leaf to root,
//!    against the same chain of plain children (and tokio-util's nested child tokens). Where a
//!    round at that depth would take over a second (a cost per level that grows with depth), the
//!    chain is measured at the deepest of 5 000, 10 000, 20 000, ... that fits, and the output
//!    says so; `TASKSCOPE_BENCH_CHAIN_DEPTH` forces a depth.
//! 4. Resident memory per idle request (a child and a task parked in `cancelled()`), 100 000 of
//!    them, each side in a fresh process; the live heap per request besides.
//!
//! The house harness (`harness = false`, shared in `common/mod.rs`): sides run interleaved in
//! rounds after one untimed warm-up of each, and the table reports the median of each side, so
//! drift on a shared machine hits both sides alike. Contention needs wall time on more than one
//! core: run it on a quiet machine (load average below 1).
//!
//! ```text
//! cargo bench -p taskscope-benches --bench contention
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench contention   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{Pair, Stats, Target, interleaved, interleaved_n, interleaved_phases};
use common::{pair, phase_pair, print_table, row};
use taskscope::{Cause, Scope};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds of the contention benchmark (odd, so the median is a sample).
    contention_rounds: usize,
    siblings: usize,
    leaf_rounds: usize,
    leaf_iters: usize,
    chain_rounds: usize,
    /// The depth the chain is measured at, unless a round of it would take longer than
    /// [`CHAIN_ROUND_BUDGET`] (see [`chain_depth`]).
    chain_depth: usize,
    /// Set by [`CHAIN_DEPTH_VAR`]: measure at `chain_depth` however long it takes.
    chain_depth_forced: bool,
    /// Fresh processes per side of the memory benchmark.
    rss_runs: usize,
    rss_requests: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        let mut config = Config::preset(quick);
        if let Some(depth) = std::env::var(CHAIN_DEPTH_VAR)
            .ok()
            .and_then(|depth| depth.parse().ok())
        {
            config.chain_depth = depth;
            config.chain_depth_forced = true;
        }
        config
    }

    fn preset(quick: bool) -> Config {
        if quick {
            Config {
                quick,
                contention_rounds: 5,
                siblings: 10_000,
                leaf_rounds: 3,
                leaf_iters: 20_000,
                chain_rounds: 3,
                chain_depth: 5_000,
                chain_depth_forced: false,
                rss_runs: 3,
                rss_requests: 20_000,
            }
        } else {
            Config {
                quick,
                contention_rounds: 101,
                siblings: 10_000,
                leaf_rounds: 21,
                leaf_iters: 200_000,
                chain_rounds: 11,
                chain_depth: 80_000,
                chain_depth_forced: false,
                rss_runs: 5,
                rss_requests: 100_000,
            }
        }
    }
}

/// Tasks (or threads) cancelling a quarter of the siblings each.
const RACERS: usize = 4;

/// The long timeout of every level of the timeout chain: it never fires during a sample.
const HOUR: Duration = Duration::from_secs(3600);

/// Forces the depth of the chain benchmark, lifting [`CHAIN_ROUND_BUDGET`].
const CHAIN_DEPTH_VAR: &str = "TASKSCOPE_BENCH_CHAIN_DEPTH";

/// The longest one round of the three chains may take. A core whose chain costs O(depth) per
/// level takes minutes per round at 80 000 levels; the benchmark then measures a shallower chain
/// and says so, rather than run for an hour.
const CHAIN_ROUND_BUDGET: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// 1. Siblings cancelled from 4 tasks at once
// ---------------------------------------------------------------------------------------------

/// Starts the racers of one sample together and times them from the start until the last is
/// done.
///
/// The last racer to arrive takes the start time and releases the others, which spin on `go`
/// meanwhile (yielding); so no racer starts cancelling before every racer is running, and no
/// thread outside the race (with its wake-up latency) stands between the start and the end.
/// With fewer workers (or cores) than racers, racers take turns: as many cancel at once as
/// there are workers.
#[derive(Default)]
struct Race {
    ready: AtomicUsize,
    go: AtomicBool,
    done: AtomicUsize,
    start: OnceLock<Instant>,
    end: OnceLock<Instant>,
}

impl Race {
    /// Registers a racer; returns whether it was the last, which started the race.
    fn arrive(&self) -> bool {
        // AcqRel: the racer that sees the count complete sees every other arrival.
        let last = self.ready.fetch_add(1, Ordering::AcqRel) + 1 == RACERS;
        if last {
            let _ = self.start.set(Instant::now());
            // Release: a racer that sees `go` sees the start time.
            self.go.store(true, Ordering::Release);
        }
        last
    }

    fn released(&self) -> bool {
        self.go.load(Ordering::Acquire)
    }

    fn finish(&self) {
        // AcqRel: the last racer to finish ends the race after every other racer's work.
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == RACERS {
            let _ = self.end.set(Instant::now());
        }
    }

    fn elapsed(&self) -> Duration {
        let (Some(start), Some(end)) = (self.start.get(), self.end.get()) else {
            unreachable!("every racer arrived and finished");
        };
        end.duration_since(*start)
    }
}

/// `siblings` children of a root made by `root`, split into one quarter per racer.
fn quarters<R, C>(siblings: usize, root: &R, child: impl Fn(&R) -> C) -> Vec<Vec<C>> {
    let per_racer = siblings / RACERS;
    (0..RACERS)
        .map(|_| (0..per_racer).map(|_| child(root)).collect())
        .collect()
}

/// Cancels `siblings` children of `root` from `RACERS` tasks of `rt` started together; returns
/// the time from the start until the last task was done. Making the children, spawning, joining
/// and dropping are outside the timed region: each task hands its quarter back to be dropped.
fn race_tasks<R, C>(
    rt: &Runtime,
    siblings: usize,
    root: impl FnOnce() -> R,
    child: impl Fn(&R) -> C,
    cancel: impl Fn(&C) + Copy + Send + 'static,
    is_cancelled: impl Fn(&C) -> bool,
) -> Duration
where
    C: Send + 'static,
{
    let root = root();
    let race = Arc::new(Race::default());
    let handles: Vec<_> = quarters(siblings, &root, child)
        .into_iter()
        .map(|quarter| {
            let race = Arc::clone(&race);
            rt.spawn(async move {
                if !race.arrive() {
                    while !race.released() {
                        tokio::task::yield_now().await;
                    }
                }
                for item in &quarter {
                    cancel(item);
                }
                race.finish();
                quarter
            })
        })
        .collect();
    let done: Vec<Vec<C>> = rt.block_on(async {
        let mut done = Vec::with_capacity(handles.len());
        for handle in handles {
            done.push(handle.await.expect("racer panicked"));
        }
        done
    });
    assert!(done.iter().flatten().all(is_cancelled));
    drop(done);
    drop(root);
    race.elapsed()
}

/// [`race_tasks`] on `RACERS` OS threads.
fn race_threads<R, C>(
    siblings: usize,
    root: impl FnOnce() -> R,
    child: impl Fn(&R) -> C,
    cancel: impl Fn(&C) + Copy + Send + 'static,
    is_cancelled: impl Fn(&C) -> bool,
) -> Duration
where
    C: Send + 'static,
{
    let root = root();
    let race = Arc::new(Race::default());
    let handles: Vec<_> = quarters(siblings, &root, child)
        .into_iter()
        .map(|quarter| {
            let race = Arc::clone(&race);
            std::thread::spawn(move || {
                if !race.arrive() {
                    // Yields rather than spins: with more racers than cores, the last racer
                    // must get a core to arrive at all.
                    while !race.released() {
                        std::thread::yield_now();
                    }
                }
                for item in &quarter {
                    cancel(item);
                }
                race.finish();
                quarter
            })
        })
        .collect();
    let done: Vec<Vec<C>> = handles
        .into_iter()
        .map(|handle| handle.join().expect("racer panicked"))
        .collect();
    assert!(done.iter().flatten().all(is_cancelled));
    drop(done);
    drop(root);
    race.elapsed()
}

fn cancel_scope(scope: &Scope) {
    black_box(scope.cancel(Cause::plain()));
}

fn cancel_token(token: &CancellationToken) {
    token.cancel();
}

fn multi_thread(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .expect("multi-thread runtime")
}

// ---------------------------------------------------------------------------------------------
// 2. Leaf cancel
// ---------------------------------------------------------------------------------------------

fn leaf_scope(parent: &Scope, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let c = black_box(parent).child();
        black_box(c.cancel(Cause::plain()));
        drop(c);
    }
    start.elapsed()
}

fn leaf_token(parent: &CancellationToken, iters: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let t = black_box(parent).child_token();
        t.cancel();
        drop(t);
    }
    start.elapsed()
}

/// Only the cancels of `iters` children made beforehand; making and dropping them are untimed.
fn leaf_cancel_only_scope(parent: &Scope, iters: usize) -> Duration {
    let children: Vec<_> = (0..iters).map(|_| parent.child()).collect();
    let start = Instant::now();
    for c in &children {
        black_box(c.cancel(Cause::plain()));
    }
    let elapsed = start.elapsed();
    drop(children);
    elapsed
}

/// [`leaf_cancel_only_scope`] with the causes made beforehand too: what a cancel costs besides
/// allocating the cause it is given.
fn leaf_cancel_premade_cause(parent: &Scope, iters: usize) -> Duration {
    let children: Vec<_> = (0..iters).map(|_| parent.child()).collect();
    let causes: Vec<_> = (0..iters).map(|_| Cause::plain()).collect();
    let start = Instant::now();
    for (c, cause) in children.iter().zip(causes) {
        black_box(c.cancel(cause));
    }
    let elapsed = start.elapsed();
    drop(children);
    elapsed
}

fn leaf_cancel_only_token(parent: &CancellationToken, iters: usize) -> Duration {
    let children: Vec<_> = (0..iters).map(|_| parent.child_token()).collect();
    let start = Instant::now();
    for t in &children {
        t.cancel();
    }
    let elapsed = start.elapsed();
    drop(children);
    elapsed
}

// ---------------------------------------------------------------------------------------------
// 3. Deep chain with timeouts
// ---------------------------------------------------------------------------------------------

/// The phases of one chain sample, in this order.
const BUILD: usize = 0;
const CANCEL: usize = 1;
const BUILD_AND_CANCEL: usize = 2;
const DROP: usize = 3;

/// Builds a chain of `depth` levels (each the child of the previous, made by `child`), cancels
/// it leaf to root, then drops it, root handle first (so the leaf's handle goes last, and with
/// it the whole chain at once). Returns the time of each phase.
fn chain<T>(
    depth: usize,
    root: impl FnOnce() -> T,
    child: impl Fn(&T) -> T,
    cancel: impl Fn(&T),
    is_cancelled: impl Fn(&T) -> bool,
) -> [Duration; 4] {
    let start = Instant::now();
    let mut levels = Vec::with_capacity(depth);
    levels.push(root());
    for _ in 1..depth {
        let next = child(&levels[levels.len() - 1]);
        levels.push(next);
    }
    let built = start.elapsed();
    let start = Instant::now();
    for level in levels.iter().rev() {
        cancel(level);
    }
    let cancelled = start.elapsed();
    assert!(is_cancelled(&levels[0]) && is_cancelled(&levels[depth - 1]));
    let start = Instant::now();
    drop(levels);
    let dropped = start.elapsed();
    [built, cancelled, built + cancelled, dropped]
}

fn chain_timeout(depth: usize) -> [Duration; 4] {
    chain(
        depth,
        Scope::new,
        |parent| parent.child_with_timeout(HOUR),
        cancel_scope,
        Scope::is_cancelled,
    )
}

fn chain_plain(depth: usize) -> [Duration; 4] {
    chain(
        depth,
        Scope::new,
        Scope::child,
        cancel_scope,
        Scope::is_cancelled,
    )
}

fn chain_token(depth: usize) -> [Duration; 4] {
    chain(
        depth,
        CancellationToken::new,
        CancellationToken::child_token,
        cancel_token,
        CancellationToken::is_cancelled,
    )
}

/// The depth to measure the chain at: `wanted`, or if one round of the three chains takes
/// longer than [`CHAIN_ROUND_BUDGET`] there, the deepest of 5 000, 10 000, 20 000, ... that
/// fits (5 000 at least). Also returns a line per depth tried, with the build+cancel time per
/// level of each chain, which shows how the cost grows with depth, and why the depth was cut.
fn chain_depth(wanted: usize) -> (usize, Vec<String>) {
    let mut tried = Vec::new();
    let mut fits = None;
    let mut depth = wanted.min(5_000);
    loop {
        let sides = [chain_timeout(depth), chain_plain(depth), chain_token(depth)];
        let round: Duration = sides.iter().map(|phases| phases[BUILD_AND_CANCEL]).sum();
        let per_level =
            |phases: &[Duration; 4]| phases[BUILD_AND_CANCEL].as_nanos() as f64 / depth as f64;
        tried.push(format!(
            "depth {depth:>6}: one round {:>6.2}s; build+cancel ns/level: timeout {:.1}, \
             plain {:.1}, child_token {:.1}",
            round.as_secs_f64(),
            per_level(&sides[0]),
            per_level(&sides[1]),
            per_level(&sides[2]),
        ));
        if round > CHAIN_ROUND_BUDGET {
            let fits = fits.unwrap_or(depth);
            tried.push(format!(
                "chain measured at depth {fits}, not {wanted}: one round at depth {depth} took \
                 {:.2}s, over the {}s budget; {CHAIN_DEPTH_VAR}={wanted} forces the full depth",
                round.as_secs_f64(),
                CHAIN_ROUND_BUDGET.as_secs_f64(),
            ));
            return (fits, tried);
        }
        if depth == wanted {
            return (depth, tried);
        }
        fits = Some(depth);
        depth = (depth * 2).min(wanted);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Memory per idle request, in a fresh process per side
// ---------------------------------------------------------------------------------------------

/// Set in a re-executed child to the side it measures (`scope` or `token`).
const SIDE_VAR: &str = "TASKSCOPE_BENCH_RSS_SIDE";
/// Set in a re-executed child to the number of idle requests it makes.
const REQUESTS_VAR: &str = "TASKSCOPE_BENCH_RSS_REQUESTS";

const PAGE_SIZE: u64 = 4096;

/// Resident bytes of this process, from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_SIZE)
}

/// Tasks of the child process that have been polled once and are about to park.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// What a child process measured, in bytes per request.
#[derive(Clone, Copy)]
struct PerRequest {
    /// Resident memory once every request is made and its task spawned, none polled yet.
    rss_created: f64,
    /// Resident memory once every task has parked in `cancelled()`.
    rss_parked: f64,
    /// Live heap (counting allocator) once every task has parked.
    heap: f64,
}

/// The child process: makes `requests` idle requests of one side on a current-thread runtime
/// and prints what they hold, as `rss_created=<bytes> rss_parked=<bytes> heap=<bytes>` totals.
fn rss_child(side: &str, requests: usize) {
    let rt = common::runtime();
    let measure = |spawn_one: &dyn Fn()| {
        let before = resident_bytes().expect("/proc/self/statm");
        let (heap, (created, parked)) = common::live_bytes_added(|| {
            rt.block_on(async {
                for _ in 0..requests {
                    spawn_one();
                }
                let created = resident_bytes().expect("/proc/self/statm");
                while PARKED.load(Ordering::Acquire) < requests {
                    tokio::task::yield_now().await;
                }
                (created, resident_bytes().expect("/proc/self/statm"))
            })
        });
        println!(
            "rss_created={} rss_parked={} heap={heap}",
            created.saturating_sub(before),
            parked.saturating_sub(before),
        );
    };
    // The tasks stay parked on the runtime until the process exits.
    match side {
        "scope" => {
            let root = Scope::new();
            measure(&|| {
                let child = root.child();
                drop(tokio::spawn(async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    black_box(child.cancelled().await);
                }));
            });
        }
        "token" => {
            let root = CancellationToken::new();
            measure(&|| {
                let child = root.child_token();
                drop(tokio::spawn(async move {
                    PARKED.fetch_add(1, Ordering::Release);
                    child.cancelled().await;
                }));
            });
        }
        other => panic!("{SIDE_VAR}={other}: expected `scope` or `token`"),
    }
}

/// Runs this binary again as a child measuring `side`; returns what it measured per request.
fn rss_run(side: &str, requests: usize) -> PerRequest {
    let exe = std::env::current_exe().expect("path of the bench binary");
    let output = Command::new(exe)
        .env(SIDE_VAR, side)
        .env(REQUESTS_VAR, requests.to_string())
        .output()
        .expect("re-executing the bench binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the {side} child failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> f64 {
        let prefix = format!("{name}=");
        let value: f64 = stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the {side} child's output: {stdout}"));
        value / requests as f64
    };
    PerRequest {
        rss_created: field("rss_created"),
        rss_parked: field("rss_parked"),
        heap: field("heap"),
    }
}

/// `runs` fresh processes per side, alternating sides and which goes first.
fn rss_runs(runs: usize, requests: usize) -> [Pair; 3] {
    let (mut scope, mut token) = (Vec::new(), Vec::new());
    for run in 0..runs {
        if run % 2 == 0 {
            scope.push(rss_run("scope", requests));
            token.push(rss_run("token", requests));
        } else {
            token.push(rss_run("token", requests));
            scope.push(rss_run("scope", requests));
        }
    }
    let of = |pick: fn(&PerRequest) -> f64| Pair {
        a: Stats::of(scope.iter().map(pick).collect()),
        b: Stats::of(token.iter().map(pick).collect()),
    };
    [of(|m| m.rss_parked), of(|m| m.rss_created), of(|m| m.heap)]
}

fn main() {
    if let Ok(side) = std::env::var(SIDE_VAR) {
        let requests = std::env::var(REQUESTS_VAR)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{REQUESTS_VAR} must be a number"));
        rss_child(&side, requests);
        return;
    }

    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope vs tokio-util CancellationToken under contention ({} mode; {} rounds of \
         contention, {} of leaf cancel, {} of the chain, {} processes per side for memory; \
         available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.contention_rounds,
        config.leaf_rounds,
        config.chain_rounds,
        config.rss_runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut rows = Vec::new();
    let mut chain_notes = Vec::new();

    // 1. Every side of every runtime interleaved in one run, so the 2-worker / 1-worker ratios
    // compare samples taken side by side.
    {
        let n = config.siblings;
        let one = multi_thread(1);
        let two = multi_thread(2);
        let named = || Scope::builder().name("server").build();
        let mut sides: Vec<Box<dyn FnMut() -> Duration>> = Vec::new();
        for rt in [&one, &two] {
            sides.push(Box::new(move || {
                race_tasks(
                    rt,
                    n,
                    Scope::new,
                    Scope::child,
                    cancel_scope,
                    Scope::is_cancelled,
                )
            }));
            sides.push(Box::new(move || {
                race_tasks(
                    rt,
                    n,
                    named,
                    Scope::child,
                    cancel_scope,
                    Scope::is_cancelled,
                )
            }));
            sides.push(Box::new(move || {
                race_tasks(
                    rt,
                    n,
                    CancellationToken::new,
                    CancellationToken::child_token,
                    cancel_token,
                    CancellationToken::is_cancelled,
                )
            }));
        }
        sides.push(Box::new(move || {
            race_threads(
                n,
                Scope::new,
                Scope::child,
                cancel_scope,
                Scope::is_cancelled,
            )
        }));
        sides.push(Box::new(move || {
            race_threads(
                n,
                CancellationToken::new,
                CancellationToken::child_token,
                cancel_token,
                CancellationToken::is_cancelled,
            )
        }));
        let mut sides: Vec<&mut dyn FnMut() -> Duration> = sides
            .iter_mut()
            .map(|side| side.as_mut() as &mut dyn FnMut() -> Duration)
            .collect();
        let ops = vec![n; sides.len()];
        let stats = interleaved_n(config.contention_rounds, &ops, &mut sides);
        let [
            scope1,
            named1,
            token1,
            scope2,
            named2,
            token2,
            scope_os,
            token_os,
        ] = [0, 1, 2, 3, 4, 5, 6, 7];
        let q = n / RACERS;
        rows.push(row(
            format!("1a. {n} siblings, 4 tasks x {q}, 1 worker"),
            "ns/child",
            &pair(&stats, scope1, token1),
            Target::AtMost(1.2),
        ));
        rows.push(row(
            "1b. same, 2 workers",
            "ns/child",
            &pair(&stats, scope2, token2),
            Target::AtMost(1.2),
        ));
        rows.push(row(
            "1c. taskscope, 2 workers vs 1 worker",
            "ns/child",
            &pair(&stats, scope2, scope1),
            Target::AtMost(1.0),
        ));
        rows.push(row(
            "1d. tokio-util, 2 workers vs 1 worker",
            "ns/child",
            &pair(&stats, token2, token1),
            Target::None,
        ));
        rows.push(row(
            "1e. named root, 1 worker",
            "ns/child",
            &pair(&stats, named1, token1),
            Target::None,
        ));
        rows.push(row(
            "1f. named root, 2 workers",
            "ns/child",
            &pair(&stats, named2, token2),
            Target::None,
        ));
        rows.push(row(
            "1g. 4 OS threads",
            "ns/child",
            &pair(&stats, scope_os, token_os),
            Target::None,
        ));
        eprintln!(
            "[{:>5.1}s] siblings under contention done",
            started.elapsed().as_secs_f64()
        );
    }

    // 2.
    {
        let scope = Scope::new();
        let token = CancellationToken::new();
        let n = config.leaf_iters;
        let create_cancel_drop = interleaved(
            config.leaf_rounds,
            n,
            || leaf_scope(&scope, n),
            || leaf_token(&token, n),
        );
        let cancel_only = interleaved(
            config.leaf_rounds,
            n,
            || leaf_cancel_only_scope(&scope, n),
            || leaf_cancel_only_token(&token, n),
        );
        rows.push(row(
            "2a. leaf child+cancel+drop vs child_token",
            "ns/op",
            &create_cancel_drop,
            Target::AtMost(1.2),
        ));
        let premade_cause = interleaved(
            config.leaf_rounds,
            n,
            || leaf_cancel_premade_cause(&scope, n),
            || leaf_cancel_only_token(&token, n),
        );
        rows.push(row(
            format!("2b. leaf cancel only, {n} made before"),
            "ns/op",
            &cancel_only,
            Target::None,
        ));
        rows.push(row(
            "2c. the same, the causes made before too",
            "ns/op",
            &premade_cause,
            Target::None,
        ));
        eprintln!(
            "[{:>5.1}s] leaf cancel done",
            started.elapsed().as_secs_f64()
        );
    }

    // 3. Timeouts read tokio's clock: the chain is built inside a runtime's context.
    {
        let rt = common::runtime();
        let _guard = rt.enter();
        let depth = if config.chain_depth_forced {
            config.chain_depth
        } else {
            let (depth, tried) = chain_depth(config.chain_depth);
            chain_notes.extend(tried);
            depth
        };
        let stats = interleaved_phases(
            config.chain_rounds,
            &[depth; 3],
            &mut [
                &mut || chain_timeout(depth),
                &mut || chain_plain(depth),
                &mut || chain_token(depth),
            ],
        );
        let (timeout, plain, token) = (0, 1, 2);
        rows.push(row(
            format!("3a. {depth}-deep chain, timeout vs plain, b+c"),
            "ns/level",
            &phase_pair(&stats, timeout, plain, BUILD_AND_CANCEL),
            Target::AtMost(2.0),
        ));
        rows.push(row(
            "3b. of which build (b)",
            "ns/level",
            &phase_pair(&stats, timeout, plain, BUILD),
            Target::None,
        ));
        rows.push(row(
            "3c. of which cancel (c), leaf to root",
            "ns/level",
            &phase_pair(&stats, timeout, plain, CANCEL),
            Target::None,
        ));
        rows.push(row(
            "3d. drop, after the cancel",
            "ns/level",
            &phase_pair(&stats, timeout, plain, DROP),
            Target::None,
        ));
        rows.push(row(
            "3e. plain chain vs child_token chain, b+c",
            "ns/level",
            &phase_pair(&stats, plain, token, BUILD_AND_CANCEL),
            Target::None,
        ));
        rows.push(row(
            "3f. timeout chain vs child_token chain, b+c",
            "ns/level",
            &phase_pair(&stats, timeout, token, BUILD_AND_CANCEL),
            Target::None,
        ));
        eprintln!(
            "[{:>5.1}s] timeout chain done",
            started.elapsed().as_secs_f64()
        );
    }

    // 4. Resident memory is a property of the whole process, so each sample is a fresh one.
    if resident_bytes().is_some() {
        let n = config.rss_requests;
        let [parked, created, heap] = rss_runs(config.rss_runs, n);
        rows.push(row(
            format!("4a. RSS per idle request, {n} requests"),
            "B/request",
            &parked,
            Target::AtMost(1.05),
        ));
        rows.push(row(
            "4b. RSS per request, spawned, not yet polled",
            "B/request",
            &created,
            Target::None,
        ));
        rows.push(row(
            "4c. live heap per idle request",
            "B/request",
            &heap,
            Target::None,
        ));
        eprintln!(
            "[{:>5.1}s] memory per idle request done",
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("no /proc/self/statm: memory per idle request skipped");
    }

    print_table(&rows);
    println!();
    println!(
        "(1c and 1d compare one library with itself: 2 workers in the taskscope column, \
         1 worker in the baseline column)"
    );
    println!("(3: b = build, c = cancel leaf to root; the chain's root is a plain scope or token)");
    for note in &chain_notes {
        println!("(3: {note})");
    }
    println!(
        "(4: {} fresh processes per side, alternating; the spread is the range over them)",
        config.rss_runs
    );
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
