//! The order pipeline: taskscope's main example.
//!
//! ```text
//! cargo run --example orders                      # 300 orders, a few seconds, a summary
//! cargo run --example orders -- --help            # every flag
//! cargo run --example orders -- --orders 2000 --concurrency 64 --seed 7 --json
//! RUST_LOG=taskscope=debug cargo run --example orders -- --orders 20   # every event
//! ```
//!
//! Each order runs as a task group under its own deadline: validate, then reserve inventory (a
//! SQLite transaction bound to the step's scope) ∥ charge the payment (a simulated remote call
//! with latency and failures) ∥ a fraud check, then confirm. The workers run under a
//! supervisor next to a payment-gateway poller that is restarted on transient errors.
//!
//! Every cancelled order says why: an inventory shortage cancels the payment step, a payment
//! timeout or decline cancels the order, the customer cancels, a worker panics, a stuck fraud
//! check is stopped by the deadline and aborted after the grace. A cancelled order is
//! compensated in a detached scope that knows the cause: its reservation is released and its
//! payment voided, and its audit row (the cause record) written, in one transaction. ctrl-c
//! stops the run in order: in-flight orders are compensated, and nothing stays reserved (a
//! second ctrl-c aborts what is left).
//!
//! At the end the database is checked: stock + held + sold == initial stock, no reservation
//! left for a closed order, one audit row per cancelled order. The exit code is non-zero if
//! anything does not add up.

mod shop;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use taskscope_select::signal::{Signals, shutdown_on_signals};
use tracing_subscriber::EnvFilter;

/// What stderr shows by default: the tasks that did not stop in time (slow to stop, aborted).
/// `RUST_LOG=taskscope=debug` shows every cancellation and task.
const DEFAULT_LOG: &str = "warn,taskscope::cancel=error,taskscope::task=error";

#[tokio::main]
async fn main() -> ExitCode {
    let config = shop::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    // A panic in a step is captured by its task group and becomes the order's cause; one line
    // on stderr says where it happened.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(target: "orders::panic", "panicked at {at}: {message}");
    }));
    match run(&config).await {
        Ok(summary) if summary.is_consistent() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("orders: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: &shop::Config) -> Result<shop::Summary, Box<dyn std::error::Error>> {
    // Listen before starting anything, so that a ctrl-c during start-up is not lost.
    let signals = Signals::new()?;
    let bar = if std::io::stdout().is_terminal() && !config.json {
        let bar = ProgressBar::with_draw_target(Some(config.orders), ProgressDrawTarget::stdout());
        bar.set_style(ProgressStyle::with_template(
            "{spinner} {pos:>6}/{len} orders [{bar:40}] {elapsed_precise} {msg}",
        )?);
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };
    let running = shop::start(config, {
        let bar = bar.clone();
        move |report| {
            bar.inc(1);
            if report.outcome == "cancelled" {
                bar.set_message(format!(
                    "last cancelled: order-{} {}",
                    report.id,
                    report.cause.as_ref().map_or("", |cause| &cause.code)
                ));
            }
        }
    })?;
    // ctrl-c or SIGTERM: an ordered shutdown; a second one aborts what is left.
    let listener = tokio::spawn(shutdown_on_signals(running.handle(), signals));
    let summary = running.finish().await?;
    listener.await?;
    bar.finish_and_clear();
    if config.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(summary)
}
