//! The harness shared by the benchmark binaries: a counting global allocator, interleaved
//! rounds with medians, and the results table.
//!
//! Each binary includes this module with `mod common;` and uses a subset of it.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// Wraps the system allocator and, while [`COUNTING`] is set, tracks the change in live heap
/// bytes. Outside a memory measurement it costs one relaxed load per call.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_DELTA: AtomicIsize = AtomicIsize::new(0);

fn track(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_DELTA.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are updated besides.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Live heap bytes added by `build` while its result is alive.
///
/// Counting is on only while `build` runs; the delta of allocations minus frees in that window is
/// exactly the change in live bytes, whatever was allocated before.
pub fn live_bytes_added<T>(build: impl FnOnce() -> T) -> (isize, T) {
    LIVE_DELTA.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let value = black_box(build());
    COUNTING.store(false, Ordering::SeqCst);
    (LIVE_DELTA.load(Ordering::SeqCst), value)
}

// ---------------------------------------------------------------------------------------------
// Mode and statistics
// ---------------------------------------------------------------------------------------------

/// Whether to do only the smoke run: `cargo bench` passes `--bench`; `cargo test --benches` (or
/// `--all-targets`) does not, and gets the smoke run, as does `TASKSCOPE_BENCH_QUICK=1`.
pub fn quick_mode() -> bool {
    let under_cargo_bench = std::env::args().any(|arg| arg == "--bench");
    !under_cargo_bench
        || std::env::var("TASKSCOPE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Medians (and spreads) of two interleaved sides, in ns per op.
pub struct Pair {
    pub a: Stats,
    pub b: Stats,
}

#[derive(Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        Stats {
            median: samples[samples.len() / 2],
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

/// Runs `a` and `b` once each untimed, then `rounds` times interleaved, alternating which side
/// goes first. Each closure returns the elapsed time of one sample of `ops` operations.
pub fn interleaved(
    rounds: usize,
    ops: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> Pair {
    let mut stats = interleaved_n(rounds, &[ops, ops], &mut [&mut a, &mut b]).into_iter();
    let (Some(a), Some(b)) = (stats.next(), stats.next()) else {
        unreachable!("two sides give two results");
    };
    Pair { a, b }
}

/// [`interleaved`] for any number of sides: each runs once untimed, in order, then `rounds`
/// times, in order on even rounds and in reverse order on odd ones. Side `i` does `ops[i]`
/// operations per sample.
pub fn interleaved_n(
    rounds: usize,
    ops: &[usize],
    sides: &mut [&mut dyn FnMut() -> Duration],
) -> Vec<Stats> {
    assert_eq!(ops.len(), sides.len());
    let mut per_op: Vec<_> = sides
        .iter_mut()
        .zip(ops)
        .map(|(side, &ops)| move || side().as_nanos() as f64 / ops as f64)
        .collect();
    let mut sides: Vec<&mut dyn FnMut() -> f64> = per_op
        .iter_mut()
        .map(|side| side as &mut dyn FnMut() -> f64)
        .collect();
    interleaved_samples(rounds, &mut sides)
}

/// The statistics of samples taken as [`interleaved_n`] takes them, each sample being whatever
/// its side returns (a time per op, a size).
pub fn interleaved_samples(rounds: usize, sides: &mut [&mut dyn FnMut() -> f64]) -> Vec<Stats> {
    for side in sides.iter_mut() {
        black_box(side());
    }
    let n = sides.len();
    let mut samples: Vec<Vec<f64>> = (0..n).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        for step in 0..n {
            let i = if round % 2 == 0 { step } else { n - 1 - step };
            samples[i].push(sides[i]());
        }
    }
    samples.into_iter().map(Stats::of).collect()
}

/// [`interleaved_n`] for sides whose every sample has `K` timed phases (a start and a shutdown,
/// say): each side returns the elapsed time of each phase, and gets one [`Stats`] per phase,
/// in ns per op. Same warm-up and order as [`interleaved_samples`].
pub fn interleaved_phases<const K: usize>(
    rounds: usize,
    ops: &[usize],
    sides: &mut [&mut dyn FnMut() -> [Duration; K]],
) -> Vec<[Stats; K]> {
    assert_eq!(ops.len(), sides.len());
    for side in sides.iter_mut() {
        black_box(side());
    }
    let n = sides.len();
    let mut samples: Vec<[Vec<f64>; K]> = (0..n)
        .map(|_| std::array::from_fn(|_| Vec::with_capacity(rounds)))
        .collect();
    for round in 0..rounds {
        for step in 0..n {
            let i = if round % 2 == 0 { step } else { n - 1 - step };
            let phases = sides[i]();
            for (phase, elapsed) in phases.iter().enumerate() {
                samples[i][phase].push(elapsed.as_nanos() as f64 / ops[i] as f64);
            }
        }
    }
    samples
        .into_iter()
        .map(|phases| phases.map(Stats::of))
        .collect()
}

/// Side `a` against side `b` of statistics from one interleaved run.
pub fn pair(stats: &[Stats], a: usize, b: usize) -> Pair {
    Pair {
        a: stats[a],
        b: stats[b],
    }
}

/// Times recorded alongside each sample of two sides (the first entry of each being the
/// warm-up, which is dropped), per operation of the `ops` a sample does.
pub fn recorded_pair(a: &[Duration], b: &[Duration], ops: usize) -> Pair {
    let per_op = |samples: &[Duration]| {
        Stats::of(
            samples[1..]
                .iter()
                .map(|d| d.as_nanos() as f64 / ops as f64)
                .collect(),
        )
    };
    Pair {
        a: per_op(a),
        b: per_op(b),
    }
}

/// Phase `phase` of side `a` against the same phase of side `b`, from one
/// [`interleaved_phases`] run.
pub fn phase_pair<const K: usize>(stats: &[[Stats; K]], a: usize, b: usize, phase: usize) -> Pair {
    Pair {
        a: stats[a][phase],
        b: stats[b][phase],
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub ours: f64,
    pub theirs: f64,
    pub target: Target,
    pub spread: Option<(f64, f64, f64, f64)>,
}

pub enum Target {
    /// ours / theirs must be at most this.
    AtMost(f64),
    /// ours / theirs must be within this factor of 1 (equal within noise).
    Equal(f64),
    /// ours - theirs must be at most this, in the row's unit.
    AtMostPlus(f64),
    /// ours alone must be at most this, in the row's unit; the baseline is for reference.
    OursAtMost(f64),
    /// Reported for reference only.
    None,
}

/// A bound with up to three decimals and at least one: `1.5`, `2.0`, `1.25`, `0.167`.
fn bound(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0');
    if text.ends_with('.') {
        format!("{text}0")
    } else {
        text.to_owned()
    }
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours / self.theirs
    }

    fn target(&self) -> String {
        match self.target {
            Target::AtMost(max) => format!("<= {}", bound(max)),
            Target::Equal(tolerance) => format!("~1 (±{:.0}%)", (tolerance - 1.0) * 100.0),
            Target::AtMostPlus(max) => format!("diff <= {max:.0}"),
            Target::OursAtMost(max) => format!("abs <= {max:.0}"),
            Target::None => "-".to_owned(),
        }
    }

    fn verdict(&self) -> &'static str {
        let ratio = self.ratio();
        let pass = match self.target {
            Target::AtMost(max) => ratio <= max,
            Target::Equal(tolerance) => ratio <= tolerance && ratio >= 1.0 / tolerance,
            Target::AtMostPlus(max) => self.ours - self.theirs <= max,
            Target::OursAtMost(max) => self.ours <= max,
            Target::None => return "info",
        };
        if pass { "PASS" } else { "MISS" }
    }
}

pub fn row(name: impl Into<String>, unit: &'static str, pair: &Pair, target: Target) -> Row {
    Row {
        name: name.into(),
        unit,
        ours: pair.a.median,
        theirs: pair.b.median,
        target,
        spread: Some((pair.a.min, pair.a.max, pair.b.min, pair.b.max)),
    }
}

pub fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<48} {:>10} {:>12} {:>12} {:>7} {:>12} {:>6}",
        "benchmark", "unit", "taskscope", "baseline", "ratio", "target", "result"
    );
    println!("{}", "-".repeat(48 + 11 + 13 + 13 + 8 + 13 + 7));
    for r in rows {
        println!(
            "{:<48} {:>10} {:>12.1} {:>12.1} {:>7.2} {:>12} {:>6}",
            r.name,
            r.unit,
            r.ours,
            r.theirs,
            r.ratio(),
            r.target(),
            r.verdict()
        );
    }
    println!(
        "(taskscope = left side of \"vs\", baseline = right side; ratio = taskscope / baseline)"
    );
    if rows
        .iter()
        .any(|r| matches!(r.target, Target::AtMostPlus(_) | Target::OursAtMost(_)))
    {
        println!(
            "(target \"diff <= x\": taskscope - baseline <= x; \"abs <= x\": taskscope <= x; \
             in the row's unit)"
        );
    }
    println!();
    println!("spread over rounds (min..max of each side):");
    for r in rows {
        if let Some((a_min, a_max, b_min, b_max)) = r.spread {
            println!(
                "  {:<46} taskscope {:>9.1}..{:<9.1} baseline {:>9.1}..{:<9.1}",
                r.name, a_min, a_max, b_min, b_max
            );
        }
    }
}

/// The current-thread runtime every benchmark side runs on, with time enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime")
}

/// Yields until no task is left on the runtime, so that a sample leaves nothing behind for the
/// next one to run.
pub async fn drain() {
    let metrics = tokio::runtime::Handle::current().metrics();
    while metrics.num_alive_tasks() > 0 {
        tokio::task::yield_now().await;
    }
}
