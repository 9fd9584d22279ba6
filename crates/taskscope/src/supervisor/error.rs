//! Why a supervisor failed, and why a configuration was refused.

use std::error::Error;
use std::fmt;

use crate::{Cause, Failure, TaskInfo};

/// Why a supervisor's [`join`](crate::Supervisor::join) did not return `Ok`: it escalated (a
/// child needed too many restarts, or failed in a way its restart predicate refused to retry),
/// or children had to be aborted because they did not stop within their grace.
#[derive(Debug)]
pub struct SupervisorError<E> {
    pub(crate) cause: Option<Cause>,
    pub(crate) escalated: Option<(TaskInfo, Option<Failure<E>>)>,
    pub(crate) aborted: Vec<TaskInfo>,
}

impl<E> SupervisorError<E> {
    /// The cause that stopped the supervisor: the escalation's (it names the child and carries
    /// the last failure's cause as its source), or the shutdown's.
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// Whether the supervisor escalated.
    pub fn is_escalation(&self) -> bool {
        self.escalated.is_some()
    }

    /// The child that made the supervisor escalate: its name and spec location, and the id of
    /// its last run.
    pub fn child(&self) -> Option<&TaskInfo> {
        self.escalated.as_ref().map(|(child, _)| child)
    }

    /// That child's last failure; `None` when it escalated by returning `Ok` too often.
    pub fn last_failure(&self) -> Option<&Failure<E>> {
        self.escalated.as_ref()?.1.as_ref()
    }

    /// The children aborted during the shutdown because they did not stop within their grace
    /// (or the shutdown was forced), in the order they ended.
    pub fn aborted(&self) -> &[TaskInfo] {
        &self.aborted
    }
}

impl<E> fmt::Display for SupervisorError<E> {
    /// `supervisor escalated: task failed (UNAUTHORIZED): child 'pods' failed and may not be
    /// restarted; last failure: ...`, then the aborted children.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.escalated.is_some() {
            "supervisor escalated"
        } else {
            "supervisor stopped"
        };
        match &self.cause {
            Some(cause) => write!(f, "{what}: {cause}")?,
            None => f.write_str(what)?,
        }
        for (i, child) in self.aborted.iter().enumerate() {
            let sep = if i == 0 { "; aborted: " } else { ", " };
            write!(f, "{sep}{child}")?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug> Error for SupervisorError<E> {
    /// The cause that stopped the supervisor.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_ref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

/// A supervisor configuration that cannot work; returned by
/// [`SupervisorBuilder::start`](crate::SupervisorBuilder::start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: String) -> ConfigError {
        ConfigError { message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid supervisor configuration: {}", self.message)
    }
}

impl Error for ConfigError {}
