//! Auto traits of public types, so a refactor cannot silently drop one (tokio #5424).

use std::future::Ready;

use taskscope_select::{OrCancel, OrCancelOwned, UntilCancelled, UntilCancelledOwned};

fn send_sync_unpin<T: Send + Sync + Unpin>() {}

type Items = futures::stream::Iter<std::vec::IntoIter<u8>>;

#[test]
fn adapters_are_send_sync_and_unpin_when_what_they_wrap_is() {
    send_sync_unpin::<OrCancel<'static, Ready<u8>>>();
    send_sync_unpin::<OrCancelOwned<Ready<u8>>>();
    send_sync_unpin::<UntilCancelled<'static, Items>>();
    send_sync_unpin::<UntilCancelledOwned<Items>>();
}

#[cfg(all(unix, feature = "signal"))]
#[test]
fn signal_types_are_send_sync_and_unpin() {
    use taskscope_select::signal::{ShutdownOnSignals, Signal, Signals};
    send_sync_unpin::<Signal>();
    send_sync_unpin::<Signals>();
    send_sync_unpin::<ShutdownOnSignals>();
}

#[cfg(feature = "tower")]
#[test]
fn tower_types_are_send_sync_and_unpin() {
    use taskscope_select::tower::{
        GracefulShutdown, InFlightRequest, ParseTimeoutError, RequestScope, RequestScopeLayer,
        ResponseFuture, ShutdownReport, ShutdownSignal,
    };
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync_unpin::<RequestScopeLayer>();
    send_sync_unpin::<RequestScope<()>>();
    send_sync_unpin::<ResponseFuture<Ready<u8>>>();
    send_sync_unpin::<GracefulShutdown>();
    send_sync_unpin::<ShutdownSignal>();
    send_sync_unpin::<ShutdownReport>();
    send_sync_unpin::<InFlightRequest>();
    error::<ParseTimeoutError>();
}
