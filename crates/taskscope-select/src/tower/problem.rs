//! [`ProblemPolicy`]: a cause as an HTTP answer, an RFC 9457 `application/problem+json` body.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use taskscope::{Cause, CauseKind};

/// The status a request cancelled by its client (or its caller) is answered with: 499, the
/// "client closed request" of nginx, since HTTP has none.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// How an HTTP server answers a request its scope stopped: the status the cause's kind maps to,
/// and an RFC 9457 problem body carrying the cause, as gRPC's `ErrorInfo` carries it.
///
/// | cause kind | HTTP status |
/// |---|---|
/// | [`DeadlineExceeded`](CauseKind::DeadlineExceeded) | 504 Gateway Timeout |
/// | [`Explicit`](CauseKind::Explicit), [`Dropped`](CauseKind::Dropped) (the client went away, the caller cancelled) | 499 ([`CLIENT_CLOSED_REQUEST`]) |
/// | [`Shutdown`](CauseKind::Shutdown) | 503 Service Unavailable (retryable) |
/// | [`TaskPanicked`](CauseKind::TaskPanicked) | 500 Internal Server Error |
/// | [`TaskFailed`](CauseKind::TaskFailed) | [`failure`](ProblemPolicy::failure), 409 Conflict by default |
///
/// The body's members are RFC 9457's `type` (`about:blank`), `title` (the status's reason) and
/// `status`, and the cause's as extensions: `domain` (`taskscope`), `kind`, `code`, `origin`,
/// and `detail` only when [`expose_detail`](ProblemPolicy::expose_detail) says so (off by
/// default: a detail may quote a user's error or a path).
///
/// ```
/// use http::StatusCode;
/// use taskscope::{Cause, CauseKind};
/// use taskscope_select::tower::ProblemPolicy;
///
/// let answer = ProblemPolicy::default().response::<String>(&Cause::of_kind(CauseKind::DeadlineExceeded));
/// assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(answer.headers()["content-type"], "application/problem+json");
/// let body: serde_json::Value = serde_json::from_str(answer.body()).unwrap();
/// assert_eq!(body["kind"], "deadline_exceeded");
/// assert_eq!(body["code"], "deadline");
/// assert_eq!(body["status"], 504);
/// ```
#[derive(Clone, Debug)]
pub struct ProblemPolicy {
    failure: StatusCode,
    expose_detail: bool,
}

impl Default for ProblemPolicy {
    fn default() -> Self {
        ProblemPolicy {
            failure: StatusCode::CONFLICT,
            expose_detail: false,
        }
    }
}

impl ProblemPolicy {
    /// The status of a [`TaskFailed`](CauseKind::TaskFailed) cause: a task's own error, whose
    /// code the cause lends (`INVENTORY_SHORTAGE`). 409 Conflict by default.
    pub fn failure(mut self, status: StatusCode) -> Self {
        self.failure = status;
        self
    }

    /// Whether the cause's detail goes in the body. Off by default.
    pub fn expose_detail(mut self, expose: bool) -> Self {
        self.expose_detail = expose;
        self
    }

    /// The status `kind` maps to (see the table on [`ProblemPolicy`]).
    pub fn status(&self, kind: CauseKind) -> StatusCode {
        match kind {
            CauseKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            CauseKind::Explicit | CauseKind::Dropped => {
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).expect("499 is a valid status")
            }
            CauseKind::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            CauseKind::TaskPanicked => StatusCode::INTERNAL_SERVER_ERROR,
            CauseKind::TaskFailed => self.failure,
        }
    }

    /// The problem body of `cause`, as JSON text.
    pub fn body(&self, cause: &Cause) -> String {
        let status = self.status(cause.kind());
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Client Closed Request"),
            "status": status.as_u16(),
            "domain": "taskscope",
            "kind": cause.kind().as_str(),
            "code": cause.code(),
        });
        if let Some(origin) = cause.origin() {
            body["origin"] = origin.into();
        }
        if self.expose_detail
            && let Some(detail) = cause.detail()
        {
            body["detail"] = detail.into();
        }
        body.to_string()
    }

    /// `cause` as a response: its status, `content-type: application/problem+json`, and the
    /// problem body, in any body type made from a `String` (axum's `Body`, `String`,
    /// `http_body_util::Full`).
    pub fn response<B: From<String>>(&self, cause: &Cause) -> Response<B> {
        let mut response = Response::new(B::from(self.body(cause)));
        *response.status_mut() = self.status(cause.kind());
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}
