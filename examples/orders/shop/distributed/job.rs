//! One order as a job: the same steps as in one process (validate, then reserve ∥ charge ∥
//! fraud-check, then confirm), each idempotent, under the job's scope. The job does not
//! compensate: whether a cancellation ends the order is the queue's policy to decide (a
//! worker's shutdown does not; a shortage does), and the layer compensates an order it gives
//! up ([`compensate`]).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskscope::{Cause, CauseKind, Scope, TaskGroup};
use taskscope_apalis::JobScope;
use taskscope_select::{FutureExt, ScopeExt};
use tokio::time::sleep;

use super::ledger::{Opened, PgLedger};
use crate::shop::gateway::PAYMENT_DECLINED;
use crate::shop::pipeline::{PAYMENT_TIMEOUT, USER_CANCELLED};
use crate::shop::plan::{Fate, OrderPlan};

/// The code of a job whose payload is not an order.
pub const BAD_PAYLOAD: &str = "BAD_PAYLOAD";

/// The codes a retry cannot change: the queue gives these orders up at once.
pub const PERMANENT: [&str; 6] = [
    crate::shop::store::INVENTORY_SHORTAGE,
    PAYMENT_DECLINED,
    PAYMENT_TIMEOUT,
    USER_CANCELLED,
    "INVALID_ORDER",
    BAD_PAYLOAD,
];

/// An order, as it travels through the queue: the plan drawn by the producer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderJob {
    /// The order's number.
    pub id: i64,
    /// What it buys.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// What the simulated world does to it (`Complete`, `Shortage`, ...).
    pub fate: String,
    /// How long the payment gateway takes.
    pub payment_latency_ms: u64,
    /// How long the fraud check takes.
    pub fraud_latency_ms: u64,
    /// When the customer cancels, after the order starts.
    pub cancel_after_ms: Option<u64>,
}

impl OrderJob {
    /// The job of `plan`.
    pub fn of(plan: &OrderPlan) -> OrderJob {
        OrderJob {
            id: plan.id,
            sku: plan.sku.to_owned(),
            qty: plan.qty,
            fate: format!("{:?}", plan.fate),
            payment_latency_ms: millis(plan.payment_latency),
            fraud_latency_ms: millis(plan.fraud_latency),
            cancel_after_ms: plan.cancel_after.map(millis),
        }
    }

    /// The job in `payload`, or a [`BAD_PAYLOAD`] cause saying what is wrong with it.
    pub fn decode(payload: &serde_json::Value) -> Result<OrderJob, Cause> {
        let job: OrderJob = serde_json::from_value(payload.clone()).map_err(|error| {
            Cause::new(BAD_PAYLOAD).with_detail(format!("not an order job: {error}"))
        })?;
        job.fate()?;
        Ok(job)
    }

    fn fate(&self) -> Result<Fate, Cause> {
        Ok(match self.fate.as_str() {
            "Complete" => Fate::Complete,
            "Shortage" => Fate::Shortage,
            "Declined" => Fate::Declined,
            "SlowPayment" => Fate::SlowPayment,
            "UserCancel" => Fate::UserCancel,
            "Panic" => Fate::Panic,
            "Stuck" => Fate::Stuck,
            other => {
                return Err(Cause::new(BAD_PAYLOAD)
                    .with_detail(format!("order {}: unknown fate {other:?}", self.id)));
            }
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What every job of a worker shares.
pub struct Ctx {
    /// The ledger.
    pub ledger: PgLedger,
    /// This worker's name, as attempts record it.
    pub worker: String,
    /// How long the gateway may take to charge.
    pub payment_timeout: Duration,
    /// How long a cancelled job's steps may take to stop before they are aborted.
    pub grace: Duration,
}

/// Runs one order job, attempt `attempt`, under `scope` (its job scope).
///
/// # Cancel safety
///
/// Cancel-safe for the ledger: every step is a transaction that commits only while the job's
/// scope is live, and is idempotent, so a job dropped half-way is run again from where it was.
pub async fn run(
    ctx: Arc<Ctx>,
    payload: serde_json::Value,
    scope: JobScope,
    attempt: usize,
) -> Result<(), Cause> {
    let job = OrderJob::decode(&payload)?;
    let fate = job.fate()?;
    ctx.ledger
        .record_attempt(job.id, attempt, &ctx.worker)
        .await?;
    let order = scope
        .child_builder()
        .name(format!("order-{}", job.id))
        .build();
    if let (Fate::UserCancel, Some(after)) = (fate, job.cancel_after_ms) {
        let _customer = order.cancel_on(async move {
            sleep(Duration::from_millis(after)).await;
            Cause::new(USER_CANCELLED).with_detail("the customer cancelled the order")
        });
    }
    match ctx.ledger.open(&order, job.id, &job.sku, job.qty).await? {
        Opened::Open => {}
        // An earlier run completed it, and its worker died before the queue heard.
        Opened::Completed => return Ok(()),
        // An earlier run's end was given up and compensated, and its worker died before the
        // queue heard: the same end again, for the queue to decide as it did (a compensation
        // finds the order closed and does nothing).
        Opened::Cancelled { kind, code } => return Err(earlier_cause(job.id, &kind, &code)),
    }

    let steps: TaskGroup<Option<String>> = TaskGroup::builder(&order).grace(ctx.grace).build();
    steps.spawn("reserve", {
        let (ledger, id) = (ctx.ledger.clone(), job.id);
        move |scope| async move {
            ledger.reserve(&scope, id).await?;
            if fate == Fate::Panic {
                panic!("inventory worker: bin layout of order {id} is corrupt");
            }
            Ok(None)
        }
    });
    steps.spawn("charge", {
        let (ledger, job) = (ctx.ledger.clone(), job.clone());
        let timeout = ctx.payment_timeout;
        move |scope: Scope| async move {
            if let Some(authorization) = ledger.charge_of(job.id).await? {
                return Ok(Some(authorization));
            }
            let too_slow = Cause::new(PAYMENT_TIMEOUT).with_detail(format!(
                "payment gateway did not answer within {} ms",
                timeout.as_millis()
            ));
            sleep(Duration::from_millis(job.payment_latency_ms))
                .timeout_with_cause(timeout, too_slow)
                .or_cancel(&scope)
                .await??;
            if fate == Fate::Declined {
                return Err(Cause::new(PAYMENT_DECLINED)
                    .with_detail(format!(
                        "order {}: card declined (insufficient funds)",
                        job.id
                    ))
                    .into());
            }
            Ok(Some(ledger.charge(&scope, job.id).await?))
        }
    });
    steps.spawn("fraud-check", {
        let latency = Duration::from_millis(job.fraud_latency_ms);
        move |scope| async move {
            if fate == Fate::Stuck && attempt == 1 {
                // A legacy client that never looks at its scope, on the first attempt: the
                // job's deadline stops the order, the grace aborts this step, and the queue
                // retries the job.
                sleep(Duration::from_secs(3600)).await;
            }
            sleep(latency).or_cancel(&scope).await?;
            Ok(None)
        }
    });
    let done = steps.join().await.map_err(|error| {
        error
            .cause()
            .cloned()
            .unwrap_or_else(|| Cause::new("CHECKOUT_FAILED").with_detail(error.to_string()))
    })?;
    let authorization = done.into_iter().flatten().next().expect("the charge step");
    ctx.ledger.confirm(&order, job.id, &authorization).await
}

/// The cause an earlier run cancelled order `id` with, from its audit row: its code when it is
/// one of the [`PERMANENT`] codes, else its kind.
fn earlier_cause(id: i64, kind: &str, code: &str) -> Cause {
    let cause = match PERMANENT.iter().find(|permanent| **permanent == code) {
        Some(code) => Cause::new(code),
        None => Cause::of_kind(CauseKind::from_name(kind).unwrap_or(CauseKind::TaskFailed)),
    };
    cause.with_detail(format!(
        "order {id} was cancelled ({code}) by an earlier run, whose worker died before the queue heard"
    ))
}

/// Compensates an order the queue gave up: releases its stock, voids its charge, closes it as
/// cancelled with its audit row. Idempotent: a second compensation finds it closed. A payload
/// that is not an order has nothing to compensate.
///
/// # Cancel safety
///
/// One transaction, committed only while `scope` is live: dropped, it is done or not, and
/// running it again finishes it.
pub async fn compensate(
    ledger: PgLedger,
    payload: serde_json::Value,
    cause: Cause,
    scope: Scope,
) -> Result<(), Cause> {
    let Ok(job) = OrderJob::decode(&payload) else {
        return Ok(());
    };
    // The audit row names the scope the compensation ran in (`…/compensate-{task id}`); the
    // cause's origin says where the cancellation came from.
    let compensation_scope = scope.path().to_string();
    ledger
        .compensate(
            &scope,
            (job.id, &job.sku, job.qty),
            &compensation_scope,
            &cause,
        )
        .await?;
    Ok(())
}
