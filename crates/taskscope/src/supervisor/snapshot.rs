//! Live snapshots of a supervision tree.

use std::fmt;
use std::time::Duration;

use super::Strategy;
use crate::Cause;
use crate::observe::TaskOutcome;
use crate::text::Escaped;

/// What a supervisor is doing, in a [`SupervisorSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum SupervisorState {
    /// Running its children and restarting them as needed.
    Running,
    /// Its scope is cancelled: it is stopping its children in reverse start order.
    ShuttingDown,
    /// Every child has stopped; it has ended.
    Stopped,
    /// A child failed beyond what the restart policy allows: the supervisor stops every child
    /// and fails. The state stays `Escalated` once it has ended; [`SupervisorHandle::is_stopped`]
    /// tells whether it has.
    ///
    /// [`SupervisorHandle::is_stopped`]: crate::SupervisorHandle::is_stopped
    Escalated,
}

impl fmt::Display for SupervisorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SupervisorState::Running => "running",
            SupervisorState::ShuttingDown => "shutting down",
            SupervisorState::Stopped => "stopped",
            SupervisorState::Escalated => "escalated",
        })
    }
}

/// A child's state in a [`ChildSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ChildState {
    /// Running.
    Running,
    /// Its scope is cancelled; the supervisor waits for it to return, within its grace.
    Stopping,
    /// Waiting to be restarted: backing off, or for its siblings to stop (one-for-all,
    /// rest-for-one).
    Restarting,
    /// Returned `Ok` and is not restarted.
    Completed,
    /// Returned an error and is not restarted.
    Failed,
    /// Panicked and is not restarted.
    Panicked,
    /// Stopped by a cancellation or a shutdown.
    Cancelled,
    /// Did not return within its grace, or was stopped by a forced shutdown, and was aborted.
    Aborted,
}

impl ChildState {
    /// How its last run ended, once it is not running, stopping nor restarting: see
    /// [`Outcome::kind`](crate::Outcome::kind).
    pub fn outcome(self) -> Option<TaskOutcome> {
        Some(match self {
            ChildState::Running | ChildState::Stopping | ChildState::Restarting => return None,
            ChildState::Completed => TaskOutcome::Completed,
            ChildState::Failed => TaskOutcome::Failed,
            ChildState::Panicked => TaskOutcome::Panicked,
            ChildState::Cancelled => TaskOutcome::Cancelled,
            ChildState::Aborted => TaskOutcome::Aborted,
        })
    }
}

impl fmt::Display for ChildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChildState::Running => "running",
            ChildState::Stopping => "stopping",
            ChildState::Restarting => "restarting",
            ChildState::Completed => "completed",
            ChildState::Failed => "failed",
            ChildState::Panicked => "panicked",
            ChildState::Cancelled => "cancelled",
            ChildState::Aborted => "aborted",
        })
    }
}

/// One child in a [`SupervisorSnapshot`].
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ChildSnapshot {
    /// The child's name.
    pub name: String,
    /// Its state when the snapshot was taken.
    pub state: ChildState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How long its current run has been going, while it runs or stops.
    #[cfg_attr(feature = "serde", serde(rename = "uptime_ms", with = "millis"))]
    pub uptime: Option<Duration>,
    /// How long until it restarts, while it backs off.
    #[cfg_attr(feature = "serde", serde(rename = "restart_in_ms", with = "millis"))]
    pub restart_in: Option<Duration>,
    /// Its last failure: the error's `Display` or the panic message.
    pub last_failure: Option<String>,
    /// The cause of its last stop: the cause its last failure made, or the cancellation or
    /// shutdown that stopped it.
    pub last_cause: Option<Cause>,
    /// The nested supervisor's own tree, when the child is one: its current run, or its last.
    pub supervisor: Option<Box<SupervisorSnapshot>>,
}

/// The live state of a supervisor and its children, nested supervisors included; made by
/// [`Supervisor::snapshot`](crate::Supervisor::snapshot).
///
/// `Display` prints it as an indented tree, one line per supervisor and per child, durations
/// in whole milliseconds; a nested supervisor's own line follows its child line:
///
/// ```text
/// app/watchers (one-for-one): running
///   pod-watcher: restarting in 400ms, 2 restarts, last failure: connection reset
///   payments: running, up 12s
///     app/watchers/payments (one-for-all): running
///       poller: running, up 12s
/// ```
///
/// With the `serde` feature it serialises; durations as milliseconds (`uptime_ms`).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SupervisorSnapshot {
    /// The path of the supervisor's scope.
    pub path: String,
    /// Its restart strategy.
    pub strategy: Strategy,
    /// What it is doing.
    pub state: SupervisorState,
    /// Its scope's cause, once it is shutting down or has escalated.
    pub cause: Option<Cause>,
    /// Its children, in start order.
    pub children: Vec<ChildSnapshot>,
}

impl SupervisorSnapshot {
    /// The child named `name`, if there is one.
    pub fn child(&self, name: &str) -> Option<&ChildSnapshot> {
        self.children.iter().find(|child| child.name == name)
    }

    /// This supervisor's own line.
    fn write_header(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(unnamed)"
        } else {
            &self.path
        };
        // Names, causes and failures are the user's: escaped, so none can forge a line.
        write!(f, "{} ({}): {}", Escaped(path), self.strategy, self.state)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {}", Escaped(cause))?;
        }
        writeln!(f)
    }
}

impl ChildSnapshot {
    /// This child's line, after its indentation.
    fn write_line(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", Escaped(&self.name), self.state)?;
        if let Some(restart_in) = self.restart_in {
            write!(f, " in {:?}", whole_millis(restart_in))?;
        }
        if let Some(uptime) = self.uptime {
            write!(f, ", up {:?}", whole_millis(uptime))?;
        }
        match self.restarts {
            0 => {}
            1 => f.write_str(", 1 restart")?,
            n => write!(f, ", {n} restarts")?,
        }
        if let Some(cause) = self
            .last_cause
            .as_ref()
            .filter(|_| matches!(self.state, ChildState::Cancelled | ChildState::Aborted))
        {
            write!(f, ", cause: {}", Escaped(cause))?;
        }
        if let Some(failure) = &self.last_failure {
            write!(f, ", last failure: {}", Escaped(failure))?;
        }
        writeln!(f)
    }
}

/// `duration` in whole milliseconds, as snapshots print it.
fn whole_millis(duration: Duration) -> Duration {
    match u64::try_from(duration.as_millis()) {
        Ok(millis) => Duration::from_millis(millis),
        Err(_) => duration,
    }
}

impl fmt::Display for SupervisorSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Depth first with a stack of (supervisor, its depth, its next child), not recursion:
        // trees of nested supervisors may be thousands deep.
        self.write_header(f)?;
        let mut stack = vec![(self, 0, 0)];
        while let Some((supervisor, depth, next)) = stack.pop() {
            let Some(child) = supervisor.children.get(next) else {
                continue;
            };
            stack.push((supervisor, depth, next + 1));
            let indent = 2 * (depth + 1);
            write!(f, "{:indent$}", "")?;
            child.write_line(f)?;
            if let Some(nested) = &child.supervisor {
                write!(f, "{:indent$}  ", "")?;
                nested.write_header(f)?;
                stack.push((nested, depth + 2, 0));
            }
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
mod millis {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => {
                serializer.serialize_some(&u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
            }
            None => serializer.serialize_none(),
        }
    }
}
