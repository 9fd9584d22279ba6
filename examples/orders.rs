//! A small order pipeline: each order is a scope with a deadline, its steps are child scopes,
//! and every step that stops says *why*, with the cause that travelled down the tree to it.
//!
//! ```text
//! cargo run --example orders
//! ```
//!
//! Stories: an order that completes; an inventory shortage that cancels the payment step; a
//! payment gateway too slow for the order's deadline, compensated in a detached scope that reads
//! the cause; and a shutdown that reaches an order still in flight.
//!
//! Every cancellation is reported by `taskscope-trace` with no code in the steps: as `tracing`
//! events on stderr (`RUST_LOG` filters them; `taskscope::cancel=info` by default) and as audit
//! records, one JSON line each, in the file named by `ORDERS_AUDIT` (by default
//! `taskscope-orders-audit.jsonl` in the temporary directory).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::FutureExt;
use taskscope_trace::{AuditEvent, AuditLog, AuditRecord, TraceObserver};
use tokio::time::sleep;
use tracing_subscriber::EnvFilter;

/// What the simulated backends do for one order.
#[derive(Clone, Copy)]
struct Plan {
    in_stock: bool,
    payment_latency: Duration,
    deadline: Duration,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("taskscope::cancel=info,taskscope::task=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let audit_path = std::env::var_os("ORDERS_AUDIT").map_or_else(
        || std::env::temp_dir().join("taskscope-orders-audit.jsonl"),
        PathBuf::from,
    );
    let audit = AuditLog::to_writer(std::fs::File::create(&audit_path)?);
    let observer = TraceObserver::new().audit(audit.clone());
    let orders = Scope::builder()
        .name("orders")
        .observer(Arc::new(observer))
        .build();
    let plans = [
        (
            1,
            Plan {
                in_stock: true,
                payment_latency: ms(50),
                deadline: ms(300),
            },
        ),
        (
            2,
            Plan {
                in_stock: false,
                payment_latency: ms(50),
                deadline: ms(300),
            },
        ),
        (
            3,
            Plan {
                in_stock: true,
                payment_latency: ms(5_000),
                deadline: ms(300),
            },
        ),
        (
            4,
            Plan {
                in_stock: true,
                payment_latency: ms(60_000),
                deadline: ms(10_000),
            },
        ),
    ];

    let mut running = Vec::new();
    for (id, plan) in plans {
        running.push((id, tokio::spawn(run_order(orders.clone(), id, plan))));
    }

    // Order 4 is still charging when the service shuts down.
    sleep(Duration::from_millis(400)).await;
    orders.cancel(Cause::of_kind(CauseKind::Shutdown).with_detail("SIGTERM (simulated)"));

    let mut results = Vec::new();
    for (id, handle) in running {
        results.push((id, handle.await.expect("order task panicked")));
    }
    println!("\nsummary");
    for (id, result) in results {
        match result {
            Ok(()) => println!("  order-{id}: completed"),
            Err(cause) => println!(
                "  order-{id}: {cause}  [kind={:?} code={} origin={}]",
                cause.kind(),
                cause.code(),
                cause.origin().unwrap_or("-"),
            ),
        }
    }

    println!("\naudit records ({})", audit_path.display());
    for line in std::fs::read_to_string(&audit_path)?.lines() {
        let record = AuditRecord::parse(line).map_err(std::io::Error::other)?;
        if record.event == AuditEvent::ScopeCancelled {
            println!(
                "  {}: {} {}",
                record.scope,
                record.cause.kind().as_str(),
                record.cause.code()
            );
        }
    }
    assert_eq!(audit.write_errors(), 0, "every audit record was written");
    Ok(())
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// One order: reserve stock, then charge, under a deadline of its own.
async fn run_order(orders: Scope, id: u32, plan: Plan) -> Result<(), Cause> {
    let order = orders
        .child_builder()
        .name(format!("order-{id}"))
        .timeout(plan.deadline)
        .deadline_cause(
            Cause::new("ORDER_TIMEOUT").with_detail(format!("over {:?}", plan.deadline)),
        )
        .build();

    let reserve = order.child_builder().name("reserve").build();
    let reserved = reserve_stock(&reserve, plan).await;
    if let Err(shortage) = reserved {
        // The failing step cancels its whole order; the payment step never starts.
        order.cancel(Cause::new("INVENTORY_SHORTAGE").with_detail(shortage));
        let charge = order.child_builder().name("charge").build();
        println!(
            "order-{id}: charge step born cancelled: {}",
            charge.cause().unwrap()
        );
        return Err(order.cause().unwrap());
    }

    let charge = order.child_builder().name("charge").build();
    let charged = sleep(plan.payment_latency).or_cancel(&charge).await;
    match charged {
        Ok(()) => Ok(()),
        Err(cause) => {
            println!(
                "order-{id}: charge stopped: {cause} (set by {})",
                cause.origin().unwrap_or("-")
            );
            compensate(&order, id).await;
            Err(cause)
        }
    }
}

async fn reserve_stock(scope: &Scope, plan: Plan) -> Result<(), String> {
    let work = sleep(Duration::from_millis(20)).or_cancel(scope).await;
    match (work, plan.in_stock) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err("sku-42: 2 left, 5 wanted".to_owned()),
        (Err(cause), _) => Err(format!("reserve interrupted: {cause}")),
    }
}

/// Releases the reservation in a detached scope: it must run *because* the order was
/// cancelled, so it is not cancelled with it, and it has a budget of its own.
async fn compensate(order: &Scope, id: u32) {
    let detached = order.detached_child();
    let budget = detached.child_with_timeout(Duration::from_secs(1));
    // Read live from the order: the cause as it is now.
    let why = detached
        .parent_cause()
        .map_or_else(String::new, |c| c.to_string());
    match sleep(Duration::from_millis(10)).or_cancel(&budget).await {
        Ok(()) => println!("order-{id}: reservation released (order was: {why})"),
        Err(cause) => println!("order-{id}: compensation cut short: {cause}"),
    }
}
