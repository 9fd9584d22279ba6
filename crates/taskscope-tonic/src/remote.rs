//! A failed call's status as a cause: the remote cause when the status carries one, else one
//! made from the status code. What arrives from the wire is input: it is checked and bounded.

use taskscope::{Cause, CauseKind, Scope};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::status::{DOMAIN, keys};

/// The longest code kept from the wire, in bytes (`ErrorInfo` asks at most 63 characters).
pub const MAX_CODE: usize = 63;
/// The longest remote origin kept, in bytes; a longer one is dropped.
pub const MAX_ORIGIN: usize = 512;
/// The longest detail kept, in bytes; a longer one is cut at a character boundary.
pub const MAX_DETAIL: usize = 1024;

/// The cause a call to `method` (`/package.Service/Method`, or without the leading `/`) failed
/// with, from its `status`.
///
/// - When the status carries a taskscope `ErrorInfo` (domain [`DOMAIN`]), the remote cause's
///   kind and code are kept, and its origin is the method, then ` > `, then the remote origin:
///   `cause.origin()` tells which service, which method, and which scope over there set it
///   (`taskscope.demo.v1.Inventory/Reserve > inventory/request-3`).
/// - Otherwise the kind comes from the status code (`DEADLINE_EXCEEDED` → deadline,
///   `CANCELLED` → explicit, `UNAVAILABLE` → shutdown, anything else → task failed), the code
///   is the status code's name (`UNAVAILABLE`), and the origin is the method.
///
/// The detail is the `ErrorInfo`'s, else the status message, its control characters replaced
/// by `U+FFFD`. A code that is not 1 to
/// [`MAX_CODE`] bytes of ASCII letters, digits, `_`, `.` and `-` is replaced by the status
/// code's name; an unknown kind by the status code's; an origin over [`MAX_ORIGIN`] bytes or
/// with control characters is left out; a detail over [`MAX_DETAIL`] bytes is cut. Nothing
/// from the wire can make this panic.
///
/// ```
/// use taskscope::{Cause, CauseKind, Scope};
/// use taskscope_tonic::{StatusPolicy, remote_cause};
///
/// // What inventory answered...
/// let status = StatusPolicy::default().status(&Cause::of_kind(CauseKind::DeadlineExceeded));
/// // ...as the caller sees it.
/// let cause = remote_cause(&status, "/taskscope.demo.v1.Inventory/Reserve");
/// assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
/// assert_eq!(cause.code(), "deadline");
/// assert_eq!(cause.origin(), Some("taskscope.demo.v1.Inventory/Reserve"));
/// ```
pub fn remote_cause(status: &Status, method: &str) -> Cause {
    let method = method.strip_prefix('/').unwrap_or(method);
    let method = if is_origin(method) { method } else { "?" };
    let info = status
        .get_details_error_info()
        .filter(|info| info.domain == DOMAIN);
    let fallback_kind = kind_of(status.code());
    let (kind, code, origin, detail) = match &info {
        Some(info) => {
            let kind = info
                .metadata
                .get(keys::KIND)
                .and_then(|kind| CauseKind::from_name(kind))
                .unwrap_or(fallback_kind);
            let code = Some(info.reason.as_str()).filter(|code| is_code(code));
            let origin = match info.metadata.get(keys::ORIGIN) {
                Some(remote) if is_origin(remote) => format!("{method} > {remote}"),
                _ => method.to_owned(),
            };
            let detail = info.metadata.get(keys::DETAIL).map(String::as_str);
            (kind, code, origin, detail)
        }
        None => (fallback_kind, None, method.to_owned(), None),
    };
    let code = code.unwrap_or_else(|| code_name(status.code()));
    let detail = detail
        .or(Some(status.message()))
        .filter(|detail| !detail.is_empty())
        .map(|detail| printable(cut(detail, MAX_DETAIL)));
    let record = serde_json::json!({
        "v": 1,
        "kind": kind.as_str(),
        "code": code,
        "origin": origin,
        "detail": detail,
    });
    // Every field was checked above, so the record decodes; should it not, the kind alone is
    // still the truth.
    serde_json::from_value(record).unwrap_or_else(|_| Cause::of_kind(kind))
}

/// The cause a call made under `scope` failed with: the scope's own, if it is cancelled (the
/// call was cut short here, by [`CallScopeLayer`](crate::CallScopeLayer), or the answer came
/// too late to matter), else the remote one ([`remote_cause`]).
///
/// ```
/// use taskscope::{Cause, Scope};
/// use taskscope_tonic::call_cause;
///
/// let scope = Scope::builder().name("orders").build();
/// let status = tonic::Status::unavailable("inventory is restarting");
/// assert_eq!(call_cause(&scope, &status, "/x.Inventory/Reserve").code(), "UNAVAILABLE");
/// scope.cancel(Cause::new("USER_CANCELLED"));
/// assert_eq!(call_cause(&scope, &status, "/x.Inventory/Reserve").code(), "USER_CANCELLED");
/// ```
pub fn call_cause(scope: &Scope, status: &Status, method: &str) -> Cause {
    scope
        .cause()
        .unwrap_or_else(|| remote_cause(status, method))
}

/// The kind a status code stands for, when the status carries no cause.
fn kind_of(code: Code) -> CauseKind {
    match code {
        Code::DeadlineExceeded => CauseKind::DeadlineExceeded,
        Code::Cancelled => CauseKind::Explicit,
        Code::Unavailable => CauseKind::Shutdown,
        _ => CauseKind::TaskFailed,
    }
}

/// A status code's name, as gRPC spells it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether `code` may be a cause's code: 1 to [`MAX_CODE`] bytes of ASCII letters, digits,
/// `_`, `.` and `-`.
pub(crate) fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_CODE
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `origin` may be kept: 1 to [`MAX_ORIGIN`] bytes, no control character.
fn is_origin(origin: &str) -> bool {
    !origin.is_empty() && origin.len() <= MAX_ORIGIN && !origin.chars().any(char::is_control)
}

/// `text` with its control characters (line breaks, escapes) replaced by `U+FFFD`, so that a
/// peer's detail cannot forge a log line or colour a terminal wherever it is written.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// `text`, cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn a_detail_is_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
    }
}
