//! The example's flags, checked before anything starts.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::plan::Fate;

/// What to run: the example's command-line flags.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "orders",
    about = "An order pipeline on taskscope: every cancelled order says why, in the output and \
             in its SQLite audit table."
)]
pub struct Config {
    /// Orders to run.
    #[arg(long, default_value_t = 300)]
    pub orders: u64,
    /// Seed of every random draw (order fates, latencies, backoff jitter).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Each order's deadline, in milliseconds.
    #[arg(long, default_value_t = 800)]
    pub deadline_ms: u64,
    /// How long the payment gateway may take, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub payment_timeout_ms: u64,
    /// How long a cancelled order's steps may take to stop before they are aborted, in
    /// milliseconds.
    #[arg(long, default_value_t = 150)]
    pub grace_ms: u64,
    /// Share of orders for the sold-out SKU (INVENTORY_SHORTAGE).
    #[arg(long, default_value_t = 0.06)]
    pub shortage_rate: f64,
    /// Share of payments declined (PAYMENT_DECLINED).
    #[arg(long, default_value_t = 0.05)]
    pub decline_rate: f64,
    /// Share of payments slower than the payment timeout (PAYMENT_TIMEOUT).
    #[arg(long, default_value_t = 0.04)]
    pub slow_payment_rate: f64,
    /// Share of orders the customer cancels (USER_CANCELLED).
    #[arg(long, default_value_t = 0.04)]
    pub user_cancel_rate: f64,
    /// Share of orders whose inventory worker panics (code `panicked`, kind `task_panicked`).
    #[arg(long, default_value_t = 0.02)]
    pub panic_rate: f64,
    /// Share of orders whose fraud check hangs (ORDER_DEADLINE, then aborted).
    #[arg(long, default_value_t = 0.01)]
    pub stuck_rate: f64,
    /// Chance that one poll of the gateway's health endpoint fails (the poller restarts).
    #[arg(long, default_value_t = 0.1)]
    pub gateway_flakiness: f64,
    /// Stop the run after this many milliseconds, as ctrl-c would (SIGINT cause).
    #[arg(long)]
    pub shutdown_after_ms: Option<u64>,
    /// The SQLite database (replaced if it exists) [default: orders.sqlite3 in the temporary
    /// directory].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The audit log of taskscope-trace, JSON lines [default: orders-audit.jsonl in the
    /// temporary directory].
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Print the summary as JSON on stdout, and nothing else there.
    #[arg(long)]
    pub json: bool,
    /// Run distributed: orders as jobs on a PostgreSQL queue (apalis), the ledger in the same
    /// database, with a command: `enqueue`, `work` or `report`.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// What to do in the distributed mode (with --postgres).
    #[command(subcommand)]
    pub command: Option<super::distributed::Command>,
}

impl Default for Config {
    fn default() -> Config {
        clap::Parser::parse_from(["orders"])
    }
}

/// A configuration that cannot run.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The longest any configured duration may be.
const MAX_MS: u64 = 3_600_000;

impl Config {
    /// Checks every flag, so that a bad one is a clear error rather than a strange run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if !(1..=1_000_000).contains(&self.orders) {
            return fail(format!("--orders {} is not in 1..=1000000", self.orders));
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return fail(format!(
                "--concurrency {} is not in 1..=10000",
                self.concurrency
            ));
        }
        for (flag, ms, min) in [
            ("--deadline-ms", self.deadline_ms, 1),
            ("--payment-timeout-ms", self.payment_timeout_ms, 1),
            ("--grace-ms", self.grace_ms, 0),
        ] {
            if !(min..=MAX_MS).contains(&ms) {
                return fail(format!("{flag} {ms} is not in {min}..={MAX_MS}"));
            }
        }
        if let Some(ms) = self.shutdown_after_ms
            && ms > MAX_MS
        {
            return fail(format!("--shutdown-after-ms {ms} is over {MAX_MS}"));
        }
        let flags = [
            "--shortage-rate",
            "--decline-rate",
            "--slow-payment-rate",
            "--user-cancel-rate",
            "--panic-rate",
            "--stuck-rate",
        ];
        let rates = self.rates();
        for ((rate, _), flag) in rates.iter().zip(flags) {
            if !(0.0..=1.0).contains(rate) {
                return fail(format!("{flag} {rate} is not in 0..=1"));
            }
        }
        let sum: f64 = rates.iter().map(|(rate, _)| rate).sum();
        if sum > 1.0 + 1e-9 {
            return fail(format!(
                "the rates ({}) add up to {sum}, over 1",
                flags.join(", ")
            ));
        }
        if !(0.0..1.0).contains(&self.gateway_flakiness) {
            return fail(format!(
                "--gateway-flakiness {} is not in 0..1",
                self.gateway_flakiness
            ));
        }
        Ok(())
    }

    /// The rate of each fate other than [`Fate::Complete`].
    pub fn rates(&self) -> [(f64, Fate); 6] {
        [
            (self.shortage_rate, Fate::Shortage),
            (self.decline_rate, Fate::Declined),
            (self.slow_payment_rate, Fate::SlowPayment),
            (self.user_cancel_rate, Fate::UserCancel),
            (self.panic_rate, Fate::Panic),
            (self.stuck_rate, Fate::Stuck),
        ]
    }

    /// How long the payment gateway may take.
    pub fn payment_timeout(&self) -> Duration {
        Duration::from_millis(self.payment_timeout_ms)
    }

    pub(super) fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("orders.sqlite3"))
    }

    pub(super) fn audit_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("orders-audit.jsonl"))
    }
}
