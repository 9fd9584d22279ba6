//! The shop's ledger in PostgreSQL, for the distributed mode: stock, orders, reservations,
//! payment charges, the audit rows of cancelled orders (with the cause record), and each
//! attempt a worker made at an order.
//!
//! Every step is idempotent, so that a job run again (retried, requeued by a shutdown, or
//! re-enqueued after its worker was killed) picks up where the last run stopped and never does
//! a thing twice: an order is opened once, its units reserved once, its payment charged once
//! (a second run finds the charge), and a cancelled order compensated once (its audit row is
//! unique). A step commits only if its scope is still live.

use sqlx::{PgPool, Postgres, Row, Transaction};
use taskscope::{Cause, Scope};

use crate::shop::plan::{IN_STOCK, SOLD_OUT};
use crate::shop::store::{DB_ERROR, INVENTORY_SHORTAGE, Ledger};

const SCHEMA: &str = "
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;
CREATE TABLE shop.stock (
    sku       TEXT PRIMARY KEY,
    initial   INTEGER NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE shop.orders (
    id            BIGINT PRIMARY KEY,
    sku           TEXT NOT NULL REFERENCES shop.stock (sku),
    qty           INTEGER NOT NULL CHECK (qty > 0),
    state         TEXT NOT NULL CHECK (state IN ('open', 'completed', 'cancelled')),
    authorization_id TEXT,
    cause_code    TEXT
);
CREATE TABLE shop.reservations (
    order_id BIGINT PRIMARY KEY REFERENCES shop.orders (id),
    sku      TEXT NOT NULL REFERENCES shop.stock (sku),
    qty      INTEGER NOT NULL CHECK (qty > 0),
    state    TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released'))
);
-- Every charge the gateway made: a retried job must find its order's charge, not make another.
CREATE TABLE shop.charges (
    id               BIGSERIAL PRIMARY KEY,
    order_id         BIGINT NOT NULL REFERENCES shop.orders (id),
    authorization_id TEXT NOT NULL,
    voided           BOOLEAN NOT NULL DEFAULT false
);
-- One row per cancelled order, written in the transaction that compensates it.
CREATE TABLE shop.audit (
    order_id    BIGINT PRIMARY KEY REFERENCES shop.orders (id),
    scope       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    code        TEXT NOT NULL,
    origin      TEXT,
    detail      TEXT,
    record      JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Each run of an order's job: which attempt apalis said it was, and where it ran.
CREATE TABLE shop.attempts (
    order_id   BIGINT NOT NULL,
    attempt    INTEGER NOT NULL,
    worker     TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
";

/// The ledger; cheap to clone.
#[derive(Clone)]
pub struct PgLedger {
    pool: PgPool,
}

fn db_error(error: sqlx::Error) -> Cause {
    Cause::new(DB_ERROR)
        .with_detail(error.to_string())
        .with_source(error)
}

/// An order's row, if it has one: its state.
async fn state(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<Option<String>, Cause> {
    sqlx::query_scalar("SELECT state FROM shop.orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)
}

/// Commits `tx` if `scope` is still live; rolls it back (by dropping it) otherwise.
async fn commit(tx: Transaction<'_, Postgres>, scope: &Scope) -> Result<(), Cause> {
    scope.check()?;
    tx.commit().await.map_err(db_error)
}

/// What an order's steps see of it when a run begins.
pub enum Opened {
    /// Open: the steps run (again).
    Open,
    /// Completed by an earlier run: nothing to do.
    Completed,
    /// Cancelled and compensated by an earlier run, whose worker died before the queue heard.
    Cancelled {
        /// Its cause's kind, from its audit row.
        kind: String,
        /// Its cause's code, from its audit row.
        code: String,
    },
}

impl PgLedger {
    /// The ledger in `pool`'s database.
    pub fn new(pool: &PgPool) -> PgLedger {
        PgLedger { pool: pool.clone() }
    }

    /// Replaces the shop's tables with empty ones and `orders` orders' worth of stock.
    ///
    /// # Cancel safety
    ///
    /// One statement after another, not a transaction: dropped half-way, run it again.
    pub async fn reset(&self, orders: u64) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(&self.pool).await?;
        let enough = i32::try_from(orders.saturating_mul(5)).unwrap_or(i32::MAX);
        for sku in IN_STOCK {
            sqlx::query("INSERT INTO shop.stock (sku, initial, available) VALUES ($1, $2, $2)")
                .bind(sku)
                .bind(enough)
                .execute(&self.pool)
                .await?;
        }
        sqlx::query("INSERT INTO shop.stock (sku, initial, available) VALUES ($1, 0, 0)")
            .bind(SOLD_OUT)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that `worker` began attempt `attempt` at order `id`.
    ///
    /// # Cancel safety
    ///
    /// One statement: dropped, it is written or not.
    pub async fn record_attempt(&self, id: i64, attempt: usize, worker: &str) -> Result<(), Cause> {
        sqlx::query("INSERT INTO shop.attempts (order_id, attempt, worker) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
            .bind(worker)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// The *validate* step: the order is recorded as open, unless an earlier run did.
    ///
    /// # Cancel safety
    ///
    /// One transaction, committed only while `scope` is live: dropped, it is done or not.
    pub async fn open(&self, scope: &Scope, id: i64, sku: &str, qty: u32) -> Result<Opened, Cause> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if let Some(state) = state(&mut tx, id).await? {
            return match state.as_str() {
                "open" => Ok(Opened::Open),
                "completed" => Ok(Opened::Completed),
                _ => {
                    let (kind, code) = sqlx::query_as::<_, (String, String)>(
                        "SELECT kind, code FROM shop.audit WHERE order_id = $1",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    Ok(Opened::Cancelled { kind, code })
                }
            };
        }
        if qty == 0 || !known_sku(&mut tx, sku).await? {
            return Err(Cause::new("INVALID_ORDER").with_detail(format!(
                "order {id}: {qty} x {sku:?} is not in the catalogue"
            )));
        }
        sqlx::query("INSERT INTO shop.orders (id, sku, qty, state) VALUES ($1, $2, $3, 'open')")
            .bind(id)
            .bind(sku)
            .bind(i32::try_from(qty).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        commit(tx, scope).await?;
        Ok(Opened::Open)
    }

    /// Reserves the order's units, once; an [`INVENTORY_SHORTAGE`] cause if there are not
    /// enough.
    ///
    /// # Cancel safety
    ///
    /// One transaction, committed only while `scope` is live: dropped, it is done or not.
    pub async fn reserve(&self, scope: &Scope, id: i64) -> Result<(), Cause> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if state(&mut tx, id).await?.as_deref() != Some("open") {
            return Err(closed(id));
        }
        let held: Option<String> =
            sqlx::query_scalar("SELECT state FROM shop.reservations WHERE order_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if held.is_some() {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT o.sku, o.qty, s.available FROM shop.orders o
             JOIN shop.stock s ON s.sku = o.sku WHERE o.id = $1 FOR UPDATE OF s",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let (sku, qty, available): (String, i32, i32) = (row.get(0), row.get(1), row.get(2));
        if available < qty {
            return Err(Cause::new(INVENTORY_SHORTAGE)
                .with_detail(format!("{sku}: {available} left, {qty} wanted")));
        }
        sqlx::query("UPDATE shop.stock SET available = available - $2 WHERE sku = $1")
            .bind(&sku)
            .bind(qty)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO shop.reservations (order_id, sku, qty, state) VALUES ($1, $2, $3, 'held')",
        )
        .bind(id)
        .bind(&sku)
        .bind(qty)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        commit(tx, scope).await
    }

    /// The order's charge from an earlier run, if it has one.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn charge_of(&self, id: i64) -> Result<Option<String>, Cause> {
        sqlx::query_scalar(
            "SELECT authorization_id FROM shop.charges WHERE order_id = $1 AND NOT voided",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)
    }

    /// Records the gateway's charge of the order, once: a charge already there (a run that
    /// raced this one) is returned instead.
    ///
    /// # Cancel safety
    ///
    /// One transaction, committed only while `scope` is live: dropped, it is done or not.
    pub async fn charge(&self, scope: &Scope, id: i64) -> Result<String, Cause> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if state(&mut tx, id).await?.as_deref() != Some("open") {
            return Err(closed(id));
        }
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT authorization_id FROM shop.charges WHERE order_id = $1 AND NOT voided",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some(authorization) = existing {
            return Ok(authorization);
        }
        let authorization: String = sqlx::query_scalar(
            "INSERT INTO shop.charges (order_id, authorization_id)
             VALUES ($1, 'auth-' || $1 || '-' || nextval('shop.charges_id_seq'))
             RETURNING authorization_id",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        commit(tx, scope).await?;
        Ok(authorization)
    }

    /// The *confirm* step: the reservation is committed and the order completed.
    ///
    /// # Cancel safety
    ///
    /// One transaction, committed only while `scope` is live: dropped, it is done or not.
    pub async fn confirm(&self, scope: &Scope, id: i64, authorization: &str) -> Result<(), Cause> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if state(&mut tx, id).await?.as_deref() != Some("open") {
            return Err(closed(id));
        }
        let committed = sqlx::query(
            "UPDATE shop.reservations SET state = 'committed' WHERE order_id = $1 AND state = 'held'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if committed.rows_affected() != 1 {
            return Err(Cause::new("NO_RESERVATION")
                .with_detail(format!("order {id} has no held reservation to confirm")));
        }
        sqlx::query(
            "UPDATE shop.orders SET state = 'completed', authorization_id = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(authorization)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        commit(tx, scope).await
    }

    /// Compensation, in one transaction: puts a held reservation back into stock, voids the
    /// order's charge, closes the order as cancelled and writes its audit row with `cause`.
    /// An order already closed is left alone (`Ok(false)`): compensating twice does nothing.
    ///
    /// # Cancel safety
    ///
    /// One transaction, committed only while `scope` is live: dropped, it is done or not.
    pub async fn compensate(
        &self,
        scope: &Scope,
        (id, sku, qty): (i64, &str, u32),
        order_scope: &str,
        cause: &Cause,
    ) -> Result<bool, Cause> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        match state(&mut tx, id).await?.as_deref() {
            Some("open") => {}
            Some(_) => return Ok(false),
            // An order that never was (its SKU unknown, no units): nothing to undo or record.
            None if qty == 0 || !known_sku(&mut tx, sku).await? => return Ok(false),
            None => {
                sqlx::query(
                    "INSERT INTO shop.orders (id, sku, qty, state) VALUES ($1, $2, $3, 'open')",
                )
                .bind(id)
                .bind(sku)
                .bind(i32::try_from(qty).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
        }
        sqlx::query(
            "UPDATE shop.stock s SET available = available + r.qty
             FROM shop.reservations r
             WHERE r.order_id = $1 AND r.state = 'held' AND s.sku = r.sku",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "UPDATE shop.reservations SET state = 'released' WHERE order_id = $1 AND state = 'held'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("UPDATE shop.charges SET voided = true WHERE order_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("UPDATE shop.orders SET state = 'cancelled', cause_code = $2 WHERE id = $1")
            .bind(id)
            .bind(cause.code())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let record = serde_json::to_value(cause)
            .map_err(|error| Cause::new(DB_ERROR).with_detail(error.to_string()))?;
        sqlx::query(
            "INSERT INTO shop.audit (order_id, scope, kind, code, origin, detail, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(order_scope)
        .bind(cause.kind().as_str())
        .bind(cause.code())
        .bind(cause.origin())
        .bind(cause.detail())
        .bind(record)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        commit(tx, scope).await?;
        Ok(true)
    }

    /// Checks the invariants of the single-process mode, and that no order was charged twice:
    ///
    /// 1. for every SKU, available + held + committed units == initial stock;
    /// 2. no reservation is held for an order that is not open;
    /// 3. every cancelled order has exactly one audit row (with its cause), and no other order
    ///    has one;
    /// 4. every completed order has a committed reservation and its one charge;
    /// 5. no order has more than one charge standing, and no cancelled order has one;
    /// 6. no order is left open.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn check(&self) -> Result<Ledger, sqlx::Error> {
        let count = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.pool)
                .await
                .map(|n| u64::try_from(n).unwrap_or(0))
        };
        let mut ledger = Ledger {
            completed: count("SELECT count(*) FROM shop.orders WHERE state = 'completed'").await?,
            cancelled: count("SELECT count(*) FROM shop.orders WHERE state = 'cancelled'").await?,
            open: count("SELECT count(*) FROM shop.orders WHERE state = 'open'").await?,
            audit_rows: count("SELECT count(*) FROM shop.audit").await?,
            violations: Vec::new(),
        };
        let unbalanced = sqlx::query(
            "SELECT s.sku, s.initial::bigint, s.available::bigint,
                    coalesce(sum(r.qty) FILTER (WHERE r.state = 'held'), 0)::bigint,
                    coalesce(sum(r.qty) FILTER (WHERE r.state = 'committed'), 0)::bigint
             FROM shop.stock s LEFT JOIN shop.reservations r ON r.sku = s.sku
             GROUP BY s.sku, s.initial, s.available
             HAVING s.available
                    + coalesce(sum(r.qty) FILTER (WHERE r.state = 'held'), 0)
                    + coalesce(sum(r.qty) FILTER (WHERE r.state = 'committed'), 0) != s.initial",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in unbalanced {
            ledger.violations.push(format!(
                "stock of {}: {} available + {} held + {} sold != {} initial",
                row.get::<String, _>(0),
                row.get::<i64, _>(2),
                row.get::<i64, _>(3),
                row.get::<i64, _>(4),
                row.get::<i64, _>(1),
            ));
        }
        let checks = [
            (
                "SELECT count(*) FROM shop.reservations r JOIN shop.orders o ON o.id = r.order_id
                 WHERE r.state = 'held' AND o.state != 'open'",
                "reservation(s) still held for a closed order",
            ),
            (
                "SELECT count(*) FROM shop.orders o
                 WHERE o.state = 'cancelled'
                   AND NOT EXISTS (SELECT 1 FROM shop.audit a WHERE a.order_id = o.id)",
                "cancelled order(s) without an audit row",
            ),
            (
                "SELECT count(*) FROM shop.audit a JOIN shop.orders o ON o.id = a.order_id
                 WHERE o.state != 'cancelled' OR a.code != o.cause_code",
                "audit row(s) of an order not cancelled, or with another cause",
            ),
            (
                "SELECT count(*) FROM shop.orders WHERE state = 'open'",
                "order(s) left open, their reservations held",
            ),
            (
                "SELECT count(*) FROM shop.orders o
                 WHERE o.state = 'completed' AND (
                     NOT EXISTS (SELECT 1 FROM shop.reservations r
                                 WHERE r.order_id = o.id AND r.state = 'committed')
                     OR (SELECT count(*) FROM shop.charges c
                         WHERE c.order_id = o.id AND NOT c.voided
                           AND c.authorization_id = o.authorization_id) != 1)",
                "completed order(s) without a committed reservation and their one charge",
            ),
            (
                "SELECT count(*) FROM (SELECT order_id FROM shop.charges GROUP BY order_id
                                       HAVING count(*) > 1) twice",
                "order(s) charged more than once",
            ),
            (
                "SELECT count(*) FROM shop.charges c JOIN shop.orders o ON o.id = c.order_id
                 WHERE o.state = 'cancelled' AND NOT c.voided",
                "charge(s) of a cancelled order not voided",
            ),
        ];
        for (sql, what) in checks {
            let n = count(sql).await?;
            if n > 0 {
                ledger.violations.push(format!("{n} {what}"));
            }
        }
        Ok(ledger)
    }
}

async fn known_sku(tx: &mut Transaction<'_, Postgres>, sku: &str) -> Result<bool, Cause> {
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM shop.stock WHERE sku = $1")
        .bind(sku)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(known.is_some())
}

fn closed(id: i64) -> Cause {
    Cause::new("ORDER_CLOSED").with_detail(format!("order {id} is no longer open"))
}
