//! What the owner of a [`TaskGroup`](crate::TaskGroup) does with its tasks: waits for them
//! ([`Join`], [`JoinNext`] and the group's `poll_ended`), takes their exits, aborts them, looks
//! at them.

use std::fmt;
use std::future::Future;
use std::panic;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::time::Instant;

use super::TaskGroup;
use super::report::{GroupError, GroupSnapshot, TaskExit, TaskSnapshot, TaskState};
use super::shared::Shared;
use super::state::{PanicPayload, Register, Stage, Taken, View, group_error};
use crate::sync::lock;
use crate::text::displayed;
use crate::{TaskError, TaskId};

/// What a finished `join` takes: the values or the group error, and the panic to resume.
pub(crate) type Joined<T, E> = (Result<Vec<T>, GroupError<E>>, Option<PanicPayload>);

impl<T, E> Shared<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    /// Whether the joiner can go on: an exit is ready (`each`) or every task has ended.
    /// Otherwise registers its waker, cloned outside the lock.
    pub(crate) fn ready_or_register(&self, each: bool, waker: &Waker) -> bool {
        let mut new = None;
        loop {
            let mut state = lock(&self.state);
            if state.ready(each) {
                return true;
            }
            match state.register(each, waker, new.take()) {
                Register::Kept => return false,
                Register::Replaced(replaced) => {
                    drop(state);
                    drop(replaced);
                    return false;
                }
                Register::NeedsClone => {
                    drop(state);
                    new = Some(waker.clone());
                }
            }
        }
    }

    /// When the shutdown grace started, if the group is cancelled.
    pub(crate) fn cancelled_at(&self) -> Option<Instant> {
        lock(&self.state).cancelled_at
    }

    /// Aborts every running task. They report as aborted once tokio has dropped them.
    pub(crate) fn abort_running(&self) {
        let mut handles = Vec::new();
        for record in lock(&self.state).tasks.iter_mut() {
            if let Stage::Running { handle, abort } = &mut record.stage {
                *abort = true;
                handles.extend(handle.take());
            }
        }
        handles.into_iter().for_each(|handle| handle.abort());
    }

    /// Aborts the task `id` recorded at `key`, if it is still running. It reports as aborted
    /// once tokio has dropped it.
    pub(crate) fn abort_task(&self, key: usize, id: TaskId) {
        let handle = match lock(&self.state).record(key, id).map(|r| &mut r.stage) {
            Some(Stage::Running { handle, abort }) => {
                *abort = true;
                handle.take()
            }
            _ => None,
        };
        if let Some(handle) = handle {
            handle.abort();
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
        lock(&self.state).take_next(self.config.resume_panics)
    }

    /// Every remaining exit, once no task is pending or running: the values in spawn order, or
    /// the group error. Also the panic to resume.
    ///
    /// `None` if a spawner added a task since the joiner was woken: the joiner waits again.
    pub(crate) fn take_all(&self) -> Option<Joined<T, E>> {
        // Looked at before locking: it may observe a deadline and run our callback.
        let scope_cause = self.scope.cause();
        let taken = lock(&self.state).take_all()?;
        Some(match taken {
            Taken::Values(values) => (Ok(values), None),
            Taken::Ended {
                records,
                cause,
                winner,
                panic,
            } => {
                // Outside the lock: dropping the completed values is user code.
                let error = group_error(records, cause.or(scope_cause), winner);
                (Err(error), panic.filter(|_| self.config.resume_panics))
            }
        })
    }

    /// Closes the group to its spawners: it is being dropped.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
    }

    /// A snapshot of the group and every task it tracks.
    pub(crate) fn snapshot(&self) -> GroupSnapshot {
        let cause = self.scope.cause();
        let views = lock(&self.state).views();
        let mut tasks: Vec<TaskSnapshot> = views
            .into_iter()
            .map(|(task, view)| TaskSnapshot {
                task,
                state: match view {
                    View::State(state) => state,
                    // Formatted here, outside the lock.
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

impl<T, E> TaskGroup<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    /// Ready once a task has ended (`each`) or every task has; meanwhile enforces the grace.
    pub(super) fn poll_ended(&mut self, cx: &mut Context<'_>, each: bool) -> Poll<()> {
        loop {
            if self.shared.ready_or_register(each, cx.waker()) {
                return Poll::Ready(());
            }
            if self.abort_at.is_none() {
                // Without a deadline, `cancelled` pending has registered the waker it was
                // polled with on the scope: it is polled again only with a new waker, or to take
                // the cause. (A deadline's timer may return pending without registering, when
                // the task has spent its cooperative budget: then it is polled every time.)
                let same = self
                    .cancelled_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()));
                if same
                    && self.shared.scope.deadline().is_none()
                    && !self.shared.scope.is_cancelled()
                {
                    return Poll::Pending;
                }
                if !same {
                    self.cancelled_waker = Some(cx.waker().clone());
                }
                ready!(Pin::new(&mut self.cancelled).poll(cx));
                let cancelled_at = self.shared.cancelled_at().unwrap_or_else(Instant::now);
                let grace_end = cancelled_at.checked_add(self.shared.config.grace);
                self.abort_at = Some(match (grace_end, self.budget_end) {
                    (Some(at), Some(budget)) => Some(at.min(budget)),
                    (at, budget) => at.or(budget),
                });
            }
            let Some(Some(abort_at)) = self.abort_at else {
                return Poll::Pending;
            };
            if self.aborted {
                return Poll::Pending;
            }
            if abort_at > Instant::now() {
                let timer = self
                    .grace_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(abort_at)));
                ready!(timer.as_mut().poll(cx));
            }
            self.grace_timer = None;
            self.aborted = true;
            self.shared.abort_running();
        }
    }
}

/// Waits for every task of a group; returned by [`TaskGroup::join`].
///
/// # Cancel safety
///
/// Dropping it drops the group, cancelling it with a [`Dropped`](crate::CauseKind::Dropped) cause.
#[must_use = "futures do nothing unless polled"]
pub struct Join<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    pub(super) group: Option<TaskGroup<T, E>>,
}

impl<T, E> Future for Join<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    type Output = Result<Vec<T>, GroupError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let group = self
            .group
            .as_mut()
            .expect("`Join` polled after it completed");
        let (result, panic) = loop {
            ready!(group.poll_ended(cx, false));
            if let Some(taken) = group.shared.take_all() {
                break taken;
            }
        };
        drop(self.group.take());
        if let Some(payload) = panic {
            panic::resume_unwind(payload);
        }
        Poll::Ready(result)
    }
}

impl<T, E> fmt::Debug for Join<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Join").field("group", &self.group).finish()
    }
}

/// Waits for the next task of a group to end; returned by [`TaskGroup::join_next`].
///
/// # Cancel safety
///
/// Cancel-safe: see [`TaskGroup::join_next`].
#[must_use = "futures do nothing unless polled"]
pub struct JoinNext<'a, T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    pub(super) group: &'a mut TaskGroup<T, E>,
}

impl<T, E> Future for JoinNext<'_, T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    type Output = Option<TaskExit<T, E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.group.poll_join_next(cx)
    }
}

impl<T, E> fmt::Debug for JoinNext<'_, T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinNext").finish_non_exhaustive()
    }
}
