//! What the service tests watch a server's scopes through: an `Observer` on its root that sends
//! every task start, scope cancellation and task end to the test as it happens. Included by
//! `inventory_service.rs` and `three_services.rs`.

use std::sync::Arc;
use std::time::Duration;

use taskscope::Cause;
use taskscope::observe::{
    Attachment, Observer, ScopeCancelled, TaskFinished, TaskOutcome, TaskStarted,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long any one step may take before a test fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(5);

/// What a service's scopes went through.
#[derive(Debug)]
pub enum Seen {
    /// A task started, with its scope's path.
    Started(String),
    /// A scope was cancelled (not each descendant it reached): its path, and the cause.
    Cancelled(String, Cause),
    /// A task ended: its group's path and its name, how, and its scope's cause if any.
    Finished(String, TaskOutcome, Option<Cause>),
}

/// Sends what it sees to the test.
pub struct Watch(pub mpsc::UnboundedSender<(Instant, Seen)>);

impl Observer for Watch {
    fn task_started(&self, event: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        let _ = self.0.send((
            Instant::now(),
            Seen::Started(event.scope.path().to_string()),
        ));
        None
    }

    fn scope_cancelled(&self, event: &ScopeCancelled<'_>) {
        let seen = Seen::Cancelled(event.scope.to_string(), event.cause.clone());
        let _ = self.0.send((Instant::now(), seen));
    }

    fn task_finished(&self, event: &TaskFinished<'_>) {
        let task = format!("{}/{}", event.group.path(), event.task.name());
        let seen = Seen::Finished(task, event.outcome, event.cause.cloned());
        let _ = self.0.send((Instant::now(), seen));
    }
}
