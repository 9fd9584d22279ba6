//! A simulated payment gateway: a remote call with latency and failures, and a health endpoint
//! that a supervised poller watches.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use taskscope::Cause;
use tokio::time::sleep;

use super::lock;
use super::plan::{Fate, OrderPlan};

/// The code of a declined payment.
pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";

/// The payment gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    next_authorization: AtomicU64,
    voided: AtomicU64,
    /// Draws the health endpoint's failures.
    health: Mutex<StdRng>,
    health_failure_rate: f64,
}

/// A transient failure of the gateway's health endpoint.
#[derive(Debug)]
pub struct Unavailable(pub u32);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payment gateway health check: HTTP {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

impl Gateway {
    /// A gateway whose health endpoint fails at `health_failure_rate`, drawn from `seed`.
    pub fn new(seed: u64, health_failure_rate: f64) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                next_authorization: AtomicU64::new(1),
                voided: AtomicU64::new(0),
                health: Mutex::new(StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15)),
                health_failure_rate,
            }),
        }
    }

    /// Authorizes the order's payment: an authorization id, or a `PAYMENT_DECLINED` cause.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropped before it answers, nothing was authorized.
    pub async fn authorize(&self, order: &OrderPlan) -> Result<String, Cause> {
        sleep(order.payment_latency).await;
        if order.fate == Fate::Declined {
            return Err(Cause::new(PAYMENT_DECLINED).with_detail(format!(
                "order {}: card declined (insufficient funds)",
                order.id
            )));
        }
        let n = self
            .inner
            .next_authorization
            .fetch_add(1, Ordering::Relaxed);
        Ok(format!("auth-{n:06}"))
    }

    /// Voids an authorization, so that the customer is not charged for a cancelled order.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropped before it answers, the authorization stands (and expires at the
    /// card issuer).
    pub async fn void(&self, authorization: &str) {
        let _ = authorization;
        sleep(Duration::from_millis(3)).await;
        self.inner.voided.fetch_add(1, Ordering::Relaxed);
    }

    /// Authorizations issued so far.
    pub fn authorized(&self) -> u64 {
        self.inner.next_authorization.load(Ordering::Relaxed) - 1
    }

    /// Authorizations voided so far.
    pub fn voided(&self) -> u64 {
        self.inner.voided.load(Ordering::Relaxed)
    }

    /// One call to the health endpoint.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn health(&self) -> Result<(), Unavailable> {
        sleep(Duration::from_millis(5)).await;
        let failed = {
            let mut rng = lock(&self.inner.health);
            rng.random::<f64>() < self.inner.health_failure_rate
        };
        if failed {
            Err(Unavailable(503))
        } else {
            Ok(())
        }
    }
}
