//! Cancel scopes for tokio that know *why* they were cancelled.
//!
//! A [`Scope`] is a node of a cancellation tree. Cancelling it cancels its whole subtree with a
//! structured [`Cause`]: what happened ([`CauseKind`]), a stable code for metrics, human detail,
//! optionally the user's own error, and where and when it was set. The first cause to reach a
//! scope wins; deadlines are inherited as the earliest, cost no background task, and are ordered
//! by time, not by when someone looked.
//!
//! ```
//! use std::time::Duration;
//! use taskscope::{Cause, CauseKind, Scope};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let orders = Scope::builder().name("orders").build();
//! let order = orders.child_builder().name("order-17").timeout(Duration::from_secs(5)).build();
//! let reserve = order.child_builder().name("reserve").build();
//!
//! let worker = tokio::spawn({
//!     let reserve = reserve.clone();
//!     async move { reserve.cancelled().await }
//! });
//! order.cancel(Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42: 2 left, 5 wanted"));
//!
//! let cause = worker.await.unwrap();
//! assert_eq!(cause.kind(), CauseKind::Explicit);
//! assert_eq!(cause.code(), "INVENTORY_SHORTAGE");
//! assert_eq!(cause.origin(), Some("orders/order-17"));
//! assert!(!orders.is_cancelled());
//! # }
//! ```
//!
//! A [`TaskGroup`] runs tasks under one scope, errgroup-style: each task gets a named child
//! scope, the first failure cancels the rest with a cause that names the failing task, and
//! [`join`](TaskGroup::join) returns every value or a [`GroupError`] saying why the group stopped:
//! the first failure or the cause, later failures, and the tasks cancelled or aborted after the
//! shutdown grace, by name and spawn location.
//!
//! A [`Supervisor`] keeps long-running children up, OTP-style: it restarts them by their
//! [`Restart`] kind and its [`Strategy`], after a [`Backoff`], escalates with a cause naming the
//! child when restarts come too often or a failure cannot be retried, never restarts a child
//! stopped by a cancellation, and shuts down in reverse start order, each child told the cause
//! and given its grace. [`snapshot`](Supervisor::snapshot) shows the live tree, and
//! [`changes`](Supervisor::changes) streams it as it changes; children can be started,
//! terminated, restarted and deleted at runtime ([`Supervisor::start_child`]).
//!
//! The semantics, including which cause a scope reports in every ordering of events, are in
//! the concepts guide (`docs/concepts.md` in the repository).
//!
//! # Features
//!
//! - `serde`: `Cause` serialises to, and decodes from, a stable versioned record (fields `v`,
//!   `kind`, `code`, `detail`, `origin`, `at_unix_us`, `location`, `source`) for audit logs and
//!   for crossing process boundaries. Decoding malformed input is an error, never a panic.
//!   [`SupervisorSnapshot`] serialises too.
//! - `anyhow`: `anyhow::Error` is a [`TaskError`], its cause found in its chain.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

// Layers, bottom up; a module imports from its own layer or below:
// 1. `sync`, `slab`, `text`, `path`, `task`: locks, storage, names, task identities;
// 2. `cause`, `task_error`: why a scope was cancelled, and the errors that carry it;
// 3. `node`, `observe`, `scope`, `cancelled`, `on_cancel`: the tree and its public handles.
//    The one layer with edges both ways: a node stores and calls its `Observer`, whose events
//    hand out the `Scope` that wraps a node; `Scope` returns the futures that wait on it;
// 4. `group`, then `supervisor` (built on `group`), reporting to `observe`.
mod cancelled;
mod cause;
mod group;
mod node;
pub mod observe;
mod on_cancel;
mod path;
mod scope;
mod slab;
mod supervisor;
mod sync;
mod task;
mod task_error;
mod text;

pub use cause::{CallSite, Cause, CauseKind};
pub use group::{
    DEFAULT_GRACE, Failure, GroupError, GroupSnapshot, Outcome, Spawner, TaskExit, TaskFailure,
    TaskGroup, TaskGroupBuilder, TaskSnapshot, TaskState, TrySpawnError,
};
pub use observe::TaskOutcome;
pub use on_cancel::OnCancel;
pub use scope::{DropGuard, Scope, ScopeBuilder, ScopePath, WeakScope};
pub use supervisor::{
    Backoff, ChildRequestError, ChildSnapshot, ChildSpec, ChildStarter, ChildState, ConfigError,
    DEFAULT_INTENSITY, Delays, Restart, Strategy, Supervisor, SupervisorBuilder, SupervisorChanges,
    SupervisorError, SupervisorHandle, SupervisorSnapshot, SupervisorState,
};
pub use task::{TaskId, TaskInfo};
pub use task_error::{BoxError, TaskError};

/// The futures taskscope's async methods return, by name, for a struct that holds one. Each
/// says its cancel safety.
pub mod futures {
    pub use crate::cancelled::{Cancelled, CancelledOwned};
    pub use crate::group::{Join, JoinNext};
    pub use crate::supervisor::{ChildRequest, NextChange, Stopped, SupervisorJoin};
}

// The code of the README is tested as doctests (the guides, in taskscope-trace).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
