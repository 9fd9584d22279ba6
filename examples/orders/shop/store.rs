//! The shop's database: stock, orders, reservations and an audit table of cancellations, in
//! one SQLite file (rusqlite, with SQLite bundled, so nothing to install).
//!
//! rusqlite is synchronous, so every transaction runs on tokio's blocking pool
//! (`spawn_blocking`) over one connection: SQLite takes one writer at a time anyway. A
//! transaction is bound to a scope in the three ways a blocking call allows:
//!
//! 1. it does not begin if the scope is already cancelled (checked once it has the connection);
//! 2. a cancellation while it runs (the caller waits on `scope.cancelled()`, so a deadline counts
//!    too) interrupts the running statement (`sqlite3_interrupt`) and the transaction rolls back;
//! 3. it does not commit if the scope was cancelled in the meantime.
//!
//! What it cannot do: stop a blocking thread. The caller waits for the transaction to end
//! (statements here take microseconds) rather than walking away from a thread that may still
//! commit. And since a cancellation can reach the order between one of its transactions and
//! the next, every transaction of an order checks the order's row first: once compensation
//! has closed the order, a late reservation or confirmation finds it closed and rolls back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, InterruptHandle, OptionalExtension, Transaction, TransactionBehavior,
};
use taskscope::{Cause, Scope};

use super::lock;

/// The schema: what the invariants of [`Store::check`] are about.
const SCHEMA: &str = "
CREATE TABLE stock (
    sku       TEXT PRIMARY KEY,
    initial   INTEGER NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE orders (
    id            INTEGER PRIMARY KEY,
    sku           TEXT NOT NULL REFERENCES stock (sku),
    qty           INTEGER NOT NULL CHECK (qty > 0),
    state         TEXT NOT NULL CHECK (state IN ('open', 'completed', 'cancelled')),
    authorization TEXT,
    cause_code    TEXT
);
CREATE TABLE reservations (
    order_id INTEGER PRIMARY KEY REFERENCES orders (id),
    sku      TEXT NOT NULL REFERENCES stock (sku),
    qty      INTEGER NOT NULL CHECK (qty > 0),
    state    TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released'))
);
-- One row per cancelled order, written in the transaction that compensates it.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    INTEGER NOT NULL UNIQUE REFERENCES orders (id),
    scope       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    code        TEXT NOT NULL,
    origin      TEXT,
    detail      TEXT,
    record      TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
";

/// The code of a cause made from a database error.
pub const DB_ERROR: &str = "DB_ERROR";

/// The code of a reservation refused for lack of stock.
pub const INVENTORY_SHORTAGE: &str = "INVENTORY_SHORTAGE";

/// The shop's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// A cancelled order, as its compensation records it.
pub struct Cancelled {
    pub id: i64,
    pub sku: String,
    pub qty: u32,
    /// The order's scope path.
    pub scope: String,
    pub cause: Cause,
}

/// What compensating an order undid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compensated {
    /// Units put back into stock (0 if nothing was reserved).
    pub released: u32,
}

/// The database's view of a run, and whether its invariants hold.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Ledger {
    /// Orders completed.
    pub completed: u64,
    /// Orders cancelled.
    pub cancelled: u64,
    /// Orders still open (none after a run that ended normally or by an ordered shutdown).
    pub open: u64,
    /// Audit rows.
    pub audit_rows: u64,
    /// Every invariant that does not hold, in words; empty when all hold.
    pub violations: Vec<String>,
}

impl Store {
    /// Creates the database at `path` (replacing one left by an earlier run) with `stock`.
    pub fn create(path: &Path, stock: &[(&str, u32)]) -> Result<Store, rusqlite::Error> {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            // Absent is fine: the first run has nothing to replace.
            let _ = std::fs::remove_file(file);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        for (sku, units) in stock {
            conn.execute(
                "INSERT INTO stock (sku, initial, available) VALUES (?1, ?2, ?2)",
                (sku, units),
            )?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The *validate* step: the SKU exists and the quantity is sane; the order is recorded as
    /// open.
    ///
    /// # Cancel safety
    ///
    /// As every transaction here: dropping the future does not stop it (see `transaction`).
    pub async fn open_order(
        &self,
        scope: &Scope,
        id: i64,
        sku: &str,
        qty: u32,
    ) -> Result<(), Cause> {
        let sku = sku.to_owned();
        self.transaction(scope, move |tx| {
            let known: bool = tx
                .query_row("SELECT 1 FROM stock WHERE sku = ?1", [&sku], |_| Ok(true))
                .optional()
                .map_err(db_error)?
                .unwrap_or(false);
            if !known || qty == 0 {
                return Err(Cause::new("INVALID_ORDER").with_detail(format!(
                    "order {id}: {qty} x {sku:?} is not in the catalogue"
                )));
            }
            tx.execute(
                "INSERT INTO orders (id, sku, qty, state) VALUES (?1, ?2, ?3, 'open')",
                (id, &sku, qty),
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    /// Reserves the order's units, or fails with an [`INVENTORY_SHORTAGE`] cause saying what is
    /// left.
    ///
    /// # Cancel safety
    ///
    /// As every transaction here: dropping the future does not stop it (see `transaction`).
    pub async fn reserve(&self, scope: &Scope, id: i64) -> Result<(), Cause> {
        self.transaction(scope, move |tx| {
            let Some((sku, qty)) = open_order(tx, id)? else {
                return Err(closed(id));
            };
            let available: u32 = tx
                .query_row(
                    "SELECT available FROM stock WHERE sku = ?1",
                    [&sku],
                    |row| row.get(0),
                )
                .map_err(db_error)?;
            if available < qty {
                return Err(Cause::new(INVENTORY_SHORTAGE)
                    .with_detail(format!("{sku}: {available} left, {qty} wanted")));
            }
            tx.execute(
                "UPDATE stock SET available = available - ?2 WHERE sku = ?1",
                (&sku, qty),
            )
            .map_err(db_error)?;
            tx.execute(
                "INSERT INTO reservations (order_id, sku, qty, state) VALUES (?1, ?2, ?3, 'held')",
                (id, &sku, qty),
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    /// The *confirm* step: the reservation is committed (the units are sold) and the order
    /// completed with the payment's authorization.
    ///
    /// # Cancel safety
    ///
    /// As every transaction here: dropping the future does not stop it (see `transaction`).
    pub async fn confirm(
        &self,
        scope: &Scope,
        id: i64,
        authorization: String,
    ) -> Result<(), Cause> {
        self.transaction(scope, move |tx| {
            if open_order(tx, id)?.is_none() {
                return Err(closed(id));
            }
            let committed = tx
                .execute(
                    "UPDATE reservations SET state = 'committed' WHERE order_id = ?1 AND state = 'held'",
                    [id],
                )
                .map_err(db_error)?;
            if committed != 1 {
                return Err(Cause::new("NO_RESERVATION")
                    .with_detail(format!("order {id} has no held reservation to confirm")));
            }
            tx.execute(
                "UPDATE orders SET state = 'completed', authorization = ?2 WHERE id = ?1",
                (id, &authorization),
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    /// Compensation: in one transaction, puts a held reservation back into stock, closes the
    /// order as cancelled and writes its audit row with `cause`. An order that never reached
    /// the database (cancelled before its first transaction) is recorded as cancelled then, so
    /// that it has its audit row too. An order that is already closed (completed, or
    /// compensated) is left alone: `Ok(None)`.
    ///
    /// `scope` bounds the transaction: the compensation's own scope, not the cancelled order's.
    ///
    /// # Cancel safety
    ///
    /// As every transaction here: dropping the future does not stop it (see `transaction`).
    pub async fn compensate(
        &self,
        scope: &Scope,
        order: Cancelled,
    ) -> Result<Option<Compensated>, Cause> {
        let Cancelled {
            id,
            sku,
            qty,
            scope: order_scope,
            cause,
        } = order;
        self.transaction(scope, move |tx| {
            let state: Option<String> = tx
                .query_row("SELECT state FROM orders WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(db_error)?;
            match state.as_deref() {
                Some("open") => {}
                Some(_) => return Ok(None),
                None => {
                    tx.execute(
                        "INSERT INTO orders (id, sku, qty, state) VALUES (?1, ?2, ?3, 'open')",
                        (id, &sku, qty),
                    )
                    .map_err(db_error)?;
                }
            }
            let held: Option<(String, u32)> = tx
                .query_row(
                    "SELECT sku, qty FROM reservations WHERE order_id = ?1 AND state = 'held'",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(db_error)?;
            if let Some((sku, qty)) = &held {
                tx.execute(
                    "UPDATE stock SET available = available + ?2 WHERE sku = ?1",
                    (sku, qty),
                )
                .map_err(db_error)?;
                tx.execute(
                    "UPDATE reservations SET state = 'released' WHERE order_id = ?1",
                    [id],
                )
                .map_err(db_error)?;
            }
            tx.execute(
                "UPDATE orders SET state = 'cancelled', cause_code = ?2 WHERE id = ?1",
                (id, cause.code()),
            )
            .map_err(db_error)?;
            let record = serde_json::to_string(&cause)
                .map_err(|error| Cause::new(DB_ERROR).with_detail(error.to_string()))?;
            tx.execute(
                "INSERT INTO audit (order_id, scope, kind, code, origin, detail, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                (
                    id,
                    &order_scope,
                    cause.kind().as_str(),
                    cause.code(),
                    cause.origin(),
                    cause.detail(),
                    &record,
                ),
            )
            .map_err(db_error)?;
            Ok(Some(Compensated {
                released: held.map_or(0, |(_, qty)| qty),
            }))
        })
        .await
    }

    /// Checks the ledger's invariants, once no order is in flight:
    ///
    /// 1. for every SKU, available + held + committed units == initial stock;
    /// 2. no reservation is held for an order that is not open;
    /// 3. every cancelled order has exactly one audit row, and no other order has one;
    /// 4. every completed order has a committed reservation and an authorization;
    /// 5. no order is left open.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the check running to its end on the blocking pool; it
    /// changes nothing.
    pub async fn check(&self) -> Result<Ledger, rusqlite::Error> {
        let conn = self.conn.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let conn = lock(&conn);
            ledger(&conn)
        })
        .await;
        checked.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    }

    /// Runs `work` in a transaction bound to `scope` (see the module docs): `Err(cause)` with
    /// the scope's cause if it was cancelled before the commit, in which case nothing of `work`
    /// stays.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the transaction: it runs to its end on the blocking
    /// pool, and commits only if `scope` is still live then.
    async fn transaction<T, F>(&self, scope: &Scope, work: F) -> Result<T, Cause>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, Cause> + Send + 'static,
    {
        // The connection's interrupt handle, while this transaction holds the connection. It is
        // taken back before the connection is released, under this lock, so an interrupt never
        // reaches someone else's transaction.
        let armed: Arc<Mutex<Option<InterruptHandle>>> = Arc::default();
        let mut done = tokio::task::spawn_blocking({
            let (conn, scope, armed) = (self.conn.clone(), scope.clone(), armed.clone());
            move || {
                let mut conn = lock(&conn);
                scope.check()?;
                *lock(&armed) = Some(conn.get_interrupt_handle());
                let result = run(&mut conn, &scope, work);
                lock(&armed).take();
                result
            }
        });
        let done = tokio::select! {
            biased;
            done = &mut done => done,
            _ = scope.cancelled() => {
                // A no-op between statements: the check before the commit catches that case.
                if let Some(handle) = &*lock(&armed) {
                    handle.interrupt();
                }
                done.await
            }
        };
        done.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    }
}

/// One transaction: dropped (rolled back) on any error, committed only if `scope` is still live.
fn run<T>(
    conn: &mut Connection,
    scope: &Scope,
    work: impl FnOnce(&Transaction<'_>) -> Result<T, Cause>,
) -> Result<T, Cause> {
    let interrupted = |error: rusqlite::Error| match (error.sqlite_error_code(), scope.cause()) {
        (Some(ErrorCode::OperationInterrupted), Some(cause)) => cause,
        _ => db_error(error),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(interrupted)?;
    let value = work(&tx).map_err(|cause| scope.cause().unwrap_or(cause))?;
    scope.check()?;
    tx.commit().map_err(interrupted)?;
    Ok(value)
}

/// The SKU and quantity of order `id`, if it is open.
fn open_order(tx: &Transaction<'_>, id: i64) -> Result<Option<(String, u32)>, Cause> {
    tx.query_row(
        "SELECT sku, qty FROM orders WHERE id = ?1 AND state = 'open'",
        [id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .map_err(db_error)
}

fn closed(id: i64) -> Cause {
    Cause::new("ORDER_CLOSED").with_detail(format!("order {id} is no longer open"))
}

fn db_error(error: rusqlite::Error) -> Cause {
    Cause::new(DB_ERROR)
        .with_detail(error.to_string())
        .with_source(error)
}

fn ledger(conn: &Connection) -> Result<Ledger, rusqlite::Error> {
    let count = |sql: &str| {
        conn.query_row(sql, [], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    let mut ledger = Ledger {
        completed: count("SELECT count(*) FROM orders WHERE state = 'completed'")?,
        cancelled: count("SELECT count(*) FROM orders WHERE state = 'cancelled'")?,
        open: count("SELECT count(*) FROM orders WHERE state = 'open'")?,
        audit_rows: count("SELECT count(*) FROM audit")?,
        violations: Vec::new(),
    };
    let mut unbalanced = conn.prepare(
        "SELECT s.sku, s.initial, s.available,
                coalesce(sum(CASE r.state WHEN 'held' THEN r.qty END), 0),
                coalesce(sum(CASE r.state WHEN 'committed' THEN r.qty END), 0)
         FROM stock s LEFT JOIN reservations r ON r.sku = s.sku
         GROUP BY s.sku
         HAVING s.available
                + coalesce(sum(CASE r.state WHEN 'held' THEN r.qty END), 0)
                + coalesce(sum(CASE r.state WHEN 'committed' THEN r.qty END), 0) != s.initial",
    )?;
    let rows = unbalanced.query_map([], |row| {
        Ok(format!(
            "stock of {}: {} available + {} held + {} sold != {} initial",
            row.get::<_, String>(0)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, i64>(1)?,
        ))
    })?;
    for row in rows {
        ledger.violations.push(row?);
    }
    let checks = [
        (
            "SELECT count(*) FROM reservations r JOIN orders o ON o.id = r.order_id
             WHERE r.state = 'held' AND o.state != 'open'",
            "reservation(s) still held for a closed order",
        ),
        (
            "SELECT count(*) FROM orders o
             WHERE o.state = 'cancelled' AND (SELECT count(*) FROM audit a WHERE a.order_id = o.id) != 1",
            "cancelled order(s) without exactly one audit row",
        ),
        (
            "SELECT count(*) FROM audit a JOIN orders o ON o.id = a.order_id
             WHERE o.state != 'cancelled' OR a.code != o.cause_code",
            "audit row(s) of an order not cancelled, or with another cause",
        ),
        (
            "SELECT count(*) FROM orders WHERE state = 'open'",
            "order(s) left open, their reservations held",
        ),
        (
            "SELECT count(*) FROM orders o
             WHERE o.state = 'completed' AND (o.authorization IS NULL OR NOT EXISTS
                 (SELECT 1 FROM reservations r WHERE r.order_id = o.id AND r.state = 'committed'))",
            "completed order(s) without a committed reservation and an authorization",
        ),
    ];
    for (sql, what) in checks {
        let n = count(sql)?;
        if n > 0 {
            ledger.violations.push(format!("{n} {what}"));
        }
    }
    Ok(ledger)
}
