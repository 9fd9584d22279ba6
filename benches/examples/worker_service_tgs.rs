//! The worker service of `examples/worker_service.rs`, written with tokio-graceful-shutdown,
//! tokio's `JoinSet` and `tokio::time::timeout` instead of taskscope, for the comparison in
//! `docs/performance.md` (lines of code, and what each log line can say). Same behaviour: two
//! workers, each job in its own task under a 500 ms deadline, at most 8 at once, every end
//! logged, ctrl-c stopping everything within 10 s. What it cannot say: why a job was cancelled,
//! by whom, and where; a job's log line is the one its code writes.
//!
//! ```text
//! cargo run -p taskscope-benches --example worker_service_tgs -- 40
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};

#[derive(Debug)]
enum JobError {
    Cancelled,
    TimedOut,
    OutOfStock { sku: u32 },
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Cancelled => f.write_str("cancelled"),
            JobError::TimedOut => f.write_str("deadline exceeded"),
            JobError::OutOfStock { sku } => write!(f, "sku-{sku} is out of stock"),
        }
    }
}

impl std::error::Error for JobError {}

type Queue = Arc<Mutex<mpsc::Receiver<u32>>>;

async fn job(shutdown: tokio_util::sync::CancellationToken, sku: u32) -> Result<(), JobError> {
    let work = async {
        for _ in 0..sku % 12 {
            sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => return Err(JobError::Cancelled),
        done = timeout(Duration::from_millis(500), work) => done.map_err(|_| JobError::TimedOut)?,
    }
    if sku.is_multiple_of(7) {
        return Err(JobError::OutOfStock { sku });
    }
    Ok(())
}

async fn worker(subsys: &mut SubsystemHandle, queue: Queue) -> Result<(), JobError> {
    let (mut jobs, limit) = (JoinSet::new(), Arc::new(Semaphore::new(8)));
    let name = subsys.name().to_owned();
    loop {
        tokio::select! {
            () = subsys.on_shutdown_requested() => break,
            Some(ended) = jobs.join_next() => log_end(&name, ended),
            sku = async { queue.lock().await.recv().await } => match sku {
                Some(sku) => {
                    let permit = limit.clone().acquire_owned().await.expect("never closed");
                    let token = subsys.create_cancellation_token();
                    jobs.spawn(async move { (sku, job(token, sku).await, drop(permit)).1 });
                }
                None => break,
            },
        }
    }
    while let Some(ended) = jobs.join_next().await {
        log_end(&name, ended);
    }
    Ok(())
}

fn log_end(worker: &str, ended: Result<Result<(), JobError>, tokio::task::JoinError>) {
    match ended {
        Ok(Ok(())) => tracing::info!(worker, "job completed"),
        Ok(Err(error)) => tracing::warn!(worker, %error, "job failed"),
        Err(error) => tracing::error!(worker, %error, "job panicked or was aborted"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let (orders, inventory) = (mpsc::channel(64), mpsc::channel(64));
    let queues = [
        Arc::new(Mutex::new(orders.1)),
        Arc::new(Mutex::new(inventory.1)),
    ];
    let toplevel = Toplevel::new(async move |s: &mut SubsystemHandle| {
        for (name, queue) in ["orders", "inventory"].into_iter().zip(queues) {
            s.start(SubsystemBuilder::new(
                name,
                async move |s: &mut SubsystemHandle| worker(s, queue).await,
            ));
        }
    })
    .catch_signals();
    let limit = std::env::args()
        .nth(1)
        .map_or(Ok(u32::MAX), |n| n.parse())?;
    let producer = tokio::spawn(async move {
        for sku in 1..=limit {
            if orders.0.send(sku).await.is_err() || inventory.0.send(sku + 1).await.is_err() {
                break;
            }
        }
    });
    toplevel
        .handle_shutdown_requests(Duration::from_secs(10))
        .await?;
    producer.abort();
    Ok(())
}
