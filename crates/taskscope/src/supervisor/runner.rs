//! The supervisor's loop, and the state it shares with handles and snapshots.
//!
//! The [`Runner`] is a future: spawned by [`SupervisorBuilder::start`](super::SupervisorBuilder::start),
//! or run inside its parent's child task when nested. It owns a [`TaskGroup`] whose scope is a
//! detached, unnamed child of the supervisor's scope, so that cancelling the supervisor's scope
//! does not reach the children at once: the runner stops them itself, in order.
//!
//! Invariants:
//!
//! 1. Only the runner changes `runs`; `Tree::children` mirrors them for snapshots and is
//!    updated in the same step, under its lock, with no user code run under it.
//! 2. `active` counts the runs that are `Running` or `Stopping`: exactly the children whose task
//!    the group has not reported yet. `waiting` counts the runs that are `Waiting`. A `Held` run
//!    exists only while `plan` is set. So the runner has nothing left to do, and ends, when
//!    `active == 0`, `waiting == 0` and there is no plan.
//! 3. At most one child is stopped gracefully at a time (`stopping`), so children stop one
//!    after the other in the order of `stop_queue` (reverse start order); a forced stop aborts
//!    them all at once.
//! 4. Once `shutdown` is set, nothing starts again: waiting and held runs are stopped, the plan
//!    and the timers are dropped.
//! 5. A child's scope is cancelled only with a cause that is fully stamped (origin, time,
//!    location), so the scope stores that very cause and the child's error echoing it is
//!    recognised as a cancellation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;
use std::panic::{self, AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::backoff::Rng;
use super::snapshot::{ChildSnapshot, ChildState, SupervisorSnapshot, SupervisorState};
use super::spec::{ChildSpec, Nested};
use super::{Backoff, Restart, Strategy, SupervisorError};
use crate::cause::Origin;
use crate::group::{Config, Spawned, failure_cause};
use crate::observe::{self, ChildRestarting};
use crate::path::Name;
use crate::sync::{Mutex, lock};
use crate::text::displayed;
use crate::{CancelledOwned, Cause, CauseKind, Failure, Outcome, Scope, TaskExit, TaskGroup};
use crate::{TaskId, TaskInfo};

/// What a supervisor shares with its handles.
pub(crate) struct Inner {
    /// The supervisor's scope: cancelling it shuts the supervisor down.
    pub(crate) scope: Scope,
    pub(crate) strategy: Strategy,
    /// Cancelled when the runner has ended; never seen by users.
    pub(crate) done: Scope,
    tree: Mutex<Tree>,
}

struct Tree {
    state: SupervisorState,
    /// What the supervisor stops for: its scope's cause, or its escalation's.
    cause: Option<Cause>,
    children: Vec<View>,
    /// A forced shutdown was asked for.
    force: bool,
    /// The children aborted during the shutdown, once the runner has ended.
    aborted: Vec<TaskInfo>,
    runner: Option<Waker>,
}

/// What a snapshot shows of one child (invariant 1).
struct View {
    name: Name,
    status: Status,
    restarts: u32,
    started: Option<Instant>,
    last_failure: Option<String>,
    last_cause: Option<Cause>,
    nested: Option<Nested>,
}

#[derive(Clone, Copy)]
enum Status {
    Running,
    Stopping,
    /// Restarts at this instant; `None` while its siblings stop first.
    Restarting(Option<Instant>),
    Ended(ChildState),
}

impl Inner {
    /// This supervisor's tree, nested supervisors included, built without recursion: each
    /// level is taken on its own (under its own lock only), then the levels are nested.
    pub(crate) fn snapshot(&self) -> SupervisorSnapshot {
        let now = Instant::now();
        let (root, nested) = self.level(now);
        // Each level, and where it goes: (index of its parent level, index of the child).
        let mut levels: Vec<(SupervisorSnapshot, Option<(usize, usize)>)> = vec![(root, None)];
        let mut todo: Vec<(Arc<Inner>, (usize, usize))> = nested
            .into_iter()
            .map(|(child, inner)| (inner, (0, child)))
            .collect();
        while let Some((inner, place)) = todo.pop() {
            let (level, nested) = inner.level(now);
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
        levels.pop().expect("the root level").0
    }

    /// This supervisor's own level of the tree, and its nested supervisors' states by child.
    fn level(&self, now: Instant) -> (SupervisorSnapshot, Vec<(usize, Arc<Inner>)>) {
        let (state, cause, children, nested) = {
            let tree = lock(&self.tree);
            let children: Vec<ChildSnapshot> = tree
                .children
                .iter()
                .map(|view| view.snapshot(now))
                .collect();
            let slots: Vec<(usize, Nested)> = tree
                .children
                .iter()
                .enumerate()
                .filter_map(|(child, view)| Some((child, view.nested.clone()?)))
                .collect();
            (tree.state, tree.cause.clone(), children, slots)
        };
        // Outside our lock: each nested supervisor's slot has its own.
        let nested = nested
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
        (level, nested)
    }

    /// Asks the runner to abort every child now.
    pub(crate) fn force(&self) {
        let runner = {
            let mut tree = lock(&self.tree);
            tree.force = true;
            tree.runner.take()
        };
        if let Some(runner) = runner {
            runner.wake();
        }
    }

    /// The children this supervisor aborted during its shutdown, once it has ended.
    fn aborted(&self) -> Vec<TaskInfo> {
        lock(&self.tree).aborted.clone()
    }

    fn register(&self, waker: &Waker) {
        let mut tree = lock(&self.tree);
        match &tree.runner {
            Some(old) if old.will_wake(waker) => {}
            _ => tree.runner = Some(waker.clone()),
        }
    }

    fn take_force(&self) -> bool {
        mem::take(&mut lock(&self.tree).force)
    }

    fn set_state(&self, state: SupervisorState) {
        lock(&self.tree).state = state;
    }

    fn view(&self, child: usize, update: impl FnOnce(&mut View)) {
        update(&mut lock(&self.tree).children[child]);
    }
}

impl View {
    fn snapshot(&self, now: Instant) -> ChildSnapshot {
        let (state, uptime, restart_in) = match self.status {
            Status::Running => (ChildState::Running, self.uptime(now), None),
            Status::Stopping => (ChildState::Stopping, self.uptime(now), None),
            Status::Restarting(at) => (
                ChildState::Restarting,
                None,
                at.map(|at| at.saturating_duration_since(now)),
            ),
            Status::Ended(state) => (state, None, None),
        };
        ChildSnapshot {
            name: self.name.to_string(),
            state,
            restarts: self.restarts,
            uptime,
            restart_in,
            last_failure: self.last_failure.clone(),
            last_cause: self.last_cause.clone(),
            supervisor: None,
        }
    }

    fn uptime(&self, now: Instant) -> Option<Duration> {
        self.started
            .map(|started| now.saturating_duration_since(started))
    }
}

/// The settings a runner works with, checked by the builder.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) strategy: Strategy,
    pub(crate) backoff: Backoff,
    pub(crate) max_restarts: u32,
    pub(crate) window: Duration,
    /// The jitter's seed; random when `None`.
    pub(crate) seed: Option<u64>,
}

/// One child, as the runner tracks it.
enum Run {
    Running {
        id: TaskId,
        /// The task's slab key and scope; `None` if the group recorded it as cancelled.
        task: Option<(usize, Scope)>,
        since: Instant,
    },
    /// Its scope is cancelled; waiting for it to return.
    Stopping {
        id: TaskId,
        key: Option<usize>,
    },
    /// Backing off before a one-for-one restart; `ticket` tells its timer from stale ones.
    Waiting {
        ticket: u64,
    },
    /// Stopped, to restart with the plan.
    Held,
    Stopped,
}

/// A restart of several children (one-for-all, rest-for-one): they stop, then restart together.
struct Plan {
    members: Vec<bool>,
    /// When they restart, at the earliest.
    at: Instant,
    /// What the stopped siblings are told.
    cause: Cause,
    /// Every member has stopped: the restart only waits for `at`.
    armed: bool,
}

/// The child being stopped gracefully (invariant 3).
struct StopTimer {
    child: usize,
    /// When to abort it; `None` once aborted, or with a grace that never ends.
    abort_at: Option<Instant>,
}

enum Escalation {
    Intensity,
    Refused,
}

/// The supervisor itself: a future that ends when every child has stopped for good.
pub(crate) struct Runner<E>
where
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    inner: Arc<Inner>,
    group: TaskGroup<(), E>,
    specs: Vec<ChildSpec<E>>,
    /// Where each nested supervisor child publishes its latest run.
    nested: Vec<Option<Nested>>,
    runs: Vec<Run>,
    /// Consecutive restarts per child, for the backoff.
    attempts: Vec<u32>,
    by_task: HashMap<TaskId, usize, BuildHasherDefault<IdHasher>>,
    /// Each child's scope path, made at its first failure.
    paths: Vec<Option<Origin>>,
    settings: Settings,
    rng: Rng,
    /// When the restarts within the intensity window happened, oldest first.
    restarts: VecDeque<Instant>,
    /// One-for-one restarts, soonest first: `(at, child, ticket)`.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_ticket: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
    cancelled: CancelledOwned,
    shutdown: Option<Cause>,
    forced: bool,
    /// Children to stop, in start order: the last is stopped first.
    stop_queue: Vec<usize>,
    stopping: Option<StopTimer>,
    plan: Option<Plan>,
    escalated: Option<(TaskInfo, Option<Failure<E>>)>,
    aborted: Vec<TaskInfo>,
    active: usize,
    waiting: usize,
    location: &'static Location<'static>,
    finished: bool,
}

impl<E> Runner<E>
where
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    /// A supervisor in `scope`, with its children started.
    pub(crate) fn new(
        scope: Scope,
        settings: Settings,
        specs: Vec<ChildSpec<E>>,
        location: &'static Location<'static>,
    ) -> Self {
        let config = Config {
            limit: usize::MAX,
            // The runner enforces each child's own grace.
            grace: Duration::MAX,
            cancel_on_error: false,
            resume_panics: false,
        };
        let group = TaskGroup::on_scope(scope.detached_child(), config, location);
        // One slot per nested supervisor, for this supervisor only (specs may be shared).
        let nested: Vec<Option<Nested>> = specs
            .iter()
            .map(|spec| spec.supervisor.then(|| Arc::new(Mutex::new(None))))
            .collect();
        let children = specs
            .iter()
            .zip(&nested)
            .map(|(spec, nested)| View {
                name: spec.name.clone(),
                // Until it starts; it never does if the supervisor is cancelled first.
                status: Status::Ended(ChildState::Cancelled),
                restarts: 0,
                started: None,
                last_failure: None,
                last_cause: None,
                nested: nested.clone(),
            })
            .collect();
        let inner = Arc::new(Inner {
            scope: scope.clone(),
            strategy: settings.strategy,
            done: Scope::new(),
            tree: Mutex::new(Tree {
                state: SupervisorState::Running,
                cause: None,
                children,
                force: false,
                aborted: Vec::new(),
                runner: None,
            }),
        });
        let count = specs.len();
        let mut runner = Runner {
            inner,
            group,
            specs,
            nested,
            runs: (0..count).map(|_| Run::Stopped).collect(),
            attempts: vec![0; count],
            by_task: HashMap::with_capacity_and_hasher(count, Default::default()),
            paths: vec![None; count],
            rng: Rng::new(settings.seed.unwrap_or_else(Rng::random_seed)),
            settings,
            restarts: VecDeque::new(),
            timers: BinaryHeap::new(),
            next_ticket: 0,
            sleep: None,
            armed: None,
            cancelled: scope.clone().cancelled_owned(),
            shutdown: None,
            forced: false,
            stop_queue: Vec::new(),
            stopping: None,
            plan: None,
            escalated: None,
            aborted: Vec::new(),
            active: 0,
            waiting: 0,
            location,
            finished: false,
        };
        match scope.cause() {
            Some(cause) => runner.begin_shutdown(cause),
            None => (0..count).for_each(|child| runner.start(child, false)),
        }
        runner
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    fn start(&mut self, child: usize, restart: bool) {
        let spec = &self.specs[child];
        let factory = spec.factory.clone();
        let slot = self.nested[child].clone();
        let Spawned { id, started } =
            self.group
                .spawn_child(spec.name.clone(), spec.location, move |scope| {
                    factory(scope, slot.as_ref())
                });
        let now = Instant::now();
        self.by_task.insert(id, child);
        self.runs[child] = Run::Running {
            id,
            task: started,
            since: now,
        };
        self.active += 1;
        self.inner.view(child, |view| {
            view.status = Status::Running;
            view.started = Some(now);
            view.restarts = view.restarts.saturating_add(u32::from(restart));
        });
    }

    /// Restarts `child`, which is `Stopped` for the moment, unless the supervisor's scope was
    /// cancelled since the runner last looked: then it shuts down instead (invariant 4), so that
    /// nothing starts after `shutdown` returned, but for a cancel landing in the instant between
    /// this check and the spawn.
    fn restart_now(&mut self, child: usize) {
        match self.inner.scope.cause() {
            None => self.start(child, true),
            Some(cause) => {
                self.inner.view(child, |view| {
                    view.status = Status::Ended(ChildState::Cancelled);
                    view.last_cause = Some(cause.clone());
                });
                self.begin_shutdown(cause);
            }
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SupervisorError<E>>> {
        self.inner.register(cx.waker());
        loop {
            let mut progress = false;
            while let Poll::Ready(Some(exit)) = self.group.poll_join_next(cx) {
                self.on_exit(exit);
                progress = true;
            }
            if self.shutdown.is_none()
                && let Poll::Ready(cause) = Pin::new(&mut self.cancelled).poll(cx)
            {
                self.begin_shutdown(cause);
                progress = true;
            }
            if !self.forced && self.inner.take_force() {
                self.force();
                progress = true;
            }
            let now = Instant::now();
            progress |= self.fire_timers(now);
            progress |= self.advance_stops(now);
            progress |= self.advance_plan(now);
            // Invariant 2: nothing is left to run or to wait for.
            if self.active == 0 && self.waiting == 0 && self.plan.is_none() {
                return Poll::Ready(self.finish());
            }
            if progress {
                continue;
            }
            let Some(at) = self.next_wakeup() else {
                return Poll::Pending;
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if self.armed != Some(at) {
                sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed = None;
        }
    }

    /// The soonest timer: the stopping child's abort, a one-for-one restart, a planned restart.
    fn next_wakeup(&self) -> Option<Instant> {
        let abort = self.stopping.as_ref().and_then(|stop| stop.abort_at);
        let restart = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let plan = self
            .plan
            .as_ref()
            .filter(|plan| plan.armed)
            .map(|plan| plan.at);
        [abort, restart, plan].into_iter().flatten().min()
    }

    fn on_exit(&mut self, exit: TaskExit<(), E>) {
        let Some(child) = self.by_task.remove(&exit.task.id) else {
            return;
        };
        let TaskExit { task, outcome } = exit;
        if self.shutdown.is_some()
            && let Some(nested) = self.nested(child)
        {
            // A nested supervisor's aborted children are this shutdown's too.
            let name = &self.specs[child].name;
            self.aborted
                .extend(nested.aborted().into_iter().map(|grandchild| TaskInfo {
                    name: Name::Shared(Arc::from(format!("{}/{}", &**name, grandchild.name()))),
                    ..grandchild
                }));
        }
        match mem::replace(&mut self.runs[child], Run::Stopped) {
            Run::Running {
                task: started,
                since,
                ..
            } => {
                self.active -= 1;
                let uptime = Instant::now().saturating_duration_since(since);
                self.returned(
                    child,
                    task,
                    outcome,
                    started.map(|(_, scope)| scope),
                    uptime,
                );
            }
            Run::Stopping { .. } => {
                self.active -= 1;
                if self
                    .stopping
                    .as_ref()
                    .is_some_and(|stop| stop.child == child)
                {
                    self.stopping = None;
                }
                let cause = match &outcome {
                    Outcome::Cancelled(cause) => Some(cause.clone()),
                    _ => self.stop_cause(),
                };
                self.record(child, &task, &outcome, cause, true);
                self.hold_or_stop(child, true);
            }
            other => self.runs[child] = other,
        }
    }

    /// A running child returned (or panicked, or was aborted) without being asked to stop.
    fn returned(
        &mut self,
        child: usize,
        task: TaskInfo,
        outcome: Outcome<(), E>,
        scope: Option<Scope>,
        uptime: Duration,
    ) {
        let own_cause = scope.as_ref().and_then(Scope::cause);
        let cancelled = own_cause.is_some()
            || self.shutdown.is_some()
            || matches!(outcome, Outcome::Cancelled(_) | Outcome::Aborted);
        if cancelled || self.in_plan(child) {
            // Stopped by a cancellation: never restarted. Or about to restart with its
            // siblings anyway, unless it returned `Ok` and only restarts on failure: its
            // failure changes nothing.
            let cause = match &outcome {
                Outcome::Cancelled(cause) => Some(cause.clone()),
                _ => own_cause.or_else(|| self.shutdown.clone()),
            };
            let done = matches!(outcome, Outcome::Completed(()))
                && self.specs[child].restart != Restart::Always;
            self.record(child, &task, &outcome, cause, cancelled);
            self.hold_or_stop(child, !cancelled && !done);
            return;
        }
        let restart = self.specs[child].restart;
        match outcome {
            Outcome::Failed(failure) => {
                let spec = &self.specs[child];
                // Every run of a child has the same path: made once.
                if self.paths[child].is_none() {
                    self.paths[child] = scope.as_ref().and_then(|scope| scope.node.origin());
                }
                let origin = self.paths[child].clone();
                // It formats the user's error; a `Display` that panics must not take the
                // supervisor down.
                let cause =
                    panic::catch_unwind(AssertUnwindSafe(|| failure_cause(&spec.name, &failure)))
                        .unwrap_or_else(|_| {
                            Cause::of_kind(CauseKind::TaskFailed).with_detail(format!(
                                "task '{}' failed: (its error's Display panicked)",
                                &*spec.name
                            ))
                        })
                        .stamped(|| origin, Instant::now(), spec.location);
                let outcome = Outcome::Failed(failure);
                self.record(child, &task, &outcome, Some(cause.clone()), false);
                let Outcome::Failed(failure) = outcome else {
                    unreachable!("just made")
                };
                if restart == Restart::Never {
                    return;
                }
                if !self.allows(child, &failure, &cause) {
                    self.escalate(child, task, Some((failure, cause)), Escalation::Refused);
                    return;
                }
                self.restart(child, task, Some((failure, cause)), uptime);
            }
            outcome => {
                self.record(child, &task, &outcome, None, false);
                if restart == Restart::Always {
                    self.restart(child, task, None, uptime);
                }
            }
        }
    }

    /// Mirrors how a child ended in its view; lists it if it was aborted at shutdown.
    fn record(
        &mut self,
        child: usize,
        task: &TaskInfo,
        outcome: &Outcome<(), E>,
        cause: Option<Cause>,
        cancelled: bool,
    ) {
        let (state, failure) = match outcome {
            Outcome::Completed(()) if cancelled => (ChildState::Cancelled, None),
            Outcome::Completed(()) => (ChildState::Completed, None),
            Outcome::Failed(failure) => (ChildState::Failed, Some(describe(failure))),
            Outcome::Cancelled(_) => (ChildState::Cancelled, None),
            Outcome::Aborted => {
                // What `join` reports: the children that did not stop in time at the end.
                if self.shutdown.is_some() {
                    self.aborted.push(task.clone());
                }
                (ChildState::Aborted, None)
            }
        };
        self.inner.view(child, |view| {
            view.status = Status::Ended(state);
            if failure.is_some() {
                view.last_failure = failure;
            }
            if cause.is_some() {
                view.last_cause = cause;
            }
        });
    }

    /// A child that stopped waits for its plan's restart, if it is in one and may restart;
    /// otherwise it has stopped for good.
    fn hold_or_stop(&mut self, child: usize, may_restart: bool) {
        let held = may_restart
            && self.shutdown.is_none()
            && self.specs[child].restart != Restart::Never
            && self.in_plan(child);
        if held {
            self.runs[child] = Run::Held;
            self.inner
                .view(child, |view| view.status = Status::Restarting(None));
        } else {
            self.runs[child] = Run::Stopped;
            if let Some(plan) = &mut self.plan {
                plan.members[child] = false;
            }
        }
    }

    /// The latest run of `child`, if it is a nested supervisor.
    fn nested(&self, child: usize) -> Option<Arc<Inner>> {
        lock(self.nested[child].as_ref()?)
            .as_ref()
            .map(|inner| inner.get().clone())
    }

    /// Aborts the run `id` of `child`; a nested supervisor is forced instead, so that it aborts
    /// its own children and names them.
    fn abort(&self, child: usize, id: TaskId, key: Option<usize>) {
        match self.nested(child) {
            Some(nested) => nested.force(),
            None => {
                if let Some(key) = key {
                    self.group.abort_task(key, id);
                }
            }
        }
    }

    fn in_plan(&self, child: usize) -> bool {
        self.plan.as_ref().is_some_and(|plan| plan.members[child])
    }

    /// What a child being stopped is told: the shutdown's cause, or the plan's.
    fn stop_cause(&self) -> Option<Cause> {
        self.shutdown
            .clone()
            .or_else(|| self.plan.as_ref().map(|plan| plan.cause.clone()))
    }

    /// Whether the child's restart predicate lets this failure be retried.
    fn allows(&self, child: usize, failure: &Failure<E>, cause: &Cause) -> bool {
        match &self.specs[child].restart_if {
            None => true,
            Some(predicate) => {
                panic::catch_unwind(AssertUnwindSafe(|| predicate(failure, cause))).unwrap_or(false)
            }
        }
    }

    /// Restarts `child` (and, by the strategy, its siblings) after the backoff, unless that
    /// is one restart too many within the intensity window.
    fn restart(
        &mut self,
        child: usize,
        task: TaskInfo,
        failure: Option<(Failure<E>, Cause)>,
        uptime: Duration,
    ) {
        let now = Instant::now();
        if let Some(horizon) = now.checked_sub(self.settings.window) {
            while self.restarts.front().is_some_and(|at| *at <= horizon) {
                self.restarts.pop_front();
            }
        }
        if self.restarts.len() >= self.settings.max_restarts as usize {
            self.escalate(child, task, failure, Escalation::Intensity);
            return;
        }
        self.restarts.push_back(now);
        let backoff = &self.settings.backoff;
        if uptime >= backoff.reset_after_uptime() {
            self.attempts[child] = 0;
        }
        let delay = backoff.delay(self.attempts[child], self.rng.next_f64());
        self.attempts[child] = self.attempts[child].saturating_add(1);
        self.report_restart(child, delay, failure.as_ref().map(|(_, cause)| cause));
        let at = far_or(now, delay);
        match self.settings.strategy {
            Strategy::OneForOne if delay.is_zero() => {
                self.runs[child] = Run::Stopped;
                self.restart_now(child);
            }
            Strategy::OneForOne => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.runs[child] = Run::Waiting { ticket };
                self.waiting += 1;
                self.timers.push(Reverse((at, child, ticket)));
                self.inner
                    .view(child, |view| view.status = Status::Restarting(Some(at)));
            }
            Strategy::OneForAll => self.plan_restart(child, 0, at, failure),
            Strategy::RestForOne => self.plan_restart(child, child, at, failure),
        }
    }

    /// Tells the observer that `child` will restart after `delay`, because of `cause`.
    fn report_restart(&self, child: usize, delay: Duration, cause: Option<&Cause>) {
        let Some(observer) = self.inner.scope.node.observer() else {
            return;
        };
        let mut restarts = 0;
        self.inner.view(child, |view| restarts = view.restarts);
        observe::notify(observer, |o| {
            o.child_restarting(&ChildRestarting {
                supervisor: &self.inner.scope,
                child: &self.specs[child].name,
                restarts,
                delay,
                cause,
            })
        });
    }

    /// Restarts `child` and its running siblings from `from` on together, once they have
    /// stopped, in reverse start order, and `at` has come.
    fn plan_restart(
        &mut self,
        child: usize,
        from: usize,
        at: Instant,
        failure: Option<(Failure<E>, Cause)>,
    ) {
        let count = self.specs.len();
        let cause = match failure {
            Some((_, cause)) => cause,
            None => {
                let spec = &self.specs[child];
                let origin = self.inner.scope.node.origin();
                Cause::of_kind(CauseKind::Shutdown)
                    .with_code("restart")
                    .with_detail(format!("restarting after '{}' returned", &*spec.name))
                    .stamped(|| origin, Instant::now(), spec.location)
            }
        };
        let plan = self.plan.get_or_insert_with(|| Plan {
            members: vec![false; count],
            at,
            cause,
            armed: false,
        });
        plan.at = plan.at.max(at);
        plan.armed = false;
        plan.members[child] = true;
        self.runs[child] = Run::Held;
        self.inner
            .view(child, |view| view.status = Status::Restarting(None));
        let mut siblings = Vec::new();
        for sibling in from..count {
            if plan.members[sibling] {
                continue;
            }
            match self.runs[sibling] {
                Run::Running { .. } => {
                    plan.members[sibling] = true;
                    self.stop_queue.push(sibling);
                }
                Run::Stopping { .. } | Run::Held => plan.members[sibling] = true,
                // Waiting only happens one-for-one; a stopped child has ended for good.
                Run::Waiting { .. } | Run::Stopped => continue,
            }
            siblings.push(sibling);
        }
        let (at, cause) = (plan.at, plan.cause.clone());
        for sibling in siblings {
            let delay = at.saturating_duration_since(Instant::now());
            self.report_restart(sibling, delay, Some(&cause));
        }
        self.stop_queue.sort_unstable();
        self.stop_queue.dedup();
    }

    /// Fails the supervisor because of `child`: cancels its scope with a cause that names the
    /// child and carries its last failure, then stops every child.
    fn escalate(
        &mut self,
        child: usize,
        task: TaskInfo,
        failure: Option<(Failure<E>, Cause)>,
        why: Escalation,
    ) {
        let spec = &self.specs[child];
        let name = &*spec.name;
        let (failure, failure_cause) = match failure {
            Some((failure, cause)) => (Some(failure), Some(cause)),
            None => (None, None),
        };
        let kind = failure_cause
            .as_ref()
            .map_or(CauseKind::TaskFailed, Cause::kind);
        let mut detail = match why {
            Escalation::Intensity => format!(
                "child '{name}' needed more than {} restarts within {:?}",
                self.settings.max_restarts, self.settings.window
            ),
            Escalation::Refused => format!("child '{name}' failed and may not be restarted"),
        };
        let mut cause = Cause::of_kind(kind);
        match why {
            Escalation::Intensity => cause = cause.with_code("restart_intensity"),
            Escalation::Refused => {
                if let Some(failure_cause) = &failure_cause {
                    cause = cause.with_code_of(failure_cause);
                }
            }
        }
        if let Some(failure) = &failure {
            let separator = match why {
                Escalation::Intensity => "; last failure: ",
                Escalation::Refused => ": ",
            };
            detail.push_str(separator);
            detail.push_str(&excerpt(&describe(failure)));
        }
        let origin = failure_cause
            .as_ref()
            .and_then(|cause| cause.origin().map(Arc::from))
            .or_else(|| child_path(&self.inner.scope, name))
            .map(Origin::from);
        let mut cause = cause.with_detail(detail);
        if let Some(failure_cause) = failure_cause {
            cause = cause.with_source(failure_cause);
        }
        let cause = cause.stamped(|| origin, Instant::now(), spec.location);
        self.escalated = Some((task, failure));
        self.runs[child] = Run::Stopped;
        // The supervisor's own scope stays as it is: an escalation is the supervisor failing,
        // reported by its return, and a parent supervisor restarts a failed child, never a
        // cancelled one.
        self.begin_shutdown(cause);
    }

    /// The supervisor's scope is cancelled: stop every child, last started first (invariant 4).
    fn begin_shutdown(&mut self, cause: Cause) {
        if self.shutdown.is_some() {
            return;
        }
        // Stamped once here (invariant 5): every child is then told this very cause.
        let origin = self.inner.scope.node.origin();
        let cause = cause.stamped(|| origin, Instant::now(), self.location);
        self.shutdown = Some(cause.clone());
        self.plan = None;
        self.timers.clear();
        self.stop_queue.clear();
        let mut tree = lock(&self.inner.tree);
        tree.cause = Some(cause.clone());
        tree.state = if self.escalated.is_some() {
            SupervisorState::Escalated
        } else {
            SupervisorState::ShuttingDown
        };
        for (child, run) in self.runs.iter_mut().enumerate() {
            match run {
                Run::Waiting { .. } | Run::Held => {
                    if matches!(run, Run::Waiting { .. }) {
                        self.waiting -= 1;
                    }
                    *run = Run::Stopped;
                    let view = &mut tree.children[child];
                    view.status = Status::Ended(ChildState::Cancelled);
                    view.last_cause = Some(cause.clone());
                }
                Run::Running { .. } => self.stop_queue.push(child),
                Run::Stopping { .. } | Run::Stopped => {}
            }
        }
    }

    /// Starts stopping the next child of the queue, if none is being stopped (invariant 3).
    fn advance_stops(&mut self, now: Instant) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        while let Some(child) = self.stop_queue.pop() {
            if !matches!(self.runs[child], Run::Running { .. }) {
                // It ended meanwhile; its exit was handled.
                continue;
            }
            let Run::Running { id, task, .. } = mem::replace(&mut self.runs[child], Run::Stopped)
            else {
                unreachable!("checked above");
            };
            let cause = self
                .stop_cause()
                .expect("children stop for a shutdown or a plan");
            let spec = &self.specs[child];
            let key = task.as_ref().map(|(key, _)| *key);
            if let Some((key, scope)) = task {
                // A callback panicking here was reported by the panic hook.
                let _ = scope.node.cancel(cause.clone(), spec.location);
                self.group.child_stopped(key, id, &cause);
            }
            self.runs[child] = Run::Stopping { id, key };
            self.inner
                .view(child, |view| view.status = Status::Stopping);
            self.stopping = Some(StopTimer {
                child,
                abort_at: now.checked_add(spec.grace),
            });
            return true;
        }
        false
    }

    /// Aborts the stopping child once its grace is over; starts one-for-one restarts due.
    fn fire_timers(&mut self, now: Instant) -> bool {
        let mut progress = false;
        if let Some(stop) = &mut self.stopping
            && stop.abort_at.is_some_and(|at| at <= now)
        {
            stop.abort_at = None;
            let child = stop.child;
            if let Run::Stopping { id, key } = self.runs[child] {
                self.abort(child, id, key);
            }
            progress = true;
        }
        while let Some(&Reverse((at, child, ticket))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if matches!(self.runs[child], Run::Waiting { ticket: current } if current == ticket) {
                self.waiting -= 1;
                self.runs[child] = Run::Stopped;
                self.restart_now(child);
                progress = true;
            }
        }
        progress
    }

    /// Restarts the plan's children in start order, once all of them have stopped and its
    /// backoff is over.
    fn advance_plan(&mut self, now: Instant) -> bool {
        let Some(plan) = &mut self.plan else {
            return false;
        };
        if self.stopping.is_some() || !self.stop_queue.is_empty() {
            return false;
        }
        if !plan.armed {
            plan.armed = true;
            let at = plan.at;
            let mut tree = lock(&self.inner.tree);
            for (child, member) in plan.members.iter().enumerate() {
                if *member {
                    tree.children[child].status = Status::Restarting(Some(at));
                }
            }
        }
        if plan.at > now {
            return false;
        }
        let plan = self.plan.take().expect("checked above");
        for (child, member) in plan.members.into_iter().enumerate() {
            if member && matches!(self.runs[child], Run::Held) {
                self.runs[child] = Run::Stopped;
                self.restart_now(child);
            }
        }
        true
    }

    /// Aborts every child now (a second signal): no more graces.
    fn force(&mut self) {
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
        for child in (0..self.runs.len()).rev() {
            let (id, key) = match mem::replace(&mut self.runs[child], Run::Stopped) {
                Run::Running { id, task, .. } => {
                    let key = task.as_ref().map(|(key, _)| *key);
                    if let Some((_, scope)) = task {
                        let _ = scope.node.cancel(cause.clone(), self.specs[child].location);
                    }
                    self.inner
                        .view(child, |view| view.status = Status::Stopping);
                    (id, key)
                }
                Run::Stopping { id, key } => (id, key),
                other => {
                    self.runs[child] = other;
                    continue;
                }
            };
            self.runs[child] = Run::Stopping { id, key };
            self.abort(child, id, key);
        }
    }

    fn finish(&mut self) -> Result<(), SupervisorError<E>> {
        self.finished = true;
        let escalated = self.escalated.take();
        self.inner.set_state(if escalated.is_some() {
            SupervisorState::Escalated
        } else {
            SupervisorState::Stopped
        });
        let aborted = mem::take(&mut self.aborted);
        lock(&self.inner.tree).aborted.clone_from(&aborted);
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

impl<E> Future for Runner<E>
where
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    type Output = Result<(), SupervisorError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Pending;
        }
        this.poll_run(cx)
    }
}

impl<E> Drop for Runner<E>
where
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished (aborted, or its runtime shut down): the group's own drop cancels
        // and aborts the children; handles see the supervisor stopped.
        {
            let mut tree = lock(&self.inner.tree);
            tree.state = SupervisorState::Stopped;
            for view in &mut tree.children {
                if !matches!(view.status, Status::Ended(_)) {
                    view.status = Status::Ended(ChildState::Aborted);
                }
            }
        }
        let _ = self.inner.done.node.cancel(Cause::plain(), self.location);
    }
}

/// The path a child of the supervisor in `scope` has: `supervisor/child`.
fn child_path(scope: &Scope, name: &str) -> Option<Arc<str>> {
    let path = scope.path();
    Some(if path.is_empty() {
        Arc::from(name)
    } else {
        Arc::from(format!("{path}/{name}"))
    })
}

/// `now + delay`, or an instant so far away it never comes when that cannot be represented.
fn far_or(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

/// At most this many characters of a failure's text go into an escalation's detail.
const EXCERPT: usize = 200;

/// `text` as it appears inside an escalation's detail: its first [`EXCERPT`] characters, the
/// rest in the cause's source chain. Whole, each level of nested supervisors escalating would
/// repeat every level below it: memory quadratic in the depth.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A failure as a snapshot shows it: the error's `Display`, or the panic.
fn describe<E: fmt::Display>(failure: &Failure<E>) -> String {
    match failure {
        Failure::Error(error) => displayed(&**error),
        Failure::Panic(message) => format!("panicked: {message}"),
    }
}

/// Hashes a [`TaskId`], a number unique within the group, as itself: no need for SipHash's
/// defence against chosen keys.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Spread sequential ids over the table's buckets (Fibonacci hashing).
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
