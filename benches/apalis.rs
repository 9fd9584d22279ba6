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
//! - **memory, with the layer** / **plain** (info): apalis-core's `MemoryStorage`, the layer
//!   with its default `ApalisResult` (nothing written): the layer's own CPU cost, no database.
//!
//! Both sides run `.concurrency(16)`. A sample enqueues `jobs` jobs on a queue of its own
//! (untimed), then times from the worker's start until it has stopped: the handler counts the
//! jobs it runs and asks the worker to stop at the last one; the worker then waits for the
//! jobs in flight and flushes what its backend still holds (plain apalis writes the last
//! results then). For postgres the clock stops once no row of the queue is left but `Done`
//! (checked after the worker's end; it always is, so far). The queue's rows and its worker's
//! row are deleted after each sample (untimed).
//!
//! The postgres sides run on a multi-thread runtime (a worker's usual runtime; 2 threads here),
//! the memory sides on a current-thread runtime, where all of a job's work is on the critical
//! path. Each side's CPU per job is read from `/proc`: this process's, and, when the server is
//! on this machine and its processes readable, PostgreSQL's (the postmaster with its reaped
//! children, plus its live backends).
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
use common::{Pair, Stats, Target, interleaved, print_table, recorded_pair, row};
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
                memory_jobs: 50_000,
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
fn server_cpu(postmaster: u32) -> Option<Duration> {
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
    Scoped,
    Plain,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Scoped => "scoped",
            Side::Plain => "plain",
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
        Side::Scoped => {
            let scope = Scope::new();
            let worker = WorkerBuilder::new(worker.as_str())
                .backend(storage)
                .layer(JobScopeLayer::new(&scope).settle(postgres::Settle::new(pool)))
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
        Side::Plain => {
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

/// One memory sample of `side`: `jobs` jobs drained by one worker; its elapsed time and this
/// process's CPU meanwhile.
async fn memory_sample(side: Side, jobs: usize) -> (Duration, Duration) {
    let mut storage = MemoryStorage::<u64>::new();
    storage
        .push_bulk((0..jobs as u64).collect())
        .await
        .expect("enqueue the sample's jobs");
    let ran = Ran::new(jobs);
    let (started_tx, started) = oneshot::channel();
    let signal = stop_after(ran.clone(), started_tx);
    let own_before = own_cpu();
    let start = Instant::now();
    let running = match side {
        Side::Scoped => {
            let scope = Scope::new();
            let worker = WorkerBuilder::new("memory-scoped")
                .backend(storage)
                .layer(JobScopeLayer::new(&scope))
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
        Side::Plain => {
            let worker = WorkerBuilder::new("memory-plain")
                .backend(storage)
                .concurrency(CONCURRENCY)
                .build(job(ran));
            tokio::spawn(worker.run_until(signal))
        }
    };
    started.await.expect("the worker starts");
    running.await.expect("worker task").expect("worker");
    (start.elapsed(), own_cpu().saturating_sub(own_before))
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

/// Jobs per second of a side, from its ns per job: median, and range over the rounds.
fn throughput(name: &str, stats: &Stats) {
    println!(
        "  {name:<40} {:>9.0} jobs/s  (rounds {:.0}..{:.0})",
        1e9 / stats.median,
        1e9 / stats.max,
        1e9 / stats.min
    );
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
    let mut rates = Vec::new();
    let mut cpu_lines = Vec::new();

    // -- memory ----------------------------------------------------------------------------
    let rt = common::runtime();
    let logs = [Cell::new(Vec::new()), Cell::new(Vec::new())];
    let memory_side = |side: Side, log: &Cell<Vec<Duration>>| {
        let (elapsed, own) = rt.block_on(memory_sample(side, config.memory_jobs));
        let mut cpu = log.take();
        cpu.push(own);
        log.set(cpu);
        elapsed
    };
    let memory = interleaved(
        config.rounds,
        config.memory_jobs,
        || memory_side(Side::Scoped, &logs[0]),
        || memory_side(Side::Plain, &logs[1]),
    );
    let [scoped_cpu, plain_cpu] = logs.map(Cell::into_inner);
    let memory_cpu = micros(&recorded_pair(&scoped_cpu, &plain_cpu, config.memory_jobs));
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
    rows.push(row(
        "2'. memory: CPU of this process",
        "us/job",
        &memory_cpu,
        Target::None,
    ));
    rates.push(("memory, JobScopeLayer", memory.a));
    rates.push(("memory, plain apalis", memory.b));
    drop(rt);

    // -- postgres --------------------------------------------------------------------------
    match std::env::var("TASKSCOPE_POSTGRES_URL") {
        Err(_) => {
            println!("postgres sides skipped: TASKSCOPE_POSTGRES_URL is not set (see .ci/postgres)")
        }
        Ok(url) => {
            let rt = Runtime::new().expect("multi-thread runtime");
            let pool = rt.block_on(async {
                let pool = PgPoolOptions::new()
                    .max_connections(u32::try_from(CONCURRENCY).expect("small") + 4)
                    .connect(&url)
                    .await
                    .expect("connect to TASKSCOPE_POSTGRES_URL");
                PostgresStorage::setup(&pool)
                    .await
                    .expect("apalis migrations");
                // What a run cut short left behind.
                sqlx::query("DELETE FROM apalis.jobs WHERE job_type LIKE $1")
                    .bind(format!("{PREFIX}-%"))
                    .execute(&pool)
                    .await
                    .expect("delete earlier runs' jobs");
                sqlx::query("DELETE FROM apalis.workers WHERE id LIKE $1")
                    .bind(format!("{PREFIX}-%"))
                    .execute(&pool)
                    .await
                    .expect("delete earlier runs' workers");
                pool
            });
            let postmaster = rt.block_on(postmaster(&pool));
            let sample = Cell::new(0);
            let logs = [Cell::new(CpuLog::default()), Cell::new(CpuLog::default())];
            let pg_side = |side: Side, log: &Cell<CpuLog>| {
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
            let pg = interleaved(
                config.rounds,
                config.pg_jobs,
                || pg_side(Side::Scoped, &logs[0]),
                || pg_side(Side::Plain, &logs[1]),
            );
            let [scoped_cpu, plain_cpu] = logs.map(Cell::into_inner);
            eprintln!(
                "[{:>5.1}s] postgres sides done",
                started.elapsed().as_secs_f64()
            );
            rows.insert(
                0,
                row(
                    "1. postgres: JobScopeLayer + Settle vs plain",
                    "us/job",
                    &micros(&pg),
                    Target::AtMost(1.05),
                ),
            );
            rows.insert(
                1,
                row(
                    "1'. postgres: CPU of this process",
                    "us/job",
                    &micros(&recorded_pair(
                        &scoped_cpu.own,
                        &plain_cpu.own,
                        config.pg_jobs,
                    )),
                    Target::None,
                ),
            );
            if scoped_cpu.server.len() == scoped_cpu.own.len()
                && plain_cpu.server.len() == plain_cpu.own.len()
            {
                rows.insert(
                    2,
                    row(
                        "1\". postgres: CPU of the PostgreSQL server",
                        "us/job",
                        &micros(&recorded_pair(
                            &scoped_cpu.server,
                            &plain_cpu.server,
                            config.pg_jobs,
                        )),
                        Target::None,
                    ),
                );
            } else {
                cpu_lines.push(
                    "(the PostgreSQL server's CPU is not shown: its processes are not readable \
                     from here)",
                );
            }
            rates.insert(0, ("postgres, JobScopeLayer + postgres::Settle", pg.a));
            rates.insert(1, ("postgres, plain apalis", pg.b));
            rt.block_on(pool.close());
        }
    }

    print_table(&rows);
    for line in cpu_lines {
        println!("{line}");
    }
    println!();
    println!("throughput (median over rounds; range over rounds):");
    for (name, stats) in &rates {
        throughput(name, stats);
    }
    println!(
        "(CPU rows: /proc utime + stime over each sample, in 10 ms ticks, per job; \
         ratio = with the layer / plain)"
    );
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
