//! The orders example's distributed mode, over real processes and a real PostgreSQL server:
//! 2 000 orders through 3 worker processes; one killed with SIGKILL mid-run, another stopped
//! with SIGTERM, a replacement started; then every order must have ended exactly once.
//!
//! Runs when `TASKSCOPE_POSTGRES_URL` is set (`export TASKSCOPE_POSTGRES_URL="$(.ci/postgres)"`
//! starts a server and prints it); skips otherwise, unless `TASKSCOPE_REQUIRE_POSTGRES` is set,
//! as `.ci/run` does: then a missing server fails the test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tokio::process::{Child, Command};

/// The id of a job whose payload is not JSON.
const NOT_JSON: &str = "01M91K3XYE2DZ2MGH24QQBW5HZ";

fn url() -> Option<String> {
    match std::env::var("TASKSCOPE_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("TASKSCOPE_REQUIRE_POSTGRES").is_none(),
                "TASKSCOPE_REQUIRE_POSTGRES is set but TASKSCOPE_POSTGRES_URL is not"
            );
            eprintln!("skipped: TASKSCOPE_POSTGRES_URL is not set (see .ci/postgres)");
            None
        }
    }
}

/// The example's binary, built next to this test (`cargo test` builds examples); built here if
/// it is missing (a test run alone with `--test`).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile.join("examples").join("orders");
    if !binary.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "taskscope-examples", "--example", "orders"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "cargo build --example orders failed");
    }
    binary
}

fn orders(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--postgres", url, "--orders", "2000", "--seed", "7"])
        .args(["--concurrency", "16"])
        .args(args)
        .kill_on_drop(true);
    command
}

fn worker(url: &str, name: &str, extra: &[&str]) -> Child {
    let log = std::env::temp_dir().join(format!("orders-distributed-{name}.log"));
    let log = std::fs::File::create(log).expect("worker log");
    orders(url, &["work", "--name", name])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a worker")
}

/// Orders that ended (completed or cancelled).
async fn settled(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM shop.orders WHERE state != 'open'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

async fn wait_for_settled(pool: &PgPool, at_least: i64) {
    let start = Instant::now();
    while settled(pool).await < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{at_least} orders did not settle within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exits_within(child: &mut Child, limit: Duration, who: &str) -> std::process::ExitStatus {
    tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{who} did not exit within {limit:?}"))
        .expect("wait for a worker")
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("a running worker").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

/// The one number `sql` counts.
async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_ends_once_through_a_kill_a_sigterm_and_a_replacement() {
    let Some(url) = url() else { return };
    let enqueued = orders(
        &url,
        &["enqueue", "--bad-payloads", "3", "--max-attempts", "3"],
    )
    .stdout(Stdio::null())
    .status()
    .await
    .expect("enqueue");
    assert!(enqueued.success(), "enqueue failed");
    let pool = PgPool::connect(&url).await.expect("connect");
    // A payload that is not even JSON, which apalis cannot decode: dead-lettered by the
    // workers before they start.
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at)
         VALUES ($1, 'orders', convert_to('{\"order\": ', 'UTF8'),
                 'Pending', 0, 3, now())",
    )
    .bind(NOT_JSON)
    .execute(&pool)
    .await
    .expect("a job that is not JSON");

    let mut killed = worker(&url, "w1", &[]);
    let mut stopped = worker(&url, "w2", &[]);
    let mut survivor = worker(&url, "w3", &[]);

    wait_for_settled(&pool, 400).await;
    killed.start_kill().expect("kill -9 w1");
    exits_within(&mut killed, Duration::from_secs(10), "w1 (SIGKILL)").await;
    // What w1 held when it died, run or not: apalis re-enqueues these as orphans, an attempt
    // counted, once w1 has missed its heartbeats.
    let orphans: Vec<String> = sqlx::query_scalar(
        "SELECT convert_from(job, 'UTF8')::jsonb ->> 'id' FROM apalis.jobs
         WHERE lock_by = 'w1' AND status IN ('Queued', 'Running')",
    )
    .fetch_all(&pool)
    .await
    .expect("w1's jobs");

    wait_for_settled(&pool, 800).await;
    sigterm(&stopped);
    let status = exits_within(&mut stopped, Duration::from_secs(30), "w2 (SIGTERM)").await;
    assert!(status.success(), "w2 stopped in order on SIGTERM: {status}");

    let mut replacement = worker(&url, "w4", &["--exit-when-idle"]);
    let status = exits_within(&mut replacement, Duration::from_secs(180), "w4").await;
    assert!(status.success(), "w4 ran the queue dry: {status}");
    sigterm(&survivor);
    let status = exits_within(&mut survivor, Duration::from_secs(30), "w3 (SIGTERM)").await;
    assert!(status.success(), "w3: {status}");

    let report = orders(&url, &["--json", "report"])
        .output()
        .await
        .expect("report");
    let text = String::from_utf8_lossy(&report.stdout);
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(report.status.success(), "report: {json:#}");

    // Every order ended exactly once; stock adds up; no charge twice or left standing.
    let ledger = &json["ledger"];
    assert_eq!(ledger["violations"], serde_json::json!([]), "{json:#}");
    assert_eq!(ledger["open"], 0, "{json:#}");
    let (completed, cancelled) = (ledger["completed"].as_u64(), ledger["cancelled"].as_u64());
    assert_eq!(completed.unwrap() + cancelled.unwrap(), 2000, "{json:#}");
    assert_eq!(
        ledger["audit_rows"], ledger["cancelled"],
        "one audit row per cancelled order"
    );
    assert_eq!(json["unsettled_jobs"], 0, "{json:#}");

    let fates = &json["fates"];
    for fate in ["Shortage", "Declined", "SlowPayment", "UserCancel"] {
        let report = &fates[fate];
        assert_eq!(
            report["statuses"],
            serde_json::json!({ "Killed": report["jobs"] }),
            "{fate}: given up at once (apalis' killed): {report:#}"
        );
        assert_eq!(
            report["orders"],
            serde_json::json!({ "cancelled": report["jobs"] })
        );
    }
    let stuck = &fates["Stuck"];
    assert_eq!(
        stuck["statuses"],
        serde_json::json!({ "Done": stuck["jobs"] }),
        "{stuck:#}"
    );
    assert_eq!(
        stuck["retried"], stuck["jobs"],
        "deadline jobs were retried: {stuck:#}"
    );
    let panicked = &fates["Panic"];
    assert_eq!(
        panicked["statuses"],
        serde_json::json!({ "Failed": panicked["jobs"] }),
        "panicking jobs stopped at their limit: {panicked:#}"
    );
    assert_eq!(json["cancelled_by_code"]["panicked"], panicked["jobs"]);

    // Attempts, from each run's own record. The jobs w1 held when it was killed (run or only
    // fetched) were re-enqueued as orphans by apalis, an attempt counted: they are left out.
    let orphans = if orphans.is_empty() {
        "0".to_owned()
    } else {
        orphans.join(", ")
    };
    let untouched_by_kill = format!(
        "a.order_id NOT IN (SELECT order_id FROM shop.attempts WHERE worker = 'w1')
         AND a.order_id NOT IN ({orphans})"
    );
    let fate_is = |fate: &str| {
        format!(
            "a.order_id IN (SELECT (convert_from(job, 'UTF8')::jsonb ->> 'id')::bigint
                            FROM apalis.jobs WHERE job_type = 'orders' AND id != '{NOT_JSON}'
                              AND convert_from(job, 'UTF8')::jsonb ->> 'fate' = '{fate}')"
        )
    };
    for fate in ["Complete", "Shortage", "Declined", "UserCancel"] {
        let retried = count(
            &pool,
            &format!(
                "SELECT count(*) FROM shop.attempts a WHERE a.attempt > 1 AND {} AND {untouched_by_kill}",
                fate_is(fate)
            ),
        )
        .await;
        assert_eq!(
            retried, 0,
            "{fate}: no run counted a second attempt (a SIGTERM does not count one)"
        );
    }
    let panic_attempts = count(
        &pool,
        &format!(
            "SELECT count(*) FROM (SELECT a.order_id FROM shop.attempts a WHERE {} GROUP BY 1
             HAVING max(a.attempt) < 3) short",
            fate_is("Panic")
        ),
    )
    .await;
    assert_eq!(
        panic_attempts, 0,
        "every panicking order ran its 3 attempts"
    );
    // w2's SIGTERM put its jobs in flight back without counting their attempt: a later run
    // began with the same attempt number.
    let requeued = count(
        &pool,
        "SELECT count(*) FROM shop.attempts a JOIN shop.attempts b
           ON b.order_id = a.order_id AND b.attempt = a.attempt AND b.started_at > a.started_at
         WHERE a.worker = 'w2'",
    )
    .await;
    assert!(
        requeued > 0,
        "w2 had jobs in flight at its SIGTERM: {json:#}"
    );
    assert!(json["requeued_runs"].as_u64().unwrap() >= u64::try_from(requeued).unwrap());

    // A payload that is not an order: a clear error, given up at its first attempt; one that
    // is not JSON: dead-lettered before any attempt.
    let bad = json["bad_payloads"].as_array().expect("bad payloads");
    assert_eq!(bad.len(), 4, "{json:#}");
    for job in bad {
        assert_eq!(job["status"], "Killed", "{job:#}");
        let result = job["last_result"].as_str().unwrap();
        if job["id"] == NOT_JSON {
            assert_eq!(job["attempts"], 0, "{job:#}");
            assert!(result.contains("not JSON"), "{job:#}");
        } else {
            assert_eq!(job["attempts"], 1, "{job:#}");
            assert!(result.contains("BAD_PAYLOAD"), "{job:#}");
        }
    }
}
