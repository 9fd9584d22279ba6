//! What happens to each order, drawn up front from the seed, so that a run's outcome does not
//! depend on how its tasks happen to interleave.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Config;

/// The catalogue: SKUs and their stock. The signed poster is sold out, so ordering it is an
/// inventory shortage.
pub const SOLD_OUT: &str = "sku-poster-signed";

/// The SKUs that are in stock (each with enough for every order of a run).
pub const IN_STOCK: [&str; 4] = ["sku-mug", "sku-tshirt", "sku-hoodie", "sku-sticker"];

/// Units of one SKU an order asks for, at most.
pub const MAX_QTY: u32 = 5;

/// What a test or a run wants to happen to one order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fate {
    /// Every step succeeds.
    Complete,
    /// It asks for the sold-out SKU: `INVENTORY_SHORTAGE` cancels the payment step.
    Shortage,
    /// The gateway declines the card: `PAYMENT_DECLINED`.
    Declined,
    /// The gateway answers after the payment timeout: `PAYMENT_TIMEOUT`.
    SlowPayment,
    /// The customer cancels while the payment is in flight: `USER_CANCELLED`.
    UserCancel,
    /// The inventory worker panics after reserving: code `panicked`, kind `task_panicked`.
    Panic,
    /// The fraud check hangs and ignores its cancellation: the order's deadline
    /// (`ORDER_DEADLINE`) stops it, and after the grace it is aborted.
    Stuck,
}

/// One order as the simulated world will treat it.
#[derive(Clone, Debug)]
pub struct OrderPlan {
    /// Its number, from 1.
    pub id: i64,
    /// What it buys.
    pub sku: &'static str,
    /// How many.
    pub qty: u32,
    /// What will happen to it.
    pub fate: Fate,
    /// How long the payment gateway takes to answer.
    pub payment_latency: Duration,
    /// How long the fraud check takes.
    pub fraud_latency: Duration,
    /// When the customer cancels, after the order starts.
    pub cancel_after: Option<Duration>,
}

/// The plans of a run, from `config.seed`.
pub fn plans(config: &Config) -> Vec<OrderPlan> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let timeout = config.payment_timeout();
    (1..=i64::try_from(config.orders).unwrap_or(i64::MAX))
        .map(|id| {
            let fate = fate(config, rng.random::<f64>());
            let sku = match fate {
                Fate::Shortage => SOLD_OUT,
                _ => IN_STOCK[rng.random_range(0..IN_STOCK.len())],
            };
            let qty = rng.random_range(1..=MAX_QTY);
            // A normal payment answers well within the timeout.
            let mut payment_latency = timeout.mul_f64(rng.random_range(0.05..0.6));
            let mut cancel_after = None;
            match fate {
                Fate::SlowPayment => payment_latency = timeout * 4,
                Fate::UserCancel => {
                    // The customer gives up while the gateway is still working on it.
                    payment_latency = timeout.mul_f64(0.9);
                    cancel_after = Some(payment_latency.mul_f64(rng.random_range(0.2..0.8)));
                }
                _ => {}
            }
            OrderPlan {
                id,
                sku,
                qty,
                fate,
                payment_latency,
                fraud_latency: Duration::from_millis(rng.random_range(2..20)),
                cancel_after,
            }
        })
        .collect()
}

/// The fate a uniform draw `x` in `[0, 1)` gives, by the configured rates.
fn fate(config: &Config, x: f64) -> Fate {
    let mut edge = 0.0;
    for (rate, fate) in config.rates() {
        edge += rate;
        if x < edge {
            return fate;
        }
    }
    Fate::Complete
}

/// The stock to start with: enough of every in-stock SKU for every order, none of the sold-out
/// one.
pub fn initial_stock(config: &Config) -> Vec<(&'static str, u32)> {
    let enough = u32::try_from(config.orders)
        .unwrap_or(u32::MAX)
        .saturating_mul(MAX_QTY);
    IN_STOCK
        .iter()
        .map(|sku| (*sku, enough))
        .chain([(SOLD_OUT, 0)])
        .collect()
}
