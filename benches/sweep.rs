//! `taskscope-test`'s cost: one run of a piece of work under the sweep's probes (the recording
//! run: its observer, a probe per task, the checks after it) against a plain run of the same
//! work on the same kind of runtime (a fresh current-thread runtime with paused time, a root
//! scope, the work, the runtime dropped).
//!
//! ```text
//! cargo bench -p taskscope-benches --bench sweep
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench sweep   # smoke run
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{Target, interleaved_n, pair, print_table, quick_mode, row};
use taskscope::{BoxError, Scope, TaskGroup};
use taskscope_test::Sweep;

/// `tasks` tasks, each suspended `awaits` times.
async fn work(scope: Scope, tasks: usize, awaits: usize) -> usize {
    let group = TaskGroup::builder(&scope).name("steps").build();
    for _ in 0..tasks {
        group.spawn("step", move |_| async move {
            for _ in 0..awaits {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, BoxError>(())
        });
    }
    group.join().await.map_or(0, |done| done.len())
}

fn plain(runs: usize, tasks: usize, awaits: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..runs {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let done = runtime.block_on(work(Scope::builder().name("sweep").build(), tasks, awaits));
        assert_eq!(done, tasks);
    }
    start.elapsed()
}

fn swept(runs: usize, tasks: usize, awaits: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..runs {
        let report = Sweep::new(
            "cost",
            || async {},
            move |(), scope| work(scope, tasks, awaits),
        )
        .modes([])
        .run();
        assert_eq!(report.points, 1 + tasks * awaits);
    }
    start.elapsed()
}

fn main() {
    let quick = quick_mode();
    let (rounds, runs) = if quick { (3, 5) } else { (21, 50) };
    println!(
        "taskscope-test: a swept run vs a plain run ({} mode; {rounds} rounds of {runs} runs)",
        if quick { "QUICK" } else { "full" }
    );
    let mut rows = Vec::new();
    for (label, tasks, awaits) in [("1a", 4, 2), ("1b", 100, 5)] {
        let stats = interleaved_n(
            rounds,
            &[runs, runs],
            &mut [&mut || swept(runs, tasks, awaits), &mut || {
                plain(runs, tasks, awaits)
            }],
        );
        rows.push(row(
            format!("{label}. {tasks} tasks x {awaits} awaits: swept vs plain run"),
            "ns/run",
            &pair(&stats, 0, 1),
            Target::None,
        ));
    }
    print_table(&rows);
}
