//! What a [`TaskGroup`](crate::TaskGroup) shares with its tasks: its [`State`] under one lock,
//! and the one path from `spawn` to a running task.
//!
//! A task is admitted by [`Shared::spawn`]: it starts now, waits in the queue, or, in a
//! cancelled group, ends at once without starting. [`Shared::start`] calls its closure and spawns
//! its future under a [`Guard`]; the guard reports its end to [`Shared::report`], which frees its
//! slot and hands back the next pending task to start, outside the lock
//! ([`run_next`](Shared::run_next), iteratively).
//!
//! Lock discipline: no user code runs under the state lock (task closures, futures and their
//! drops, panic payloads, wakers, observers, user errors' `Display`, and tokio calls that may
//! drop a task: `spawn`, `JoinHandle::abort`, dropping a `JoinHandle`); wakers are cloned,
//! woken and dropped outside it, and the clock is read before it is taken. The state lock is
//! never held together with a scope node's lock or the watcher's.
//!
//! The watcher hears of every task before anything else can happen to it: a task that starts at
//! once is reported spawned before it starts; a pending one joins the queue only once it has
//! been reported (counted as leaving meanwhile), so no other thread can start or end it first.

use std::collections::VecDeque;
use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::failure::{echoes, failure_cause, panic_message};
use super::guard::{Guard, TaskFuture, dropped_unstarted, entered};
use super::report::{Failure, Outcome, TrySpawnError};
use super::state::{PanicPayload, Queued, Stage, StartFn, State};
use super::watch::{Group, Unstarted, Watcher};
use crate::observe::{self, Attachment, GroupCancelled};
use crate::path::{Name, PathLink};
use crate::slab;
use crate::sync::{Mutex, lock};
use crate::{Cause, CauseKind, Scope, TaskError, TaskId, TaskInfo};

pub(crate) struct Shared<T, E> {
    /// What the scope's observer attached to the group; dropped with it.
    attachment: Option<Arc<dyn Attachment>>,
    /// The observer of the group's tasks, if the scope has one and it observes tasks.
    watcher: Option<Watcher>,
    /// The group's scope; every task's scope is a child of it.
    pub(crate) scope: Scope,
    pub(crate) config: Config,
    pub(super) state: Mutex<State<T, E>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// At most this many tasks run at once; the rest wait as pending.
    pub(crate) limit: usize,
    /// How long tasks get to return once the group is cancelled.
    pub(crate) grace: Duration,
    /// Whether a failure cancels the group (the default) or only gets recorded.
    pub(crate) cancel_on_error: bool,
    /// Whether `join` resumes the first panic of a task.
    pub(crate) resume_panics: bool,
    /// The group runs a supervisor's children (its observer is told so).
    pub(crate) supervisor: bool,
}

/// How [`Shared::spawn`] admits a task.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// `try_spawn`: refuse a task that would wait or be cancelled.
    Try,
    /// `spawn`: queue a task over the limit.
    Queue,
    /// As `Queue`, and return the task's key and scope if it starts at once (a supervisor's
    /// child).
    Child,
    /// A [`Spawner`](crate::Spawner)'s: queue a task over the limit, refuse one that would be
    /// cancelled, or whose group was joined or dropped.
    Shared,
}

/// The queue entry that starts `task`, recorded at `key`, once a slot is free.
fn queued<T, E, F, Fut>(key: usize, id: TaskId, watched: bool, task: F) -> Queued<T, E>
where
    T: Send + 'static,
    E: TaskError,
    F: FnOnce(Scope) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let start: StartFn<T, E> = Box::new(move |shared, starting| shared.start(starting, task));
    Queued::new(key, id, watched, start)
}

/// A task just admitted.
pub(crate) struct Spawned {
    pub(crate) id: TaskId,
    /// For [`Admit::Child`], its slab key and scope if it started at once (not queued, not
    /// cancelled).
    pub(crate) started: Option<(usize, Scope)>,
}

/// A task about to start: its record, its scope and, for the watcher, who it is.
pub(super) struct Starting {
    key: usize,
    id: TaskId,
    scope: Scope,
    watched: Option<Watched>,
    /// The scope's path, when it is new: kept for the next task of the same name
    /// ([`State::task_path`]).
    new_path: Option<Arc<PathLink>>,
}

/// A task as the watcher hears of its start.
struct Watched {
    task: TaskInfo,
    was_pending: bool,
}

/// A pending task to start now: its slot was just freed.
pub(super) struct Next<T, E> {
    queued: Queued<T, E>,
    name: Name,
    watched: Option<Watched>,
}

/// How a running task ended, before it is recorded.
pub(super) struct Exit<T, E> {
    pub(super) outcome: Outcome<T, E>,
    /// Its failure's cause is the one that cancelled the group.
    pub(super) won: bool,
    panic: Option<PanicPayload>,
}

impl<T, E> Exit<T, E> {
    pub(super) fn of(outcome: Outcome<T, E>) -> Self {
        Exit {
            outcome,
            won: false,
            panic: None,
        }
    }
}

impl<T, E> Shared<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    pub(crate) fn new(scope: Scope, config: Config) -> Arc<Self> {
        let (attachment, watcher) = match scope.node.observer() {
            Some(observer) => Watcher::new(observer, &scope, config.supervisor),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            attachment,
            watcher,
            scope,
            config,
            state: Mutex::new(State::new()),
        });
        // Weak: the scope must not keep the group alive through its own callback. The
        // registration lives as long as the scope; the callback then does nothing.
        let weak = Arc::downgrade(&shared);
        let _registration = shared.scope.on_cancel(move |cause| {
            if let Some(shared) = weak.upgrade() {
                shared.cancelled(cause);
            }
        });
        shared
    }

    fn group(&self) -> Group<'_> {
        Group {
            scope: &self.scope,
            attachment: self.attachment.as_deref(),
        }
    }

    /// Admits a task: starts it now, queues it as pending, or, in a cancelled group, records
    /// it as cancelled without starting it. For [`Admit::Try`], a task that would wait or be
    /// cancelled is handed back instead.
    pub(crate) fn spawn<F, Fut>(
        self: &Arc<Self>,
        name: Name,
        spawned_at: &'static Location<'static>,
        task: F,
        admit: Admit,
    ) -> Result<Spawned, TrySpawnError<F>>
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Looked at before locking: it may observe a passed deadline and run our callback, and
        // it sees a cancellation whose callback has not run yet.
        let observed = self.scope.cause();
        let watcher = self.watcher.as_ref().filter(|w| w.observes(self.group()));
        let mut state = lock(&self.state);
        let cause = state.cause.clone().or(observed);
        let free = cause.is_none() && state.running < self.config.limit;
        if admit == Admit::Try && !free {
            return Err(TrySpawnError { task, cause });
        }
        if admit == Admit::Shared && (cause.is_some() || state.closed) {
            let cause = cause.unwrap_or_else(|| {
                Cause::of_kind(CauseKind::Dropped).with_detail("its group was joined or dropped")
            });
            return Err(TrySpawnError {
                task,
                cause: Some(cause),
            });
        }
        if free {
            // Only literal names are looked up: they repeat from spawn to spawn, owned ones
            // rarely do.
            let literal = matches!(name, Name::Static(_));
            let shared_path = (state.task_path.as_ref())
                .filter(|_| literal)
                .and_then(|path| self.scope.node.sibling_path(path, &name));
            let (id, key) = state.insert(name.clone(), spawned_at, Stage::RUNNING);
            state.running += 1;
            let watched = watcher.map(|_| Watched {
                task: state.info(key),
                was_pending: false,
            });
            drop(state);
            if let (Some(watcher), Some(watched)) = (watcher, &watched) {
                watcher.spawned(self.group(), &watched.task, false);
            }
            let (path, new_path) = match shared_path {
                Some(path) => (Some(path), None),
                None => {
                    let path = self.scope.node.child_path(Some(name));
                    let new_path = if literal { path.clone() } else { None };
                    (path, new_path)
                }
            };
            let scope = self.scope.child_on_path(path);
            // Cloned only for a supervisor: an atomic increment and decrement per task.
            let started = (admit == Admit::Child).then(|| (key, scope.clone()));
            let starting = Starting {
                key,
                id,
                scope,
                watched,
                new_path,
            };
            let next = self.start(starting, task);
            self.run_next(next);
            return Ok(Spawned { id, started });
        }
        // Pending: in the queue, or leaving it at once if the group is cancelled.
        let (id, key) = state.insert(name, spawned_at, Stage::Pending);
        // Counted as leaving until it joins the queue, or until it is settled as cancelled.
        state.leaving += 1;
        let watched = watcher.map(|watcher| (watcher, state.info(key)));
        if let Some((watcher, task)) = &watched {
            // The watcher hears of it as pending before anyone can start or end it.
            drop(state);
            watcher.spawned(self.group(), task, true);
            state = lock(&self.state);
        }
        if let Some(cause) = cause.or_else(|| state.cause.clone()) {
            drop(state);
            let leaving = [(key, watched.is_some(), task)];
            self.settle_unstarted(leaving, || Outcome::Cancelled(cause.clone()), Some(&cause));
            return Ok(Spawned { id, started: None });
        }
        state.leaving -= 1;
        let queued = queued(key, id, watched.is_some(), task);
        if state.running >= self.config.limit || self.scope.node.is_marked() {
            state.pending.push_back(queued);
            return Ok(Spawned { id, started: None });
        }
        // A slot freed while the watcher heard of it: it starts now, as a task that was pending.
        state.running += 1;
        let record = state
            .tasks
            .get_mut(key)
            .expect("a pending task has a record");
        record.stage = Stage::RUNNING;
        let name = record.info.name.clone();
        drop(state);
        let next = Next {
            queued,
            name,
            watched: watched.map(|(_, task)| Watched {
                task,
                was_pending: true,
            }),
        };
        self.run_next(Some(next));
        Ok(Spawned { id, started: None })
    }

    /// Starts a task: calls its closure and spawns its future under a guard. A task whose
    /// scope is already cancelled ends without its closure being called. Returns a pending task
    /// to start next if this one ended at once and freed its slot.
    fn start<F, Fut>(self: &Arc<Self>, starting: Starting, task: F) -> Option<Next<T, E>>
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let Starting {
            key,
            id,
            scope,
            watched,
            new_path,
        } = starting;
        let watcher = self.watcher.as_ref();
        if let Some(cause) = scope.cause() {
            let (outcome, panic) = dropped_unstarted(task, || Outcome::Cancelled(cause.clone()));
            let exit = Exit {
                outcome,
                won: false,
                panic,
            };
            match (watcher, watched) {
                (Some(watcher), Some(watched)) if watched.was_pending => {
                    let ended = Unstarted::of(&exit.outcome);
                    watcher.never_started(self.group(), &watched.task, &ended, Some(&cause));
                }
                // Reported as running since its spawn: it starts and ends at once.
                (Some(watcher), Some(watched)) => {
                    let attachment = watcher.start(self.group(), key, watched.task, false, &scope);
                    let attachment = attachment.as_deref();
                    watcher.finished(self.group(), key, attachment, &scope, &exit);
                }
                _ => {}
            }
            drop(scope);
            return self.report(key, exit);
        }
        let (attachment, watched) = match (watcher, watched) {
            (Some(watcher), Some(watched)) => {
                let task = watched.task;
                let was_pending = watched.was_pending;
                (
                    watcher.start(self.group(), key, task, was_pending, &scope),
                    true,
                )
            }
            _ => (None, false),
        };
        let made = entered(attachment.as_deref(), || {
            panic::catch_unwind(AssertUnwindSafe(|| task(scope.clone())))
        });
        let mut guard = Guard {
            shared: self.clone(),
            key: slab::index(key),
            watched,
            scope: Some(scope),
            attachment,
        };
        let future = match made {
            Ok(future) => future,
            Err(payload) => {
                return guard
                    .report(|shared, key, scope| shared.conclude(key, scope, Err(payload)));
            }
        };
        // On the caller's runtime, as `tokio::spawn` always is: `spawn`'s caller's, or, for a
        // pending task, that of the task whose end freed its slot.
        let handle = tokio::spawn(TaskFuture::new(future, guard));
        let mut state = lock(&self.state);
        // The path replaced is dropped outside the lock.
        let _replaced = new_path.and_then(|path| state.task_path.replace(path));
        let handle = match state.record(key, id).map(|record| &mut record.stage) {
            Some(Stage::Running {
                handle: slot,
                abort: false,
            }) => {
                *slot = Some(handle);
                None
            }
            Some(Stage::Running { abort: true, .. }) => Some((handle, true)),
            // Already ended and taken.
            _ => Some((handle, false)),
        };
        drop(state);
        match handle {
            Some((handle, true)) => handle.abort(),
            // The task has ended: its handle is dropped here, outside the lock.
            Some((handle, false)) => drop(handle),
            None => {}
        }
        None
    }

    /// Starts `next` and whatever its ending frees, iteratively.
    pub(super) fn run_next(self: &Arc<Self>, mut next: Option<Next<T, E>>) {
        while let Some(Next {
            queued,
            name,
            watched,
        }) = next
        {
            let starting = Starting {
                key: queued.key(),
                id: queued.id,
                scope: self.scope.named_child(name),
                watched,
                new_path: None,
            };
            next = (queued.start)(self, starting);
        }
    }

    /// Tells the watcher, if any, that the task recorded at `key`, with `attachment`, ended
    /// with `exit`; then drops the attachment.
    pub(super) fn watch_finished(
        &self,
        key: usize,
        attachment: Option<Arc<dyn Attachment>>,
        scope: &Scope,
        exit: &Exit<T, E>,
    ) {
        if let Some(watcher) = &self.watcher {
            watcher.finished(self.group(), key, attachment.as_deref(), scope, exit);
        }
    }

    /// Classifies how a task ended and, for a failure under cancel-on-error, cancels the group.
    pub(super) fn conclude(
        &self,
        key: usize,
        scope: &Scope,
        result: Result<Result<T, E>, PanicPayload>,
    ) -> Exit<T, E> {
        let (failure, panic) = match result {
            Ok(Ok(value)) => return Exit::of(Outcome::Completed(value)),
            Ok(Err(error)) => {
                if let Some(cause) = scope.cause().filter(|cause| echoes(&error, cause)) {
                    return Exit::of(Outcome::Cancelled(cause));
                }
                (Failure::Error(Arc::new(error)), None)
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                let keep = self.config.resume_panics.then_some(payload);
                (Failure::Panic(message), keep)
            }
        };
        let won = self.config.cancel_on_error && {
            let task = lock(&self.state).info(key);
            let cause = failure_cause(&task.name, &failure).with_origin(scope.node.origin());
            // A callback panicking here was reported by the panic hook; the task's own
            // failure is what gets reported.
            self.scope.node.cancel(cause, task.spawned_at).won
        };
        Exit {
            outcome: Outcome::Failed(failure),
            won,
            panic,
        }
    }

    /// Records how the running task at `key` ended and frees its slot. Returns the pending task
    /// that takes the slot, for the caller to start outside the lock.
    pub(super) fn report(&self, key: usize, exit: Exit<T, E>) -> Option<Next<T, E>> {
        let Exit {
            outcome,
            won,
            panic,
        } = exit;
        let aborted = matches!(outcome, Outcome::Aborted);
        // Read before locking (no clock read under the lock): whether a deadline of the group
        // has passed, in case this is its last task.
        let deadline_passed = self.scope.deadline().is_some_and(|at| at <= Instant::now());
        let mut state = lock(&self.state);
        let record = state.tasks.get(key).expect("a running task has a record");
        let id = record.info.id;
        let asked = matches!(record.stage, Stage::Running { abort: true, .. });
        if won {
            state.winner = Some(id);
        }
        let released = state.finish(key, outcome, panic);
        // An abort the group did not ask for is the task's runtime shutting down under it. The
        // tasks waiting for its slot would start on that runtime, each dropped at once inside
        // the spawn of the one before: instead they end with it, aborted without starting, and
        // none is left waiting. (A group that aborts has been cancelled: none is waiting.)
        let (next, stranded) = if aborted && !asked {
            let stranded = mem::take(&mut state.pending);
            state.leaving += stranded.len();
            (None, stranded)
        } else {
            (self.next_pending(&mut state), VecDeque::new())
        };
        if state.unfinished() == 0 && !state.cut_short {
            // A deadline that passed before the last task ended cut the group short even if
            // nobody has looked at it yet.
            state.cut_short = self.scope.node.is_marked() || deadline_passed;
        }
        drop(state);
        released.release();
        let stranded = stranded.into_iter().map(|q| (q.key(), q.watched, q));
        self.settle_unstarted(stranded, || Outcome::Aborted, None);
        next
    }

    /// Settles tasks that will never start, counted in `leaving` until now: drops what each
    /// held outside the lock, tells the watcher of those it follows, and records each as
    /// `ended` or as the panic its drop raised.
    fn settle_unstarted<X>(
        &self,
        leaving: impl IntoIterator<Item = (usize, bool, X)>,
        ended: impl Fn() -> Outcome<T, E>,
        cause: Option<&Cause>,
    ) {
        let settled: Vec<_> = leaving
            .into_iter()
            .map(|(key, watched, held)| {
                let (outcome, payload) = dropped_unstarted(held, &ended);
                (key, watched, outcome, payload)
            })
            .collect();
        if settled.is_empty() {
            return;
        }
        // Before the exits become visible, so that whoever joins the group has seen them
        // reported.
        if let Some(watcher) = &self.watcher {
            let watched = settled.iter().filter(|(_, watched, ..)| *watched);
            let tasks: Vec<(TaskInfo, Unstarted)> = {
                let state = lock(&self.state);
                let told = |(key, _, outcome, _): &(usize, bool, Outcome<T, E>, _)| {
                    (state.info(*key), Unstarted::of(outcome))
                };
                watched.map(told).collect()
            };
            for (task, ended) in &tasks {
                watcher.never_started(self.group(), task, ended, cause);
            }
        }
        let released: Vec<_> = {
            let mut state = lock(&self.state);
            let finish = |(key, _, outcome, payload)| state.finish(key, outcome, payload);
            settled.into_iter().map(finish).collect()
        };
        released.into_iter().for_each(|released| released.release());
    }

    /// Takes the oldest pending task into the slot just freed, unless the group is cancelled.
    fn next_pending(&self, state: &mut State<T, E>) -> Option<Next<T, E>> {
        // An empty queue first: the group scope's flag sits on a line that every task's scope
        // writes (it holds its parent), which is not worth a miss under the lock.
        if state.pending.is_empty()
            || state.cause.is_some()
            || self.scope.node.is_marked()
            || state.running >= self.config.limit
        {
            return None;
        }
        let queued = state.pending.pop_front()?;
        state.running += 1;
        let record = state
            .tasks
            .get_mut(queued.key())
            .expect("a pending task has a record");
        record.stage = Stage::RUNNING;
        Some(Next {
            name: record.info.name.clone(),
            watched: queued.watched.then(|| Watched {
                task: record.info.clone(),
                was_pending: true,
            }),
            queued,
        })
    }

    /// The group scope's `on_cancel` callback: records the cause, and ends every pending task.
    fn cancelled(self: &Arc<Self>, cause: &Cause) {
        let now = Instant::now();
        // A deadline counts from when it passed, not from when someone noticed.
        let at = match self.scope.deadline() {
            Some(deadline) if deadline <= now && cause.kind() == CauseKind::DeadlineExceeded => {
                deadline
            }
            _ => now,
        };
        let mut state = lock(&self.state);
        if state.cause.is_some() {
            return;
        }
        state.cause = Some(cause.clone());
        state.cancelled_at = Some(at);
        if state.unfinished() > 0 || state.is_new() {
            state.cut_short = true;
        }
        let drained = mem::take(&mut state.pending);
        state.leaving += drained.len();
        let running = state.running > 0;
        let joiner = state.take_joiner();
        drop(state);
        if let Some(observer) = self.scope.node.observer() {
            observe::notify(observer, |o| {
                o.group_cancelled(&GroupCancelled {
                    scope: &self.scope,
                    attachment: self.attachment.as_deref(),
                    cause,
                })
            });
        }
        let drained = drained.into_iter().map(|q| (q.key(), q.watched, q));
        self.settle_unstarted(drained, || Outcome::Cancelled(cause.clone()), Some(cause));
        if running {
            self.check_slow(at, None, cause);
        }
        if let Some(joiner) = joiner {
            joiner.wake();
        }
    }

    /// The task `id`, recorded at `key`, was stopped alone (by its supervisor) with `cause`:
    /// its cancel latency counts from now, and it is checked for stopping in time.
    pub(crate) fn child_stopped(self: &Arc<Self>, key: usize, id: TaskId, cause: &Cause) {
        let Some(watcher) = &self.watcher else {
            return;
        };
        let now = Instant::now();
        watcher.stopped(key, id, now);
        self.check_slow(now, Some((key, id)), cause);
    }

    /// Reports the tasks still running [`slow_to_stop_after`](crate::observe::Observer::slow_to_stop_after)
    /// after `since`, when their scopes were cancelled with `cause`: every running task, or
    /// only the task `only`. Spawns one timer.
    fn check_slow(self: &Arc<Self>, since: Instant, only: Option<(usize, TaskId)>, cause: &Cause) {
        let Some((at, runtime)) = self.watcher.as_ref().and_then(|w| w.slow_check(since)) else {
            return;
        };
        let shared = Arc::downgrade(self);
        let cause = cause.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = shared.upgrade()
                && let Some(watcher) = &shared.watcher
            {
                watcher.report_slow(shared.group(), since, only, &cause);
            }
        });
    }
}
