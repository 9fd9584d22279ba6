//! One order: validate, then reserve ∥ charge ∥ fraud-check as a task group under the order's
//! deadline, then confirm; on any cancellation, compensate in a detached scope that knows why.
//! Once the order may be in the database it is owed a settlement: if its future is dropped
//! half-way (its task aborted), a guard cancels it and compensates it in a task of its own.

use std::future::Future;
use std::panic::resume_unwind;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use taskscope::{Cause, CauseKind, Scope, TaskGroup};
use taskscope_select::{FutureExt, ScopeExt};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::sleep;
use tokio_util::task::TaskTracker;

use super::gateway::Gateway;
use super::plan::{Fate, OrderPlan};
use super::store::{Cancelled, Store};

/// The code of an order's own deadline.
pub const ORDER_DEADLINE: &str = "ORDER_DEADLINE";
/// The code of a payment the gateway did not answer in time.
pub const PAYMENT_TIMEOUT: &str = "PAYMENT_TIMEOUT";
/// The code of a cancellation by the customer.
pub const USER_CANCELLED: &str = "USER_CANCELLED";
/// The code of an order whose future was dropped before it was settled (its task aborted, a
/// `select!` that lost): kind `dropped`.
pub const ORDER_DROPPED: &str = "ORDER_DROPPED";

/// What every order shares.
pub struct Ctx {
    pub store: Store,
    pub gateway: Gateway,
    /// Each order's deadline, from its start.
    pub deadline: Duration,
    /// How long the gateway may take to authorize.
    pub payment_timeout: Duration,
    /// How long an order's steps may take to stop once it is cancelled, before they are
    /// aborted.
    pub grace: Duration,
    /// The time budget of a compensation's call to the gateway.
    pub compensation_budget: Duration,
    /// Every compensation runs as a task of its own, here: one whose order task was aborted
    /// outlives it, and is waited for before the ledger is checked.
    pub compensations: TaskTracker,
}

/// How one order ended.
#[derive(Clone, Debug, Serialize)]
pub struct OrderReport {
    pub id: i64,
    /// `completed`, `cancelled`, or `not_started` (the run stopped before it began).
    pub outcome: &'static str,
    /// Why it was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<CauseSummary>,
    /// What its compensation undid, if it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Compensation>,
    /// Steps aborted because they did not stop within the grace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<String>,
}

/// A cause as the summary shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CauseSummary {
    pub kind: &'static str,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl CauseSummary {
    fn of(cause: &Cause) -> CauseSummary {
        CauseSummary {
            kind: cause.kind().as_str(),
            code: cause.code().to_owned(),
            origin: cause.origin().map(str::to_owned),
            detail: cause.detail().map(str::to_owned),
        }
    }
}

/// What an order's compensation did.
#[derive(Clone, Debug, Serialize)]
pub struct Compensation {
    /// Units put back into stock.
    pub released: u32,
    /// Whether a payment authorization was voided.
    pub voided: bool,
    /// Why it could not finish, if it could not (the invariants will say what was left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl OrderReport {
    /// An order that never started: the run was stopped first.
    pub fn not_started(id: i64) -> OrderReport {
        OrderReport {
            id,
            outcome: "not_started",
            cause: None,
            compensation: None,
            aborted: Vec::new(),
        }
    }
}

/// What the steps of an order produce.
enum Step {
    Reserved,
    Authorized(String),
    Cleared,
}

/// Runs order `plan` in `scope` (its task's scope in the intake group).
///
/// # Cancel safety
///
/// Cancel-safe for the ledger and the payment, not for the report. Dropped half-way (its task
/// aborted after its grace), it cancels the order with an [`ORDER_DROPPED`] cause (of kind
/// `dropped`) unless something cancelled it first, and compensates it in a task of its own
/// (spawned on [`Ctx::compensations`], in a detached scope reading the order's cause): the
/// order is closed as cancelled with its audit row, its stock released and its authorization
/// voided, once. A transaction the drop interrupted finishes first (they share one
/// connection); a confirmation that committed anyway wins, and the order stays completed.
/// Dropped while it compensates, the compensation it started goes on. The report is lost: the
/// caller only knows it dropped the order. With no runtime left to spawn on (it is shutting
/// down), the order stays open.
///
/// Run to its end, which a cancellation of `scope` brings about quickly (through
/// compensation), it reports how the order ended.
pub async fn run_order(ctx: Arc<Ctx>, scope: Scope, plan: OrderPlan) -> OrderReport {
    let order = scope
        .child_builder()
        .timeout(ctx.deadline)
        .deadline_cause(Cause::new(ORDER_DEADLINE).with_detail(format!(
            "order {} not done within {} ms",
            plan.id,
            ctx.deadline.as_millis()
        )))
        .build();
    if let Some(after) = plan.cancel_after {
        // The customer, pressing "cancel" in the app. The watcher holds the order weakly and
        // ends with it.
        let _customer = order.cancel_on(async move {
            sleep(after).await;
            Cause::new(USER_CANCELLED).with_detail("the customer cancelled the order")
        });
    }
    // What the charge step authorized, sent as it is issued; the sender goes with the step.
    let (authorized, authorization) = oneshot::channel();
    // Armed before the first transaction: dropped while one runs, this future does not stop
    // it, and it may commit.
    let owed = Settle::arm(&ctx, &order, &plan, authorization);

    let failure = match checkout(&ctx, &order, &plan, authorized).await {
        Ok(()) => {
            owed.disarm();
            return OrderReport {
                id: plan.id,
                outcome: "completed",
                cause: None,
                compensation: None,
                aborted: Vec::new(),
            };
        }
        Err(failure) => failure,
    };
    let (cause, compensation) = owed.compensate(&failure.scope).await;
    OrderReport {
        id: plan.id,
        outcome: "cancelled",
        cause: Some(CauseSummary::of(&cause)),
        compensation: Some(compensation),
        aborted: failure.aborted,
    }
}

/// Why an order's checkout stopped.
struct Failure {
    /// A cancelled scope whose cause is the order's: the steps' group, or the order itself.
    scope: Scope,
    /// Steps aborted because they did not stop within the grace.
    aborted: Vec<String>,
}

impl Failure {
    /// A failure outside the steps' group: it cancels the order (unless something else did
    /// first: first cause wins).
    fn of_order(order: &Scope, cause: Cause) -> Failure {
        order.cancel(cause);
        Failure {
            scope: order.clone(),
            aborted: Vec::new(),
        }
    }
}

/// Validate, reserve ∥ charge ∥ fraud-check, confirm.
async fn checkout(
    ctx: &Arc<Ctx>,
    order: &Scope,
    plan: &OrderPlan,
    authorized: oneshot::Sender<String>,
) -> Result<(), Failure> {
    let orders_failure = |cause| Failure::of_order(order, cause);
    ctx.store
        .open_order(order, plan.id, plan.sku, plan.qty)
        .await
        .map_err(orders_failure)?;

    let steps: TaskGroup<Step> = TaskGroup::builder(order).grace(ctx.grace).build();
    // A failing step cancels this group, not the order: the group's cause is the order's.
    let steps_scope = steps.scope().clone();
    steps.spawn("reserve", {
        let (store, plan) = (ctx.store.clone(), plan.clone());
        move |scope| async move {
            store.reserve(&scope, plan.id).await?;
            if plan.fate == Fate::Panic {
                panic!("inventory worker: bin layout of {} is corrupt", plan.sku);
            }
            Ok(Step::Reserved)
        }
    });
    steps.spawn("charge", {
        let (gateway, plan) = (ctx.gateway.clone(), plan.clone());
        let timeout = ctx.payment_timeout;
        move |scope| async move {
            let too_slow = Cause::new(PAYMENT_TIMEOUT).with_detail(format!(
                "payment gateway did not answer within {} ms",
                timeout.as_millis()
            ));
            // The outer `Err` is this step's cancellation (an echo, not a failure); the middle
            // one the payment timeout; the inner one the gateway's answer.
            let auth = gateway
                .authorize(&plan)
                .timeout_with_cause(timeout, too_slow)
                .or_cancel(&scope)
                .await???;
            // In the poll that issued it: whoever compensates the order learns of it.
            let _ = authorized.send(auth.clone());
            Ok(Step::Authorized(auth))
        }
    });
    steps.spawn("fraud-check", {
        let plan = plan.clone();
        move |scope| async move {
            if plan.fate == Fate::Stuck {
                // A legacy client that never looks at its scope: the group's grace is what
                // stops it.
                sleep(Duration::from_secs(3600)).await;
            }
            sleep(plan.fraud_latency).or_cancel(&scope).await?;
            Ok(Step::Cleared)
        }
    });
    let auth = match steps.join().await {
        Ok(done) => match <[Step; 3]>::try_from(done) {
            Ok([Step::Reserved, Step::Authorized(auth), Step::Cleared]) => auth,
            _ => unreachable!("the steps return in spawn order"),
        },
        Err(error) => {
            let aborted = error
                .aborted()
                .iter()
                .map(|t| t.name().to_owned())
                .collect();
            if error.cause().is_none() {
                // Not cancelled, yet failed: impossible under cancel-on-first-error, but then
                // the failure itself is the cause.
                return Err(orders_failure(
                    Cause::new("CHECKOUT_FAILED").with_detail(error.to_string()),
                ));
            }
            return Err(Failure {
                scope: steps_scope,
                aborted,
            });
        }
    };

    ctx.store
        .confirm(order, plan.id, auth)
        .await
        .map_err(orders_failure)
}

/// What an order is owed once it may be in the database: a settlement, as it completes or by
/// compensation. Dropped armed (its future dropped half-way), it cancels the order and
/// compensates it in a task of its own.
struct Settle {
    owed: Option<Owed>,
}

/// What compensating an order needs.
struct Owed {
    ctx: Arc<Ctx>,
    order: Scope,
    plan: OrderPlan,
    /// The charge step's authorization: sent when issued, closed when the step is gone.
    authorization: oneshot::Receiver<String>,
}

impl Settle {
    fn arm(
        ctx: &Arc<Ctx>,
        order: &Scope,
        plan: &OrderPlan,
        authorization: oneshot::Receiver<String>,
    ) -> Settle {
        Settle {
            owed: Some(Owed {
                ctx: ctx.clone(),
                order: order.clone(),
                plan: plan.clone(),
                authorization,
            }),
        }
    }

    /// The order completed: nothing to undo.
    fn disarm(mut self) {
        self.owed = None;
    }

    /// The order was cancelled: compensates it with the cause of `cancelled` (the steps'
    /// group, or the order), in a task of its own, so that dropping the returned future
    /// half-way leaves the compensation running, and it runs once.
    fn compensate(mut self, cancelled: &Scope) -> impl Future<Output = (Cause, Compensation)> {
        let owed = self.owed.take().expect("armed until settled");
        let cause = cancelled.cause();
        let compensations = owed.ctx.compensations.clone();
        let compensation = compensations.spawn(owed.compensate(cancelled.clone()));
        async move {
            match compensation.await {
                Ok(done) => done,
                Err(error) if error.is_panic() => resume_unwind(error.into_panic()),
                // The runtime is shutting down under both of us.
                Err(error) => (
                    cause.expect("compensation runs for a cancelled order"),
                    Compensation {
                        released: 0,
                        voided: false,
                        failed: Some(error.to_string()),
                    },
                ),
            }
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let Some(owed) = self.owed.take() else {
            return;
        };
        // Before the compensation is spawned: a transaction of the order that is still
        // running then sees the cancellation, and does not commit (or committed first).
        owed.order.cancel(
            Cause::of_kind(CauseKind::Dropped)
                .with_code(ORDER_DROPPED)
                .with_detail(format!(
                    "order {}: stopped before it was settled",
                    owed.plan.id
                )),
        );
        // No runtime, no compensation: the order stays open, as the ledger check will say.
        if let Ok(runtime) = Handle::try_current() {
            let (compensations, order) = (owed.ctx.compensations.clone(), owed.order.clone());
            drop(compensations.spawn_on(owed.compensate(order), &runtime));
        }
    }
}

impl Owed {
    /// Undoes what a cancelled order did, in a scope detached from `cancelled` (the steps'
    /// group or the order): it runs *because* that scope was cancelled, so it is not cancelled
    /// with it, and reads its cause from it. The database part must happen, so it has no
    /// deadline (a transaction waits for the connection as long as it takes); the call to the
    /// gateway has a budget of its own. An order found closed (it completed) is left alone,
    /// its payment included.
    async fn compensate(self, cancelled: Scope) -> (Cause, Compensation) {
        let Owed {
            ctx,
            order,
            plan,
            authorization,
        } = self;
        let detached = cancelled
            .child_builder()
            .name("compensate")
            .detached()
            .build();
        // Read live: why the order was cancelled, as of now.
        let cause = detached
            .parent_cause()
            .expect("compensation runs for a cancelled order");
        let mut compensation = Compensation {
            released: 0,
            voided: false,
            failed: None,
        };
        let record = Cancelled {
            id: plan.id,
            sku: plan.sku.to_owned(),
            qty: plan.qty,
            scope: order.path().to_string(),
            cause: cause.clone(),
        };
        let closed_here = match ctx.store.compensate(&detached, record).await {
            Ok(Some(undone)) => {
                compensation.released = undone.released;
                true
            }
            // A confirmation that committed before the order was cancelled.
            Ok(None) => false,
            Err(cause) => {
                compensation.failed = Some(cause.to_string());
                true
            }
        };
        // Waits for the charge step to be gone (its group joined, or dropped), so that an
        // authorization it issued late is not missed.
        if closed_here && let Ok(authorization) = authorization.await {
            let budget = detached.child_with_timeout(ctx.compensation_budget);
            match ctx.gateway.void(&authorization).or_cancel(&budget).await {
                Ok(()) => compensation.voided = true,
                Err(cause) => compensation.failed = Some(cause.to_string()),
            }
        }
        (cause, compensation)
    }
}
