//! The state a [`TaskGroup`](crate::TaskGroup) shares with its tasks.
//!
//! Each task has one [`Record`] in `State::tasks`, from `spawn` until its exit is taken by
//! `join_next` or `join`. A running task's future is wrapped in a `TaskFuture` whose `Guard`
//! reports how it ended.
//!
//! Invariants:
//!
//! 1. A record's stage only moves forward: `Pending -> Running -> Done`, or straight to `Done`
//!    (cancelled before it started). It becomes `Done` exactly once, and its key is pushed onto
//!    `finished` at that moment (for a task cancelled before it started in a group with an
//!    observer: once the observer has heard of it; a pending task drained by the cancellation
//!    is settled once its closure is dropped; meanwhile both are counted in `reporting`), so
//!    `finished` holds every `Done` record not yet taken and reported, in the order the tasks
//!    ended. Only `Done` records are removed, so a key a task holds while not
//!    `Done` always names its own record; a key held after that may be reused, so late
//!    accesses check the record's id.
//! 2. A running task reports exactly once, through its guard: as soon as its future completes
//!    (after dropping the future, so what it held is released first), or as aborted when the
//!    future is dropped unfinished (aborted, or the runtime shut down). A panic while polling
//!    or dropping it is caught and reported as a failure. So `running` counts the records in
//!    stage `Running`, and `join` ends exactly when every task has ended.
//!    A running record's entry in `State::kept` (what the watcher keeps for it, made on first
//!    need) belongs to it alone and is freed in that one report, so it never outlives the
//!    record's `Running` stage and its key is never read after the slab reuses it.
//! 3. `State::cause` is set once, under the state lock, by the group scope's `on_cancel`
//!    callback, which in the same critical section drains every pending task: each is then
//!    settled as cancelled, or as panicked if dropping its closure panicked, once that drop has
//!    run outside the lock. `spawn` checks the cause under the same lock before queueing, so no
//!    task is queued after the drain, and a queued task never starts once it is set.
//! 4. No user code runs under the state lock: task closures, futures and their drops, panic
//!    payloads, wakers, user errors' `Display`, and tokio calls that may drop a task
//!    (`spawn`, `JoinHandle::abort`, dropping a `JoinHandle`) all happen after it is released.
//!    The lock order is the state lock, then scope node locks (a task scope is made under it).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::mem;
use std::num::NonZeroU32;
use std::panic::{self, AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::failure::{echoes, failure_cause, panic_message};
use super::report::{Failure, GroupError, Outcome, TaskExit, TaskFailure, TaskId, TaskInfo};
use super::report::{GroupSnapshot, TaskSnapshot, TaskState};
use crate::observe::{
    self, Attachment, GroupCancelled, GroupCreated, Observer, TaskFinished, TaskOutcome,
    TaskSlowToStop, TaskSpawned, TaskStarted,
};
use crate::path::Name;
use crate::slab::{self, Slab};
use crate::sync::{Mutex, lock};
use crate::text::displayed;
use crate::{Cause, CauseKind, Scope};

pub(crate) struct Shared<T, E> {
    /// What the scope's observer attached to the group; dropped with it.
    attachment: Option<Arc<dyn Attachment>>,
    /// The observer of the group's tasks, if the scope has one and it observes tasks.
    watcher: Option<Watcher>,
    /// The group's scope; every task's scope is a child of it.
    pub(crate) scope: Scope,
    pub(crate) config: Config,
    state: Mutex<State<T, E>>,
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
}

struct State<T, E> {
    tasks: Slab<Record<T, E>>,
    next_id: u64,
    /// Records in stage `Running` (invariant 2).
    running: usize,
    /// Records in stage `Pending`, oldest first, with what starts them.
    pending: VecDeque<Start<T, E>>,
    /// Keys of `Done` records not yet taken, in the order the tasks ended (invariant 1).
    finished: VecDeque<usize>,
    /// Tasks cancelled before they started that are being reported to the observer; their
    /// keys join `finished` once they are. Counted as unfinished meanwhile.
    reporting: usize,
    /// How many of those did not complete (failed, cancelled, aborted).
    not_completed: usize,
    /// The group was cancelled before its last task ended (or before it had any): `join`
    /// reports the cause even if every task returned `Ok`.
    cut_short: bool,
    joiner: Option<Waker>,
    /// Whether the joiner wants to hear of every exit (`join_next`) or only of the last
    /// (`join`).
    wake_on_each: bool,
    /// The group's cause, once its `on_cancel` callback ran (invariant 3).
    cause: Option<Cause>,
    /// When the group was cancelled, on tokio's clock: the start of the shutdown grace.
    cancelled_at: Option<Instant>,
    /// The task whose failure cancelled the group.
    winner: Option<TaskId>,
    /// The first panic, kept for `resume_panics`.
    panic: Option<(TaskId, PanicPayload)>,
    /// What the watcher keeps for running tasks that need it, at the key in their record
    /// (invariant 2).
    kept: Slab<Watched>,
}

/// A running task's key in `State::kept`, in four bytes: the record stays as small as without
/// a watcher.
#[derive(Clone, Copy, PartialEq, Eq)]
struct KeptKey(NonZeroU32);

impl KeptKey {
    fn new(key: usize) -> KeptKey {
        KeptKey(NonZeroU32::MIN.saturating_add(slab::index(key)))
    }

    fn get(self) -> usize {
        (self.0.get() - 1) as usize
    }
}

/// A running task's entry in `kept`, at `at`; made now if it has none yet (invariant 2).
fn kept_entry<'a>(
    kept: &'a mut Slab<Watched>,
    at: &mut Option<KeptKey>,
) -> Option<&'a mut Watched> {
    let at = at.get_or_insert_with(|| KeptKey::new(kept.insert(Watched::default())));
    kept.get_mut(at.get())
}

type PanicPayload = Box<dyn Any + Send + 'static>;

struct Record<T, E> {
    info: TaskInfo,
    stage: Stage<T, E>,
}

enum Stage<T, E> {
    Pending,
    Running {
        /// `None` until `spawn` returns it, or once taken to abort the task.
        handle: Option<JoinHandle<()>>,
        /// Abort the task as soon as its handle arrives.
        abort: bool,
        /// Set with the handle when the group has a watcher: the task is watched for slow
        /// stops and cancel latency.
        watched: bool,
        /// Where `State::kept` holds what the watcher keeps for the task, once there is
        /// something to keep (an attachment, a stop, a slow report): most watched tasks never
        /// need it (invariant 2).
        kept: Option<KeptKey>,
    },
    Done(Outcome<T, E>),
}

/// Starts a pending task: makes its future from its closure and spawns it.
pub(crate) struct Start<T, E> {
    key: usize,
    id: TaskId,
    run: StartFn<T, E>,
}

type StartFn<T, E> = Box<dyn FnOnce(&Arc<Shared<T, E>>, Starting) -> Option<Next<T, E>> + Send>;

/// A task about to start: its slab key, number and scope, and, when the group has an observer,
/// its description for the observer.
pub(crate) struct Starting {
    pub(crate) key: usize,
    pub(crate) id: TaskId,
    pub(crate) scope: Scope,
    observed: Option<Observed>,
}

/// A task as its group's observer is told of it when it starts.
struct Observed {
    task: TaskInfo,
    /// It waited as pending.
    was_pending: bool,
}

/// A pending task to start now (its slot was just freed).
pub(crate) struct Next<T, E> {
    start: Start<T, E>,
    starting: Starting,
}

/// How a running task ended, before it is reported.
struct Exit<T, E> {
    outcome: Outcome<T, E>,
    /// Its failure's cause is the one that cancelled the group.
    won: bool,
    panic: Option<PanicPayload>,
}

impl<T, E> Exit<T, E> {
    fn of(outcome: Outcome<T, E>) -> Self {
        Exit {
            outcome,
            won: false,
            panic: None,
        }
    }
}

/// What `admit` decided for a new task.
pub(crate) enum Admitted<F> {
    /// Start it now.
    Run(Starting, F),
    /// Queued as pending, or recorded as cancelled.
    Tracked,
    /// Refused by `try_spawn`: the group is full (no cause) or cancelled.
    Refused(F, Option<Cause>),
}

impl<T, E> Shared<T, E>
where
    T: Send + 'static,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    pub(crate) fn new(scope: Scope, config: Config) -> Arc<Self> {
        let (attachment, watcher) = match scope.node.observer() {
            Some(observer) => Watcher::new(observer, &scope),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            attachment,
            watcher,
            scope,
            config,
            state: Mutex::new(State {
                tasks: Slab::new(),
                next_id: 0,
                running: 0,
                pending: VecDeque::new(),
                finished: VecDeque::new(),
                reporting: 0,
                not_completed: 0,
                cut_short: false,
                joiner: None,
                wake_on_each: true,
                cause: None,
                cancelled_at: None,
                winner: None,
                panic: None,
                kept: Slab::new(),
            }),
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

    /// Records a new task and decides whether it starts now, waits, or is refused.
    pub(crate) fn admit<F>(
        &self,
        name: Name,
        spawned_at: &'static Location<'static>,
        task: F,
        queue: bool,
        pending: fn(usize, TaskId, F) -> Start<T, E>,
    ) -> (Option<TaskId>, Admitted<F>) {
        // Looked at before locking: it may observe a passed deadline and run our callback, and
        // it sees a cancellation whose callback has not run yet.
        let observed = self.scope.cause();
        let observer = self.watcher.as_ref().map(|watcher| &watcher.observer);
        let mut state = lock(&self.state);
        if let Some(cause) = state.cause.clone().or(observed) {
            if !queue {
                return (None, Admitted::Refused(task, Some(cause)));
            }
            // The closure is dropped first, outside the lock (invariant 4): a drop that panics
            // is this task's panic. The group stays cancelled meanwhile.
            drop(state);
            let (outcome, payload) = dropped_unstarted(task, || Outcome::Cancelled(cause.clone()));
            let ended = Unstarted::of(&outcome);
            let mut state = lock(&self.state);
            let (id, key) = state.insert(name, spawned_at, Stage::Done(outcome));
            state.not_completed += 1;
            let payload = state.keep_panic(id, payload);
            let Some(observer) = observer else {
                state.finished.push_back(key);
                let joiner = state.joiner.take();
                drop(state);
                if let Some(payload) = payload {
                    drop_contained(payload);
                }
                if let Some(joiner) = joiner {
                    joiner.wake();
                }
                return (Some(id), Admitted::Tracked);
            };
            let info = state.info(key);
            state.reporting += 1;
            drop(state);
            if let Some(payload) = payload {
                drop_contained(payload);
            }
            // Reported as queued and cancelled before it started, like a pending task.
            self.spawned(observer, &info, true);
            self.never_started(observer, &info, &ended, Some(&cause));
            self.reported(&[key]);
            return (Some(id), Admitted::Tracked);
        }
        if state.running < self.config.limit {
            let scope = self.scope.named_child(name.clone());
            let running = Stage::Running {
                handle: None,
                abort: false,
                watched: false,
                kept: None,
            };
            let (id, key) = state.insert(name, spawned_at, running);
            state.running += 1;
            let observed = observer.map(|_| Observed {
                task: state.info(key),
                was_pending: false,
            });
            drop(state);
            if let (Some(observer), Some(observed)) = (observer, &observed) {
                self.spawned(observer, &observed.task, false);
            }
            let starting = Starting {
                key,
                id,
                scope,
                observed,
            };
            return (Some(id), Admitted::Run(starting, task));
        }
        if !queue {
            return (None, Admitted::Refused(task, None));
        }
        let (id, key) = state.insert(name, spawned_at, Stage::Pending);
        state.pending.push_back(pending(key, id, task));
        let info = observer.map(|_| state.info(key));
        drop(state);
        if let (Some(observer), Some(info)) = (observer, info) {
            self.spawned(observer, &info, true);
        }
        (Some(id), Admitted::Tracked)
    }

    fn spawned(&self, observer: &Arc<dyn Observer>, task: &TaskInfo, pending: bool) {
        observe::notify(observer, |o| {
            o.task_spawned(&TaskSpawned {
                group: &self.scope,
                task,
                pending,
            })
        });
    }

    /// Reports a task that ended before it started: cancelled with `cause`, aborted with its
    /// runtime, or as the panic of dropping its closure.
    fn never_started(
        &self,
        observer: &Arc<dyn Observer>,
        task: &TaskInfo,
        ended: &Unstarted,
        cause: Option<&Cause>,
    ) {
        let panic = ended
            .panic
            .as_ref()
            .map(|message| message as &dyn fmt::Display);
        observe::notify(observer, |o| {
            o.task_finished(&TaskFinished {
                group: &self.scope,
                group_attachment: self.attachment.as_deref(),
                task,
                attachment: None,
                outcome: ended.outcome,
                started: false,
                error: panic,
                cause,
                elapsed: Duration::ZERO,
                cancel_latency: None,
            })
        });
    }

    /// What starts `task`, recorded at `key`, once it leaves the pending queue.
    pub(crate) fn pending_start<F, Fut>(key: usize, id: TaskId, task: F) -> Start<T, E>
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        Start {
            key,
            id,
            run: Box::new(move |shared, starting| shared.run(starting, task)),
        }
    }

    /// Starts the task recorded at `key` in `scope`; returns a pending task to start next if
    /// it ended at once and freed its slot.
    pub(crate) fn run<F, Fut>(self: &Arc<Self>, starting: Starting, task: F) -> Option<Next<T, E>>
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let Starting {
            key,
            id,
            scope,
            observed,
        } = starting;
        // A task of a cancelled group never starts (invariant 3): its closure is not called.
        if let Some(cause) = scope.cause() {
            // Its closure is dropped uncalled; a panic doing so is the task's.
            let (outcome, panic) = dropped_unstarted(task, || Outcome::Cancelled(cause.clone()));
            match observed {
                Some(observed) if observed.was_pending => {
                    if let Some(watcher) = &self.watcher {
                        let ended = Unstarted::of(&outcome);
                        self.never_started(&watcher.observer, &observed.task, &ended, Some(&cause));
                    }
                }
                // Reported as running since its spawn: it starts and ends at once, without its
                // closure being called.
                Some(observed) => {
                    if let Some(watch) = Watch::start(self, observed, &scope) {
                        watch.finished(self, key, &scope, &outcome, false);
                    }
                }
                None => {}
            }
            drop(scope);
            let exit = Exit {
                outcome,
                won: false,
                panic,
            };
            return self.report(key, exit);
        }
        // A task of a group without watcher carries no watch at all (a zero-sized slot), so
        // that the hook costs it nothing but this branch at run time; the price is in binary
        // size, `launch` and the task's future being compiled twice per closure type.
        match observed.and_then(|observed| Watch::start(self, observed, &scope)) {
            Some(watch) => self.launch(key, id, scope, Some(watch), task),
            None => self.launch(key, id, scope, Unwatched, task),
        }
    }

    /// Calls `task`'s closure (inside the watch's attachment, if any) and spawns its future,
    /// guarded; the rest of [`run`](Self::run).
    fn launch<W, F, Fut>(
        self: &Arc<Self>,
        key: usize,
        id: TaskId,
        scope: Scope,
        watch: W,
        task: F,
    ) -> Option<Next<T, E>>
    where
        W: WatchSlot,
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let made = entered(watch.get(), || {
            panic::catch_unwind(AssertUnwindSafe(|| task(scope.clone())))
        });
        let mut guard = Guard {
            shared: self.clone(),
            key,
            scope: Some(scope),
            watch,
        };
        let future = match made {
            Ok(future) => future,
            Err(payload) => {
                return guard
                    .report(|shared, key, scope| shared.conclude(key, scope, Err(payload)));
            }
        };
        let user = User::Running { future };
        // On the caller's runtime, as `tokio::spawn` always is: `spawn`'s caller's, or, for a
        // pending task, that of the task whose end freed its slot.
        let attachment = guard.attachment_weak();
        let handle = tokio::spawn(TaskFuture { user, guard });
        self.set_handle(key, id, handle, attachment);
        None
    }

    /// Starts `next` and whatever its ending frees, iteratively.
    pub(crate) fn run_next(self: &Arc<Self>, mut next: Option<Next<T, E>>) {
        while let Some(Next { start, starting }) = next {
            next = (start.run)(self, starting);
        }
    }

    fn set_handle(
        &self,
        key: usize,
        id: TaskId,
        handle: JoinHandle<()>,
        attachment: Option<Weak<dyn Attachment>>,
    ) {
        let mut state = lock(&self.state);
        let State { tasks, kept, .. } = &mut *state;
        let stage = match tasks.get_mut(key) {
            Some(record) if record.info.id == id => Some(&mut record.stage),
            // Already ended and taken (invariant 1).
            _ => None,
        };
        let abort = match stage {
            Some(Stage::Running {
                handle: slot,
                abort: false,
                watched,
                kept: at,
            }) => {
                *slot = Some(handle);
                if self.watcher.is_some() {
                    *watched = true;
                    // Nothing kept yet: `watched` was false until now (invariant 2).
                    debug_assert!(at.is_none());
                    if attachment.is_some() {
                        *at = Some(KeptKey::new(kept.insert(Watched {
                            attachment,
                            ..Watched::default()
                        })));
                    }
                }
                return;
            }
            Some(Stage::Running { abort: true, .. }) => true,
            _ => false,
        };
        drop(state);
        if abort {
            handle.abort();
        }
        // Otherwise the task has ended: its handle is dropped here, outside the lock.
    }

    /// Classifies how a task ended and, for a failure under cancel-on-error, cancels the group.
    fn conclude(
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
            let (name, spawned_at) = {
                let state = lock(&self.state);
                let record = state.tasks.get(key).expect("a running task has a record");
                (record.info.name.clone(), record.info.spawned_at)
            };
            let cause = failure_cause(&name, &failure).with_origin(scope.node.origin());
            // A callback panicking here was reported by the panic hook; the task's own
            // failure is what gets reported.
            self.scope.node.cancel(cause, spawned_at).won
        };
        Exit {
            outcome: Outcome::Failed(failure),
            won,
            panic,
        }
    }

    /// Records how the task at `key` ended and frees its slot. Returns the pending task that
    /// takes the slot, for the caller to start outside the lock.
    fn report(&self, key: usize, exit: Exit<T, E>) -> Option<Next<T, E>> {
        let Exit {
            outcome,
            won,
            panic,
        } = exit;
        let completed = matches!(outcome, Outcome::Completed(_));
        let mut state = lock(&self.state);
        let record = state
            .tasks
            .get_mut(key)
            .expect("a running task has a record");
        let id = record.info.id;
        let aborted = matches!(outcome, Outcome::Aborted);
        let (handle, kept, asked) = match mem::replace(&mut record.stage, Stage::Done(outcome)) {
            Stage::Running {
                handle,
                kept,
                abort,
                ..
            } => (handle, kept, abort),
            Stage::Pending | Stage::Done(_) => unreachable!("only a running task reports"),
        };
        if let Some(kept) = kept {
            // Holds only a `Weak`: no user code runs here (invariant 4).
            state.kept.remove(kept.get());
        }
        if won {
            state.winner = Some(id);
        }
        let panic = match panic {
            Some(payload) if state.panic.is_none() => {
                state.panic = Some((id, payload));
                None
            }
            other => other,
        };
        state.running -= 1;
        state.finished.push_back(key);
        state.not_completed += usize::from(!completed);
        // An abort the group did not ask for is the task's runtime shutting down under it. The
        // tasks waiting for its slot would start on that runtime, each dropped at once inside
        // the spawn of the one before: instead they end with it, aborted without starting, and
        // none is left waiting. (A group that aborts has been cancelled: none is waiting.)
        let (next, stranded) = if aborted && !asked {
            let stranded = mem::take(&mut state.pending);
            state.reporting += stranded.len();
            (None, stranded)
        } else {
            (self.next_pending(&mut state), VecDeque::new())
        };
        let last = state.unfinished() == 0;
        if last && !state.cut_short {
            // A deadline that passed before the last task ended cut the group short even if
            // nobody has looked at it yet.
            state.cut_short = self.scope.node.is_marked()
                || self.scope.deadline().is_some_and(|at| at <= Instant::now());
        }
        let joiner = if state.wake_on_each || last {
            state.joiner.take()
        } else {
            None
        };
        drop(state);
        drop(handle);
        drop(panic);
        if let Some(joiner) = joiner {
            joiner.wake();
        }
        self.settle_unstarted(stranded, || Outcome::Aborted, None);
        next
    }

    /// Settles tasks taken from the pending queue, counted in `reporting` until now (invariants
    /// 1 and 3): drops their closures outside the lock, one by one, records each as `ended` or
    /// as the panic its drop raised, tells the observer, and makes them visible.
    fn settle_unstarted(
        &self,
        drained: VecDeque<Start<T, E>>,
        ended: impl Fn() -> Outcome<T, E>,
        cause: Option<&Cause>,
    ) {
        if drained.is_empty() {
            return;
        }
        let settled: Vec<_> = drained
            .into_iter()
            .map(|start| {
                let key = start.key;
                let (outcome, payload) = dropped_unstarted(start, &ended);
                (key, outcome, payload)
            })
            .collect();
        let observer = self.watcher.as_ref().map(|watcher| &watcher.observer);
        let mut observed = Vec::new();
        let mut payloads = Vec::new();
        let mut state = lock(&self.state);
        state.not_completed += settled.len();
        for (key, outcome, payload) in settled {
            if let Some(record) = state.tasks.get_mut(key) {
                let id = record.info.id;
                if observer.is_some() {
                    observed.push((key, record.info.clone(), Unstarted::of(&outcome)));
                }
                record.stage = Stage::Done(outcome);
                payloads.extend(state.keep_panic(id, payload));
            }
            if observer.is_none() {
                // Visible now; with an observer, once it has heard of it.
                state.finished.push_back(key);
                state.reporting -= 1;
            }
        }
        let joiner = state.joiner.take();
        drop(state);
        payloads.into_iter().for_each(drop_contained);
        if let Some(observer) = observer {
            for (_, task, ended) in &observed {
                self.never_started(observer, task, ended, cause);
            }
            let keys: Vec<usize> = observed.iter().map(|(key, _, _)| *key).collect();
            self.reported(&keys);
        }
        if let Some(joiner) = joiner {
            joiner.wake();
        }
    }

    /// Takes the oldest pending task into the slot just freed, unless the group is cancelled.
    fn next_pending(&self, state: &mut State<T, E>) -> Option<Next<T, E>> {
        if state.cause.is_some()
            || self.scope.node.is_marked()
            || state.running >= self.config.limit
        {
            return None;
        }
        let start = state.pending.pop_front()?;
        let record = state
            .tasks
            .get_mut(start.key)
            .expect("a pending task has a record");
        record.stage = Stage::Running {
            handle: None,
            abort: false,
            watched: false,
            kept: None,
        };
        let starting = Starting {
            key: start.key,
            id: start.id,
            scope: self.scope.named_child(record.info.name.clone()),
            observed: self.watcher.as_ref().map(|_| Observed {
                task: record.info.clone(),
                was_pending: true,
            }),
        };
        state.running += 1;
        Some(Next { start, starting })
    }

    /// The group scope's `on_cancel` callback (invariant 3).
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
        if state.unfinished() > 0 || state.next_id == 0 {
            state.cut_short = true;
        }
        let drained = mem::take(&mut state.pending);
        // Settled below, once their closures are dropped (invariant 3); counted until then.
        state.reporting += drained.len();
        let running = state.running > 0;
        let joiner = state.joiner.take();
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
        self.settle_unstarted(drained, || Outcome::Cancelled(cause.clone()), Some(cause));
        if running && self.watcher.is_some() {
            self.check_slow(at, None, cause);
        }
        if let Some(joiner) = joiner {
            joiner.wake();
        }
    }

    /// The tasks at `keys`, ended without starting, have been reported to the observer: their
    /// exits become visible (so `join` never returns before an observer heard of them).
    fn reported(&self, keys: &[usize]) {
        let mut state = lock(&self.state);
        state.finished.extend(keys);
        state.reporting -= keys.len();
        let joiner = state.joiner.take();
        drop(state);
        if let Some(joiner) = joiner {
            joiner.wake();
        }
    }

    /// Whether the joiner can go on: an exit is ready (`each`) or every task has ended.
    /// Otherwise registers its waker.
    pub(crate) fn ready_or_register(&self, each: bool, waker: &Waker) -> bool {
        let mut state = lock(&self.state);
        if state.unfinished() == 0 || (each && !state.finished.is_empty()) {
            return true;
        }
        state.wake_on_each = each;
        match &state.joiner {
            Some(old) if old.will_wake(waker) => {}
            _ => state.joiner = Some(waker.clone()),
        }
        false
    }

    /// When the shutdown grace started, if the group is cancelled.
    pub(crate) fn cancelled_at(&self) -> Option<Instant> {
        lock(&self.state).cancelled_at
    }

    /// Aborts every running task. They report as aborted once tokio has dropped them.
    pub(crate) fn abort_running(&self) {
        let mut handles = Vec::new();
        {
            let mut state = lock(&self.state);
            for record in state.tasks.iter_mut() {
                if let Stage::Running { handle, abort, .. } = &mut record.stage {
                    *abort = true;
                    handles.extend(handle.take());
                }
            }
        }
        for handle in handles {
            handle.abort();
        }
    }

    /// Aborts the task `id` recorded at `key`, if it is still running. It reports as aborted
    /// once tokio has dropped it.
    pub(crate) fn abort_task(&self, key: usize, id: TaskId) {
        let handle = {
            let mut state = lock(&self.state);
            match state.tasks.get_mut(key) {
                Some(Record {
                    info,
                    stage: Stage::Running { handle, abort, .. },
                }) if info.id == id => {
                    *abort = true;
                    handle.take()
                }
                _ => None,
            }
        };
        if let Some(handle) = handle {
            handle.abort();
        }
    }

    /// The task `id`, recorded at `key`, was stopped alone (by its supervisor) with `cause`:
    /// notes when, for its cancel latency, and checks that it stops in time.
    pub(crate) fn child_stopped(self: &Arc<Self>, key: usize, id: TaskId, cause: &Cause) {
        if self.watcher.is_none() {
            return;
        }
        let now = Instant::now();
        if let Some(watched) = lock(&self.state).watched(key, id) {
            watched.stopped_at = Some(now);
        }
        self.check_slow(now, Some((key, id)), cause);
    }

    /// When the task `id`, recorded at `key`, was stopped alone, if it was.
    fn stopped_at(&self, key: usize, id: TaskId) -> Option<Instant> {
        let state = lock(&self.state);
        match state.tasks.get(key) {
            Some(Record {
                info,
                stage: Stage::Running { kept, .. },
            }) if info.id == id => state.kept.get((*kept)?.get())?.stopped_at,
            _ => None,
        }
    }

    /// Reports the tasks still running [`slow_to_stop_after`](Observer::slow_to_stop_after)
    /// after `since`, when their scopes were cancelled with `cause`: every running task, or
    /// only the task `only`. Spawns one timer; each task is reported once.
    fn check_slow(self: &Arc<Self>, since: Instant, only: Option<(usize, TaskId)>, cause: &Cause) {
        let Some(watcher) = &self.watcher else {
            return;
        };
        let (Some(after), Some(runtime)) = (watcher.slow_after, watcher.runtime()) else {
            return;
        };
        let Some(at) = since.checked_add(after) else {
            return;
        };
        let shared = Arc::downgrade(self);
        let cause = cause.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = shared.upgrade() {
                shared.report_slow(since, only, &cause);
            }
        });
    }

    fn report_slow(&self, since: Instant, only: Option<(usize, TaskId)>, cause: &Cause) {
        let Some(watcher) = &self.watcher else {
            return;
        };
        let mut slow = Vec::new();
        {
            let mut state = lock(&self.state);
            let State { tasks, kept, .. } = &mut *state;
            let records: Box<dyn Iterator<Item = &mut Record<T, E>>> = match only {
                Some((key, id)) => Box::new(
                    tasks
                        .get_mut(key)
                        .filter(|record| record.info.id == id)
                        .into_iter(),
                ),
                None => Box::new(tasks.iter_mut()),
            };
            for record in records {
                let Stage::Running {
                    watched: true,
                    kept: at,
                    ..
                } = &mut record.stage
                else {
                    continue;
                };
                let Some(watched) = kept_entry(kept, at) else {
                    continue;
                };
                if !watched.reported_slow {
                    watched.reported_slow = true;
                    let attachment = watched.attachment.as_ref().and_then(Weak::upgrade);
                    slow.push((record.info.clone(), attachment));
                }
            }
        }
        let since_cancel = Instant::now().saturating_duration_since(since);
        for (task, attachment) in &slow {
            observe::notify(&watcher.observer, |o| {
                o.task_slow_to_stop(&TaskSlowToStop {
                    group: &self.scope,
                    group_attachment: self.attachment.as_deref(),
                    task,
                    attachment: attachment.as_deref(),
                    cause,
                    since_cancel,
                })
            });
        }
    }

    /// How many tasks are pending or running.
    pub(crate) fn unfinished(&self) -> usize {
        lock(&self.state).unfinished()
    }

    /// How many tasks the group tracks: every task not yet returned by `join_next`.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).tasks.len()
    }

    /// The next exit, in the order tasks ended, with the panic to resume if it is that task's.
    pub(crate) fn take_next(&self) -> Option<(TaskExit<T, E>, Option<PanicPayload>)> {
        let mut state = lock(&self.state);
        let key = state.finished.pop_front()?;
        let record = state
            .tasks
            .remove(key)
            .expect("a finished task has a record");
        let Stage::Done(outcome) = record.stage else {
            unreachable!("only ended tasks are in `finished`");
        };
        if !matches!(outcome, Outcome::Completed(_)) {
            state.not_completed -= 1;
        }
        let panic = match &state.panic {
            Some((id, _)) if *id == record.info.id && self.config.resume_panics => {
                state.panic.take().map(|(_, payload)| payload)
            }
            _ => None,
        };
        let exit = TaskExit {
            task: record.info,
            outcome,
        };
        Some((exit, panic))
    }

    /// Every remaining exit, once no task is pending or running: the values in spawn order, or
    /// the group error. Also the panic to resume.
    pub(crate) fn take_all(&self) -> (Result<Vec<T>, GroupError<E>>, Option<PanicPayload>) {
        // Looked at before locking: it may observe a deadline and run our callback.
        let scope_cause = self.scope.cause();
        let (records, cause, winner, panic) = {
            let mut state = lock(&self.state);
            debug_assert_eq!(state.unfinished(), 0);
            if state.not_completed == 0 && !state.cut_short {
                // Every task completed: take the values in key order, without the bookkeeping
                // of the error path.
                state.finished.clear();
                let tasks = mem::take(&mut state.tasks);
                drop(state);
                return (Ok(values_in_spawn_order(tasks)), None);
            }
            let finished = mem::take(&mut state.finished);
            let records: Vec<_> = finished
                .into_iter()
                .filter_map(|key| state.tasks.remove(key))
                .collect();
            let panic = state.panic.take().map(|(_, payload)| payload);
            (records, state.cause.clone(), state.winner, panic)
        };
        let panic = panic.filter(|_| self.config.resume_panics);
        let mut failures = Vec::new();
        let mut cancelled = Vec::new();
        let mut aborted = Vec::new();
        for record in records {
            match record.stage {
                // Dropped: the error says why the group has no values to return.
                Stage::Done(Outcome::Completed(_)) => {}
                Stage::Done(Outcome::Failed(failure)) => failures.push(TaskFailure {
                    task: record.info,
                    failure,
                }),
                Stage::Done(Outcome::Cancelled(_)) => cancelled.push(record.info),
                Stage::Done(Outcome::Aborted) => aborted.push(record.info),
                Stage::Pending | Stage::Running { .. } => unreachable!("every task has ended"),
            }
        }
        if let Some(position) = failures.iter().position(|f| Some(f.task.id) == winner) {
            let first = failures.remove(position);
            failures.insert(0, first);
        }
        cancelled.sort_by_key(|task| task.id);
        aborted.sort_by_key(|task| task.id);
        let error = GroupError {
            cause: cause.or(scope_cause),
            failures,
            cancelled,
            aborted,
        };
        (Err(error), panic)
    }

    /// A snapshot of the group and every task it tracks.
    pub(crate) fn snapshot(&self) -> GroupSnapshot {
        let cause = self.scope.cause();
        enum View<E> {
            State(TaskState),
            Failed(Arc<E>),
        }
        let views: Vec<(TaskInfo, View<E>)> = {
            let state = lock(&self.state);
            state
                .tasks
                .iter()
                .map(|record| {
                    let view = match &record.stage {
                        Stage::Pending => View::State(TaskState::Pending),
                        Stage::Running { .. } => View::State(TaskState::Running),
                        Stage::Done(Outcome::Completed(_)) => View::State(TaskState::Completed),
                        Stage::Done(Outcome::Failed(Failure::Error(error))) => {
                            View::Failed(error.clone())
                        }
                        Stage::Done(Outcome::Failed(Failure::Panic(message))) => {
                            View::State(TaskState::Panicked(message.clone()))
                        }
                        Stage::Done(Outcome::Cancelled(cause)) => {
                            View::State(TaskState::Cancelled(cause.clone()))
                        }
                        Stage::Done(Outcome::Aborted) => View::State(TaskState::Aborted),
                    };
                    (record.info.clone(), view)
                })
                .collect()
        };
        let mut tasks: Vec<TaskSnapshot> = views
            .into_iter()
            .map(|(task, view)| TaskSnapshot {
                task,
                state: match view {
                    View::State(state) => state,
                    // Formatted here, outside the lock (invariant 4).
                    View::Failed(error) => TaskState::Failed(displayed(&*error)),
                },
            })
            .collect();
        tasks.sort_by_key(|task| task.task.id);
        GroupSnapshot {
            path: self.scope.path().to_string(),
            cause,
            tasks,
        }
    }
}

/// The values of `tasks`, every one of them completed, in spawn order.
fn values_in_spawn_order<T, E>(mut tasks: Slab<Record<T, E>>) -> Vec<T> {
    let mut values: Vec<(TaskId, T)> = tasks
        .drain()
        .map(|record| match record.stage {
            Stage::Done(Outcome::Completed(value)) => (record.info.id, value),
            _ => unreachable!("every task completed"),
        })
        .collect();
    // Keys follow spawn order unless `join_next` freed some for reuse; a stable sort handles
    // the nearly sorted rest in linear time.
    if !values.is_sorted_by_key(|(id, _)| *id) {
        values.sort_by_key(|(id, _)| *id);
    }
    values.into_iter().map(|(_, value)| value).collect()
}

impl<T, E> State<T, E> {
    /// Keeps `payload` as the group's first panic (for `resume_panics`) unless it has one;
    /// else hands it back, to be dropped outside the lock.
    fn keep_panic(&mut self, id: TaskId, payload: Option<PanicPayload>) -> Option<PanicPayload> {
        match payload {
            Some(payload) if self.panic.is_none() => {
                self.panic = Some((id, payload));
                None
            }
            other => other,
        }
    }

    fn insert(
        &mut self,
        name: Name,
        spawned_at: &'static Location<'static>,
        stage: Stage<T, E>,
    ) -> (TaskId, usize) {
        let id = TaskId(self.next_id);
        self.next_id += 1;
        let info = TaskInfo {
            id,
            name,
            spawned_at,
        };
        (id, self.tasks.insert(Record { info, stage }))
    }

    fn unfinished(&self) -> usize {
        self.running + self.pending.len() + self.reporting
    }

    /// What the watcher keeps for the running task `id`, recorded at `key`, if it is watched;
    /// made now if it was not yet (no user code: invariant 4 holds).
    fn watched(&mut self, key: usize, id: TaskId) -> Option<&mut Watched> {
        let State { tasks, kept, .. } = self;
        match tasks.get_mut(key) {
            Some(Record {
                info,
                stage:
                    Stage::Running {
                        watched: true,
                        kept: at,
                        ..
                    },
            }) if info.id == id => kept_entry(kept, at),
            _ => None,
        }
    }

    /// A copy of the description of the task at `key`, for an observer.
    fn info(&self, key: usize) -> TaskInfo {
        self.tasks
            .get(key)
            .expect("a tracked task has a record")
            .info
            .clone()
    }
}

pin_project! {
    /// A task's future as spawned: the user's future, and the guard that reports its end.
    struct TaskFuture<F, T, E, W>
    where
        T: Send,
        T: 'static,
        E: fmt::Debug,
        E: fmt::Display,
        E: Send,
        E: Sync,
        E: 'static,
        W: WatchSlot,
    {
        #[pin]
        user: User<F>,
        guard: Guard<T, E, W>,
    }
}

pin_project! {
    /// The user's future, until it is dropped right after it completes.
    #[project = UserProj]
    enum User<F> {
        Running { #[pin] future: F },
        Done,
    }
}

impl<F, T, E, W> Future for TaskFuture<F, T, E, W>
where
    F: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    W: WatchSlot,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let UserProj::Running { future } = this.user.as_mut().project() else {
            return Poll::Ready(());
        };
        let polled = entered(this.guard.watch.get(), || {
            panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx)))
        });
        let mut result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => Ok(result),
            Err(payload) => Err(payload),
        };
        // The exit is reported only once the user's future, and everything it held, is gone.
        // A panic while dropping it is the task's panic.
        let mut user = this.user;
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| user.set(User::Done)))
            && result.is_ok()
        {
            result = Err(payload);
        }
        let next = this.guard.report(|shared, key, scope| {
            // Classifying runs user code (the error's `Display` and `source`); if that panics,
            // the task is reported as having panicked.
            panic::catch_unwind(AssertUnwindSafe(|| shared.conclude(key, scope, result)))
                .unwrap_or_else(|payload| shared.conclude(key, scope, Err(payload)))
        });
        this.guard.shared.run_next(next);
        Poll::Ready(())
    }
}

/// Reports a running task's end exactly once (invariant 2): when its future completes, or as
/// aborted when it is dropped before that.
struct Guard<T, E, W>
where
    T: Send + 'static,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    W: WatchSlot,
{
    shared: Arc<Shared<T, E>>,
    key: usize,
    /// The task's scope; taken when the task is reported.
    scope: Option<Scope>,
    /// What the group's watcher needs: inline in a watched task (a box would cost it a malloc
    /// and a free, about 35 ns), nothing at all in a task of a group without watcher.
    watch: W,
}

impl<T, E, W> Guard<T, E, W>
where
    T: Send + 'static,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    W: WatchSlot,
{
    fn attachment_weak(&self) -> Option<Weak<dyn Attachment>> {
        self.watch.get()?.attachment.as_ref().map(Arc::downgrade)
    }

    /// Reports the task's end, unless it was; returns the pending task that takes its slot,
    /// for the caller to start.
    #[must_use]
    fn report(
        &mut self,
        exit: impl FnOnce(&Shared<T, E>, usize, &Scope) -> Exit<T, E>,
    ) -> Option<Next<T, E>> {
        let scope = self.scope.take()?;
        let exit = exit(&self.shared, self.key, &scope);
        // Before the exit becomes visible, so that whoever joins the group has seen it reported.
        if let Some(watch) = self.watch.take() {
            watch.finished(&self.shared, self.key, &scope, &exit.outcome, exit.won);
        }
        // The task's scope goes first, so that it is unlinked from the group's when the exit
        // becomes visible.
        drop(scope);
        self.shared.report(self.key, exit)
    }
}

impl<T, E, W> Drop for Guard<T, E, W>
where
    T: Send + 'static,
    E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    W: WatchSlot,
{
    fn drop(&mut self) {
        let next = self.report(|_, _, _| Exit::of(Outcome::Aborted));
        self.shared.run_next(next);
    }
}

/// Runs `f` inside the task's attachment, if it has one, and returns what it returned. A panic
/// of the attachment's `enter` is ignored like any observer's; if `enter` did not run `f`, it
/// runs here. `f` must not unwind (callers wrap the task's code in `catch_unwind`).
fn entered<R>(watch: Option<&Watch>, f: impl FnOnce() -> R) -> R {
    let Some(attachment) = watch.and_then(|watch| watch.attachment.as_deref()) else {
        return f();
    };
    let (mut f, mut out) = (Some(f), None);
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        attachment.enter(&mut || {
            if let Some(f) = f.take() {
                out = Some(f());
            }
        })
    }));
    match out {
        Some(out) => out,
        None => f.take().expect("`f` runs at most once")(),
    }
}

/// Where a task's guard keeps its [`Watch`]: `Option<Watch>` for the tasks of a group with a
/// watcher, [`Unwatched`] (zero-sized) for the others.
trait WatchSlot: Send + 'static {
    fn get(&self) -> Option<&Watch>;
    fn take(&mut self) -> Option<Watch>;
}

impl WatchSlot for Option<Watch> {
    fn get(&self) -> Option<&Watch> {
        self.as_ref()
    }

    fn take(&mut self) -> Option<Watch> {
        Option::take(self)
    }
}

/// The watch slot of a task nobody watches.
struct Unwatched;

impl WatchSlot for Unwatched {
    fn get(&self) -> Option<&Watch> {
        None
    }

    fn take(&mut self) -> Option<Watch> {
        None
    }
}

/// A group's observer of tasks, and what it asked for.
struct Watcher {
    observer: Arc<dyn Observer>,
    /// How long after its cancellation a running task is reported slow to stop.
    slow_after: Option<Duration>,
    /// Where slow-to-stop checks run when the group is cancelled off its runtime.
    runtime: Option<Handle>,
}

impl Watcher {
    /// Tells `observer` of the group made on `scope`; returns its attachment, and a watcher
    /// if it observes the group's tasks.
    fn new(
        observer: &Arc<dyn Observer>,
        scope: &Scope,
    ) -> (Option<Arc<dyn Attachment>>, Option<Watcher>) {
        let group = GroupCreated { scope };
        let attachment = observe::notify(observer, |o| o.group_created(&group));
        if !observe::notify(observer, |o| o.observes_tasks(&group)) {
            return (attachment, None);
        }
        let slow_after = observe::notify(observer, |o| o.slow_to_stop_after());
        let watcher = Watcher {
            observer: observer.clone(),
            slow_after,
            runtime: slow_after.and_then(|_| Handle::try_current().ok()),
        };
        (attachment, Some(watcher))
    }

    fn runtime(&self) -> Option<Handle> {
        Handle::try_current().ok().or_else(|| self.runtime.clone())
    }
}

/// What a running task's record keeps for its group's watcher.
#[derive(Default)]
struct Watched {
    attachment: Option<Weak<dyn Attachment>>,
    reported_slow: bool,
    /// When its supervisor cancelled its scope, stopping it alone.
    stopped_at: Option<Instant>,
}

/// A running task as its group's watcher sees it.
struct Watch {
    task: TaskInfo,
    attachment: Option<Arc<dyn Attachment>>,
    started: Instant,
}

impl Watch {
    /// Reports the start of `task`, in `scope`, to the group's watcher, if it has one.
    fn start<T, E>(shared: &Shared<T, E>, observed: Observed, scope: &Scope) -> Option<Watch>
    where
        T: Send + 'static,
        E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    {
        let watcher = shared.watcher.as_ref()?;
        let Observed { task, was_pending } = observed;
        let attachment = observe::notify(&watcher.observer, |o| {
            o.task_started(&TaskStarted {
                group: &shared.scope,
                group_attachment: shared.attachment.as_deref(),
                task: &task,
                scope,
                was_pending,
            })
        });
        Some(Watch {
            task,
            attachment,
            started: Instant::now(),
        })
    }

    /// Reports the end of the task recorded at `key` to the observer. `won`: its failure
    /// cancelled the group, so its own scope's cause is the task's doing, not what stopped it.
    fn finished<T, E>(
        &self,
        shared: &Shared<T, E>,
        key: usize,
        scope: &Scope,
        outcome: &Outcome<T, E>,
        won: bool,
    ) where
        T: Send + 'static,
        E: fmt::Debug + fmt::Display + Send + Sync + 'static,
    {
        let Some(watcher) = &shared.watcher else {
            return;
        };
        let now = Instant::now();
        // A deadline that passed before the task ended cut it short (time order decides), as
        // `join` reports it: noticed here, if nobody did.
        let looked = || scope.cause();
        let (outcome, error, cause): (_, Option<&dyn fmt::Display>, _) = match outcome {
            Outcome::Completed(_) => (TaskOutcome::Completed, None, looked()),
            Outcome::Failed(Failure::Error(error)) => (
                TaskOutcome::Failed,
                Some(&**error),
                looked().filter(|_| !won),
            ),
            Outcome::Failed(Failure::Panic(message)) => (
                TaskOutcome::Panicked,
                Some(message),
                looked().filter(|_| !won),
            ),
            Outcome::Cancelled(cause) => (TaskOutcome::Cancelled, None, Some(cause.clone())),
            Outcome::Aborted => (TaskOutcome::Aborted, None, looked()),
        };
        // From when this task's scope was cancelled: when its supervisor stopped it, or when
        // the cause took effect.
        let cancel_latency = cause
            .as_ref()
            .and_then(|cause| shared.stopped_at(key, self.task.id).or(cause.instant()))
            .map(|at| now.saturating_duration_since(at));
        observe::notify(&watcher.observer, |o| {
            o.task_finished(&TaskFinished {
                group: &shared.scope,
                group_attachment: shared.attachment.as_deref(),
                task: &self.task,
                attachment: self.attachment.as_deref(),
                outcome,
                started: true,
                error,
                cause: cause.as_ref(),
                elapsed: now.saturating_duration_since(self.started),
                cancel_latency,
            })
        });
    }
}

/// Drops a user value (a task's closure that never ran), containing a panic of its `Drop`:
/// the panic hook has reported it, and the group's accounting must still settle, or `join`
/// would wait forever and the panic would unwind into whoever cancelled the group.
fn drop_contained<T>(value: T) {
    let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(value)));
}

/// How a task that never started ended, as its observer hears it.
struct Unstarted {
    outcome: TaskOutcome,
    /// The message of the panic that dropping its closure raised.
    panic: Option<String>,
}

impl Unstarted {
    fn of<T, E>(outcome: &Outcome<T, E>) -> Unstarted {
        match outcome {
            Outcome::Failed(Failure::Panic(message)) => Unstarted {
                outcome: TaskOutcome::Panicked,
                panic: Some(message.clone()),
            },
            Outcome::Aborted => Unstarted {
                outcome: TaskOutcome::Aborted,
                panic: None,
            },
            _ => Unstarted {
                outcome: TaskOutcome::Cancelled,
                panic: None,
            },
        }
    }
}

/// Drops what a task that never started held (its closure), outside any lock, and says how it
/// ended: as `ended`, or as the panic that drop raised, whose payload comes back too.
fn dropped_unstarted<X, T, E>(
    value: X,
    ended: impl FnOnce() -> Outcome<T, E>,
) -> (Outcome<T, E>, Option<PanicPayload>) {
    match panic::catch_unwind(AssertUnwindSafe(|| drop(value))) {
        Ok(()) => (ended(), None),
        Err(payload) => {
            let message = panic_message(&*payload);
            (Outcome::Failed(Failure::Panic(message)), Some(payload))
        }
    }
}
