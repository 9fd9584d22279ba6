//! Who a task is: its number in its group, its name and where it was spawned. Below the
//! observer hook, which hands these to its events, and the groups that make them.

use std::fmt;
use std::panic::Location;

use crate::path::Name;

/// A task's number in its group: its position in spawn order, starting at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The number: how many tasks were spawned into the group before this one.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who a task is: its [`TaskId`], its name and where it was spawned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub(crate) id: TaskId,
    pub(crate) name: Name,
    pub(crate) spawned_at: &'static Location<'static>,
}

impl TaskInfo {
    /// The task's number in its group.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The name given to [`spawn`](crate::TaskGroup::spawn).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The call to [`spawn`](crate::TaskGroup::spawn) that made the task.
    pub fn spawned_at(&self) -> &'static Location<'static> {
        self.spawned_at
    }
}

impl fmt::Display for TaskInfo {
    /// `'payment' (src/orders.rs:42:11)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' ({})", &*self.name, self.spawned_at)
    }
}
