//! What one run sees: the await points of the work and of every task under its root, in the
//! order they happen, and the one where it interrupts the work.
//!
//! A point is named by *where* it is, not by when: the task (its scope's path, and which task
//! of that path it is, in start order) and how many times that task was suspended so far. So
//! a rerun finds the same point even if unrelated tasks interleave differently (a blocking
//! call finishing earlier than in the recording).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use serde::Serialize;
use taskscope::observe::{
    Attachment, GroupCreated, Observer, ScopeCancelled, Suspended, TaskFinished, TaskOutcome,
    TaskStarted,
};
use taskscope::{Cause, Scope, WeakScope};

/// The name of the work's own future among the points.
pub(crate) const WORK: &str = "work";

/// An await point: a task suspended for the `suspension`-th time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Point {
    /// The task: `work` for the future under test, else the task's scope path and which task
    /// of that path it is, in start order (`sweep/order/reserve#1`).
    pub task: String,
    /// How many times the task had been suspended, this one included (1 for its first await).
    pub suspension: u32,
    /// Where the task was spawned, when it is a taskscope task.
    pub spawned_at: Option<String>,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at its suspension {}", self.task, self.suspension)?;
        if let Some(at) = &self.spawned_at {
            write!(f, " (spawned at {at})")?;
        }
        Ok(())
    }
}

/// What a run does at its point.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    /// Cancels the root, or the scope of that path, with the cause.
    Cancel { scope: Option<String>, cause: Cause },
    /// Drops the suspended future there: the work's, or the task's (aborting it).
    Abort,
}

/// One run's view, shared by its observer, its tasks' attachments and the work's probe.
#[derive(Default)]
pub(crate) struct Run {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Every point, in the order they happened.
    points: Vec<Point>,
    /// Tasks started so far, by scope path.
    started: HashMap<String, u32>,
    /// Where to interrupt, and how; taken when it fires.
    target: Option<(String, u32, Action)>,
    /// Whether the target fired.
    fired: bool,
    /// The causes of every cancellation under the root so far, in order.
    cancellations: Vec<Cause>,
    /// Those that came before a cancelling target fired: first cause wins, so the work may
    /// report one of these rather than the injected one.
    prior: Vec<Cause>,
    /// The root, and the scopes of groups and tasks by path, for a cancellation aimed at one.
    root: Option<WeakScope>,
    scopes: HashMap<String, WeakScope>,
    /// Tasks aborted (not by this run): their group was dropped before they ended, or they
    /// outlived its shutdown grace.
    aborted: Vec<String>,
}

/// What a suspended task or work does next.
pub(crate) enum Next {
    Continue,
    Abort,
}

impl Run {
    pub(crate) fn new(target: Option<(Point, Action)>) -> Arc<Run> {
        let run = Run::default();
        run.lock().target = target.map(|(point, action)| (point.task, point.suspension, action));
        Arc::new(run)
    }

    /// The root the run's cancellations aim at by default; only a weak handle, so that what
    /// keeps it alive after the run is the work's.
    pub(crate) fn set_root(&self, root: &Scope) {
        self.lock().root = Some(root.downgrade());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in user code never runs under this lock: the state stays whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `task` was suspended for the `suspension`-th time: records the point, and interrupts
    /// there if it is the target.
    pub(crate) fn suspended(&self, task: &str, suspension: u32, spawned_at: Option<&str>) -> Next {
        let action = {
            let mut state = self.lock();
            state.points.push(Point {
                task: task.to_owned(),
                suspension,
                spawned_at: spawned_at.map(str::to_owned),
            });
            let hit = matches!(&state.target, Some((t, n, _)) if t == task && *n == suspension);
            if !hit {
                return Next::Continue;
            }
            state.fired = true;
            let (_, _, action) = state.target.take().expect("hit");
            match action {
                Action::Abort => return Next::Abort,
                Action::Cancel { scope, cause } => {
                    let weak = match &scope {
                        None => state.root.clone(),
                        Some(path) => state.scopes.get(path).cloned(),
                    };
                    state.prior = state.cancellations.clone();
                    (weak, cause)
                }
            }
        };
        // Outside the lock: cancelling runs callbacks and tells this run's observer.
        let (weak, cause) = action;
        if let Some(scope) = weak.and_then(|weak| weak.upgrade()) {
            scope.cancel(cause);
        }
        Next::Continue
    }

    pub(crate) fn points(&self) -> Vec<Point> {
        self.lock().points.clone()
    }

    pub(crate) fn fired(&self) -> bool {
        self.lock().fired
    }

    pub(crate) fn prior_causes(&self) -> Vec<Cause> {
        self.lock().prior.clone()
    }

    pub(crate) fn aborted(&self) -> Vec<String> {
        self.lock().aborted.clone()
    }

    pub(crate) fn root(&self) -> Option<WeakScope> {
        self.lock().root.clone()
    }
}

/// The run's observer, installed on the root: every task under it gets a [`TaskProbe`].
pub(crate) struct RunObserver(pub(crate) Arc<Run>);

impl Observer for RunObserver {
    fn scope_cancelled(&self, event: &ScopeCancelled<'_>) {
        self.0.lock().cancellations.push(event.cause.clone());
    }

    fn group_created(&self, event: &GroupCreated<'_>) -> Option<Arc<dyn Attachment>> {
        let path = event.scope.path().to_string();
        self.0.lock().scopes.insert(path, event.scope.downgrade());
        None
    }

    fn task_finished(&self, event: &TaskFinished<'_>) {
        if event.outcome == TaskOutcome::Aborted {
            let task = format!("{}/{}", event.group.path(), event.task.name());
            self.0.lock().aborted.push(task);
        }
    }

    fn observes_tasks(&self, _group: &GroupCreated<'_>) -> bool {
        true
    }

    fn task_started(&self, event: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        let path = event.scope.path().to_string();
        let task = {
            let mut state = self.0.lock();
            state.scopes.insert(path.clone(), event.scope.downgrade());
            let started = state.started.entry(path.clone()).or_insert(0);
            *started += 1;
            format!("{path}#{started}")
        };
        Some(Arc::new(TaskProbe {
            run: self.0.clone(),
            task,
            spawned_at: event.task.spawned_at().to_string(),
            suspensions: AtomicU32::new(0),
        }))
    }
}

/// Counts a task's suspensions, and interrupts it at the target.
struct TaskProbe {
    run: Arc<Run>,
    task: String,
    spawned_at: String,
    suspensions: AtomicU32,
}

impl Attachment for TaskProbe {
    fn suspended(&self) -> Suspended {
        // A task is polled by one thread at a time: the count needs no ordering.
        let suspension = self.suspensions.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .run
            .suspended(&self.task, suspension, Some(&self.spawned_at))
        {
            Next::Continue => Suspended::Continue,
            Next::Abort => Suspended::Abort,
        }
    }
}

/// How the work's future ended.
pub(crate) enum Ended<O> {
    Returned(O),
    /// Dropped at its target point.
    Dropped,
}

/// The work's future, counting its own suspensions and dropped at the target if it is one of
/// them.
pub(crate) struct WorkProbe<F: ?Sized> {
    pub(crate) run: Arc<Run>,
    pub(crate) work: Option<Pin<Box<F>>>,
    pub(crate) suspensions: u32,
}

impl<F: Future + ?Sized> Future for WorkProbe<F> {
    type Output = Ended<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(Ended::Dropped);
        };
        match work.as_mut().poll(cx) {
            Poll::Ready(output) => {
                self.work = None;
                Poll::Ready(Ended::Returned(output))
            }
            Poll::Pending => {
                self.suspensions += 1;
                let suspension = self.suspensions;
                match self.run.suspended(WORK, suspension, None) {
                    Next::Continue => Poll::Pending,
                    Next::Abort => {
                        self.work = None;
                        Poll::Ready(Ended::Dropped)
                    }
                }
            }
        }
    }
}
