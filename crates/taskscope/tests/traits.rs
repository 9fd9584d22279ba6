//! Auto traits of public types, so a refactor cannot silently drop one (tokio #5424).

use std::panic::{RefUnwindSafe, UnwindSafe};

use taskscope::{
    CallSite, Cancelled, CancelledOwned, Cause, CauseKind, OnCancel, Scope, ScopeBuilder, WeakScope,
};

fn send_sync_unpin_unwind_safe<T: Send + Sync + Unpin + UnwindSafe + RefUnwindSafe>() {}

#[test]
fn public_types_are_send_sync_unpin_and_unwind_safe() {
    send_sync_unpin_unwind_safe::<Scope>();
    send_sync_unpin_unwind_safe::<Cause>();
    send_sync_unpin_unwind_safe::<CauseKind>();
    send_sync_unpin_unwind_safe::<CallSite>();
    send_sync_unpin_unwind_safe::<OnCancel>();
    send_sync_unpin_unwind_safe::<WeakScope>();
    send_sync_unpin_unwind_safe::<ScopeBuilder<'static>>();
}

#[test]
fn futures_are_send_sync_and_unpin() {
    // Not unwind-safe: they may hold a `tokio::time::Sleep`, which is not.
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    send_sync_unpin::<Cancelled<'static>>();
    send_sync_unpin::<CancelledOwned>();
}

#[test]
fn cause_is_a_static_error() {
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<Cause>();
}
