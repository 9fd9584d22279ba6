//! A supervision tree: a flaky watcher restarted with backoff until it hits an error that
//! retrying cannot fix, a metrics reporter, and a nested supervisor for payments. When the
//! watcher gives up, the supervisor escalates and stops everything, last started first, each
//! child told why. Ctrl-c (or SIGTERM) stops the tree the same way; a second one forces it.
//!
//! ```text
//! cargo run --example supervisor
//! ```
//!
//! It ends by itself within about two seconds: the watcher's third connection is refused, and
//! the supervisor escalates.

use std::error::Error;
use std::fmt::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use taskscope::{
    Backoff, BoxError, Cause, ChildSpec, Restart, Scope, Strategy, Supervisor, SupervisorHandle,
    SupervisorSnapshot,
};
use taskscope_select::FutureExt;
use taskscope_select::signal::{Signals, shutdown_on_signals};
use tokio::time::{Instant, sleep};

/// How a watch of the (simulated) API server ends.
#[derive(Debug)]
enum WatchError {
    /// The connection dropped: the next attempt will likely work.
    ConnectionReset,
    /// Our credentials were refused: every attempt will fail the same way.
    Unauthorized,
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WatchError::ConnectionReset => "connection reset by peer",
            WatchError::Unauthorized => "401 unauthorized: token expired",
        })
    }
}

impl Error for WatchError {}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Listen before starting anything, so that a ctrl-c during start-up is not lost.
    let signals = Signals::new()?;

    let app = Scope::builder().name("app").build();
    let supervisor = Supervisor::builder()
        .name("workers")
        // 200 ms, then 400 ms, ... capped at 5 s. The jitter spreads out restarts of
        // children that failed together.
        .backoff(
            Backoff::exponential(Duration::from_millis(200))
                .max(Duration::from_secs(5))
                .jitter(0.2),
        )
        // A fixed seed makes this example print the same delays on every run. Leave it out in
        // a service, so that its replicas do not restart in step.
        .jitter_seed(7)
        // More than 5 restarts within 30 s means something is badly wrong: give up.
        .intensity(5, Duration::from_secs(30))
        // Children start in this order and stop in the reverse one: the watcher feeds on
        // what the others provide, so it goes first.
        .child(metrics())
        .child(ChildSpec::supervisor(payments()))
        .child(pod_watcher())
        .start(&app)?;
    let handle = supervisor.handle();

    // A first ctrl-c shuts the tree down in order, within 25 s in all (a pod's 30 s
    // `terminationGracePeriodSeconds`, less a margin); a second one aborts what is left.
    let on_signals = shutdown_on_signals(handle.clone(), signals).within(Duration::from_secs(25));
    let listener = tokio::spawn(on_signals);
    let printer = tokio::spawn(print_changes(handle.clone()));

    let result = supervisor.join().await;
    printer.await?;
    listener.await?;

    println!("final tree:\n{}", handle.snapshot());
    match result {
        Ok(()) => {
            println!("stopped cleanly");
            Ok(())
        }
        Err(error) => {
            println!("{error}");
            if let Some(child) = error.child() {
                println!("  escalated by:  {child}");
            }
            if let Some(failure) = error.last_failure() {
                println!("  last failure:  {failure}");
            }
            for aborted in error.aborted() {
                println!("  aborted:       {aborted}");
            }
            if let Some(cause) = error.cause() {
                println!(
                    "  cause:         kind={} code={} origin={}",
                    cause.kind(),
                    cause.code(),
                    cause.origin().unwrap_or("-")
                );
            }
            // A service whose top supervisor gave up, or had to abort work, would exit with
            // an error here (`ExitCode::FAILURE`), so that whatever runs it (systemd,
            // Kubernetes) notices and restarts it. This demo's failure is the expected one.
            Ok(())
        }
    }
}

/// Watches pods on the API server. Each run streams events for a while, then the connection
/// drops; the third time, the server refuses our credentials.
fn pod_watcher() -> ChildSpec {
    // Shared by every run: the factory makes a new future for each (re)start.
    let attempts = Arc::new(AtomicU32::new(0));
    ChildSpec::new("pod-watcher", move |scope: Scope| {
        let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            println!("[{}] connected (attempt {attempt})", scope.path());
            // Stream events until the connection drops, unless we are stopped first: a
            // child that returns once its scope is cancelled is never restarted.
            if sleep(Duration::from_millis(300))
                .or_cancel(&scope)
                .await
                .is_err()
            {
                return Ok(());
            }
            let error = match attempt {
                1 | 2 => WatchError::ConnectionReset,
                _ => WatchError::Unauthorized,
            };
            println!("[{}] {error}", scope.path());
            Err(BoxError::from(error))
        }
    })
    .restart(Restart::OnFailure)
    // Retry only what retrying can fix. Anything else, a panic included, escalates at once
    // instead of burning through the restart intensity with the same failure.
    .restart_if(|failure, _cause| {
        let error = failure.error().and_then(|error| error.downcast_ref());
        matches!(error, Some(WatchError::ConnectionReset))
    })
}

/// Reports metrics until stopped, then flushes what it has: that takes a moment, well within
/// its grace.
fn metrics() -> ChildSpec {
    ChildSpec::new("metrics", |scope: Scope| async move {
        let mut samples = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let cause = loop {
            tokio::select! {
                cause = scope.cancelled() => break cause,
                _ = tick.tick() => samples += 1,
            }
        };
        sleep(Duration::from_millis(100)).await;
        println!(
            "[{}] flushed {samples} samples; {}",
            scope.path(),
            stopped_by(&cause)
        );
        Ok(())
    })
    .grace(Duration::from_secs(1))
}

/// A nested supervisor: its ledger and poller only work together, so they restart together
/// (one-for-all). When its parent stops it, it stops its own children first, in reverse order.
fn payments() -> taskscope::SupervisorBuilder {
    let ledger = ChildSpec::new("ledger", |scope: Scope| async move {
        let cause = scope.cancelled().await;
        // Commit the open batch: the reason we give children a grace at all.
        sleep(Duration::from_millis(50)).await;
        println!(
            "[{}] committed the open batch; {}",
            scope.path(),
            stopped_by(&cause)
        );
        Ok(())
    });
    let poller = ChildSpec::new("poller", |scope: Scope| async move {
        let cause = scope.cancelled().await;
        println!("[{}] {}", scope.path(), stopped_by(&cause));
        Ok(())
    });
    Supervisor::builder()
        .name("payments")
        .strategy(Strategy::OneForAll)
        .child(ledger)
        .child(poller)
}

/// One line for why a child was stopped: the cause's code and where it was set. Every child
/// sees the very cause that stopped the supervisor, however deep it sits.
fn stopped_by(cause: &Cause) -> String {
    format!(
        "stopped by {} from {}",
        cause.code(),
        cause.origin().unwrap_or("?")
    )
}

/// Prints the tree each time a child changes state or restarts. Snapshots are taken on demand
/// (a health endpoint would serve one per request), so to follow the tree we poll, and print
/// only what changed.
async fn print_changes(supervisor: SupervisorHandle) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last = String::new();
    loop {
        // `stopped()` is cancel-safe: losing this race to the tick loses nothing.
        tokio::select! {
            () = supervisor.stopped() => return,
            _ = tick.tick() => {}
        }
        let snapshot = supervisor.snapshot();
        let shape = shape(&snapshot);
        if shape != last {
            println!("--- {:.2}s\n{snapshot}", start.elapsed().as_secs_f64());
            last = shape;
        }
    }
}

/// What a snapshot says has happened: states and restart counts, not the ever-growing uptimes.
fn shape(snapshot: &SupervisorSnapshot) -> String {
    let mut shape = format!("{}", snapshot.state);
    for child in &snapshot.children {
        let _ = write!(shape, " {}={}/{}", child.name, child.state, child.restarts);
        if let Some(nested) = &child.supervisor {
            let _ = write!(shape, " [{}]", self::shape(nested));
        }
    }
    shape
}
