//! What `taskscope-apalis`' job layer costs an apalis worker's throughput: one apalis 1.0
//! worker draining pre-enqueued trivial jobs (`async fn(u64) -> Result<(), BoxDynError>`),
//! with and without `JobScopeLayer`, in one process.
//!
//! - **postgres, with the layer**: `PostgresStorage` with `taskscope_apalis::postgres::config`
//!   (one task per fetch, no lock or result writes by apalis, 1 s heartbeat) behind
//!   `JobScopeLayer::new(&scope).settle(postgres::Settle::new(&pool))`: a scope per job, and
//!   one `UPDATE` per job written by the layer as the job ends.
//! - **postgres, plain apalis** (the baseline): `PostgresStorage` with
//!   `Config::default().queue(q).batch_size(1)`, apalis' own bookkeeping (a lock event when a
//!   job starts, its result when it ends, both sent to the backend and written in batches).
//!   `postgres::config` without the layer is not a side: nothing would write the results.
//! - **postgres, plain apalis without lock events** (info): the same with `lock_tasks(false)`,
//!   results only: which part of apalis' bookkeeping costs what.
//! - **postgres, plain apalis with its default batch** (info): `Config::default().queue(q)`,
//!   10 tasks per fetch, which `postgres::config` gives up (a worker that stops would hold
//!   fetched tasks it never runs): what one task per fetch costs.
//! - **postgres, with the layer and a batch of 10** (info): `postgres::config(q).batch_size(10)`
//!   with the layer and `Settle`, against the plain batch of 10: the layer's cost when the
//!   fetch is not the bottleneck. (A trade-off `postgres::config` does not make; measured
//!   only.)
//! - **memory, with the layer** / **plain** (info): apalis-core's `MemoryStorage`, the layer
//!   with its default `ApalisResult` (nothing written): the layer's own CPU cost, no database.
//!
//! Every side runs `.concurrency(16)`. A sample enqueues `jobs` jobs on a queue of its own
//! (untimed), then times from the worker's start until it has stopped: the handler counts the
//! jobs it runs and asks the worker to stop at the last one; the worker then waits for the
//! jobs in flight and flushes what its backend still holds (plain apalis writes the last
//! results then). For postgres the clock stops once no row of the queue is left but `Done`
//! (checked after the worker's end; in the runs so far it always was by then). The queue's
//! rows and its worker's row are deleted after each sample (untimed).
//!
//! The postgres sides run on a multi-thread runtime (a worker's usual runtime; 2 threads here),
//! the memory sides on a current-thread runtime, where all of a job's work is on the critical
//! path. Each postgres side's CPU per job is read from `/proc`: this process's, and, when the
//! server is on this machine and its processes readable, PostgreSQL's (the postmaster with its
//! reaped children, plus its live backends).
//!
//! ```text
//! TASKSCOPE_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/taskscope \
//!     cargo bench -p taskscope-benches --bench apalis
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench apalis   # smoke run
//! ```
//!
//! Without `TASKSCOPE_POSTGRES_URL` the postgres sides are skipped (one line says so) and the
//! memory sides run alone. Run without `--bench` (as `cargo test --benches` does), it does only
//! the smoke run.

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PgPool, PostgresStorage};
use common::{Pair, Stats, Target, interleaved, interleaved_n, pair, print_table, row};
use sqlx::postgres::PgPoolOptions;
use taskscope::Scope;
use taskscope_apalis::{JobScopeLayer, postgres};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, oneshot};

/// Jobs in flight per worker, on both sides.
const CONCURRENCY: usize = 16;

/// The prefix of every queue (and worker) this benchmark makes, so that a run cut short can be
/// cleaned up by the next.
const PREFIX: &str = "taskscope-bench-apalis";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds (odd, so the median is a sample).
    rounds: usize,
    /// Jobs per postgres sample.
    pg_jobs: usize,
    /// Jobs per memory sample.
    memory_jobs: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 1,
                pg_jobs: 200,
                memory_jobs: 2_000,
            }
        } else {
            Config {
                quick,
                rounds: 7,
                pg_jobs: 2_000,
                memory_jobs: 200_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The job
// ---------------------------------------------------------------------------------------------

/// The jobs a sample has run, and the wake-up of whoever waits for the last.
struct Ran {
    count: AtomicUsize,
    of: usize,
    all: Notify,
}

impl Ran {
    fn new(of: usize) -> Arc<Ran> {
        Arc::new(Ran {
            count: AtomicUsize::new(0),
            of,
            all: Notify::new(),
        })
    }

    fn one(&self) {
        // Relaxed: only the count matters; the worker's stop is ordered by the Notify.
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.of {
            // Stores a permit if the waiter is not there yet.
            self.all.notify_one();
        }
    }
}

/// The trivial job, counting itself.
fn job(ran: Arc<Ran>) -> impl Fn(u64) -> std::future::Ready<Result<(), BoxDynError>> + Clone {
    move |n| {
        std::hint::black_box(n);
        ran.one();
        std::future::ready(Ok(()))
    }
}

/// Waits for the last job, then stops the worker: `run_until`'s signal.
async fn stop_after(ran: Arc<Ran>, started: oneshot::Sender<()>) -> Result<(), std::io::Error> {
    let _ = started.send(());
    ran.all.notified().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc
// ---------------------------------------------------------------------------------------------

/// Linux's `USER_HZ`, the unit of `/proc/*/stat` times (100 on every mainstream platform).
const TICKS_PER_SECOND: u64 = 100;

/// utime, stime, cutime and cstime of `/proc/{pid}/stat`, and its parent's pid.
fn proc_times(pid: &str) -> Option<(u32, [u64; 4])> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command sits in parentheses and may hold spaces: fields count from the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let field = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(field(4)?).ok()?;
    Some((ppid, [field(14)?, field(15)?, field(16)?, field(17)?]))
}

/// CPU time of this process so far.
fn own_cpu() -> Duration {
    let ticks = proc_times("self").map_or(0, |(_, [user, system, ..])| user + system);
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// CPU time of the PostgreSQL server so far: its postmaster's own and its reaped children's,
/// and its live children's. `None` if its processes cannot be read.
///
/// A child that exits while `/proc` is read (an autovacuum worker, another client's backend)
/// can be missed by one reading, which then comes out low: the median of three is taken.
fn server_cpu(postmaster: u32) -> Option<Duration> {
    let mut readings = [
        server_cpu_once(postmaster)?,
        server_cpu_once(postmaster)?,
        server_cpu_once(postmaster)?,
    ];
    readings.sort();
    Some(readings[1])
}

fn server_cpu_once(postmaster: u32) -> Option<Duration> {
    let (_, [user, system, children_user, children_system]) = proc_times(&postmaster.to_string())?;
    let mut ticks = user + system + children_user + children_system;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((ppid, [user, system, ..])) = proc_times(pid)
            && ppid == postmaster
        {
            ticks += user + system;
        }
    }
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// The postmaster of the server `pool` talks to, if it runs on this machine: the parent of
/// one of its backends.
async fn postmaster(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let (ppid, _) = proc_times(&backend.to_string())?;
    server_cpu(ppid).map(|_| ppid)
}

/// CPU spent by this process and by the server over one sample.
#[derive(Default)]
struct CpuLog {
    own: Vec<Duration>,
    server: Vec<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Side {
    /// `JobScopeLayer`; for postgres with `postgres::config` and `postgres::Settle`.
    Scoped,
    /// No layer; for postgres apalis' default bookkeeping, one task per fetch.
    Plain,
    /// As `Plain`, without apalis' lock event (`lock_tasks(false)`): results only (postgres).
    PlainNoLock,
    /// As `Plain`, with apalis' default batch of 10 tasks per fetch (postgres).
    PlainBatch,
    /// As `Scoped`, with `postgres::config(q).batch_size(10)` (postgres).
    ScopedBatch,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Scoped => "scoped",
            Side::Plain => "plain",
            Side::PlainNoLock => "plain-nolock",
            Side::PlainBatch => "plain-batch",
            Side::ScopedBatch => "scoped-batch",
        }
    }
}

fn unique(side: Side, sample: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{PREFIX}-{}-{sample}-{nanos}", side.name())
}

/// Rows of `queue` not yet `Done`.
async fn unsettled(pool: &PgPool, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status <> 'Done'")
        .bind(queue)
        .fetch_one(pool)
        .await
        .expect("count the queue's rows")
}

/// One postgres sample of `side`: `jobs` jobs drained by one worker. Its elapsed time, and the
/// CPU this process and the server spent meanwhile.
async fn pg_sample(
    pool: &PgPool,
    postmaster: Option<u32>,
    side: Side,
    jobs: usize,
    sample: usize,
) -> (Duration, Duration, Option<Duration>) {
    let queue = unique(side, sample);
    let config = match side {
        Side::Scoped => postgres::config(&queue),
        Side::Plain => QueueConfig::default().queue(&queue).batch_size(1),
        Side::PlainNoLock => QueueConfig::default()
            .queue(&queue)
            .batch_size(1)
            .lock_tasks(false),
        Side::PlainBatch => QueueConfig::default().queue(&queue),
        Side::ScopedBatch => postgres::config(&queue).batch_size(10),
    };
    let mut storage = PostgresStorage::<u64>::new(pool).with_config(config);
    storage
        .push_bulk((0..jobs as u64).collect())
        .await
        .expect("enqueue the sample's jobs");
    let ran = Ran::new(jobs);
    let worker = format!("{queue}-w");
    let (started_tx, started) = oneshot::channel();
    let signal = stop_after(ran.clone(), started_tx);

    let (own_before, server_before) = (own_cpu(), postmaster.and_then(server_cpu));
    let start = Instant::now();
    let running = match side {
        Side::Scoped | Side::ScopedBatch => {
            let scope = Scope::new();
            let worker = WorkerBuilder::new(worker.as_str())
                .backend(storage)
                .layer(JobScopeLayer::new(&scope).settle(postgres::Settle::new(pool)))
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
        Side::Plain | Side::PlainNoLock | Side::PlainBatch => {
            let worker = WorkerBuilder::new(worker.as_str())
                .backend(storage)
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
    };
    started.await.expect("the worker starts");
    running.await.expect("worker task").expect("worker");
    let mut left = unsettled(pool, &queue).await;
    while left > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        left = unsettled(pool, &queue).await;
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{left} jobs of {queue} not Done after 120 s"
        );
    }
    let elapsed = start.elapsed();
    let own = own_cpu().saturating_sub(own_before);
    let server = server_before
        .zip(postmaster.and_then(server_cpu))
        .map(|(before, after)| after.saturating_sub(before));

    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(&queue)
        .execute(pool)
        .await
        .expect("delete the sample's jobs");
    sqlx::query("DELETE FROM apalis.workers WHERE id = $1")
        .bind(&worker)
        .execute(pool)
        .await
        .expect("delete the sample's worker");
    (elapsed, own, server)
}

/// One memory sample of `side`: `jobs` jobs drained by one worker; its elapsed time.
async fn memory_sample(side: Side, jobs: usize) -> Duration {
    let mut storage = MemoryStorage::<u64>::new();
    storage
        .push_bulk((0..jobs as u64).collect())
        .await
        .expect("enqueue the sample's jobs");
    let ran = Ran::new(jobs);
    let (started_tx, started) = oneshot::channel();
    let signal = stop_after(ran.clone(), started_tx);
    let start = Instant::now();
    let running = match side {
        Side::Scoped | Side::ScopedBatch => {
            let scope = Scope::new();
            let worker = WorkerBuilder::new("memory-scoped")
                .backend(storage)
                .layer(JobScopeLayer::new(&scope))
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
        Side::Plain | Side::PlainNoLock | Side::PlainBatch => {
            let worker = WorkerBuilder::new("memory-plain")
                .backend(storage)
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
    };
    started.await.expect("the worker starts");
    running.await.expect("worker task").expect("worker");
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// `pair` (ns per job) in µs per job.
fn micros(pair: &Pair) -> Pair {
    let us = |s: Stats| Stats {
        median: s.median / 1e3,
        min: s.min / 1e3,
        max: s.max / 1e3,
    };
    Pair {
        a: us(pair.a),
        b: us(pair.b),
    }
}

/// A side's median jobs per second with its range over the rounds, from its ns per job, and
/// its median CPU per job where measured.
fn throughput(name: &str, time: &Stats, own: Option<&Stats>, server: Option<&Stats>) {
    let cpu = |label: &str, stats: Option<&Stats>| {
        stats.map_or(String::new(), |s| {
            format!(
                ", {label} {:.0} ({:.0}..{:.0}) us/job",
                s.median / 1e3,
                s.min / 1e3,
                s.max / 1e3
            )
        })
    };
    println!(
        "  {name:<50} {:>9.0} jobs/s ({:.0}..{:.0}){}{}",
        1e9 / time.median,
        1e9 / time.max,
        1e9 / time.min,
        cpu("process CPU", own),
        cpu("server CPU", server),
    );
}

/// Per-job statistics of CPU times recorded alongside each sample, the warm-up dropped.
fn per_job(samples: &[Duration], jobs: usize) -> Option<Stats> {
    (samples.len() > 1).then(|| {
        Stats::of(
            samples[1..]
                .iter()
                .map(|d| d.as_nanos() as f64 / jobs as f64)
                .collect(),
        )
    })
}

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope-apalis' JobScopeLayer vs plain apalis, one worker draining trivial jobs, \
         concurrency {CONCURRENCY} ({} mode; {} rounds; {} jobs per postgres sample, {} per \
         memory sample; available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        config.pg_jobs,
        config.memory_jobs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut rows = Vec::new();

    // -- postgres --------------------------------------------------------------------------
    let pg = match std::env::var("TASKSCOPE_POSTGRES_URL") {
        Err(_) => {
            println!(
                "postgres sides skipped: TASKSCOPE_POSTGRES_URL is not set (see .ci/postgres)"
            );
            None
        }
        Ok(url) => Some(postgres_sides(&config, &url)),
    };
    if let Some((stats, _)) = &pg {
        eprintln!(
            "[{:>5.1}s] postgres sides done",
            started.elapsed().as_secs_f64()
        );
        rows.push(row(
            "1. postgres: JobScopeLayer + Settle vs plain",
            "us/job",
            &micros(&pair(stats, 0, 1)),
            Target::AtMost(1.05),
        ));
        rows.push(row(
            "1b. postgres: the same vs plain, no lock event",
            "us/job",
            &micros(&pair(stats, 0, 2)),
            Target::None,
        ));
        rows.push(row(
            "1c. postgres: the same vs plain, batch of 10",
            "us/job",
            &micros(&pair(stats, 0, 3)),
            Target::None,
        ));
        rows.push(row(
            "1d. postgres: both with a batch of 10",
            "us/job",
            &micros(&pair(stats, 4, 3)),
            Target::None,
        ));
    }

    // -- memory ----------------------------------------------------------------------------
    let rt = common::runtime();
    let memory = interleaved(
        config.rounds,
        config.memory_jobs,
        || rt.block_on(memory_sample(Side::Scoped, config.memory_jobs)),
        || rt.block_on(memory_sample(Side::Plain, config.memory_jobs)),
    );
    eprintln!(
        "[{:>5.1}s] memory sides done",
        started.elapsed().as_secs_f64()
    );
    rows.push(row(
        "2. memory: JobScopeLayer vs plain apalis",
        "us/job",
        &micros(&memory),
        Target::None,
    ));

    print_table(&rows);
    println!();
    println!("throughput, median (range over rounds), and CPU per job, median (range):");
    if let Some((stats, cpu)) = &pg {
        let names = [
            "postgres, JobScopeLayer + postgres::Settle",
            "postgres, plain apalis",
            "postgres, plain apalis, lock_tasks(false)",
            "postgres, plain apalis, batch_size(10)",
            "postgres, JobScopeLayer + Settle, batch_size(10)",
        ];
        for (i, name) in names.into_iter().enumerate() {
            throughput(
                name,
                &stats[i],
                per_job(&cpu[i].own, config.pg_jobs).as_ref(),
                per_job(&cpu[i].server, config.pg_jobs).as_ref(),
            );
        }
        if cpu.iter().any(|log| log.server.is_empty()) {
            println!(
                "  (no server CPU: the PostgreSQL server's processes are not readable from here)"
            );
        }
    }
    throughput("memory, JobScopeLayer", &memory.a, None, None);
    throughput("memory, plain apalis", &memory.b, None, None);
    println!(
        "(CPU: /proc utime + stime over each sample, 10 ms ticks; process = this benchmark, \
         server = the postmaster, its backends and its reaped children)"
    );
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}

/// The five postgres sides, interleaved: their time per job, and their CPU per sample.
fn postgres_sides(config: &Config, url: &str) -> (Vec<Stats>, [CpuLog; 5]) {
    let rt = Runtime::new().expect("multi-thread runtime");
    let pool = rt.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(CONCURRENCY).expect("small") + 4)
            .connect(url)
            .await
            .expect("connect to TASKSCOPE_POSTGRES_URL");
        PostgresStorage::setup(&pool)
            .await
            .expect("apalis migrations");
        // What a run cut short left behind.
        for statement in [
            "DELETE FROM apalis.jobs WHERE job_type LIKE $1",
            "DELETE FROM apalis.workers WHERE id LIKE $1",
        ] {
            sqlx::query(statement)
                .bind(format!("{PREFIX}-%"))
                .execute(&pool)
                .await
                .expect("delete what earlier runs left");
        }
        pool
    });
    let postmaster = rt.block_on(postmaster(&pool));
    let sample = Cell::new(0);
    let logs: [Cell<CpuLog>; 5] = Default::default();
    let run = |side: Side, log: &Cell<CpuLog>| {
        sample.set(sample.get() + 1);
        let (elapsed, own, server) = rt.block_on(pg_sample(
            &pool,
            postmaster,
            side,
            config.pg_jobs,
            sample.get(),
        ));
        let mut cpu = log.take();
        cpu.own.push(own);
        cpu.server.extend(server);
        log.set(cpu);
        elapsed
    };
    let mut scoped = || run(Side::Scoped, &logs[0]);
    let mut plain = || run(Side::Plain, &logs[1]);
    let mut plain_no_lock = || run(Side::PlainNoLock, &logs[2]);
    let mut plain_batch = || run(Side::PlainBatch, &logs[3]);
    let mut scoped_batch = || run(Side::ScopedBatch, &logs[4]);
    let stats = interleaved_n(
        config.rounds,
        &[config.pg_jobs; 5],
        &mut [
            &mut scoped,
            &mut plain,
            &mut plain_no_lock,
            &mut plain_batch,
            &mut scoped_batch,
        ],
    );
    rt.block_on(pool.close());
    (stats, logs.map(Cell::into_inner))
}
