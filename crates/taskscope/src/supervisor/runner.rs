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
//!    tree's lock; snapshots read it there. There is no other copy. A child added at runtime
//!    goes last; a child deleted at runtime has ended for good, and every index the runner
//!    keeps of the children after it (the group's tasks, the queue of stops, the timers, the
//!    plan) moves down by one with them, in the same step (`Runner::forget`).
//! 2. No user code and no waker code runs under the tree's lock: a user's `Display`, predicate
//!    or factory, an observer, a scope's cancel (which runs its callbacks), a waker's clone,
//!    wake or drop. Whatever a change replaces (a run, which may hold a scope; a cause or a
//!    failure, which may hold a user's error) is returned and dropped after unlocking.
//! 3. A child's run changes only through `Tree::set_run`, which counts the `Waiting` runs and
//!    adds each new task to `Tree::tasks`; the runner takes a task out when the group reports
//!    it, and ends that run at once. So `Tree::tasks` holds the child of each task the group
//!    has not reported yet: exactly the `Running` and `Stopping` runs, but during `on_exit`. A
//!    `Held` run exists only while `plan` is set. So the runner has nothing left to do, and
//!    ends, when the tree is idle and there is no plan.
//! 4. At most one child is stopped gracefully at a time (`stopping`), so children stop one
//!    after the other in the order of `stop_queue` (reverse start order); a forced stop aborts
//!    them all at once.
//! 5. Once `shutdown` is set, nothing starts again: waiting and held runs end, the plan and the
//!    timers are dropped.
//! 6. A child's scope is cancelled only with a cause that is fully stamped (origin, time,
//!    location), so the scope stores that very cause and the child's error echoing it is
//!    recognised as a cancellation.
//! 7. Handles change children only through `Tree::requests`, which the runner takes at the
//!    end of each turn (`Tree::end_turn`) and serves in order, as its own steps. Requests are
//!    queued only while the supervisor is `Running`; once `shutdown` is set, those still queued
//!    are refused with its cause, and those left when the runner ends are dropped (their
//!    futures answer that it stopped). A terminated child's run ends for good (`Child::terminate`),
//!    and its requesters are answered when it does.
//! 8. Every change the runner makes to what a snapshot shows counts in `Tree::version`, under
//!    the same lock (`Tree::set_run` counts the runs). At the end of a turn that changed it,
//!    and when the runner ends, the subscribers waiting for a change are taken out of the tree
//!    and woken after unlocking; with none, that is one comparison.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use restart::{Escalation, Plan};
use shutdown::StopTimer;

use super::backoff::Rng;
use super::changes;
use super::child::{Child, LastCause, Run};
use super::failure::{ChildFailure, LastFailure};
use super::snapshot::{ChildState, SupervisorState};
use super::spec::{ChildSpec, Nested};
use super::tree::{Inner, Tree};
use super::{Backoff, Restart, Strategy, SupervisorError};
use crate::cancelled::CancelledOwned;
use crate::group::{Config, Spawned};
use crate::path::Name;
use crate::sync::{Mutex, MutexGuard, lock};
use crate::{Cause, Failure, Outcome, Scope, TaskError, TaskExit, TaskGroup};
use crate::{TaskId, TaskInfo};

mod requests;
mod restart;
mod shutdown;

/// The settings a runner works with, checked by the builder.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) strategy: Strategy,
    pub(crate) backoff: Backoff,
    pub(crate) max_restarts: u32,
    pub(crate) window: Duration,
    /// The jitter's seed; random when `None`.
    pub(crate) seed: Option<u64>,
    /// Stays up with no child running, until shut down.
    pub(crate) until_shutdown: bool,
}

/// The supervisor itself: a future that ends when every child has stopped for good.
pub(crate) struct Runner<E>
where
    E: TaskError,
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
    E: TaskError,
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
            supervisor: true,
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
            None => {
                let now = Instant::now();
                (0..count).for_each(|child| runner.start(child, false, now));
            }
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

    /// Starts a run of `child`, at `now`.
    fn start(&mut self, child: usize, restart: bool, now: Instant) {
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
            since: now,
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
    fn restart_now(&mut self, child: usize, now: Instant) {
        match self.inner.scope.cause() {
            None => self.start(child, true, now),
            Some(cause) => {
                let last = LastCause::Given(cause.clone());
                self.end(child, ChildState::Cancelled, None, Some(last));
                self.begin_shutdown(cause);
            }
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SupervisorError<E>>> {
        let mut new_waker = self.inner.register(cx.waker());
        loop {
            // One clock read a turn, for everything the turn does: reading the clock weighs on
            // a restart (a tenth of its time once, on this machine's virtual clock).
            let now = Instant::now();
            // Exits alone need no second turn: the drain below ends with the group empty or
            // pending, so it wakes this task for the next exit, also of a task an exit started.
            // The steps after it start, stop and time children: their progress needs one.
            let mut progress = false;
            while let Poll::Ready(Some(exit)) = self.group.poll_join_next(cx) {
                self.on_exit(exit, now);
            }
            // Without a deadline, `cancelled` pending has registered the waker it was polled
            // with on the scope: it is polled again only with a new waker, or to take the cause.
            // (A deadline's timer may return pending without registering, when the task has
            // spent its cooperative budget: then it is polled every turn.)
            if self.shutdown.is_none()
                && (mem::take(&mut new_waker)
                    || self.inner.scope.deadline().is_some()
                    || self.inner.scope.is_cancelled())
                && let Poll::Ready(cause) = Pin::new(&mut self.cancelled).poll(cx)
            {
                self.begin_shutdown(cause);
                progress = true;
            }
            let force_at = self.inner.force_at().filter(|_| !self.forced);
            // `now` may predate a force asked for from another thread during this turn.
            if force_at.is_some_and(|at| at <= now || at <= Instant::now()) {
                self.force();
                progress = true;
            }
            progress |= self.abort_overdue(now);
            progress |= self.restart_due(now);
            progress |= self.advance_stops(now);
            progress |= self.advance_plan(now);
            let turn = self.tree().end_turn();
            changes::wake(turn.watchers);
            // Invariant 7: served as steps of the runner's own, then looked at by another turn.
            if !turn.requests.is_empty() {
                self.serve(turn.requests, now);
                continue;
            }
            // Invariant 3: nothing is left to run or to wait for.
            let stays = self.settings.until_shutdown && self.shutdown.is_none();
            if self.plan.is_none() && turn.idle && !stays {
                return Poll::Ready(self.finish());
            }
            if progress {
                continue;
            }
            let Some(at) = self.next_wakeup().into_iter().chain(force_at).min() else {
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

    fn on_exit(&mut self, exit: TaskExit<(), E>, now: Instant) {
        let TaskExit { task, outcome } = exit;
        // How the run was going: returned on its own (with its scope and start), or stopped;
        // and whether it is being terminated, with what cause.
        let (child, returned, terminating) = {
            let mut tree = self.tree();
            let Some(child) = tree.reported(task.id) else {
                return;
            };
            let child_state = &mut tree.children[child];
            let terminating = child_state.terminate.as_ref().map(|t| t.cause.clone());
            let returned = match &mut child_state.run {
                Run::Running { task, since, .. } => Some((task.take(), *since)),
                _ => None,
            };
            (child, returned, terminating)
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
                let uptime = now.saturating_duration_since(since);
                let scope = started.map(|(_, scope)| scope);
                let run = Returned {
                    task,
                    outcome,
                    scope,
                    uptime,
                    terminating,
                };
                self.returned(child, run, now);
            }
            None => {
                if self
                    .stopping
                    .as_ref()
                    .is_some_and(|stop| stop.child == child)
                {
                    self.stopping = None;
                }
                let may_restart = terminating.is_none();
                let cause = match &outcome {
                    Outcome::Cancelled(cause) => Some(cause.clone()),
                    _ => self.stop_cause(terminating),
                };
                self.record(child, &task, outcome, cause, true);
                self.hold_or_stop(child, may_restart);
            }
        }
    }

    /// A running child returned (or panicked, or was aborted) without being asked to stop, at
    /// `now`.
    fn returned(&mut self, child: usize, run: Returned<E>, now: Instant) {
        let Returned {
            task,
            outcome,
            scope,
            uptime,
            terminating,
        } = run;
        let own_cause = scope.as_ref().and_then(Scope::cause);
        // Being terminated, it stops for good however it returned.
        let cancelled = own_cause.is_some()
            || self.shutdown.is_some()
            || terminating.is_some()
            || matches!(outcome, Outcome::Cancelled(_) | Outcome::Aborted);
        if cancelled || self.in_plan(child) {
            // Stopped by a cancellation: never restarted. Or about to restart with its
            // siblings anyway, unless it returned `Ok` and only restarts on failure: its
            // failure changes nothing.
            let cause = match &outcome {
                Outcome::Cancelled(cause) => Some(cause.clone()),
                _ => own_cause.or_else(|| self.shutdown.clone()).or(terminating),
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
                let state = failed_state(&failure);
                // The path of the run's scope, which every run of the child has.
                let origin = scope.as_ref().and_then(|scope| scope.node.origin());
                let failure =
                    ChildFailure::new(spec.name.clone(), failure, origin, spec.location, now);
                let failure = Arc::new(failure);
                let cause = LastCause::Of(failure.clone());
                self.end(child, state, Some(failure.clone()), Some(cause));
                if restart == Restart::Never {
                    return;
                }
                if !self.allows(child, &failure) {
                    self.escalate(child, task, Some(failure), Escalation::Refused);
                    return;
                }
                self.restart(child, task, Some(failure), uptime, now);
            }
            outcome => {
                self.record(child, &task, outcome, None, false);
                if restart == Restart::Always {
                    self.restart(child, task, None, uptime, now);
                }
            }
        }
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
                let state = failed_state(&failure);
                let now = Instant::now();
                let failure =
                    ChildFailure::new(spec.name.clone(), failure, None, spec.location, now);
                let failure: Arc<dyn LastFailure> = Arc::new(failure);
                (state, Some(failure))
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

    /// Ends `child`'s run in `state`, with its last failure and cause when given; answers
    /// whoever waits for it to be terminated (invariant 7).
    fn end(
        &self,
        child: usize,
        state: ChildState,
        failure: Option<Arc<dyn LastFailure>>,
        cause: Option<LastCause>,
    ) {
        let (stale, terminated) = {
            let mut tree = self.tree();
            let run = tree.set_run(child, Run::Ended(state));
            let terminated = tree.children[child].terminate.take();
            (
                (run, tree.children[child].ended(failure, cause)),
                terminated,
            )
        };
        drop(stale);
        if let Some(terminated) = terminated {
            for reply in terminated.replies {
                let _ = reply.send(Ok(()));
            }
        }
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
            plan.members.remove(&child);
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

    /// What a child being stopped is told: the shutdown's cause, or the cause it is
    /// `terminating` with, or the plan's.
    fn stop_cause(&self, terminating: Option<Cause>) -> Option<Cause> {
        self.shutdown
            .clone()
            .or(terminating)
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
}

/// How a running child's run returned without being asked to stop.
struct Returned<E> {
    task: TaskInfo,
    outcome: Outcome<(), E>,
    /// The run's scope.
    scope: Option<Scope>,
    uptime: Duration,
    /// The cause it is being terminated with, if it is.
    terminating: Option<Cause>,
}

impl<E> Future for Runner<E>
where
    E: TaskError,
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
    E: TaskError,
{
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished (aborted, or its runtime shut down): the group's own drop cancels
        // and aborts the children; handles see the supervisor stopped, and requests unanswered
        // are dropped, so their futures answer that it stopped (invariant 7).
        let mut stale = Vec::new();
        let mut terminated = Vec::new();
        let mut tree = self.tree();
        tree.state = SupervisorState::Stopped;
        tree.ended = true;
        tree.changed();
        for child in 0..tree.children.len() {
            if !matches!(tree.children[child].run, Run::Ended(_)) {
                stale.push(tree.set_run(child, Run::Ended(ChildState::Aborted)));
            }
            terminated.extend(tree.children[child].terminate.take());
        }
        let turn = tree.end_turn();
        drop(tree);
        drop((stale, terminated, turn.requests));
        changes::wake(turn.watchers);
        let _ = self.inner.done.node.cancel(Cause::plain(), self.location);
    }
}

/// The state of a child whose run ended with `failure`.
fn failed_state<E>(failure: &Failure<E>) -> ChildState {
    if failure.is_panic() {
        ChildState::Panicked
    } else {
        ChildState::Failed
    }
}
