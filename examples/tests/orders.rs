//! The orders example's core logic, run with fixed seeds on paused tokio time: the summary
//! matches what the seed planned for each order, and the database's invariants hold, after a
//! full run and after a ctrl-c in the middle of one.
//!
//! Time is paused, so latencies, timeouts and deadlines are exact and nothing waits for real:
//! the SQLite transactions run on the blocking pool, during which tokio does not advance its
//! paused clock.

#[path = "../orders/shop/mod.rs"]
#[allow(dead_code)]
mod shop;

use std::collections::BTreeMap;
use std::path::PathBuf;

use shop::plan::{self, Fate};
use shop::{Config, Summary};
use taskscope::Cause;

/// A config writing its database and audit log under a fresh temporary directory.
fn config(name: &str) -> (Config, TempDir) {
    let dir = TempDir::new(name);
    let config = Config {
        db: Some(dir.0.join("orders.sqlite3")),
        audit_log: Some(dir.0.join("audit.jsonl")),
        ..Config::default()
    };
    (config, dir)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "taskscope-orders-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(config: &Config) -> Summary {
    shop::start(config, |_| {})
        .expect("the run starts")
        .finish()
        .await
        .expect("the run finishes")
}

/// How many orders the seed gave each fate, and their units.
fn planned(config: &Config) -> BTreeMap<Fate, (u64, u64)> {
    let mut planned = BTreeMap::new();
    for plan in plan::plans(config) {
        let entry = planned.entry(plan.fate).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += u64::from(plan.qty);
    }
    planned
}

#[tokio::test(start_paused = true)]
async fn the_default_scenario_ends_as_its_seed_planned_and_the_ledger_balances() {
    let (config, _dir) = config("default");
    let planned = planned(&config);
    let n = |fate| planned.get(&fate).map_or(0, |(n, _)| *n);
    let units = |fate| planned.get(&fate).map_or(0, |(_, units)| *units);
    // The seed draws every story at least once.
    for fate in [
        Fate::Complete,
        Fate::Shortage,
        Fate::Declined,
        Fate::SlowPayment,
        Fate::UserCancel,
        Fate::Panic,
        Fate::Stuck,
    ] {
        assert!(n(fate) > 0, "seed 42 plans no {fate:?} order");
    }

    let summary = run(&config).await;

    assert!(summary.is_consistent(), "{summary}");
    assert!(summary.ledger.violations.is_empty(), "{:?}", summary.ledger);
    assert_eq!(summary.orders, 300);
    assert_eq!(summary.completed, n(Fate::Complete));
    let expected: BTreeMap<String, u64> = [
        ("INVENTORY_SHORTAGE", n(Fate::Shortage)),
        ("PAYMENT_DECLINED", n(Fate::Declined)),
        ("PAYMENT_TIMEOUT", n(Fate::SlowPayment)),
        ("USER_CANCELLED", n(Fate::UserCancel)),
        ("panicked", n(Fate::Panic)),
        ("ORDER_DEADLINE", n(Fate::Stuck)),
    ]
    .into_iter()
    .map(|(code, n)| (code.to_owned(), n))
    .collect();
    assert_eq!(summary.cancelled_by_code, expected);
    assert_eq!(summary.cancelled, 300 - n(Fate::Complete));
    assert_eq!((summary.not_started, summary.orders_aborted), (0, 0));
    assert_eq!(summary.stopped_by, None);
    assert_eq!(summary.supervisor_error, None);

    // Every cancelled order was compensated; everything but a shortage had reserved its units
    // (reservations take no time on the paused clock) and got them back.
    assert_eq!(summary.compensations, summary.cancelled);
    assert_eq!(summary.compensations_failed, 0);
    let reserved: u64 = [
        Fate::Declined,
        Fate::SlowPayment,
        Fate::UserCancel,
        Fate::Panic,
        Fate::Stuck,
    ]
    .into_iter()
    .map(units)
    .sum();
    assert_eq!(summary.units_released, reserved);
    // Only a stuck order was authorized before it was cancelled: its payment is voided.
    assert_eq!(summary.authorizations_voided, n(Fate::Stuck));
    // The stuck fraud check is the one task that did not stop: aborted after the grace. Every
    // other step stopped at the instant of its cancellation (on the paused clock).
    assert_eq!(
        summary.aborted_steps,
        BTreeMap::from([("fraud-check".to_owned(), n(Fate::Stuck))])
    );
    assert!(summary.stopped_tasks > 0);
    assert_eq!(summary.cancel_to_exit_p99_us, Some(0));

    // One story per cause code, each saying who set it.
    let story = |code: &str| {
        summary
            .stories
            .iter()
            .find(|story| story.cause.as_ref().is_some_and(|c| c.code == code))
            .unwrap_or_else(|| panic!("no story for {code}"))
            .clone()
    };
    let shortage = story("INVENTORY_SHORTAGE");
    let cause = shortage.cause.unwrap();
    assert_eq!(cause.kind, "task_failed");
    let origin = format!("shop/workers/intake/orders/order-{}/reserve", shortage.id);
    assert_eq!(cause.origin.as_deref(), Some(origin.as_str()));
    assert!(cause.detail.unwrap().contains("sku-poster-signed: 0 left"),);
    assert_eq!(story("PAYMENT_TIMEOUT").cause.unwrap().kind, "task_failed");
    assert_eq!(story("USER_CANCELLED").cause.unwrap().kind, "explicit");
    assert_eq!(story("panicked").cause.unwrap().kind, "task_panicked");
    let stuck = story("ORDER_DEADLINE");
    assert_eq!(stuck.cause.unwrap().kind, "deadline_exceeded");
    assert_eq!(stuck.aborted, ["fraud-check"]);
}

/// A cancelled order joined with its audit row.
struct AuditRow {
    id: i64,
    order_code: String,
    code: String,
    kind: String,
    scope: String,
    record: String,
}

#[tokio::test(start_paused = true)]
async fn every_cancelled_order_has_one_audit_row_holding_its_cause_record() {
    let (config, _dir) = config("audit");
    let summary = run(&config).await;
    assert!(summary.is_consistent(), "{summary}");

    let db = rusqlite::Connection::open(config.db.as_ref().unwrap()).unwrap();
    let mut rows = db
        .prepare(
            "SELECT o.id, o.cause_code, a.code, a.kind, a.scope, a.record
             FROM orders o LEFT JOIN audit a ON a.order_id = o.id
             WHERE o.state = 'cancelled' ORDER BY o.id",
        )
        .unwrap();
    let rows = rows
        .query_map([], |row| {
            Ok(AuditRow {
                id: row.get(0)?,
                order_code: row.get(1)?,
                code: row.get(2)?,
                kind: row.get(3)?,
                scope: row.get(4)?,
                record: row.get(5)?,
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(rows.len() as u64, summary.cancelled);
    for AuditRow {
        id,
        order_code,
        code,
        kind,
        scope,
        record,
    } in rows
    {
        assert_eq!(order_code, code, "order {id}");
        assert_eq!(scope, format!("shop/workers/intake/orders/order-{id}"));
        // The record is taskscope's cause record: it reads back as the same cause.
        let cause: Cause = serde_json::from_str(&record).unwrap();
        assert_eq!(cause.code(), code, "order {id}");
        assert_eq!(cause.kind().as_str(), kind, "order {id}");
        assert!(cause.origin().is_some(), "order {id}: {record}");
    }
    let held: i64 = db
        .query_row(
            "SELECT count(*) FROM reservations WHERE state = 'held'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(held, 0, "nothing stays reserved");
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_mid_run_stops_in_order_and_compensates_orders_in_flight() {
    let (mut config, _dir) = config("ctrl-c");
    config.shutdown_after_ms = Some(400);

    let summary = run(&config).await;

    assert!(summary.is_consistent(), "{summary}");
    assert_eq!(summary.stopped_by.as_deref(), Some("SIGINT (shutdown)"));
    assert_eq!(
        summary.supervisor_error, None,
        "every order stopped within its grace"
    );
    // The run was cut short: some orders never started, and those in flight were cancelled
    // with the signal's cause and compensated.
    assert!(summary.not_started > 0, "{summary}");
    assert!(summary.completed > 0, "{summary}");
    let by_signal = summary
        .cancelled_by_code
        .get("SIGINT")
        .copied()
        .unwrap_or(0);
    assert!(by_signal > 0, "{summary}");
    assert_eq!(
        summary.completed + summary.cancelled + summary.not_started,
        300
    );
    assert_eq!(summary.ledger.open, 0, "no order is left open");
    assert_eq!(summary.compensations, summary.cancelled);
    let sigint = summary
        .stories
        .iter()
        .find_map(|story| story.cause.as_ref().filter(|cause| cause.code == "SIGINT"))
        .unwrap();
    assert_eq!(sigint.kind, "shutdown");
}

/// Makes a config invalid.
type Break = fn(&mut Config);

#[tokio::test(start_paused = true)]
async fn orders_cancelled_before_they_reach_the_database_are_still_recorded() {
    // Stopped at once: orders already started are cancelled before, during or after their
    // first transaction.
    let (mut at_once, _dir) = config("stop-at-once");
    at_once.shutdown_after_ms = Some(0);
    let summary = run(&at_once).await;
    assert!(summary.is_consistent(), "{summary}");
    assert_eq!(summary.ledger.cancelled, summary.cancelled);
    assert_eq!(summary.cancelled + summary.not_started, 300, "{summary}");

    // A deadline shorter than any payment: every order that starts is cancelled by it.
    let (mut short, _dir) = config("deadline-1ms");
    short.deadline_ms = 1;
    short.orders = 50;
    let summary = run(&short).await;
    assert!(summary.is_consistent(), "{summary}");
    assert_eq!(summary.completed, 0);
    assert_eq!(summary.ledger.audit_rows, 50);
}

#[test]
fn bad_flags_are_clear_errors_and_nothing_starts() {
    let cases: [(&str, Break); 8] = [
        ("--orders 0 is not in 1..=1000000", |c| c.orders = 0),
        ("--concurrency 0 is not in 1..=10000", |c| c.concurrency = 0),
        ("--deadline-ms 0 is not in 1..=3600000", |c| {
            c.deadline_ms = 0
        }),
        ("--payment-timeout-ms 99999999 is not in 1..=3600000", |c| {
            c.payment_timeout_ms = 99_999_999
        }),
        ("--decline-rate NaN is not in 0..=1", |c| {
            c.decline_rate = f64::NAN
        }),
        ("--decline-rate 1.5 is not in 0..=1", |c| {
            c.decline_rate = 1.5
        }),
        ("the rates (--shortage-rate, --decline-rate,", |c| {
            c.shortage_rate = 0.6;
            c.decline_rate = 0.6;
        }),
        ("--gateway-flakiness 1 is not in 0..1", |c| {
            c.gateway_flakiness = 1.0
        }),
    ];
    for (expected, break_it) in cases {
        let (mut config, dir) = config("flags");
        break_it(&mut config);
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("invalid configuration: ") && error.contains(expected),
            "{error:?} does not say {expected:?}"
        );
        let started = shop::start(&config, |_| {});
        assert!(started.is_err());
        assert!(
            !dir.0.join("orders.sqlite3").exists(),
            "no database was made"
        );
    }
}
