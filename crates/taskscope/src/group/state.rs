//! A group's state machine: one [`Record`] per task, from `spawn` until its exit is taken by
//! `join_next` or `join`, and the counts `join` waits on. [`State`]'s methods run under the
//! group's state lock and call no user code; what they take out for user code to run on
//! ([`Released`], the records of [`group_error`]) is handled after the lock is released.
//!
//! Invariants:
//!
//! 1. A record's stage only moves forward: `Pending -> Running -> Done`, or `Pending -> Done`
//!    for a task that never started. It becomes `Done` exactly once, in [`State::finish`], which
//!    pushes its key onto `finished`: so `finished` holds every `Done` record not yet taken, in
//!    the order the tasks ended. Only `Done` records are removed, so a key a task holds while
//!    not `Done` always names its own record; a key held after that may be reused, so late
//!    accesses check the record's id.
//! 2. `running` counts the `Running` records. A `Pending` record is either in the `pending`
//!    queue or counted in `leaving`: taken off the queue (or refused a start) without starting,
//!    it stays `Pending` while what it held is dropped outside the lock, then becomes `Done`.
//!    So [`unfinished`](State::unfinished) counts exactly the records not `Done`, and `join`
//!    ends once it is 0.
//! 3. `cause` is set once, by the group scope's `on_cancel` callback, which in the same
//!    critical section empties `pending` into `leaving`. `spawn` checks `cause` under the same
//!    lock before queueing, so no task is queued after that, and a queued task never starts
//!    once it is set.

use std::any::Any;
use std::collections::VecDeque;
use std::mem;
use std::panic::Location;
use std::sync::Arc;
use std::task::Waker;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::report::{Failure, GroupError, Outcome, TaskExit, TaskFailure, TaskState};
use super::shared::{Next, Shared, Starting};
use crate::path::{Name, PathLink};
use crate::slab::{self, Slab};
use crate::{Cause, TaskId, TaskInfo};

pub(super) type PanicPayload = Box<dyn Any + Send + 'static>;

pub(super) struct State<T, E> {
    pub(super) tasks: Slab<Record<T, E>>,
    next_id: u64,
    /// Records in stage `Running` (invariant 2).
    pub(super) running: usize,
    /// Records in stage `Pending` that wait for a slot, oldest first, with what starts them.
    pub(super) pending: VecDeque<Queued<T, E>>,
    /// Records in stage `Pending` that will never start, until they are `Done` (invariant 2).
    pub(super) leaving: usize,
    /// Keys of `Done` records not yet taken, in the order the tasks ended (invariant 1).
    finished: VecDeque<usize>,
    /// How many of those did not complete (failed, cancelled, aborted).
    not_completed: usize,
    /// The group was cancelled before its last task ended (or before it had any): `join`
    /// reports the cause even if every task returned `Ok`.
    pub(super) cut_short: bool,
    joiner: Option<Waker>,
    /// Whether the joiner wants to hear of every exit (`join_next`) or only of the last
    /// (`join`).
    wake_on_each: bool,
    /// The group's cause, once its `on_cancel` callback ran (invariant 3).
    pub(super) cause: Option<Cause>,
    /// When the group was cancelled, on tokio's clock: the start of the shutdown grace.
    pub(super) cancelled_at: Option<Instant>,
    /// The task whose failure cancelled the group.
    pub(super) winner: Option<TaskId>,
    /// The first panic, kept for `resume_panics`.
    panic: Option<(TaskId, PanicPayload)>,
    /// The group was joined or dropped: its spawners are refused.
    pub(super) closed: bool,
    /// The scope path of the task with a literal name that last started with a path of its
    /// own: the next task of the same name shares it instead of allocating one (tasks spawned
    /// in a loop are usually named alike).
    pub(super) task_path: Option<Arc<PathLink>>,
}

pub(super) struct Record<T, E> {
    pub(super) info: TaskInfo,
    pub(super) stage: Stage<T, E>,
}

pub(super) enum Stage<T, E> {
    Pending,
    Running {
        /// `None` until `spawn` returns it, or once taken to abort the task.
        handle: Option<JoinHandle<()>>,
        /// Abort the task as soon as its handle arrives.
        abort: bool,
    },
    Done(Outcome<T, E>),
}

impl<T, E> Stage<T, E> {
    pub(super) const RUNNING: Self = Stage::Running {
        handle: None,
        abort: false,
    };
}

/// A pending task in the queue: its record, and what starts it once a slot is free.
///
/// 32 bytes, as without `watched`: its key in 32 bits (a slab key is) leaves room for the flag;
/// a pending task's memory is a target (125.8 B per task, docs/performance.md, group row 4b).
pub(super) struct Queued<T, E> {
    key: u32,
    /// The group's watcher follows it (decided when it was spawned).
    pub(super) watched: bool,
    pub(super) id: TaskId,
    pub(super) start: StartFn<T, E>,
}

impl<T, E> Queued<T, E> {
    pub(super) fn new(key: usize, id: TaskId, watched: bool, start: StartFn<T, E>) -> Self {
        let key = slab::index(key);
        Queued {
            key,
            watched,
            id,
            start,
        }
    }

    /// Its record's key.
    pub(super) fn key(&self) -> usize {
        self.key as usize
    }
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Queued<(), ()>>() == 32);

/// Calls a pending task's closure and spawns its future; returns the pending task to start
/// next if it ended at once.
pub(super) type StartFn<T, E> =
    Box<dyn FnOnce(&Arc<Shared<T, E>>, Starting) -> Option<Next<T, E>> + Send>;

/// A snapshot of one task, before what needs user code (a failure's `Display`) is formatted
/// outside the lock.
pub(super) enum View<E> {
    State(TaskState),
    Failed(Arc<E>),
}

impl<T, E> State<T, E> {
    pub(super) fn new() -> Self {
        State {
            tasks: Slab::new(),
            next_id: 0,
            running: 0,
            pending: VecDeque::new(),
            leaving: 0,
            finished: VecDeque::new(),
            not_completed: 0,
            cut_short: false,
            joiner: None,
            wake_on_each: true,
            cause: None,
            cancelled_at: None,
            winner: None,
            panic: None,
            closed: false,
            task_path: None,
        }
    }

    /// Records a new task in `stage`; returns its id and key.
    pub(super) fn insert(
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

    /// Whether no task was ever spawned.
    pub(super) fn is_new(&self) -> bool {
        self.next_id == 0
    }

    /// How many records are not `Done` (invariant 2).
    pub(super) fn unfinished(&self) -> usize {
        self.running + self.pending.len() + self.leaving
    }

    /// The record at `key`, if it is still that of task `id` (invariant 1).
    pub(super) fn record(&mut self, key: usize, id: TaskId) -> Option<&mut Record<T, E>> {
        self.tasks
            .get_mut(key)
            .filter(|record| record.info.id == id)
    }

    /// A copy of the description of the task at `key`.
    pub(super) fn info(&self, key: usize) -> TaskInfo {
        let record = self.tasks.get(key).expect("a tracked task has a record");
        record.info.clone()
    }

    /// The record at `key` ends with `outcome` (invariant 1); `payload` is its panic. Returns
    /// what the record held (its task's handle, a panic payload not kept) to drop outside the
    /// lock, and the joiner to wake.
    pub(super) fn finish(
        &mut self,
        key: usize,
        outcome: Outcome<T, E>,
        payload: Option<PanicPayload>,
    ) -> Released {
        let completed = matches!(outcome, Outcome::Completed(_));
        let record = self
            .tasks
            .get_mut(key)
            .expect("an unfinished task has a record");
        let id = record.info.id;
        let handle = match mem::replace(&mut record.stage, Stage::Done(outcome)) {
            Stage::Running { handle, .. } => {
                self.running -= 1;
                handle
            }
            Stage::Pending => {
                self.leaving -= 1;
                None
            }
            Stage::Done(_) => unreachable!("a task ends once (invariant 1)"),
        };
        self.finished.push_back(key);
        self.not_completed += usize::from(!completed);
        let payload = match payload {
            Some(payload) if self.panic.is_none() => {
                self.panic = Some((id, payload));
                None
            }
            other => other,
        };
        let last = self.unfinished() == 0;
        let joiner = if self.wake_on_each || last {
            self.joiner.take()
        } else {
            None
        };
        Released {
            handle,
            payload,
            joiner,
        }
    }

    /// Whether the joiner can go on: an exit is ready (`each`) or every task has ended.
    pub(super) fn ready(&self, each: bool) -> bool {
        self.unfinished() == 0 || (each && !self.finished.is_empty())
    }

    /// Makes the joiner's waker one that wakes the same task as `current`: keeps the one it
    /// has if it does, else takes `new` (a clone of `current`, made outside the lock) and hands
    /// back the one replaced, to drop outside the lock; asks for `new` if it is missing.
    pub(super) fn register(&mut self, each: bool, current: &Waker, new: Option<Waker>) -> Register {
        self.wake_on_each = each;
        match (&self.joiner, new) {
            (Some(joiner), _) if joiner.will_wake(current) => Register::Kept,
            (_, Some(new)) => Register::Replaced(self.joiner.replace(new)),
            (_, None) => Register::NeedsClone,
        }
    }

    /// The joiner, to wake outside the lock.
    pub(super) fn take_joiner(&mut self) -> Option<Waker> {
        self.joiner.take()
    }

    /// The next exit, in the order tasks ended, with the panic to resume if it is that task's
    /// and `resume_panics` is set.
    pub(super) fn take_next(
        &mut self,
        resume_panics: bool,
    ) -> Option<(TaskExit<T, E>, Option<PanicPayload>)> {
        let key = self.finished.pop_front()?;
        let record = self
            .tasks
            .remove(key)
            .expect("a finished task has a record");
        let Stage::Done(outcome) = record.stage else {
            unreachable!("only ended tasks are in `finished` (invariant 1)");
        };
        if !matches!(outcome, Outcome::Completed(_)) {
            self.not_completed -= 1;
        }
        let panic = match &self.panic {
            Some((id, _)) if *id == record.info.id && resume_panics => {
                self.panic.take().map(|(_, payload)| payload)
            }
            _ => None,
        };
        let exit = TaskExit {
            task: record.info,
            outcome,
        };
        Some((exit, panic))
    }

    /// Takes every record once all have ended: the values in spawn order when every task
    /// completed before any cancellation, else the records for the group error, and the first
    /// panic.
    ///
    /// `None` if a task is left after all (a spawner spawned one since the joiner was woken);
    /// else the group is closed to spawners from now on.
    pub(super) fn take_all(&mut self) -> Option<Taken<T, E>> {
        if self.unfinished() > 0 {
            return None;
        }
        self.closed = true;
        let finished = mem::take(&mut self.finished);
        if self.not_completed == 0 && !self.cut_short {
            // Every task completed: take the values in key order, without the bookkeeping of
            // the error path.
            return Some(Taken::Values(values_in_spawn_order(&mut self.tasks)));
        }
        let records = finished.into_iter();
        Some(Taken::Ended {
            records: records.filter_map(|key| self.tasks.remove(key)).collect(),
            cause: self.cause.clone(),
            winner: self.winner,
            panic: self.panic.take().map(|(_, payload)| payload),
        })
    }

    /// Every task as a snapshot shows it, in key order.
    pub(super) fn views(&self) -> Vec<(TaskInfo, View<E>)> {
        let view = |stage: &Stage<T, E>| match stage {
            Stage::Pending => View::State(TaskState::Pending),
            Stage::Running { .. } => View::State(TaskState::Running),
            Stage::Done(Outcome::Completed(_)) => View::State(TaskState::Completed),
            Stage::Done(Outcome::Failed(Failure::Error(error))) => View::Failed(error.clone()),
            Stage::Done(Outcome::Failed(Failure::Panic(message))) => {
                View::State(TaskState::Panicked(message.clone()))
            }
            Stage::Done(Outcome::Cancelled(cause)) => {
                View::State(TaskState::Cancelled(cause.clone()))
            }
            Stage::Done(Outcome::Aborted) => View::State(TaskState::Aborted),
        };
        let records = self.tasks.iter();
        records.map(|r| (r.info.clone(), view(&r.stage))).collect()
    }
}

/// What [`State::register`] did with the joiner's waker.
pub(super) enum Register {
    /// The registered one wakes the same task.
    Kept,
    /// Took the new one; here is the one it replaced, if any.
    Replaced(Option<Waker>),
    /// A clone of the current waker is needed.
    NeedsClone,
}

/// What [`State::take_all`] takes.
pub(super) enum Taken<T, E> {
    /// Every task completed: their values, in spawn order.
    Values(Vec<T>),
    /// Some task did not complete, or the group was cut short.
    Ended {
        records: Vec<Record<T, E>>,
        cause: Option<Cause>,
        winner: Option<TaskId>,
        panic: Option<PanicPayload>,
    },
}

/// The error of a group whose tasks ended as `records`, `winner`'s failure first.
pub(super) fn group_error<T, E>(
    records: Vec<Record<T, E>>,
    cause: Option<Cause>,
    winner: Option<TaskId>,
) -> GroupError<E> {
    let mut failures = Vec::new();
    let mut cancelled = Vec::new();
    let mut aborted = Vec::new();
    for record in records {
        let Stage::Done(outcome) = record.stage else {
            unreachable!("every task has ended");
        };
        match outcome {
            // Dropped: the error says why the group has no values to return.
            Outcome::Completed(_) => {}
            Outcome::Failed(failure) => failures.push(TaskFailure {
                task: record.info,
                failure,
            }),
            Outcome::Cancelled(_) => cancelled.push(record.info),
            Outcome::Aborted => aborted.push(record.info),
        }
    }
    if let Some(position) = failures.iter().position(|f| Some(f.task.id) == winner) {
        let first = failures.remove(position);
        failures.insert(0, first);
    }
    cancelled.sort_by_key(|task| task.id);
    aborted.sort_by_key(|task| task.id);
    GroupError {
        cause,
        failures,
        cancelled,
        aborted,
    }
}

/// What [`State::finish`] took out of the state, to drop or wake once the lock is released.
#[must_use = "dropped outside the lock"]
pub(super) struct Released {
    handle: Option<JoinHandle<()>>,
    payload: Option<PanicPayload>,
    joiner: Option<Waker>,
}

impl Released {
    /// Drops what the task held and wakes the joiner; call without the lock.
    pub(super) fn release(self) {
        drop(self.handle);
        if let Some(payload) = self.payload {
            super::guard::drop_contained(payload);
        }
        if let Some(joiner) = self.joiner {
            joiner.wake();
        }
    }
}

/// The values of `tasks`, every one of them completed, in spawn order.
fn values_in_spawn_order<T, E>(tasks: &mut Slab<Record<T, E>>) -> Vec<T> {
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
