//! The auto traits of the public types: observers are shared across threads and survive
//! panics elsewhere.

use std::panic::{RefUnwindSafe, UnwindSafe};

use taskscope_trace::{
    AuditEvent, AuditLog, AuditParseError, AuditRecord, AuditTask, TraceObserver,
};

fn send_sync_unpin<T: Send + Sync + Unpin + 'static>() {}
fn unwind_safe<T: UnwindSafe + RefUnwindSafe>() {}

#[test]
fn public_types_are_send_sync_and_unpin() {
    send_sync_unpin::<TraceObserver>();
    send_sync_unpin::<AuditLog>();
    send_sync_unpin::<AuditRecord>();
    send_sync_unpin::<AuditTask>();
    send_sync_unpin::<AuditEvent>();
    send_sync_unpin::<AuditParseError>();
}

#[test]
fn records_are_unwind_safe() {
    unwind_safe::<AuditRecord>();
    unwind_safe::<AuditTask>();
    unwind_safe::<AuditEvent>();
    unwind_safe::<AuditParseError>();
}

#[test]
fn the_parse_error_is_a_static_error() {
    fn error<E: std::error::Error + Send + Sync + 'static>() {}
    error::<AuditParseError>();
}
