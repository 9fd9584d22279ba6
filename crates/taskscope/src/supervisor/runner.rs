//! The supervisor's loop.
//!
//! The [`Runner`] is a future: spawned by [`SupervisorBuilder::start`](super::SupervisorBuilder::start),
//! or run inside its parent's child task when nested. It owns a [`TaskGroup`] whose scope is a
//! detached, unnamed child of the supervisor's scope, so that cancelling the supervisor's scope
//! does not reach the children at once: the runner stops them itself, in order.
//!
//! Invariants:
//!
//! 1. A child is its index, its start position: `specs[i]` is what it is made of (immutable,
//!    generic in the error type, so the runner's), `Tree::children[i]` all of its state (a
//!    [`Child`](super::child::Child)). Only the runner changes that state, in place, under the
//!    tree's lock; snapshots read it there. There is no other copy.
//! 2. No user code and no waker code runs under the tree's lock: a user's `Display`, predicate
//!    or factory, an observer, a scope's cancel (which runs its callbacks), a waker's clone,
//!    wake or drop. Whatever a change replaces (a run, which may hold a scope; a cause or a
//!    failure, which may hold a user's error) is returned and dropped after unlocking.
//! 3. A child's run changes only through `Tree::set_run`, which keeps `Tree::tasks` (the child
//!    of each task the group has not reported yet: exactly the `Running` and `Stopping` runs)
//!    and the count of `Waiting` runs. A `Held` run exists only while `plan` is set. So the
//!    runner has nothing left to do, and ends, when the tree is idle and there is no plan.
//! 4. At most one child is stopped gracefully at a time (`stopping`), so children stop one
//!    after the other in the order of `stop_queue` (reverse start order); a forced stop aborts
//!    them all at once.
//! 5. Once `shutdown` is set, nothing starts again: waiting and held runs end, the plan and the
//!    timers are dropped.
//! 6. A child's scope is cancelled only with a cause that is fully stamped (origin, time,
//!    location), so the scope stores that very cause and the child's error echoing it is
//!    recognised as a cancellation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::backoff::Rng;
use super::child::{Child, LastCause, Run, Task};
use super::failure::{ChildFailure, LastFailure};
use super::snapshot::{ChildState, SupervisorState};
use super::spec::{ChildSpec, Nested};
use super::tree::{Inner, Tree};
use super::{Backoff, Restart, Strategy, SupervisorError};
use crate::cause::Origin;
use crate::group::{Config, Spawned};
use crate::observe::{self, ChildRestarting};
use crate::path::Name;
use crate::sync::{Mutex, MutexGuard, lock};
use crate::{CancelledOwned, Cause, CauseKind, Failure, Outcome, Scope, TaskExit, TaskGroup};
use crate::{TaskId, TaskInfo};

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

/// A restart of several children (one-for-all, rest-for-one): they stop, then restart together.
struct Plan {
    /// The children in it.
    members: Vec<usize>,
    /// When they restart, at the earliest.
    at: Instant,
    /// What the stopped siblings are told.
    cause: Cause,
    /// Every member has stopped: the restart only waits for `at`.
    armed: bool,
}

/// The child being stopped gracefully (invariant 4).
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
    /// What each child is made of (invariant 1).
    specs: Vec<ChildSpec<E>>,
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
        let children = specs
            .iter()
            .map(|spec| {
                // One slot per nested supervisor, for this supervisor only (specs may be shared).
                let nested = spec.supervisor.then(|| Arc::new(Mutex::new(None)));
                Child::new(spec.name.clone(), nested)
            })
            .collect();
        let inner = Arc::new(Inner::new(scope.clone(), settings.strategy, children));
        let count = specs.len();
        let mut runner = Runner {
            inner,
            group,
            specs,
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

    /// The children's state (invariant 2: hold it only for bookkeeping).
    fn tree(&self) -> MutexGuard<'_, Tree> {
        lock(&self.inner.tree)
    }

    fn start(&mut self, child: usize, restart: bool) {
        let spec = &self.specs[child];
        let factory = spec.factory.clone();
        let slot = self.slot(child);
        let Spawned { id, started } =
            self.group
                .spawn_child(spec.name.clone(), spec.location, move |scope| {
                    factory(scope, slot.as_ref())
                });
        let run = Run::Running {
            id,
            task: started,
            since: Instant::now(),
        };
        let stale = {
            let mut tree = self.tree();
            let restarts = &mut tree.children[child].restarts;
            *restarts = restarts.saturating_add(u32::from(restart));
            tree.set_run(child, run)
        };
        drop(stale);
    }

    /// Restarts `child`, which has ended for the moment, unless the supervisor's scope was
    /// cancelled since the runner last looked: then it shuts down instead (invariant 5), so that
    /// nothing starts after `shutdown` returned, but for a cancel landing in the instant between
    /// this check and the spawn.
    fn restart_now(&mut self, child: usize) {
        match self.inner.scope.cause() {
            None => self.start(child, true),
            Some(cause) => {
                let last = LastCause::Given(cause.clone());
                self.end(child, ChildState::Cancelled, None, Some(last));
                self.begin_shutdown(cause);
            }
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SupervisorError<E>>> {
        self.inner.register(cx.waker());
        loop {
            // Exits alone are no reason to go round again: the group's waker is registered once
            // `poll_join_next` is pending, after every exit was handled and every task they
            // started was spawned. What follows can start, stop or time children, so it is.
            let mut progress = false;
            while let Poll::Ready(Some(exit)) = self.group.poll_join_next(cx) {
                self.on_exit(exit);
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
            // Invariant 3: nothing is left to run or to wait for.
            if self.plan.is_none() && self.tree().is_idle() {
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
        let TaskExit { task, outcome } = exit;
        // How the run was going: returned on its own (with its scope and start), or stopped.
        let (child, returned) = {
            let mut tree = self.tree();
            let Some(child) = tree.running(task.id) else {
                return;
            };
            let returned = match &mut tree.children[child].run {
                Run::Running { task, since, .. } => Some((task.take(), *since)),
                _ => None,
            };
            (child, returned)
        };
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
        match returned {
            Some((started, since)) => {
                let uptime = Instant::now().saturating_duration_since(since);
                let scope = started.map(|(_, scope)| scope);
                self.returned(child, task, outcome, scope, uptime);
            }
            None => {
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
                self.record(child, &task, outcome, cause, true);
                self.hold_or_stop(child, true);
            }
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
            self.record(child, &task, outcome, cause, cancelled);
            self.hold_or_stop(child, !cancelled && !done);
            return;
        }
        let restart = self.specs[child].restart;
        match outcome {
            Outcome::Failed(failure) => {
                let spec = &self.specs[child];
                let origin = self.origin(child, scope.as_ref());
                let failure = ChildFailure::new(spec.name.clone(), failure, origin, spec.location);
                let failure = Arc::new(failure);
                let cause = LastCause::Of(failure.clone());
                self.end(
                    child,
                    ChildState::Failed,
                    Some(failure.clone()),
                    Some(cause),
                );
                if restart == Restart::Never {
                    return;
                }
                if !self.allows(child, &failure) {
                    self.escalate(child, task, Some(failure), Escalation::Refused);
                    return;
                }
                self.restart(child, task, Some(failure), uptime);
            }
            outcome => {
                self.record(child, &task, outcome, None, false);
                if restart == Restart::Always {
                    self.restart(child, task, None, uptime);
                }
            }
        }
    }

    /// `child`'s path, the same for every run: made from its scope at its first failure.
    fn origin(&self, child: usize, scope: Option<&Scope>) -> Option<Origin> {
        let known = self.tree().children[child].origin.clone();
        known.or_else(|| {
            let origin = scope.and_then(|scope| scope.node.origin());
            self.tree().children[child].origin.clone_from(&origin);
            origin
        })
    }

    /// Records how a child ended, stopped with `cause` if any; lists it if it was aborted at
    /// shutdown.
    fn record(
        &mut self,
        child: usize,
        task: &TaskInfo,
        outcome: Outcome<(), E>,
        cause: Option<Cause>,
        cancelled: bool,
    ) {
        let (state, failure) = match outcome {
            Outcome::Completed(()) if cancelled => (ChildState::Cancelled, None),
            Outcome::Completed(()) => (ChildState::Completed, None),
            Outcome::Failed(failure) => {
                // For its text only: the child's last cause is `cause`, not the one it makes.
                let spec = &self.specs[child];
                let failure = ChildFailure::new(spec.name.clone(), failure, None, spec.location);
                let failure: Arc<dyn LastFailure> = Arc::new(failure);
                (ChildState::Failed, Some(failure))
            }
            Outcome::Cancelled(_) => (ChildState::Cancelled, None),
            Outcome::Aborted => {
                // What `join` reports: the children that did not stop in time at the end.
                if self.shutdown.is_some() {
                    self.aborted.push(task.clone());
                }
                (ChildState::Aborted, None)
            }
        };
        self.end(child, state, failure, cause.map(LastCause::Given));
    }

    /// Ends `child`'s run in `state`, with its last failure and cause when given.
    fn end(
        &self,
        child: usize,
        state: ChildState,
        failure: Option<Arc<dyn LastFailure>>,
        cause: Option<LastCause>,
    ) {
        let stale = {
            let mut tree = self.tree();
            let run = tree.set_run(child, Run::Ended(state));
            (run, tree.children[child].ended(failure, cause))
        };
        drop(stale);
    }

    /// Sets `child`'s run; the run it replaces is dropped after unlocking (invariant 2).
    fn set_run(&self, child: usize, run: Run) {
        let stale = self.tree().set_run(child, run);
        drop(stale);
    }

    /// A child that stopped waits for its plan's restart, if it is in one and may restart;
    /// otherwise it has stopped for good.
    fn hold_or_stop(&mut self, child: usize, may_restart: bool) {
        let held = may_restart
            && self.shutdown.is_none()
            && self.specs[child].restart != Restart::Never
            && self.in_plan(child);
        if held {
            self.set_run(child, Run::Held { at: None });
        } else if let Some(plan) = &mut self.plan {
            plan.members.retain(|member| *member != child);
        }
    }

    /// Where `child` publishes its latest run, if it is a nested supervisor.
    fn slot(&self, child: usize) -> Option<Nested> {
        if !self.specs[child].supervisor {
            return None;
        }
        self.tree().children[child].nested.clone()
    }

    /// The latest run of `child`, if it is a nested supervisor.
    fn nested(&self, child: usize) -> Option<Arc<Inner>> {
        let slot = self.slot(child)?;
        lock(&slot).as_ref().map(|inner| inner.get().clone())
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
        self.plan
            .as_ref()
            .is_some_and(|plan| plan.members.contains(&child))
    }

    /// What a child being stopped is told: the shutdown's cause, or the plan's.
    fn stop_cause(&self) -> Option<Cause> {
        self.shutdown
            .clone()
            .or_else(|| self.plan.as_ref().map(|plan| plan.cause.clone()))
    }

    /// Whether the child's restart predicate lets this failure be retried.
    fn allows(&self, child: usize, failure: &ChildFailure<E>) -> bool {
        match &self.specs[child].restart_if {
            None => true,
            Some(predicate) => panic::catch_unwind(AssertUnwindSafe(|| {
                predicate(failure.failure(), failure.cause())
            }))
            .unwrap_or(false),
        }
    }

    /// Restarts `child` (and, by the strategy, its siblings) after the backoff, unless that
    /// is one restart too many within the intensity window.
    fn restart(
        &mut self,
        child: usize,
        task: TaskInfo,
        failure: Option<Arc<ChildFailure<E>>>,
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
        let attempts = {
            let mut tree = self.tree();
            let attempts = &mut tree.children[child].attempts;
            if uptime >= backoff.reset_after_uptime() {
                *attempts = 0;
            }
            mem::replace(attempts, attempts.saturating_add(1))
        };
        let delay = backoff.delay(attempts, self.rng.next_f64());
        self.report_restart(child, delay, || {
            failure.as_ref().map(|failure| failure.cause())
        });
        let at = far_or(now, delay);
        match self.settings.strategy {
            Strategy::OneForOne if delay.is_zero() => self.restart_now(child),
            Strategy::OneForOne => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.set_run(child, Run::Waiting { ticket, at });
                self.timers.push(Reverse((at, child, ticket)));
            }
            Strategy::OneForAll => self.plan_restart(child, 0, at, failure),
            Strategy::RestForOne => self.plan_restart(child, child, at, failure),
        }
    }

    /// Tells the observer that `child` will restart after `delay`, because of `cause`, read only
    /// if there is an observer.
    fn report_restart<'a>(
        &self,
        child: usize,
        delay: Duration,
        cause: impl FnOnce() -> Option<&'a Cause>,
    ) {
        let Some(observer) = self.inner.scope.node.observer() else {
            return;
        };
        let cause = cause();
        let restarts = self.tree().children[child].restarts;
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
        failure: Option<Arc<ChildFailure<E>>>,
    ) {
        let cause = match failure {
            Some(failure) => failure.cause().clone(),
            None => {
                let spec = &self.specs[child];
                let origin = self.inner.scope.node.origin();
                Cause::of_kind(CauseKind::Shutdown)
                    .with_code("restart")
                    .with_detail(format!("restarting after '{}' returned", &*spec.name))
                    .stamped(|| origin, Instant::now(), spec.location)
            }
        };
        let mut tree = lock(&self.inner.tree);
        let plan = self.plan.get_or_insert_with(|| Plan {
            members: Vec::new(),
            at,
            cause,
            armed: false,
        });
        plan.at = plan.at.max(at);
        plan.armed = false;
        plan.members.push(child);
        let stale = tree.set_run(child, Run::Held { at: None });
        let mut siblings = Vec::new();
        for sibling in from..tree.children.len() {
            if plan.members.contains(&sibling) {
                continue;
            }
            match tree.children[sibling].run {
                Run::Running { .. } => self.stop_queue.push(sibling),
                Run::Stopping { .. } | Run::Held { .. } => {}
                // Waiting only happens one-for-one; an ended child has ended for good.
                Run::Waiting { .. } | Run::Ended(_) => continue,
            }
            plan.members.push(sibling);
            siblings.push(sibling);
        }
        drop(tree);
        drop(stale);
        let (at, cause) = (plan.at, plan.cause.clone());
        for sibling in siblings {
            let delay = at.saturating_duration_since(Instant::now());
            self.report_restart(sibling, delay, || Some(&cause));
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
        failure: Option<Arc<ChildFailure<E>>>,
        why: Escalation,
    ) {
        let spec = &self.specs[child];
        let name = &*spec.name;
        let failure_cause = failure.as_ref().map(|failure| failure.cause().clone());
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
            detail.push_str(&excerpt(&failure.text()));
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
        // The child's run has ended already.
        self.escalated = Some((task, failure.map(|failure| failure.to_failure())));
        // The supervisor's own scope stays as it is: an escalation is the supervisor failing,
        // reported by its return, and a parent supervisor restarts a failed child, never a
        // cancelled one.
        self.begin_shutdown(cause);
    }

    /// The supervisor's scope is cancelled: stop every child, last started first (invariant 5).
    fn begin_shutdown(&mut self, cause: Cause) {
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
        tree.state = if self.escalated.is_some() {
            SupervisorState::Escalated
        } else {
            SupervisorState::ShuttingDown
        };
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
    fn advance_stops(&mut self, now: Instant) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        while let Some(child) = self.stop_queue.pop() {
            let Some((id, task, since)) = self.take_running(child) else {
                // It ended meanwhile; its exit was handled.
                continue;
            };
            let cause = self
                .stop_cause()
                .expect("children stop for a shutdown or a plan");
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

    /// Aborts the stopping child once its grace is over; starts one-for-one restarts due.
    fn fire_timers(&mut self, now: Instant) -> bool {
        let mut progress = false;
        if let Some(stop) = &mut self.stopping
            && stop.abort_at.is_some_and(|at| at <= now)
        {
            stop.abort_at = None;
            let child = stop.child;
            let stopping = match self.tree().children[child].run {
                Run::Stopping { id, key, .. } => Some((id, key)),
                _ => None,
            };
            if let Some((id, key)) = stopping {
                self.abort(child, id, key);
            }
            progress = true;
        }
        while let Some(&Reverse((at, child, ticket))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let due = matches!(
                self.tree().children[child].run,
                Run::Waiting { ticket: current, .. } if current == ticket
            );
            if due {
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
            let mut tree = lock(&self.inner.tree);
            for &child in &plan.members {
                if let Run::Held { at } = &mut tree.children[child].run {
                    *at = Some(plan.at);
                }
            }
        }
        if plan.at > now {
            return false;
        }
        let mut plan = self.plan.take().expect("checked above");
        plan.members.sort_unstable();
        for child in plan.members {
            if matches!(self.tree().children[child].run, Run::Held { .. }) {
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

    fn finish(&mut self) -> Result<(), SupervisorError<E>> {
        self.finished = true;
        let escalated = self.escalated.take();
        let aborted = mem::take(&mut self.aborted);
        {
            let mut tree = self.tree();
            tree.state = if escalated.is_some() {
                SupervisorState::Escalated
            } else {
                SupervisorState::Stopped
            };
            tree.aborted.clone_from(&aborted);
        }
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
        let stale: Vec<Run> = {
            let mut tree = self.tree();
            tree.state = SupervisorState::Stopped;
            (0..tree.children.len())
                .filter(|&child| !matches!(tree.children[child].run, Run::Ended(_)))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|child| tree.set_run(child, Run::Ended(ChildState::Aborted)))
                .collect()
        };
        drop(stale);
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
