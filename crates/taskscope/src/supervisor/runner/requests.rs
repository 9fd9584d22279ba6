//! Serving the handles' requests: children added, terminated, restarted and deleted at
//! runtime (invariant 7).

use std::cmp::Reverse;
use std::mem;
use std::panic::Location;
use std::sync::Arc;

use tokio::time::Instant;

use super::Runner;
use crate::supervisor::child::{Child, LastCause, Run, Terminate};
use crate::supervisor::children::{Change, Reply, Request};
use crate::supervisor::snapshot::ChildState;
use crate::supervisor::{ChildRequestError, ChildSpec};
use crate::sync::Mutex;
use crate::{Cause, CauseKind, TaskError};

impl<E> Runner<E>
where
    E: TaskError,
{
    /// Serves `requests`, in order, at `now`; answers each after unlocking (invariant 2), or,
    /// for a termination under way, once the child has stopped.
    pub(super) fn serve(&mut self, requests: Vec<Request>, now: Instant) {
        for Request { change, reply } in requests {
            let answer = match change {
                Change::Start(spec) => self.add_child(spec, now),
                Change::Terminate { name, location } => {
                    self.terminate_child(&name, location, now, reply);
                    continue;
                }
                Change::Restart(name) => self.restart_child(&name, now),
                Change::Delete(name) => self.delete_child(&name),
            };
            let _ = reply.send(answer);
        }
    }

    /// The child named `name`, unless the supervisor is shutting down.
    fn child_named(&mut self, name: &str) -> Result<usize, ChildRequestError> {
        self.refuse_if_stopping()?;
        self.specs
            .iter()
            .position(|spec| *spec.name == *name)
            .ok_or_else(|| ChildRequestError::NotFound {
                name: name.to_owned(),
            })
    }

    /// Refuses a change once the supervisor is shutting down; and shuts it down first if its
    /// scope was cancelled since the runner last looked (invariant 5), as a restart does.
    fn refuse_if_stopping(&mut self) -> Result<(), ChildRequestError> {
        if self.shutdown.is_none()
            && let Some(cause) = self.inner.scope.cause()
        {
            self.begin_shutdown(cause);
        }
        match &self.shutdown {
            Some(cause) => Err(ChildRequestError::Stopped {
                cause: Some(cause.clone()),
            }),
            None => Ok(()),
        }
    }

    /// A child that has stopped for good: its index; otherwise why it cannot be restarted or
    /// deleted.
    fn terminated(&mut self, name: &str) -> Result<usize, ChildRequestError> {
        let child = self.child_named(name)?;
        match &self.tree().children[child].run {
            Run::Ended(_) => Ok(child),
            run => Err(ChildRequestError::NotTerminated {
                name: name.to_owned(),
                state: run.state(),
            }),
        }
    }

    /// Adds the child `spec` after the others, and starts it.
    fn add_child(
        &mut self,
        spec: Box<dyn std::any::Any + Send>,
        now: Instant,
    ) -> Result<(), ChildRequestError> {
        let spec = *spec
            .downcast::<ChildSpec<E>>()
            .expect("a start request holds a spec of its supervisor's error type");
        self.refuse_if_stopping()?;
        if self.specs.iter().any(|other| *other.name == *spec.name) {
            return Err(ChildRequestError::AlreadyPresent {
                name: spec.name.to_string(),
            });
        }
        // One slot per nested supervisor, for this supervisor only (specs may be shared).
        let nested = spec.supervisor.then(|| Arc::new(Mutex::new(None)));
        let added = Child::new(spec.name.clone(), nested);
        let child = self.tree().add(added);
        self.specs.push(spec);
        self.start(child, false, now);
        Ok(())
    }

    /// Terminates the child named `name`, and answers `reply` once it has stopped: at once if
    /// it was not running, else once the stop queued here (invariant 4) is over.
    fn terminate_child(
        &mut self,
        name: &str,
        location: &'static Location<'static>,
        now: Instant,
        reply: Reply,
    ) {
        let child = match self.child_named(name) {
            Ok(child) => child,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let run = match &self.tree().children[child].run {
            Run::Running { .. } => Stop::Queue,
            Run::Stopping { .. } => Stop::Wait,
            Run::Waiting { .. } | Run::Held { .. } => Stop::Now,
            // It stays as it ended.
            Run::Ended(_) => Stop::Done,
        };
        if run == Stop::Done {
            let _ = reply.send(Ok(()));
            return;
        }
        let origin = self.inner.scope.node.origin();
        // Stamped (invariant 6): the child's error echoing it is a cancellation.
        let cause = Cause::of_kind(CauseKind::Shutdown)
            .with_code("terminate")
            .with_detail(format!("child '{name}' terminated"))
            .stamped(|| origin, now, location);
        if run == Stop::Now {
            // Backing off, or held for a plan: it ends here.
            if let Some(plan) = &mut self.plan {
                plan.members.remove(&child);
            }
            let cause = Some(LastCause::Given(cause));
            self.end(child, ChildState::Cancelled, None, cause);
            let _ = reply.send(Ok(()));
            return;
        }
        let unused = {
            let mut tree = self.tree();
            let terminate = &mut tree.children[child].terminate;
            match terminate {
                // A second termination waits for the first; its cause is not used.
                Some(terminate) => {
                    terminate.replies.push(reply);
                    Some(cause)
                }
                None => {
                    let replies = vec![reply];
                    *terminate = Some(Terminate { cause, replies });
                    None
                }
            }
        };
        drop(unused);
        if run == Stop::Queue && !self.stop_queue.contains(&child) {
            // Stopped in turn with the others being stopped (a plan's), last started first.
            self.stop_queue.push(child);
            self.stop_queue.sort_unstable();
        }
    }

    /// Starts the child named `name` again, once it has stopped for good.
    fn restart_child(&mut self, name: &str, now: Instant) -> Result<(), ChildRequestError> {
        let child = self.terminated(name)?;
        // An entry left from a plan must not stop the new run.
        self.stop_queue.retain(|queued| *queued != child);
        self.tree().children[child].attempts = 0;
        self.start(child, true, now);
        Ok(())
    }

    /// Forgets the child named `name`, once it has stopped for good.
    fn delete_child(&mut self, name: &str) -> Result<(), ChildRequestError> {
        let child = self.terminated(name)?;
        self.forget(child);
        Ok(())
    }

    /// Removes `child`, which has ended for good, and moves every index of the children after
    /// it down by one (invariant 1). O(children).
    fn forget(&mut self, child: usize) {
        let shift = |at: usize| if at > child { at - 1 } else { at };
        self.stop_queue.retain(|queued| *queued != child);
        self.stop_queue.iter_mut().for_each(|at| *at = shift(*at));
        // Its timers are stale (it has ended): dropped; the others follow their children.
        let timers = mem::take(&mut self.timers).into_vec();
        self.timers = timers
            .into_iter()
            .filter(|Reverse((_, at, _))| *at != child)
            .map(|Reverse((when, at, ticket))| Reverse((when, shift(at), ticket)))
            .collect();
        if let Some(plan) = &mut self.plan {
            let members = mem::take(&mut plan.members);
            plan.members = members
                .into_iter()
                .filter(|at| *at != child)
                .map(shift)
                .collect();
        }
        // Never `child` itself: that one is stopping, not ended.
        if let Some(stop) = &mut self.stopping {
            stop.child = shift(stop.child);
        }
        let removed = self.tree().remove(child);
        let spec = self.specs.remove(child);
        // The spec holds the user's factory; the child, its last failure: dropped unlocked.
        drop((removed, spec));
    }
}

/// How a termination stops its child.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Running: stopped in turn, with its grace.
    Queue,
    /// Already stopping (for a plan): waited for.
    Wait,
    /// Waiting to restart: ended at once.
    Now,
    /// Already ended.
    Done,
}
