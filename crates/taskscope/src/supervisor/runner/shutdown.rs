//! Shutdown: children stopped one after the other in reverse start order, each within its
//! grace, or all aborted at once; and the end of the runner.

use std::mem;

use tokio::time::Instant;

use super::Runner;
use crate::supervisor::SupervisorError;
use crate::supervisor::changes;
use crate::supervisor::child::{LastCause, Run, Task};
use crate::supervisor::snapshot::{ChildState, SupervisorState};
use crate::sync::lock;
use crate::{Cause, CauseKind, TaskError, TaskId};

/// The child being stopped gracefully (invariant 4).
pub(super) struct StopTimer {
    pub(super) child: usize,
    /// When to abort it; `None` once aborted, or with a grace that never ends.
    pub(super) abort_at: Option<Instant>,
}

impl<E> Runner<E>
where
    E: TaskError,
{
    /// The supervisor's scope is cancelled: stop every child, last started first (invariant 5).
    pub(super) fn begin_shutdown(&mut self, cause: Cause) {
        if self.shutdown.is_some() {
            return;
        }
        // Stamped once here (invariant 6): every child is then told this very cause.
        let origin = self.inner.scope.node.origin();
        let cause = cause.stamped(|| origin, Instant::now(), self.location);
        self.shutdown = Some(cause.clone());
        self.plan = None;
        self.timers.clear();
        self.stop_queue.clear();
        let mut stale = Vec::new();
        let mut tree = lock(&self.inner.tree);
        tree.cause = Some(cause.clone());
        // From now on, handles queue no request (invariant 7).
        tree.state = if self.escalated.is_some() {
            SupervisorState::Escalated
        } else {
            SupervisorState::ShuttingDown
        };
        tree.changed();
        for child in 0..tree.children.len() {
            match tree.children[child].run {
                Run::Waiting { .. } | Run::Held { .. } => {
                    let run = tree.set_run(child, Run::Ended(ChildState::Cancelled));
                    let cause = LastCause::Given(cause.clone());
                    let replaced = tree.children[child].ended(None, Some(cause));
                    stale.push((run, replaced));
                }
                Run::Running { .. } => self.stop_queue.push(child),
                Run::Stopping { .. } | Run::Ended(_) => {}
            }
        }
        drop(tree);
        drop(stale);
    }

    /// Starts stopping the next child of the queue, if none is being stopped (invariant 4).
    pub(super) fn advance_stops(&mut self, now: Instant) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        while let Some(child) = self.stop_queue.pop() {
            let Some((id, task, since)) = self.take_running(child) else {
                // It ended meanwhile; its exit was handled.
                continue;
            };
            let terminating = match &self.shutdown {
                Some(_) => None,
                None => self.tree().children[child]
                    .terminate
                    .as_ref()
                    .map(|terminate| terminate.cause.clone()),
            };
            let cause = self
                .stop_cause(terminating)
                .expect("children stop for a shutdown, a termination or a plan");
            let spec = &self.specs[child];
            let key = task.as_ref().map(|(key, _)| *key);
            if let Some((key, scope)) = &task {
                // A callback panicking here was reported by the panic hook.
                let _ = scope.node.cancel(cause.clone(), spec.location);
                self.group.child_stopped(*key, id, &cause);
            }
            self.set_run(child, Run::Stopping { id, key, since });
            self.stopping = Some(StopTimer {
                child,
                abort_at: now.checked_add(spec.grace),
            });
            return true;
        }
        false
    }

    /// If `child` is running: its task, taken out of its run, which stays `Running` until the
    /// caller has cancelled the task's scope (outside the lock, invariant 2) and set it
    /// `Stopping`.
    fn take_running(&self, child: usize) -> Option<(TaskId, Option<Task>, Instant)> {
        match &mut self.tree().children[child].run {
            Run::Running { id, task, since } => Some((*id, task.take(), *since)),
            _ => None,
        }
    }

    /// Aborts the stopping child once its grace is over.
    pub(super) fn abort_overdue(&mut self, now: Instant) -> bool {
        let Some(stop) = &mut self.stopping else {
            return false;
        };
        if stop.abort_at.is_none_or(|at| at > now) {
            return false;
        }
        stop.abort_at = None;
        let child = stop.child;
        let stopping = match self.tree().children[child].run {
            Run::Stopping { id, key, .. } => Some((id, key)),
            _ => None,
        };
        if let Some((id, key)) = stopping {
            self.abort(child, id, key);
        }
        true
    }

    /// Aborts every child now (a second signal): no more graces.
    pub(super) fn force(&mut self) {
        self.forced = true;
        if self.shutdown.is_none() {
            let cause = Cause::of_kind(CauseKind::Shutdown).with_detail("forced");
            let _ = self.inner.scope.node.cancel(cause.clone(), self.location);
            let cause = self.inner.scope.cause().unwrap_or(cause);
            self.begin_shutdown(cause);
        }
        let cause = self.shutdown.clone().expect("set above");
        self.stop_queue.clear();
        self.stopping = None;
        for child in (0..self.specs.len()).rev() {
            let (id, key) = match self.take_running(child) {
                Some((id, task, since)) => {
                    let key = task.as_ref().map(|(key, _)| *key);
                    if let Some((_, scope)) = &task {
                        let _ = scope.node.cancel(cause.clone(), self.specs[child].location);
                    }
                    self.set_run(child, Run::Stopping { id, key, since });
                    (id, key)
                }
                None => match self.tree().children[child].run {
                    Run::Stopping { id, key, .. } => (id, key),
                    _ => continue,
                },
            };
            self.abort(child, id, key);
        }
    }

    /// Ends the runner: every child has stopped for good. Publishes the supervisor's last state
    /// and the children it aborted, refuses the requests left (invariant 7), wakes the
    /// subscribers (invariant 8), then returns what `join` returns.
    pub(super) fn finish(&mut self) -> Result<(), SupervisorError<E>> {
        self.finished = true;
        let escalated = self.escalated.take();
        let aborted = mem::take(&mut self.aborted);
        let turn = {
            let mut tree = self.tree();
            tree.state = if escalated.is_some() {
                SupervisorState::Escalated
            } else {
                SupervisorState::Stopped
            };
            tree.aborted.clone_from(&aborted);
            tree.ended = true;
            tree.changed();
            tree.end_turn()
        };
        drop(turn.requests);
        changes::wake(turn.watchers);
        let result = if escalated.is_none() && aborted.is_empty() {
            Ok(())
        } else {
            Err(SupervisorError {
                cause: self.shutdown.clone(),
                escalated,
                aborted,
            })
        };
        let _ = self.inner.done.node.cancel(Cause::plain(), self.location);
        result
    }
}
