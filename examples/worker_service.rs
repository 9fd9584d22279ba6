//! A worker service as a new user writes it from the guides: order and inventory workers under
//! a supervisor, each job in its own task under a deadline, every end traced with its cause by
//! `TraceObserver`, and ctrl-c (or SIGTERM) stopping the workers in order within one budget.
//!
//! ```text
//! cargo run --example worker_service          # until ctrl-c
//! cargo run --example worker_service -- 40    # or until 40 jobs were queued
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use taskscope::{Cause, ChildSpec, Restart, Scope, SupervisorBuilder, TaskError, TaskGroupBuilder};
use taskscope_select::FutureExt;
use taskscope_select::signal::{Signals, shutdown_on_signals};
use taskscope_trace::TraceObserver;
use tokio::sync::{Mutex, mpsc};
use tokio::time::sleep;

/// Why a job did not complete: its scope was cancelled, or the shop ran out.
#[derive(Debug)]
pub enum JobError {
    Cancelled(Cause),
    OutOfStock { sku: u32 },
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Cancelled(cause) => cause.fmt(f),
            JobError::OutOfStock { sku } => write!(f, "sku-{sku} is out of stock"),
        }
    }
}

impl From<Cause> for JobError {
    fn from(cause: Cause) -> Self {
        JobError::Cancelled(cause)
    }
}

/// A job that returns its scope's cause is reported cancelled, not failed.
impl TaskError for JobError {
    fn as_cause(&self) -> Option<&Cause> {
        match self {
            JobError::Cancelled(cause) => Some(cause),
            JobError::OutOfStock { .. } => None,
        }
    }
}

pub type Queue = Arc<Mutex<mpsc::Receiver<u32>>>;

/// One job: 50 ms of work per unit, within 500 ms; every seventh SKU is out of stock.
pub async fn job(scope: Scope, sku: u32) -> Result<(), JobError> {
    let job = scope
        .child_builder()
        .timeout(Duration::from_millis(500))
        .build();
    for _ in 0..sku % 12 {
        sleep(Duration::from_millis(50)).or_cancel(&job).await?;
    }
    if sku.is_multiple_of(7) {
        return Err(JobError::OutOfStock { sku });
    }
    Ok(())
}

/// A worker: takes SKUs from `queue` and runs each as a job, at most 8 at once.
pub fn worker(name: &'static str, queue: Queue) -> ChildSpec<JobError> {
    let spec = ChildSpec::new(name, move |scope: Scope| {
        let queue = queue.clone();
        async move {
            let mut jobs = TaskGroupBuilder::<(), JobError>::new(&scope)
                .limit(8.try_into().unwrap())
                .collect_all()
                .build();
            loop {
                tokio::select! {
                    _ = scope.cancelled() => break,
                    Some(_) = jobs.join_next() => {} // traced by the observer
                    sku = async { queue.lock().await.recv().await } => match sku {
                        Some(sku) => drop(jobs.spawn(format!("sku-{sku}"), move |s| job(s, sku))),
                        None => break,
                    },
                }
            }
            let _ = jobs.join().await; // the jobs still running finish, or stop with the cause
            Ok(())
        }
    });
    spec.restart(Restart::OnFailure) // done once its queue is
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let signals = Signals::new()?;
    let app = Scope::builder()
        .name("shop")
        .observer(Arc::new(TraceObserver::new()))
        .build();
    let (orders, inventory) = (mpsc::channel(64), mpsc::channel(64));
    let supervisor = SupervisorBuilder::new()
        .name("workers")
        .child(worker("orders", Arc::new(Mutex::new(orders.1))))
        .child(worker("inventory", Arc::new(Mutex::new(inventory.1))))
        .start(&app)?;
    let stop = shutdown_on_signals(supervisor.handle(), signals).within(Duration::from_secs(10));
    tokio::spawn(stop);

    let limit = std::env::args()
        .nth(1)
        .map_or(Ok(u32::MAX), |n| n.parse())?;
    for sku in 1..=limit {
        if orders.0.send(sku).await.is_err() || inventory.0.send(sku + 1).await.is_err() {
            break; // the workers stopped
        }
    }
    drop((orders.0, inventory.0)); // the workers stop once their queue is drained
    supervisor.join().await?;
    Ok(())
}
