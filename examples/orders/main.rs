//! The order pipeline: taskscope's main example.
//!
//! ```text
//! cargo run --example orders                      # 300 orders, a few seconds, a summary
//! cargo run --example orders -- --help            # every flag
//! cargo run --example orders -- --orders 2000 --concurrency 64 --seed 7 --json
//! RUST_LOG=taskscope=debug cargo run --example orders -- --orders 20   # every event
//! ```
//!
//! Distributed, on a PostgreSQL job queue (apalis) with any number of worker processes (see
//! `shop::distributed`):
//!
//! ```text
//! cargo run --example orders -- --postgres postgres://... --orders 2000 enqueue
//! cargo run --example orders -- --postgres postgres://... work      # as many as you like
//! cargo run --example orders -- --postgres postgres://... report
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

use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use taskscope_select::signal::{Signals, shutdown_on_signals};
use tracing_subscriber::EnvFilter;

/// What stderr shows by default: panics, and the tasks that did not stop in time ("task slow to
/// stop", the one `taskscope::task` event with a `cancel.elapsed_us` field).
/// `RUST_LOG=taskscope=debug` shows every cancellation and task.
const DEFAULT_LOG: &str =
    "warn,taskscope::cancel=error,taskscope::task=error,taskscope::task[{cancel.elapsed_us}]=warn";

#[tokio::main]
async fn main() -> ExitCode {
    let config = shop::Config::parse();
    // A panic in a step is captured by its task group and becomes the order's cause; one line
    // on stderr says where it happened. A hook of our own, not the default one (which writes to
    // stderr straight through the progress bar) nor `tracing-panic` (a multi-field event, with
    // a backtrace, for one line): through `tracing`, the line lands above the bar and `RUST_LOG`
    // filters it (target `orders::panic`).
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
    if config.postgres.is_some() != config.command.is_some() {
        use clap::CommandFactory;
        shop::Config::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the distributed mode takes both --postgres URL and a command (enqueue, work, report)",
            )
            .exit();
    }
    if let (Some(url), Some(command)) = (&config.postgres, &config.command) {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
            )
            .with_writer(io::stderr)
            .init();
        return match shop::distributed::run(&config, url, command).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("orders: {error}");
                ExitCode::from(2)
            }
        };
    }
    let bar = if std::io::stdout().is_terminal() && !config.json {
        ProgressBar::with_draw_target(Some(config.orders), ProgressDrawTarget::stdout())
    } else {
        ProgressBar::hidden()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer({
            let bar = bar.clone();
            move || AboveTheBar(bar.clone())
        })
        .init();
    match run(&config, bar).await {
        Ok(summary) if summary.is_consistent() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            let mut message = format!("orders: {error}");
            let mut source = error.source();
            while let Some(error) = source {
                message.push_str(&format!(": {error}"));
                source = error.source();
            }
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// Writes log lines to stderr with the progress bar (on stdout) hidden meanwhile, so that
/// neither garbles the other.
struct AboveTheBar(ProgressBar);

impl io::Write for AboveTheBar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

async fn run(
    config: &shop::Config,
    bar: ProgressBar,
) -> Result<shop::Summary, Box<dyn std::error::Error>> {
    // Listen before starting anything, so that a ctrl-c during start-up is not lost.
    let signals = Signals::new()?;
    bar.set_style(ProgressStyle::with_template(
        "{spinner} {pos:>6}/{len} orders [{bar:40}] {elapsed_precise} {msg}",
    )?);
    bar.enable_steady_tick(Duration::from_millis(100));
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
