//! One order through the whole orders pipeline, interrupted at every await point: the root
//! cancelled with a cause (cooperatively), or the suspended future dropped there (abruptly, as
//! the intake group aborts an order task that outlives its grace on a forced shutdown).
//! After each run the ledger balances, no authorization of an order that did not complete is
//! left un-voided, the order was compensated at most once and exactly once if it was
//! cancelled, and a cooperatively cancelled order reports the cause it was cancelled with.
//!
//! A sweep interrupts every point, in both modes: an order has few of them (about eight), and
//! a sweep takes a tenth of a second. The database's transactions run on the blocking pool:
//! one that ends before its future is first polled is no await point, so a busy machine can
//! record fewer points (and a rerun miss one: "did not reach its point"). Only coverage varies,
//! never the verdict; the sweeps run one at a time so that they do not starve each other.

#[path = "../orders/shop/mod.rs"]
#[allow(dead_code)]
mod shop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shop::Config;
use shop::gateway::Gateway;
use shop::pipeline::{self, CauseSummary, Ctx, OrderReport};
use shop::plan::{self, Fate, OrderPlan};
use shop::store::Store;
use taskscope::{Cause, Outcome, Scope, TaskGroup};
use taskscope_test::{Report, Sweep};
use tokio_util::task::TaskTracker;

/// One sweep at a time (see the module docs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One run's world: the shop's context over a fresh database, removed when the run is over.
struct Shop {
    ctx: Arc<Ctx>,
    /// After `ctx`, so that the connection is closed first.
    _db: TempDb,
}

/// A database file (and its WAL companions) in the temporary directory, removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> TempDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempDb(std::env::temp_dir().join(format!(
            "taskscope-orders-sweep-{}-{n}.sqlite3",
            std::process::id()
        )))
    }

    fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        ["", "-wal", "-shm"].into_iter().map(|suffix| {
            let mut file = self.0.clone().into_os_string();
            file.push(suffix);
            PathBuf::from(file)
        })
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for file in self.files() {
            // Absent is fine: SQLite removes its WAL files when the connection closes.
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A fresh shop, as `shop::start` builds its context, with the example's default settings.
async fn shop() -> Arc<Shop> {
    let config = Config {
        orders: 1,
        ..Config::default()
    };
    let db = TempDb::new();
    let store = Store::create(&db.0, &plan::initial_stock(&config)).expect("the database");
    let ctx = Arc::new(Ctx {
        store,
        gateway: Gateway::new(config.seed, config.gateway_flakiness),
        deadline: Duration::from_millis(config.deadline_ms),
        payment_timeout: config.payment_timeout(),
        grace: Duration::from_millis(config.grace_ms),
        compensation_budget: Duration::from_secs(2),
        compensations: TaskTracker::new(),
    });
    Arc::new(Shop { ctx, _db: db })
}

/// The order as the app runs it: one task of the intake's `orders` group, joined, its exit
/// read the way the intake reads it.
async fn intake(shop: Arc<Shop>, scope: Scope, plan: OrderPlan) -> OrderReport {
    let ctx = shop.ctx.clone();
    let mut orders: TaskGroup<OrderReport> = TaskGroup::builder(&scope)
        .name("orders")
        .collect_all()
        .grace(ctx.grace + ctx.compensation_budget)
        .build();
    let id = plan.id;
    orders.spawn(format!("order-{id}"), move |scope| async move {
        Ok(pipeline::run_order(ctx, scope, plan).await)
    });
    let mut report = OrderReport::not_started(id);
    while let Some(exit) = orders.join_next().await {
        report = match exit.outcome {
            Outcome::Completed(report) => report,
            Outcome::Cancelled(_) => OrderReport::not_started(id),
            Outcome::Failed(failure) => panic!("order {id} failed: {failure}"),
            Outcome::Aborted => OrderReport {
                outcome: "aborted",
                ..OrderReport::not_started(id)
            },
        };
    }
    report
}

/// The cause an order reports, back as a `Cause` through its stable record (the summary
/// keeps its kind and code).
fn reported(report: &OrderReport) -> Option<Cause> {
    let CauseSummary { kind, code, .. } = report.cause.as_ref()?;
    let record = serde_json::json!({ "v": 1, "kind": kind, "code": code });
    Some(serde_json::from_value(record).expect("a summary makes a valid cause record"))
}

/// What must hold after any run, however it was interrupted.
async fn settled(shop: Arc<Shop>, may_complete: bool) -> Result<(), String> {
    let ledger = shop
        .ctx
        .store
        .check()
        .await
        .map_err(|error| format!("the ledger cannot be read: {error}"))?;
    let mut broken = ledger.violations.clone();
    if ledger.completed + ledger.cancelled > 1 {
        broken.push(format!("{ledger:?}: more than the one order"));
    }
    if ledger.completed > 0 && !may_complete {
        broken.push("an order planned to be cancelled completed".to_owned());
    }
    if ledger.audit_rows != ledger.cancelled {
        broken.push(format!(
            "{} audit row(s) for {} cancelled order(s): compensated more or less than once",
            ledger.audit_rows, ledger.cancelled
        ));
    }
    let (authorized, voided) = (shop.ctx.gateway.authorized(), shop.ctx.gateway.voided());
    if voided > authorized || authorized - voided != ledger.completed {
        broken.push(format!(
            "{authorized} authorization(s), {voided} voided, for {} completed order(s)",
            ledger.completed
        ));
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken.join("; "))
    }
}

/// Sweeps order 1 planned as `plan`: at every point, in both modes (the root cancelled with
/// `SWEEP`, and abort).
fn sweep(name: &str, plan: OrderPlan) -> Report {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let may_complete = plan.fate == Fate::Complete;
    let report = Sweep::new(name, shop, move |shop, scope| {
        intake(shop, scope, plan.clone())
    })
    .invariant(move |shop| settled(shop, may_complete))
    .reports_cause(reported)
    .run();
    eprintln!(
        "{name}: {} points, {} runs, {:?}",
        report.points,
        report.runs.len(),
        report.wall
    );
    report
}

fn order(fate: Fate, sku: &'static str) -> OrderPlan {
    OrderPlan {
        id: 1,
        sku,
        qty: 2,
        fate,
        payment_latency: Duration::from_millis(50),
        fraud_latency: Duration::from_millis(10),
        cancel_after: None,
    }
}

#[test]
fn a_completed_order_is_settled_wherever_it_is_interrupted() {
    let report = sweep("order completes", order(Fate::Complete, plan::IN_STOCK[0]));
    report.assert_ok();
}

#[test]
fn an_order_short_of_stock_is_settled_wherever_it_is_interrupted() {
    let report = sweep("inventory shortage", order(Fate::Shortage, plan::SOLD_OUT));
    report.assert_ok();
}

#[test]
fn an_order_the_customer_cancels_is_settled_wherever_it_is_interrupted() {
    let report = sweep(
        "customer cancels",
        OrderPlan {
            // The customer gives up while the gateway is still working on the payment.
            payment_latency: Duration::from_millis(225),
            cancel_after: Some(Duration::from_millis(100)),
            ..order(Fate::UserCancel, plan::IN_STOCK[1])
        },
    );
    report.assert_ok();
}
