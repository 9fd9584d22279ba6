//! The `taskscope::cancel` event.

use taskscope::{Cause, CauseKind, OnCancel, Scope};
use tracing::Level;

/// The `target` of every cancellation event.
pub const CANCEL_TARGET: &str = "taskscope::cancel";

/// Emits the `taskscope::cancel` event for a scope at `scope_path` cancelled with `cause`
/// (schema in the [crate docs](crate#event-schema)).
pub fn record_cancel(scope_path: &str, cause: &Cause) {
    // `event!` needs a constant level and target, hence the two arms.
    macro_rules! cancel_event {
        ($level:expr) => {
            tracing::event!(
                target: CANCEL_TARGET,
                $level,
                scope = scope_path,
                cause.kind = cause.kind().as_str(),
                cause.code = cause.code(),
                cause.detail = cause.detail(),
                cause.origin = cause.origin(),
                cause.location = cause.location().map(tracing::field::display),
                "scope cancelled"
            )
        };
    }
    match cause.kind() {
        CauseKind::TaskFailed | CauseKind::TaskPanicked => cancel_event!(Level::WARN),
        _ => cancel_event!(Level::INFO),
    }
}

/// Emits the `taskscope::cancel` event when `scope` is cancelled, on the cancelling thread
/// (at once if it already is). Spawns nothing; [`OnCancel::stop`] removes it.
pub fn trace_cancellation(scope: &Scope) -> OnCancel {
    let path = scope.path().to_string();
    scope.on_cancel(move |cause| record_cancel(&path, cause))
}
