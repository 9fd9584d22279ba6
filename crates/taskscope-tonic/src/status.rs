//! A cause as a gRPC status: the code its kind maps to, and the cause itself in the standard
//! place, a `google.rpc.Status` in `grpc-status-details-bin` holding an `ErrorInfo`.

use std::collections::HashMap;

use taskscope::{Cause, CauseKind};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` domain of a taskscope cause.
pub const DOMAIN: &str = "taskscope";

/// The `ErrorInfo` metadata keys a cause travels with.
pub mod keys {
    /// The cause's kind, as [`CauseKind::as_str`](taskscope::CauseKind::as_str) spells it.
    pub const KIND: &str = "kind";
    /// Where it was set: the scope path on the side that set it, after the services it came
    /// through (`taskscope.demo.v1.Inventory/Reserve > inventory/request-3`).
    pub const ORIGIN: &str = "origin";
    /// Its human detail; sent only when the policy exposes it.
    pub const DETAIL: &str = "detail";
}

/// How a server answers with a cause: which status code a failure gets, and whether a cause's
/// detail goes to the caller.
///
/// | cause kind | gRPC status |
/// |---|---|
/// | [`DeadlineExceeded`](CauseKind::DeadlineExceeded) | `DEADLINE_EXCEEDED` |
/// | [`Explicit`](CauseKind::Explicit), [`Dropped`](CauseKind::Dropped) (the client went away, the caller cancelled) | `CANCELLED` |
/// | [`Shutdown`](CauseKind::Shutdown) | `UNAVAILABLE` (retryable) |
/// | [`TaskPanicked`](CauseKind::TaskPanicked) | `INTERNAL` |
/// | [`TaskFailed`](CauseKind::TaskFailed) | [`failure`](StatusPolicy::failure), `FAILED_PRECONDITION` by default |
///
/// The status's message is the cause's kind and code (`task_failed: INVENTORY_SHORTAGE`), and
/// its `ErrorInfo` carries the code as `reason`, [`DOMAIN`] as `domain`, and the kind and origin
/// in `metadata`. The detail (which may hold a user's error text) is left out unless
/// [`expose_detail`](StatusPolicy::expose_detail) says otherwise: the default suits callers
/// that are not trusted.
///
/// ```
/// use taskscope::Cause;
/// use taskscope_tonic::StatusPolicy;
/// use tonic::Code;
///
/// let cause = Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42: 2 left, 5 wanted");
/// let status = StatusPolicy::default().status(&cause);
/// assert_eq!(status.code(), Code::Cancelled); // an explicit cancel
/// assert_eq!(status.message(), "explicit: INVENTORY_SHORTAGE");
/// ```
#[derive(Clone, Debug)]
pub struct StatusPolicy {
    failure: Code,
    expose_detail: bool,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        StatusPolicy {
            failure: Code::FailedPrecondition,
            expose_detail: false,
        }
    }
}

impl StatusPolicy {
    /// The status code of a [`TaskFailed`](CauseKind::TaskFailed) cause: a task's own error,
    /// whose code the cause lends (`INVENTORY_SHORTAGE`). `FAILED_PRECONDITION` by default.
    pub fn failure(mut self, code: Code) -> Self {
        self.failure = code;
        self
    }

    /// Whether the cause's detail goes to the caller, in the message and the `ErrorInfo`. Off
    /// by default: a detail may quote a user's error, a database's message, a file path.
    pub fn expose_detail(mut self, expose: bool) -> Self {
        self.expose_detail = expose;
        self
    }

    /// The status code `kind` maps to (see the table on [`StatusPolicy`]).
    pub fn code(&self, kind: CauseKind) -> Code {
        match kind {
            CauseKind::DeadlineExceeded => Code::DeadlineExceeded,
            CauseKind::Explicit | CauseKind::Dropped => Code::Cancelled,
            CauseKind::Shutdown => Code::Unavailable,
            CauseKind::TaskPanicked => Code::Internal,
            CauseKind::TaskFailed => self.failure,
        }
    }

    /// `cause` as a status, with its `ErrorInfo`.
    pub fn status(&self, cause: &Cause) -> Status {
        let mut message = format!("{}: {}", cause.kind(), cause.code());
        let mut metadata = HashMap::new();
        metadata.insert(keys::KIND.to_owned(), cause.kind().as_str().to_owned());
        if let Some(origin) = cause.origin() {
            metadata.insert(keys::ORIGIN.to_owned(), origin.to_owned());
        }
        if self.expose_detail
            && let Some(detail) = cause.detail()
        {
            message.push_str(": ");
            message.push_str(detail);
            metadata.insert(keys::DETAIL.to_owned(), detail.to_owned());
        }
        let details = ErrorDetails::with_error_info(cause.code(), DOMAIN, metadata);
        Status::with_error_details(self.code(cause.kind()), message, details)
    }
}
