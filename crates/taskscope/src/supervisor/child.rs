//! One child of a supervisor: its state from one run to the next, and what a snapshot shows of
//! it.
//!
//! A [`Child`] lives in the supervisor's [`Tree`](super::tree::Tree), behind the lock that
//! snapshots read, and the runner changes it there: a snapshot is derived from the very state
//! the runner works with, never from a copy of it. What a child is made of (its factory, its
//! restart rules) is its [`ChildSpec`](super::ChildSpec), which the runner keeps.
//!
//! The invariants cited here are the runner's (`runner.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::children::Reply;
use super::failure::LastFailure;
use super::snapshot::{ChildSnapshot, ChildState};
use super::spec::Nested;
use crate::path::Name;
use crate::{Cause, Scope, TaskId};

/// One child, as the runner drives it and as snapshots show it.
pub(super) struct Child {
    pub(super) name: Name,
    /// Where the child publishes its latest run, if it is a nested supervisor.
    pub(super) nested: Option<Nested>,
    /// Changed only through [`Tree::set_run`](super::tree::Tree::set_run) (invariant 3).
    pub(super) run: Run,
    /// How many times it was restarted.
    pub(super) restarts: u32,
    /// Consecutive restarts, for the backoff: reset by a run that lasted long enough.
    pub(super) attempts: u32,
    pub(super) last_failure: Option<Arc<dyn LastFailure>>,
    pub(super) last_cause: Option<LastCause>,
    /// Set while it is being terminated: its run ends for good, and the handles that asked
    /// are answered when it does.
    pub(super) terminate: Option<Terminate>,
}

/// A termination asked for by a handle (`terminate_child`), pending until the child's run ends.
pub(super) struct Terminate {
    /// What the child is told, if it is stopped for it.
    pub(super) cause: Cause,
    /// Who is waiting for it; answered after unlocking (invariant 2).
    pub(super) replies: Vec<Reply>,
}

/// A running task's slab key in the group, and its scope.
pub(super) type Task = (usize, Scope);

/// Where a child is between its runs.
pub(super) enum Run {
    /// Its task runs.
    Running {
        id: TaskId,
        /// The task's slab key and scope; `None` if the group recorded it as cancelled, or
        /// once the runner has taken them to stop it or to read why it returned.
        task: Option<Task>,
        since: Instant,
    },
    /// Its scope is cancelled; waiting for its task to return.
    Stopping {
        id: TaskId,
        key: Option<usize>,
        since: Instant,
    },
    /// Backing off before a one-for-one restart at `at`; `ticket` tells its timer from stale
    /// ones.
    Waiting { ticket: u64, at: Instant },
    /// Stopped, to restart with its siblings (the runner's plan) at `at`; `None` while
    /// siblings are still stopping.
    Held { at: Option<Instant> },
    /// Not running, and not to restart: not started yet (`Cancelled` until it starts; it never
    /// does if the supervisor is cancelled first), or ended for good, or for the instant
    /// between its end and its restart.
    Ended(ChildState),
}

impl Run {
    /// The state a snapshot shows of this run.
    pub(super) fn state(&self) -> ChildState {
        match self {
            Run::Running { .. } => ChildState::Running,
            Run::Stopping { .. } => ChildState::Stopping,
            Run::Waiting { .. } | Run::Held { .. } => ChildState::Restarting,
            Run::Ended(state) => *state,
        }
    }

    /// The task of this run that the group has not reported yet.
    pub(super) fn task(&self) -> Option<TaskId> {
        match self {
            Run::Running { id, .. } | Run::Stopping { id, .. } => Some(*id),
            Run::Waiting { .. } | Run::Held { .. } | Run::Ended(_) => None,
        }
    }
}

/// The cause of a child's last stop.
#[derive(Clone)]
pub(super) enum LastCause {
    /// The cancellation or shutdown that stopped it.
    Given(Cause),
    /// The cause its failure made, made when first read.
    Of(Arc<dyn LastFailure>),
}

impl Child {
    pub(super) fn new(name: Name, nested: Option<Nested>) -> Child {
        Child {
            name,
            nested,
            run: Run::Ended(ChildState::Cancelled),
            restarts: 0,
            attempts: 0,
            last_failure: None,
            last_cause: None,
            terminate: None,
        }
    }

    /// This child's snapshot at `now`, but for its last failure and a last cause made by it,
    /// which are made after the lock is released (invariant 2).
    pub(super) fn snapshot(&self, now: Instant) -> ChildSnapshot {
        let since = |since: &Instant| Some(now.saturating_duration_since(*since));
        let until = |at: &Instant| Some(at.saturating_duration_since(now));
        let (state, uptime, restart_in): (_, _, Option<Duration>) = match &self.run {
            Run::Running { since: at, .. } => (ChildState::Running, since(at), None),
            Run::Stopping { since: at, .. } => (ChildState::Stopping, since(at), None),
            Run::Waiting { at, .. } => (ChildState::Restarting, None, until(at)),
            Run::Held { at } => (ChildState::Restarting, None, at.as_ref().and_then(until)),
            Run::Ended(state) => (*state, None, None),
        };
        ChildSnapshot {
            name: self.name.to_string(),
            state,
            restarts: self.restarts,
            uptime,
            restart_in,
            last_failure: None,
            last_cause: match &self.last_cause {
                Some(LastCause::Given(cause)) => Some(cause.clone()),
                Some(LastCause::Of(_)) | None => None,
            },
            supervisor: None,
        }
    }

    /// Records how its run ended; returns what it replaced, to be dropped after unlocking
    /// (invariant 2).
    pub(super) fn ended(
        &mut self,
        failure: Option<Arc<dyn LastFailure>>,
        cause: Option<LastCause>,
    ) -> (Option<Arc<dyn LastFailure>>, Option<LastCause>) {
        let failure = failure.and_then(|failure| self.last_failure.replace(failure));
        let cause = cause.and_then(|cause| self.last_cause.replace(cause));
        (failure, cause)
    }
}
