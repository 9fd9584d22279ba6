//! How a task's end is classified: the cause a failure cancels its group with, whether an
//! error only echoes its scope's cancellation, and a panic's message.

use std::any::Any;
use std::error::Error;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::Arc;

use super::report::Failure;
use crate::cause::Payload;
use crate::{BoxError, Cause, CauseKind, TaskError};

/// The cause a failing task cancels its group with.
pub(crate) fn failure_cause<E>(name: &str, failure: &Failure<E>) -> Cause
where
    E: TaskError,
{
    match failure {
        Failure::Error(error) => {
            let mut cause = Cause::of_kind(CauseKind::TaskFailed);
            // One string, written once.
            let mut detail = format!("task '{name}' failed: ");
            // A task that fails with a cause of its own (`Err(Cause::new("SHORTAGE"))`, or an
            // error carrying one) lends the group its code.
            if let Some(own) = error.as_cause() {
                cause = cause.with_code_of(own);
            }
            // The detail is the error's own words: the cause's, when the error is that cause.
            let written = match error_view(&**error).and_then(|e| e.downcast_ref::<Cause>()) {
                Some(own) => detail.write_str(own.detail().unwrap_or(own.code())),
                None => write!(detail, "{error}"),
            };
            written.expect("writing to a String cannot fail");
            cause
                .with_detail(detail)
                .with_payload(Arc::new(FailurePayload(error.clone())))
        }
        Failure::Panic(message) => Cause::of_kind(CauseKind::TaskPanicked)
            .with_detail(format!("task '{name}' panicked: {message}")),
    }
}

/// A task's error inside the cause it cancelled its group with.
struct FailurePayload<E>(Arc<E>);

impl<E: fmt::Debug> fmt::Debug for FailurePayload<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Display> fmt::Display for FailurePayload<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E> Payload for FailurePayload<E>
where
    E: TaskError,
{
    fn as_any(&self) -> &dyn Any {
        &*self.0
    }

    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        error_view(&*self.0)
    }
}

/// `error` as an error object, when its type allows: a [`BoxError`], a [`Cause`] or an
/// [`io::Error`].
fn error_view<E: 'static>(error: &E) -> Option<&(dyn Error + 'static)> {
    let any: &dyn Any = error;
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        return Some(&**boxed);
    }
    if let Some(error) = any.downcast_ref::<io::Error>() {
        return Some(error);
    }
    any.downcast_ref::<Cause>()
        .map(|cause| cause as &(dyn Error + 'static))
}

/// Whether `error` only echoes `cause`: it is, or carries, that very cancellation.
pub(super) fn echoes<E: TaskError>(error: &E, cause: &Cause) -> bool {
    error.as_cause().is_some_and(|own| own.ptr_eq(cause))
}

/// The message of a panic payload, as the standard panic hook prints it.
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}
