//! What a supervisor shares with its handles: its state and its children's, behind one lock,
//! the requests handles queue for the runner, and the snapshots taken from them.
//!
//! The invariants cited here are the runner's (`runner.rs`).

use std::mem;
use std::sync::Arc;
use std::task::Waker;

use tokio::time::Instant;

use super::Strategy;
use super::changes::Watchers;
use super::child::{Child, LastCause, Run};
use super::children::Request;
use super::failure::LastFailure;
use super::snapshot::{SupervisorSnapshot, SupervisorState};
use crate::sync::{Mutex, lock};
use crate::{Cause, Scope, TaskId, TaskInfo};

/// What a supervisor shares with its handles.
pub(crate) struct Inner {
    /// The supervisor's scope: cancelling it shuts the supervisor down.
    pub(crate) scope: Scope,
    pub(crate) strategy: Strategy,
    /// Cancelled when the runner has ended; never seen by users.
    pub(crate) done: Scope,
    pub(super) tree: Mutex<Tree>,
}

/// The supervisor's state and its children's: the one copy (invariant 1).
pub(super) struct Tree {
    pub(super) state: SupervisorState,
    /// What the supervisor stops for: its scope's cause, or its escalation's.
    pub(super) cause: Option<Cause>,
    /// In start order.
    pub(super) children: Vec<Child>,
    /// The child of each task the group has not reported yet (invariant 3).
    tasks: Tasks,
    /// How many runs are `Waiting` (invariant 3).
    waiting: usize,
    /// When to abort every child still running: at once for a forced shutdown, at the end of
    /// its budget for a bounded one.
    force_at: Option<Instant>,
    /// The children aborted during the shutdown, once the runner has ended.
    pub(super) aborted: Vec<TaskInfo>,
    runner: Option<Waker>,
    /// Changes of children asked for by handles, in order, until the runner's turn ends
    /// (invariant 7). Taken only while `state` is running.
    pub(super) requests: Vec<Request>,
    /// Counts the runner's changes to what a snapshot shows (invariant 8).
    pub(super) version: u64,
    /// The runner has ended: `version` is final.
    pub(super) ended: bool,
    /// The subscribers to changes, and the wakers of those waiting for one.
    pub(super) watchers: Watchers,
}

/// What a runner's turn ends with, read under one lock.
pub(super) struct TurnEnd {
    /// The requests queued since the last turn, to serve in order.
    pub(super) requests: Vec<Request>,
    /// The subscribers to wake, after unlocking, because the turn changed the tree.
    pub(super) watchers: Vec<Waker>,
    /// No run is left to wait for (invariant 3).
    pub(super) idle: bool,
}

impl Tree {
    pub(super) fn new(children: Vec<Child>) -> Tree {
        Tree {
            state: SupervisorState::Running,
            cause: None,
            children,
            tasks: Tasks::default(),
            waiting: 0,
            force_at: None,
            aborted: Vec::new(),
            runner: None,
            requests: Vec::new(),
            version: 0,
            ended: false,
            watchers: Watchers::default(),
        }
    }

    /// Counts a change to what a snapshot shows (invariant 8).
    pub(super) fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    /// Sets `child`'s run, and what is counted of it (invariant 3). Returns the run it
    /// replaced, to be dropped after unlocking: it may hold the last handle to a scope
    /// (invariant 2).
    pub(super) fn set_run(&mut self, child: usize, run: Run) -> Run {
        let (task, waits) = (run.task(), matches!(run, Run::Waiting { .. }));
        let old = mem::replace(&mut self.children[child].run, run);
        self.changed();
        if let Some(id) = task
            && old.task() != task
        {
            self.tasks.insert(id, child);
        }
        self.waiting =
            self.waiting + usize::from(waits) - usize::from(matches!(old, Run::Waiting { .. }));
        old
    }

    /// The child whose run was the task `id`, which the group has just reported (invariant 3).
    pub(super) fn reported(&mut self, id: TaskId) -> Option<usize> {
        self.tasks.remove(id)
    }

    /// Whether no run is left to wait for: no task, no backoff (invariant 3).
    pub(super) fn is_idle(&self) -> bool {
        self.tasks.is_empty() && self.waiting == 0
    }

    /// Ends a runner's turn: takes the requests queued (invariant 7) and the subscribers to
    /// wake if the tree changed since they were last woken (invariant 8).
    pub(super) fn end_turn(&mut self) -> TurnEnd {
        TurnEnd {
            requests: mem::take(&mut self.requests),
            watchers: self.watchers.take(self.version),
            idle: self.is_idle(),
        }
    }

    /// Queues `request` for the runner while it takes them (invariant 7): returns the
    /// runner's waker, to wake after unlocking; or the request refused, with the cause the
    /// supervisor stops for, to drop after unlocking.
    pub(super) fn queue(
        &mut self,
        request: Request,
    ) -> Result<Option<Waker>, (Request, Option<Cause>)> {
        if self.state == SupervisorState::Running && !self.ended {
            self.requests.push(request);
            Ok(self.runner.take())
        } else {
            Err((request, self.cause.clone()))
        }
    }

    /// Adds a child after the others; returns its index.
    pub(super) fn add(&mut self, child: Child) -> usize {
        self.children.push(child);
        self.changed();
        self.children.len() - 1
    }

    /// Removes `child`, which has ended for good: the children after it move down by one.
    /// Returns it, to be dropped after unlocking (invariant 2).
    pub(super) fn remove(&mut self, child: usize) -> Child {
        debug_assert!(matches!(self.children[child].run, Run::Ended(_)));
        self.tasks.forget(child);
        self.changed();
        self.children.remove(child)
    }
}

/// The child of each task, in the order the tasks were spawned. The group numbers its tasks in
/// spawn order and only the runner spawns, so a new task goes last, the list stays sorted, and
/// a task is found by binary search. A reported task's entry is cleared, and cleared entries are
/// dropped once they outnumber the others: O(1) amortized, at most twice the entries needed,
/// however many children (100 000 start and stop in the benches; a `BTreeMap` cost 1 600
/// instructions per child there, a third of the rest).
#[derive(Default)]
struct Tasks {
    entries: Vec<(TaskId, Option<usize>)>,
    live: usize,
}

impl Tasks {
    fn insert(&mut self, id: TaskId, child: usize) {
        match self.entries.last() {
            // A task numbered out of order, which the runner never spawns, still goes in order.
            Some((last, _)) if *last > id => {
                let at = self.entries.partition_point(|(entry, _)| *entry < id);
                self.entries.insert(at, (id, Some(child)));
            }
            _ => self.entries.push((id, Some(child))),
        }
        self.live += 1;
    }

    fn remove(&mut self, id: TaskId) -> Option<usize> {
        let at = self
            .entries
            .binary_search_by_key(&id, |(entry, _)| *entry)
            .ok()?;
        let child = self.entries[at].1.take()?;
        self.live -= 1;
        if self.entries.len() > 2 * self.live {
            self.entries.retain(|(_, child)| child.is_some());
        }
        Some(child)
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// `child`, which has no task, is removed: the children after it move down by one.
    fn forget(&mut self, child: usize) {
        for (_, entry) in &mut self.entries {
            if let Some(at) = entry.as_mut().filter(|at| **at > child) {
                *at -= 1;
            }
        }
    }
}

impl Inner {
    pub(super) fn new(scope: Scope, strategy: Strategy, children: Vec<Child>) -> Inner {
        Inner {
            scope,
            strategy,
            done: Scope::new(),
            tree: Mutex::new(Tree::new(children)),
        }
    }

    /// This supervisor's tree, nested supervisors included, built without recursion: each
    /// level is taken on its own (under its own lock only), then the levels are nested.
    pub(crate) fn snapshot(&self) -> SupervisorSnapshot {
        self.versioned_snapshot().1
    }

    /// [`snapshot`](Inner::snapshot), and the version of this supervisor's tree it shows
    /// (invariant 8).
    pub(super) fn versioned_snapshot(&self) -> (u64, SupervisorSnapshot) {
        let now = Instant::now();
        let (root, nested, version) = self.level(now);
        // Each level, and where it goes: (index of its parent level, index of the child).
        let mut levels: Vec<(SupervisorSnapshot, Option<(usize, usize)>)> = vec![(root, None)];
        let mut todo: Vec<(Arc<Inner>, (usize, usize))> = nested
            .into_iter()
            .map(|(child, inner)| (inner, (0, child)))
            .collect();
        while let Some((inner, place)) = todo.pop() {
            let (level, nested, _) = inner.level(now);
            let at = levels.len();
            levels.push((level, Some(place)));
            todo.extend(
                nested
                    .into_iter()
                    .map(|(child, inner)| (inner, (at, child))),
            );
        }
        // A level's own nested levels come after it: from the last, each is complete.
        while levels.len() > 1 {
            let (level, place) = levels.pop().expect("more than one level");
            let (parent, child) = place.expect("only the first level has no parent");
            levels[parent].0.children[child].supervisor = Some(Box::new(level));
        }
        (version, levels.pop().expect("the root level").0)
    }

    /// This supervisor's own level of the tree, its nested supervisors' states by child, and
    /// the version of the tree it shows.
    fn level(&self, now: Instant) -> (SupervisorSnapshot, Vec<(usize, Arc<Inner>)>, u64) {
        let mut failures: Vec<(usize, Arc<dyn LastFailure>)> = Vec::new();
        let mut causes: Vec<(usize, Arc<dyn LastFailure>)> = Vec::new();
        let mut slots = Vec::new();
        let (state, cause, mut children, version) = {
            let tree = lock(&self.tree);
            let children: Vec<_> = tree
                .children
                .iter()
                .enumerate()
                .map(|(at, child)| {
                    if let Some(failure) = &child.last_failure {
                        failures.push((at, failure.clone()));
                    }
                    if let Some(LastCause::Of(failure)) = &child.last_cause {
                        causes.push((at, failure.clone()));
                    }
                    if let Some(slot) = &child.nested {
                        slots.push((at, slot.clone()));
                    }
                    child.snapshot(now)
                })
                .collect();
            (tree.state, tree.cause.clone(), children, tree.version)
        };
        // Outside our lock (invariant 2): failures run the user's `Display`, and each nested
        // supervisor's slot has its own lock.
        for (at, failure) in failures {
            children[at].last_failure = Some(failure.text());
        }
        for (at, failure) in causes {
            children[at].last_cause = Some(failure.cause());
        }
        let nested = slots
            .into_iter()
            .filter_map(|(child, slot)| {
                let inner = lock(&slot).as_ref().map(|inner| inner.get().clone())?;
                Some((child, inner))
            })
            .collect();
        let level = SupervisorSnapshot {
            path: self.scope.path().to_string(),
            strategy: self.strategy,
            state,
            cause,
            children,
        };
        (level, nested, version)
    }

    /// Asks the runner to abort every child now.
    pub(crate) fn force(&self) {
        self.force_by(Instant::now());
    }

    /// Asks the runner to abort every child still running at `at`, unless asked for earlier.
    pub(crate) fn force_by(&self, at: Instant) {
        let runner = {
            let mut tree = lock(&self.tree);
            tree.force_at = Some(tree.force_at.map_or(at, |asked| asked.min(at)));
            tree.runner.take()
        };
        if let Some(runner) = runner {
            runner.wake();
        }
    }

    /// The children this supervisor aborted during its shutdown, once it has ended.
    pub(super) fn aborted(&self) -> Vec<TaskInfo> {
        lock(&self.tree).aborted.clone()
    }

    /// Has [`force`](Inner::force) wake the runner's task; returns whether `waker` is new, not
    /// the one registered last. The waker is cloned, and the one it replaces dropped, outside
    /// the lock (invariant 2): a `force` in between finds no waker, but sets the flag before the
    /// runner reads it, since the runner reads it only after this.
    pub(super) fn register(&self, waker: &Waker) -> bool {
        let stale = {
            let mut tree = lock(&self.tree);
            match &tree.runner {
                Some(old) if old.will_wake(waker) => return false,
                _ => tree.runner.take(),
            }
        };
        drop(stale);
        let waker = waker.clone();
        let stale = lock(&self.tree).runner.replace(waker);
        drop(stale);
        true
    }

    /// When the runner is to abort every child still running, if it is asked to.
    pub(super) fn force_at(&self) -> Option<Instant> {
        lock(&self.tree).force_at
    }
}

#[cfg(test)]
mod tests {
    use super::Tasks;
    use crate::TaskId;

    #[test]
    fn tasks_are_found_once_and_cleared_entries_do_not_pile_up() {
        let mut tasks = Tasks::default();
        for id in 0..100 {
            tasks.insert(TaskId(id), id as usize);
        }
        // Restarts: the oldest task ends, a new one takes its child.
        for id in 100..10_000 {
            tasks.remove(TaskId(id - 100));
            tasks.insert(TaskId(id), (id % 100) as usize);
        }
        assert_eq!(tasks.live, 100);
        assert!(tasks.entries.len() <= 200);
        assert_eq!(tasks.remove(TaskId(9_899)), None);
        assert_eq!(tasks.remove(TaskId(9_999)), Some(99));
        assert_eq!(tasks.remove(TaskId(9_999)), None);
        // Out of order, which the runner never does, still in order.
        tasks.insert(TaskId(5), 7);
        assert_eq!(tasks.remove(TaskId(5)), Some(7));
        for id in 9_900..9_999 {
            assert_eq!(tasks.remove(TaskId(id)), Some((id % 100) as usize));
        }
        assert!(tasks.is_empty() && tasks.entries.is_empty());
    }
}
