//! Instrumentation for [`taskscope`]: cancellations as [`tracing`] events with stable names, so
//! an on-call engineer can read *why* work was cancelled from the logs with no extra code in the
//! tasks.
//!
//! ```
//! use taskscope::{Cause, Scope};
//!
//! let orders = Scope::builder().name("orders").build();
//! let order = orders.child_builder().name("order-17").build();
//! let _watch = taskscope_trace::trace_cancellation(&order);
//! // Emits one `taskscope::cancel` event: scope="orders/order-17", cause.kind="explicit",
//! // cause.code="INVENTORY_SHORTAGE", cause.detail="sku-42", cause.origin="orders/order-17".
//! // (The crate's tests assert these fields through a capturing subscriber.)
//! order.cancel(Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42"));
//! ```
//!
//! # Event schema
//!
//! The target and field names are public API: dashboards and alerts may rely on them.
//!
//! | target | level | message | fields |
//! |---|---|---|---|
//! | `taskscope::cancel` | `WARN` for task failures and panics, `INFO` otherwise | `scope cancelled` | `scope`, `cause.kind`, `cause.code`, `cause.detail` (if any), `cause.origin` (if any), `cause.location` (if any) |
//!
//! `cause.kind` is [`CauseKind::as_str`](taskscope::CauseKind::as_str): one of `explicit`, `deadline_exceeded`, `task_failed`, `task_panicked`,
//! `shutdown`, `dropped`. Use `cause.code`, never `cause.detail`, as a metric label.
//!
//! What this crate holds today: the cancel event. Task lifecycle events, spans, metrics and
//! audit records come next.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod cancel;

pub use cancel::{CANCEL_TARGET, record_cancel, trace_cancellation};
