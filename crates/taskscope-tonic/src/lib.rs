//! taskscope causes across gRPC, on tonic.
//!
//! A server answers a call its scope stopped with the status the cause's kind maps to, and the
//! cause itself in the standard place: `grpc-status-details-bin`, a `google.rpc.Status` holding
//! an `ErrorInfo` whose `reason` is the cause's code, `domain` is `taskscope`, and `metadata`
//! holds its kind and origin ([`StatusPolicy`]). A caller turns the failed call's status back
//! into a cause that keeps the remote kind and code, with an origin naming the service and
//! method before the remote origin ([`remote_cause`]): so at the gateway, `cause.origin()` says
//! which service, which method and which scope set it.
//!
//! ```
//! use taskscope::{Cause, CauseKind};
//! use taskscope_tonic::{StatusPolicy, remote_cause};
//!
//! // In inventory: a reservation failed for lack of stock, in its request's scope.
//! let shortage = serde_json::from_value::<Cause>(serde_json::json!({
//!     "v": 1, "kind": "task_failed", "code": "INVENTORY_SHORTAGE",
//!     "origin": "inventory/request-3/reserve",
//! })).unwrap();
//! let status = StatusPolicy::default().status(&shortage);
//! assert_eq!(status.code(), tonic::Code::FailedPrecondition);
//!
//! // In orders, which called it.
//! let cause = remote_cause(&status, "/taskscope.demo.v1.Inventory/Reserve");
//! assert_eq!(cause.kind(), CauseKind::TaskFailed);
//! assert_eq!(cause.code(), "INVENTORY_SHORTAGE");
//! assert_eq!(
//!     cause.origin(),
//!     Some("taskscope.demo.v1.Inventory/Reserve > inventory/request-3/reserve"),
//! );
//! ```
//!
//! What arrives from the wire is input: codes, origins and details are checked and bounded
//! ([`remote_cause`]), and a cause's detail is sent only when the policy says so
//! ([`StatusPolicy::expose_detail`]).

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod client;
mod remote;
mod server;
mod span;
mod status;

pub use client::{CallFuture, CallScope, CallScopeLayer, with_scope};
pub use remote::{MAX_CODE, MAX_DETAIL, MAX_ORIGIN, call_cause, remote_cause};
pub use server::{Answer, AnswerLayer};
pub use span::{RpcSpan, RpcSpanLayer, SpanFuture, SpanKind};
pub use status::{DOMAIN, StatusPolicy, keys};
