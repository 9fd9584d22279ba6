//! Why a supervisor failed, and why a configuration was refused.

use std::error::Error;
use std::fmt;

use super::ChildState;
use crate::text::Escaped;
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

/// Why a change of a supervisor's children at runtime was refused; the answer of a
/// [`ChildRequest`](crate::futures::ChildRequest).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ChildRequestError {
    /// No child has this name.
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A child already has this name; an ended child keeps it until it is deleted.
    AlreadyPresent {
        /// The name of the child to start.
        name: String,
    },
    /// The child has not stopped for good: it runs, stops, or waits to restart. Terminate it
    /// first.
    NotTerminated {
        /// The child's name.
        name: String,
        /// Its state when the request was served.
        state: ChildState,
    },
    /// The child's spec cannot work: it has no name, or it is a nested supervisor whose
    /// configuration cannot work.
    Invalid(ConfigError),
    /// The supervisor is shutting down, has escalated, or has ended: it changes no child any
    /// more.
    Stopped {
        /// What it stops for: its shutdown's or its escalation's cause; `None` when it ended by
        /// itself, with no child left to run.
        cause: Option<Cause>,
    },
}

impl fmt::Display for ChildRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names are the user's: escaped, so none can forge a line of a report.
        match self {
            ChildRequestError::NotFound { name } => write!(f, "no child named '{}'", Escaped(name)),
            ChildRequestError::AlreadyPresent { name } => {
                write!(f, "a child named '{}' already exists", Escaped(name))
            }
            ChildRequestError::NotTerminated { name, state } => {
                write!(f, "child '{}' is {state}, not terminated", Escaped(name))
            }
            ChildRequestError::Invalid(error) => write!(f, "{error}"),
            ChildRequestError::Stopped { cause: Some(cause) } => {
                write!(f, "supervisor stopped: {cause}")
            }
            ChildRequestError::Stopped { cause: None } => f.write_str("supervisor stopped"),
        }
    }
}

impl Error for ChildRequestError {
    /// The invalid configuration, or the cause the supervisor stops for.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ChildRequestError::Invalid(error) => Some(error),
            ChildRequestError::Stopped { cause: Some(cause) } => Some(cause),
            _ => None,
        }
    }
}
