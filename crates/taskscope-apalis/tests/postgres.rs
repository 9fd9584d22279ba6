//! The layer over a real apalis-postgres worker and a real PostgreSQL server.
//!
//! Runs when `TASKSCOPE_POSTGRES_URL` is set (`.ci/postgres` starts a server and prints it);
//! skips otherwise, unless `TASKSCOPE_REQUIRE_POSTGRES` is set, as `.ci/run` does: then a
//! missing server fails the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apalis::prelude::*;
use apalis_postgres::{PgPool, PostgresStorage};
use serde::{Deserialize, Serialize};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_apalis::{CausePolicy, JobScope, JobScopeLayer, postgres};
use tokio::sync::Notify;

async fn pool() -> Option<PgPool> {
    let Ok(url) = std::env::var("TASKSCOPE_POSTGRES_URL") else {
        assert!(
            std::env::var_os("TASKSCOPE_REQUIRE_POSTGRES").is_none(),
            "TASKSCOPE_REQUIRE_POSTGRES is set but TASKSCOPE_POSTGRES_URL is not"
        );
        eprintln!("skipped: TASKSCOPE_POSTGRES_URL is not set (see .ci/postgres)");
        return None;
    };
    let pool = PgPool::connect(&url)
        .await
        .expect("connect to TASKSCOPE_POSTGRES_URL");
    PostgresStorage::setup(&pool)
        .await
        .expect("apalis migrations");
    Some(pool)
}

/// A queue of this test's own.
fn queue(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("taskscope-test-{name}-{nanos}")
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
enum Kind {
    Ok,
    Shortage,
    /// Outlives its deadline on the first attempt only.
    SlowOnce,
    Panic,
    /// Waits for its scope's cancellation, and returns its cause.
    Wait,
    /// A remote service answered UNAVAILABLE: a shutdown cause, but not this worker's.
    RemoteShutdown,
}

#[derive(Debug)]
struct Row {
    status: String,
    attempts: i32,
    locked: bool,
    result: String,
}

/// A job's row as read: payload, status, attempts, `lock_by`, `last_result`.
type RawRow = (Vec<u8>, String, i32, Option<String>, Option<String>);

async fn rows(pool: &PgPool, queue: &str) -> HashMap<Kind, Row> {
    let rows: Vec<RawRow> = sqlx::query_as(
        "SELECT job, status, attempts, lock_by, last_result::text FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(queue)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        // A payload that is not a `Kind` is not one of ours to look at.
        .filter_map(|(job, status, attempts, lock_by, result)| {
            let kind = serde_json::from_slice(&job).ok()?;
            let row = Row {
                status,
                attempts,
                locked: lock_by.is_some(),
                result: result.unwrap_or_default(),
            };
            Some((kind, row))
        })
        .collect()
}

async fn wait_until(pool: &PgPool, queue: &str, done: impl Fn(&HashMap<Kind, Row>) -> bool) {
    let start = Instant::now();
    loop {
        let rows = rows(pool, queue).await;
        if done(&rows) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "jobs did not settle in 30 s: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Compensated = Arc<Mutex<Vec<(Kind, String)>>>;

/// Resolves when `scope` is cancelled: a worker's `run_until` signal.
fn stopped(scope: &Scope) -> impl Future<Output = Result<(), std::io::Error>> + use<> {
    let scope = scope.clone();
    async move {
        scope.cancelled().await;
        Ok(())
    }
}

async fn handle(kind: Kind, scope: JobScope, attempt: Attempt) -> Result<(), Cause> {
    match kind {
        Kind::Ok => Ok(()),
        Kind::Shortage => Err(Cause::new("INVENTORY_SHORTAGE").with_detail("0 left")),
        Kind::SlowOnce if attempt.current() == 1 => {
            // Ignores nothing: it is stopped by its deadline and says so.
            Err(scope.cancelled().await)
        }
        Kind::SlowOnce => Ok(()),
        Kind::Panic => panic!("the inventory worker panicked"),
        Kind::Wait => Err(scope.cancelled().await),
        Kind::RemoteShutdown => {
            Err(Cause::of_kind(CauseKind::Shutdown).with_detail("inventory: UNAVAILABLE"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_gets_its_verdict_in_the_jobs_table() {
    let Some(pool) = pool().await else { return };
    let queue = queue("verdicts");
    let mut storage = PostgresStorage::<Kind>::new(&pool).with_config(postgres::config(&queue));
    for kind in [Kind::Ok, Kind::Shortage, Kind::SlowOnce] {
        storage.push(kind).await.unwrap();
    }
    for kind in [Kind::Panic, Kind::RemoteShutdown] {
        storage
            .push_task(TaskBuilder::new(kind).max_attempts(2).build())
            .await
            .unwrap();
    }

    let compensated = Compensated::default();
    let worker_scope = Scope::new();
    let layer = JobScopeLayer::new(&worker_scope)
        .deadline(Duration::from_millis(300))
        .policy(
            CausePolicy::new()
                .permanent("INVENTORY_SHORTAGE")
                .backoff(Duration::from_millis(50), Duration::from_millis(200)),
        )
        .compensate({
            let compensated = compensated.clone();
            move |kind: Kind, cause: Cause, scope: Scope| {
                let compensated = compensated.clone();
                async move {
                    assert!(scope.is_detached());
                    compensated
                        .lock()
                        .unwrap()
                        .push((kind, cause.code().to_owned()));
                    Ok::<(), Cause>(())
                }
            }
        })
        .settle(postgres::Settle::new(&pool));
    let worker = WorkerBuilder::new(format!("{queue}-w1"))
        .backend(storage)
        .layer(layer)
        .build(handle);
    let running = tokio::spawn(worker.run_until(stopped(&worker_scope)));

    wait_until(&pool, &queue, |rows| {
        rows.len() == 5
            && rows.values().all(|row| {
                matches!(row.status.as_str(), "Done" | "Killed")
                    || (row.status == "Failed" && row.attempts >= 2)
            })
    })
    .await;
    worker_scope.cancel(Cause::of_kind(CauseKind::Shutdown));
    running.await.unwrap().unwrap();

    let rows = rows(&pool, &queue).await;
    let ok = &rows[&Kind::Ok];
    assert_eq!((ok.status.as_str(), ok.attempts), ("Done", 1), "{ok:?}");
    let shortage = &rows[&Kind::Shortage];
    assert_eq!(
        (shortage.status.as_str(), shortage.attempts),
        ("Killed", 1),
        "a permanent code is not retried: {shortage:?}"
    );
    assert!(
        shortage.result.contains("INVENTORY_SHORTAGE"),
        "{shortage:?}"
    );
    let slow = &rows[&Kind::SlowOnce];
    assert_eq!(
        (slow.status.as_str(), slow.attempts),
        ("Done", 2),
        "a deadline is retried: {slow:?}"
    );
    let panic = &rows[&Kind::Panic];
    assert_eq!(
        (panic.status.as_str(), panic.attempts),
        ("Failed", 2),
        "a panic is retried up to the job's limit: {panic:?}"
    );
    assert!(panic.result.contains("panicked"), "{panic:?}");
    let remote = &rows[&Kind::RemoteShutdown];
    assert_eq!(
        (remote.status.as_str(), remote.attempts),
        ("Failed", 2),
        "a shutdown cause from elsewhere, while the worker runs, is retried, not requeued: {remote:?}"
    );

    let mut compensated = compensated.lock().unwrap().clone();
    compensated.sort_by_key(|(kind, _)| format!("{kind:?}"));
    assert_eq!(
        compensated,
        [
            (Kind::Panic, "panicked".to_owned()),
            (Kind::RemoteShutdown, "shutdown".to_owned()),
            (Kind::Shortage, "INVENTORY_SHORTAGE".to_owned()),
        ],
        "compensated once each, and only the jobs given up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_requeues_the_job_without_counting_its_attempt() {
    let Some(pool) = pool().await else { return };
    let queue = queue("shutdown");
    let mut storage = PostgresStorage::<Kind>::new(&pool).with_config(postgres::config(&queue));
    storage.push(Kind::Wait).await.unwrap();

    let started = Arc::new(Notify::new());
    let worker_scope = Scope::new();
    let worker = WorkerBuilder::new(format!("{queue}-w1"))
        .backend(storage.clone())
        .layer(JobScopeLayer::new(&worker_scope).settle(postgres::Settle::new(&pool)))
        .build({
            let started = started.clone();
            move |kind: Kind, scope: JobScope, attempt: Attempt| {
                started.notify_one();
                handle(kind, scope, attempt)
            }
        });
    let running = tokio::spawn(worker.run_until(stopped(&worker_scope)));
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the job started");
    worker_scope.cancel(Cause::of_kind(CauseKind::Shutdown).with_detail("SIGTERM"));
    running.await.unwrap().unwrap();

    let rows = rows(&pool, &queue).await;
    let row = &rows[&Kind::Wait];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.locked),
        ("Pending", 0, false),
        "back in the queue, its attempt not counted: {row:?}"
    );
    assert!(
        row.result.contains("requeued") && row.result.contains("SIGTERM"),
        "{row:?}"
    );

    // The next worker runs it as a first attempt.
    let worker_scope = Scope::new();
    let worker = WorkerBuilder::new(format!("{queue}-w2"))
        .backend(storage)
        .layer(JobScopeLayer::new(&worker_scope).settle(postgres::Settle::new(&pool)))
        .build(|_: Kind, attempt: Attempt| async move {
            assert_eq!(
                attempt.current(),
                1,
                "the requeued job's first counted attempt"
            );
            Ok::<(), Cause>(())
        });
    let running = tokio::spawn(worker.run_until(stopped(&worker_scope)));
    wait_until(&pool, &queue, |rows| rows[&Kind::Wait].status == "Done").await;
    worker_scope.cancel(Cause::of_kind(CauseKind::Shutdown));
    running.await.unwrap().unwrap();
    let rows = self::rows(&pool, &queue).await;
    assert_eq!(rows[&Kind::Wait].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_are_not_json_are_dead_lettered_and_jobs_never_started_put_back() {
    let Some(pool) = pool().await else { return };
    let queue = queue("dead-letter");
    let mut storage = PostgresStorage::<Kind>::new(&pool).with_config(postgres::config(&queue));
    storage.push(Kind::Ok).await.unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at)
         VALUES ($2, $1, convert_to('{\"Ok', 'UTF8'), 'Pending', 0, 3, now())",
    )
    .bind(&queue)
    .bind(format!("{queue}-not-json"))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        postgres::dead_letter_undecodable(&pool, &queue)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        postgres::dead_letter_undecodable(&pool, &queue)
            .await
            .unwrap(),
        0
    );
    let (status, result): (String, String) =
        sqlx::query_as("SELECT status, last_result::text FROM apalis.jobs WHERE id = $1")
            .bind(format!("{queue}-not-json"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "Killed");
    assert!(result.contains("not JSON"), "{result}");
    // The decodable job is untouched: fetched by a worker that then died before running it, it
    // goes back uncounted.
    sqlx::query("UPDATE apalis.jobs SET status = 'Queued', lock_by = NULL WHERE job_type = $1 AND status = 'Pending'")
        .bind(&queue)
        .execute(&pool)
        .await
        .unwrap();
    let worker = format!("{queue}-w1");
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name) VALUES ($1, $2, 'PgStorage')",
    )
    .bind(&worker)
    .bind(&queue)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE apalis.jobs SET lock_by = $2 WHERE job_type = $1 AND status = 'Queued'")
        .bind(&queue)
        .bind(&worker)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        postgres::release_unstarted(&pool, &queue, &worker)
            .await
            .unwrap(),
        1
    );
    let rows = rows(&pool, &queue).await;
    let row = &rows[&Kind::Ok];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.locked),
        ("Pending", 0, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compensation_puts_the_job_back_to_be_compensated_again() {
    let Some(pool) = pool().await else { return };
    let queue = queue("compensation");
    let mut storage = PostgresStorage::<Kind>::new(&pool).with_config(postgres::config(&queue));
    storage.push(Kind::Shortage).await.unwrap();

    let tries = Arc::new(Mutex::new(0));
    let worker_scope = Scope::new();
    let layer = JobScopeLayer::new(&worker_scope)
        .policy(CausePolicy::new().permanent("INVENTORY_SHORTAGE"))
        .compensate({
            let tries = tries.clone();
            move |_: Kind, _: Cause, _: Scope| {
                let tries = tries.clone();
                async move {
                    let mut tries = tries.lock().unwrap();
                    *tries += 1;
                    match *tries {
                        1 => Err(Cause::new("DB_ERROR").with_detail("connection reset")),
                        _ => Ok(()),
                    }
                }
            }
        })
        .settle(postgres::Settle::new(&pool));
    let worker = WorkerBuilder::new(format!("{queue}-w1"))
        .backend(storage)
        .layer(layer)
        .build(handle);
    let running = tokio::spawn(worker.run_until(stopped(&worker_scope)));
    // Put back after the failed compensation, uncounted and not yet due.
    wait_until(&pool, &queue, |rows| {
        rows[&Kind::Shortage].result.contains("COMPENSATION_FAILED")
    })
    .await;
    let rows = self::rows(&pool, &queue).await;
    let row = &rows[&Kind::Shortage];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.locked),
        ("Pending", 0, false),
        "{row:?}"
    );
    // Run again 5 s later, given up again, compensated this time.
    wait_until(&pool, &queue, |rows| {
        rows[&Kind::Shortage].status == "Killed"
    })
    .await;
    worker_scope.cancel(Cause::of_kind(CauseKind::Shutdown));
    running.await.unwrap().unwrap();
    let rows = self::rows(&pool, &queue).await;
    assert_eq!(rows[&Kind::Shortage].attempts, 1);
    assert_eq!(*tries.lock().unwrap(), 2);
}
