//! Prometheus metrics for taskscope, with no code in the tasks: a `TraceObserver` with
//! `.metrics()` on the root scope records every cancellation (by cause code and kind), lost
//! cancel, cancel→exit latency, running and pending task, abort, slow stop and supervisor
//! restart through the `metrics` facade, `metrics-exporter-prometheus` renders them, and a
//! small axum server serves them on `/metrics`.
//!
//! ```text
//! cargo run --example metrics               # serves on 127.0.0.1:9000 (METRICS_PORT to change)
//! curl http://127.0.0.1:9000/metrics        # in another terminal; ctrl-c stops the example
//! cargo run --example metrics -- --once     # runs the workload, prints the metrics, exits
//! ```
//!
//! The workload runs once, in about 0.2 s, and touches every metric:
//!
//! - `order-17`: the inventory task fails with `INVENTORY_SHORTAGE`, which cancels the payment
//!   task; the payment task stops at once and says why.
//! - `quote`: a scope with a 20 ms deadline, and a price feed far slower than that. The user
//!   cancels too, but the deadline was first: that cancel loses.
//! - `crawl`: five pages under a limit of two at a time; the other three wait as pending.
//! - `legacy`: an export that ignores its cancellation; it is reported slow to stop, then
//!   aborted when its group's grace runs out.
//! - `sync`: a supervisor whose feed fails once and is restarted, then shut down.

use std::error::Error;
use std::io;
use std::net::Ipv4Addr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildSpec, Restart, Scope, Supervisor, TaskGroup,
};
use taskscope_select::FutureExt;
use taskscope_trace::TraceObserver;
use taskscope_trace::metrics::CANCEL_LATENCY;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::sleep;
use tracing_subscriber::EnvFilter;

/// Buckets of the cancel→exit latency histogram, in seconds: from "stopped at once" to "had
/// to be aborted after its grace".
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];

/// A task still running this long after its cancellation is reported slow to stop.
pub const SLOW_TO_STOP: Duration = Duration::from_millis(20);

/// How long the `legacy` group's tasks get to stop before they are aborted. Longer than
/// [`SLOW_TO_STOP`], so that the task that ignores its cancellation is reported first.
pub const LEGACY_GRACE: Duration = Duration::from_millis(150);

/// How often the recorder's upkeep runs (draining histogram samples), as the exporter's own
/// listener would run it.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder globally and returns a handle that renders its metrics as
/// Prometheus text; [`serve`] serves them. Also spawns the recorder's upkeep on the current
/// tokio runtime, every [`UPKEEP_INTERVAL`]: `install_recorder`, unlike the exporter's own
/// listener, leaves that to its caller.
///
/// Call it inside a tokio runtime. A process has one global recorder: a second call fails.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CANCEL_LATENCY.to_owned()), LATENCY_BUCKETS)?
        .install_recorder()?;
    tokio::spawn({
        let handle = handle.clone();
        async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        }
    });
    Ok(handle)
}

/// Serves `handle`'s metrics on `GET /metrics`, in Prometheus's text format, on `listener`
/// (bound by the caller, so port 0 works and its port is known before serving). Runs until
/// the listener fails.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) -> io::Result<()> {
    let metrics = move || async move {
        let text = handle.render();
        ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text)
    };
    let router = Router::new().route("/metrics", get(metrics));
    axum::serve(listener, router).await
}

/// The observer that records the metrics: install it on the root scope of the service.
pub fn observer() -> TraceObserver {
    TraceObserver::new()
        .metrics()
        .slow_to_stop_after(Some(SLOW_TO_STOP))
}

/// The root scope of the workload, with [`observer`] installed: every scope, group, task and
/// supervisor under it is measured.
pub fn root() -> Scope {
    Scope::builder()
        .name("workers")
        .observer(Arc::new(observer()))
        .build()
}

/// Runs every story once, under `root`, and returns when all of their tasks have ended.
pub async fn workload(root: &Scope) -> Result<(), Box<dyn Error>> {
    order(root).await;
    quote(root).await;
    crawl(root).await?;
    legacy(root).await;
    sync(root).await?;
    Ok(())
}

/// A failing task cancels its siblings with its cause.
async fn order(root: &Scope) {
    let group: TaskGroup<()> = TaskGroup::builder(root).name("order-17").build();
    // Spawned first, so that it is running when the inventory fails: a task spawned into a
    // group that is already cancelled never starts (and has no cancel latency to measure).
    group.spawn("payment", |scope| async move {
        // Charging takes a while; a cancellation stops it, and the task says why.
        sleep(Duration::from_secs(30)).or_cancel(&scope).await?;
        Ok(())
    });
    group.spawn("inventory", |_| async {
        let shortage = Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42: 2 left, 5 wanted");
        Err(shortage.into())
    });
    let error = group.join().await.expect_err("the inventory task fails");
    println!("order-17: {error}");
}

/// A deadline passes; a later cancel loses to it.
async fn quote(root: &Scope) {
    let quote = root
        .child_builder()
        .name("quote")
        .timeout(Duration::from_millis(20))
        .deadline_cause(Cause::new("QUOTE_TIMEOUT"))
        .build();
    let group: TaskGroup<()> = TaskGroup::builder(&quote).name("prices").build();
    group.spawn("fx-feed", |scope| async move {
        sleep(Duration::from_secs(30)).or_cancel(&scope).await?;
        Ok(())
    });
    let error = group.join().await.expect_err("the deadline passes first");
    // First cause wins: the user's cancel comes too late, and is counted as lost.
    let won = quote.cancel(Cause::new("USER_CANCELLED"));
    println!("quote: {error}; the user's cancel won: {won}");
}

/// A concurrency limit: tasks over it wait as pending.
async fn crawl(root: &Scope) -> Result<(), Box<dyn Error>> {
    let group: TaskGroup<usize> = TaskGroup::builder(root)
        .name("crawl")
        .limit(NonZeroUsize::new(2).expect("non-zero"))
        .build();
    for page in 0..5 {
        group.spawn(format!("page-{page}"), move |_| async move {
            sleep(Duration::from_millis(2)).await;
            Ok(page * 1_000)
        });
    }
    let sizes = group.join().await?;
    println!(
        "crawl: {} pages, {} bytes",
        sizes.len(),
        sizes.iter().sum::<usize>()
    );
    Ok(())
}

/// A task that ignores its cancellation: reported slow to stop, then aborted after its grace.
async fn legacy(root: &Scope) {
    let group: TaskGroup<()> = TaskGroup::builder(root)
        .name("legacy")
        .grace(LEGACY_GRACE)
        .build();
    let started = Arc::new(Notify::new());
    group.spawn("export", {
        let started = started.clone();
        move |_scope| async move {
            started.notify_one();
            // Never looks at its scope: only an abort stops it.
            sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    });
    started.notified().await;
    group
        .scope()
        .cancel(Cause::new("MAINTENANCE").with_detail("nightly window"));
    let error = group.join().await.expect_err("the export is aborted");
    println!("legacy: {error}");
}

/// A supervisor child that fails once and is restarted.
async fn sync(root: &Scope) -> Result<(), Box<dyn Error>> {
    let attempts = Arc::new(AtomicU32::new(0));
    let restarted = Arc::new(Notify::new());
    let feed = ChildSpec::new("feed", {
        let restarted = restarted.clone();
        move |scope: Scope| {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let restarted = restarted.clone();
            async move {
                if attempt == 1 {
                    return Err(BoxError::from("connection reset by peer"));
                }
                restarted.notify_one();
                // Runs until the supervisor stops it; returning then is not a failure.
                scope.cancelled().await;
                Ok(())
            }
        }
    })
    .restart(Restart::OnFailure);
    let supervisor = Supervisor::builder()
        .name("sync")
        .backoff(Backoff::exponential(Duration::from_millis(5)))
        .child(feed)
        .start(root)?;
    restarted.notified().await;
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown).with_code("WORKLOAD_DONE"));
    supervisor.join().await?;
    println!("sync: feed restarted once, then shut down");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("taskscope::cancel=info,taskscope::supervisor=info,taskscope::task=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let once = std::env::args().skip(1).any(|arg| arg == "--once");
    let port = match std::env::var("METRICS_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 9000,
    };

    let handle = install()?;
    let mut server = None;
    if !once {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        println!("serving metrics on http://{addr}/metrics");
        println!("  curl http://{addr}/metrics");
        server = Some((addr, tokio::spawn(serve(listener, handle.clone()))));
    }

    let root = root();
    workload(&root).await?;

    let Some((addr, server)) = server else {
        println!("\nmetrics after the workload:");
        for line in handle.render().lines() {
            if line.starts_with("taskscope_") {
                println!("  {line}");
            }
        }
        return Ok(());
    };
    println!("\nworkload done; still serving on http://{addr}/metrics, ctrl-c to stop");
    tokio::select! {
        served = server => served??,
        signal = tokio::signal::ctrl_c() => signal?,
    }
    Ok(())
}
