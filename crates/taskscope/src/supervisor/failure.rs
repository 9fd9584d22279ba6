//! A child's failure, kept as it came: its text and its cause are made on first use.
//!
//! Most restarts need neither: the cause is read by a restart predicate, an observer, an
//! escalation, a plan, or a snapshot, and the text by a snapshot or an escalation. Making them
//! at each failure formatted the user's error twice per restart (once for the cause, once for
//! the snapshot's last failure), a fifth of a restart's cost.

use std::fmt;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::OnceLock;

use tokio::time::Instant;

use crate::cause::{Moment, Origin};
use crate::group::failure_cause;
use crate::path::Name;
use crate::text::displayed;
use crate::{Cause, CauseKind, Failure, TaskError};

/// What the snapshots of a child see of its last failure, whatever the error's type.
pub(super) trait LastFailure: Send + Sync {
    /// The error's `Display`, or the panic. Runs the user's `Display`: never under a lock.
    fn text(&self) -> String;

    /// The cause the failure makes: see [`ChildFailure::cause`].
    fn cause(&self) -> Cause;
}

/// A child's failure, with what its cause is stamped with.
pub(super) struct ChildFailure<E> {
    child: Name,
    failure: Failure<E>,
    /// The child's path.
    origin: Option<Origin>,
    /// When it failed.
    moment: Moment,
    location: &'static Location<'static>,
    cause: OnceLock<Cause>,
}

impl<E> ChildFailure<E>
where
    E: TaskError,
{
    /// `failure` of the child `child` (spawned at `location`, its path `origin`), at `now`.
    pub(super) fn new(
        child: Name,
        failure: Failure<E>,
        origin: Option<Origin>,
        location: &'static Location<'static>,
        now: Instant,
    ) -> ChildFailure<E> {
        ChildFailure {
            child,
            failure,
            origin,
            moment: Moment::at(now),
            location,
            cause: OnceLock::new(),
        }
    }

    pub(super) fn failure(&self) -> &Failure<E> {
        &self.failure
    }

    /// The failure, shared with this one (a panic's message copied).
    pub(super) fn to_failure(&self) -> Failure<E> {
        match &self.failure {
            Failure::Error(error) => Failure::Error(error.clone()),
            Failure::Panic(message) => Failure::Panic(message.clone()),
        }
    }

    /// The cause the failure makes (kind *task failed* or *task panicked*, the code of the
    /// cause the error carries, if any: [`TaskError::as_cause`]), stamped with the child's path as origin and the time it failed
    /// (invariant 6). Made once: every caller gets the very same cause.
    pub(super) fn cause(&self) -> &Cause {
        if let Some(cause) = self.cause.get() {
            return cause;
        }
        // Made outside the cell's lock, since it runs the user's `Display`, which must not
        // take the supervisor down if it panics. A race makes it twice; the first one stays.
        let name = &*self.child;
        let cause = panic::catch_unwind(AssertUnwindSafe(|| failure_cause(name, &self.failure)))
            .unwrap_or_else(|_| {
                Cause::of_kind(CauseKind::TaskFailed).with_detail(format!(
                    "task '{name}' failed: (its error's Display panicked)"
                ))
            })
            .stamped_as_of(|| self.origin.clone(), self.moment, self.location);
        let _ = self.cause.set(cause);
        self.cause.get().expect("set above")
    }
}

impl<E> LastFailure for ChildFailure<E>
where
    E: TaskError,
{
    fn text(&self) -> String {
        describe(&self.failure)
    }

    fn cause(&self) -> Cause {
        ChildFailure::cause(self).clone()
    }
}

/// A failure as a snapshot shows it: the error's `Display`, or the panic.
fn describe<E: fmt::Display>(failure: &Failure<E>) -> String {
    match failure {
        Failure::Error(error) => displayed(&**error),
        Failure::Panic(message) => format!("panicked: {message}"),
    }
}
