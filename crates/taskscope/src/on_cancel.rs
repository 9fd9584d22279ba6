//! The handle returned by [`Scope::on_cancel`](crate::Scope::on_cancel).

use std::fmt;
use std::sync::Arc;

use crate::node::Node;

/// A callback registered with [`Scope::on_cancel`](crate::Scope::on_cancel).
///
/// Dropping the handle leaves the callback registered (as Go's `AfterFunc`); call
/// [`stop`](OnCancel::stop) to deregister it. The handle keeps its scope alive, and so does a
/// callback that captures a [`Scope`](crate::Scope) of its own scope: capture a
/// [`WeakScope`](crate::WeakScope) there.
pub struct OnCancel {
    node: Arc<Node>,
    /// `None` when the callback ran during registration.
    key: Option<usize>,
}

impl OnCancel {
    pub(crate) fn new(node: Arc<Node>, key: Option<usize>) -> Self {
        OnCancel { node, key }
    }

    /// Deregisters the callback in O(1), dropping what it captured.
    ///
    /// Returns `true` if this call stopped it: it has not run and never will. Returns `false` if
    /// it has already run, or is running now on the thread that cancelled the scope.
    pub fn stop(self) -> bool {
        match self.key {
            // The listener is dropped at the end of this statement, outside the node lock.
            Some(key) => self.node.unlisten(key).is_some(),
            None => false,
        }
    }
}

impl fmt::Debug for OnCancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCancel").finish_non_exhaustive()
    }
}
