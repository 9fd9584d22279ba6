//! Auto traits of public types, so a refactor cannot silently drop one (tokio #5424).

use std::panic::{RefUnwindSafe, UnwindSafe};

use taskscope::{CallSite, Cause, CauseKind, DropGuard, OnCancel, Scope, ScopeBuilder, WeakScope};

use taskscope::futures::{Cancelled, CancelledOwned};

fn send_sync_unpin_unwind_safe<T: Send + Sync + Unpin + UnwindSafe + RefUnwindSafe>() {}

#[test]
fn public_types_are_send_sync_unpin_and_unwind_safe() {
    send_sync_unpin_unwind_safe::<Scope>();
    send_sync_unpin_unwind_safe::<Cause>();
    send_sync_unpin_unwind_safe::<CauseKind>();
    send_sync_unpin_unwind_safe::<CallSite>();
    send_sync_unpin_unwind_safe::<OnCancel>();
    send_sync_unpin_unwind_safe::<WeakScope>();
    send_sync_unpin_unwind_safe::<DropGuard>();
    send_sync_unpin_unwind_safe::<ScopeBuilder<'static>>();
    send_sync_unpin_unwind_safe::<taskscope::ScopePath<'static>>();
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

#[test]
fn group_types_are_send_sync_and_unpin() {
    use taskscope::futures::{Join, JoinNext};
    use taskscope::{
        BoxError, GroupError, GroupSnapshot, TaskExit, TaskGroup, TaskGroupBuilder, TaskId,
        TaskInfo, TrySpawnError,
    };
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    // Not unwind-safe: a group joining holds a `tokio::time::Sleep`, which is not.
    send_sync_unpin::<TaskGroup<u32>>();
    send_sync_unpin::<Join<u32, BoxError>>();
    send_sync_unpin::<JoinNext<'static, u32, BoxError>>();
    send_sync_unpin::<TaskGroupBuilder<'static, u32, BoxError>>();
    send_sync_unpin_unwind_safe::<TaskId>();
    send_sync_unpin_unwind_safe::<TaskInfo>();
    send_sync_unpin_unwind_safe::<GroupSnapshot>();
    send_sync_unpin_unwind_safe::<TrySpawnError<fn()>>();
    send_sync_unpin::<TaskExit<u32, BoxError>>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<GroupError<BoxError>>();
    error::<GroupError<std::io::Error>>();
}

#[test]
fn supervisor_types_are_send_sync_and_unpin() {
    use taskscope::futures::{Stopped, SupervisorJoin};
    use taskscope::{
        Backoff, BoxError, ChildSnapshot, ChildSpec, ConfigError, Supervisor, SupervisorBuilder,
        SupervisorError, SupervisorHandle, SupervisorSnapshot,
    };
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    send_sync_unpin::<Supervisor>();
    send_sync_unpin::<SupervisorHandle>();
    send_sync_unpin::<SupervisorJoin<BoxError>>();
    send_sync_unpin::<Stopped>();
    send_sync_unpin::<SupervisorBuilder>();
    send_sync_unpin::<ChildSpec>();
    send_sync_unpin_unwind_safe::<Backoff>();
    send_sync_unpin_unwind_safe::<SupervisorSnapshot>();
    send_sync_unpin_unwind_safe::<ChildSnapshot>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<SupervisorError<BoxError>>();
    error::<ConfigError>();
}

#[test]
fn runtime_change_types_are_send_sync_and_unpin() {
    use taskscope::futures::{ChildRequest, NextChange};
    use taskscope::{ChildRequestError, ChildStarter, SupervisorChanges};
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    send_sync_unpin::<ChildStarter>();
    // Whatever the error type: the starter holds none.
    send_sync_unpin::<ChildStarter<std::rc::Rc<()>>>();
    send_sync_unpin::<ChildRequest>();
    send_sync_unpin::<SupervisorChanges>();
    send_sync_unpin::<NextChange<'static>>();
    send_sync_unpin_unwind_safe::<ChildRequestError>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<ChildRequestError>();
}
