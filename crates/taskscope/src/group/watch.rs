//! What a group tells the observer of its tasks: spawned, started, finished, slow to stop.
//!
//! A group has a [`Watcher`] when its scope has an observer; each task is watched if the
//! observer [observes tasks](crate::observe::Observer::observes_tasks) when it is spawned. The watcher keeps, under its own lock, the
//! tasks it has seen start and not yet finish, at their records' keys: who they are, when they
//! started, for slow-to-stop reports and cancel latencies. That lock is never held together
//! with the group's, and no user code (observer, attachment) runs under it. A running task's
//! guard holds only the task's attachment, entered around each poll.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::report::{Failure, Outcome};
use super::shared::Exit;
use crate::observe::{
    self, Attachment, GroupCreated, Observer, TaskFinished, TaskOutcome, TaskSlowToStop,
    TaskSpawned, TaskStarted,
};
use crate::sync::{Mutex, lock};
use crate::{Cause, Scope, TaskId, TaskInfo};

/// The group an event is about: its scope, and what the observer attached to it.
#[derive(Clone, Copy)]
pub(super) struct Group<'a> {
    pub(super) scope: &'a Scope,
    pub(super) attachment: Option<&'a dyn Attachment>,
}

/// A group's observer of tasks, and what it asked for.
pub(super) struct Watcher {
    observer: Arc<dyn Observer>,
    /// The group runs a supervisor's children.
    supervisor: bool,
    /// How long after its cancellation a running task is reported slow to stop.
    slow_after: Option<Duration>,
    /// Where slow-to-stop checks run when the group is cancelled off its runtime.
    runtime: Option<Handle>,
    /// The tasks started and not yet finished, at their records' keys in the group (stable
    /// while a task runs).
    running: Mutex<Vec<Option<Running>>>,
}

/// What the watcher keeps of a running task.
struct Running {
    task: TaskInfo,
    started: Instant,
    /// Weak: the task's guard owns it, and no user `Drop` runs under the watcher's lock.
    attachment: Option<Weak<dyn Attachment>>,
    reported_slow: bool,
    /// When its supervisor cancelled its scope, stopping it alone.
    stopped_at: Option<Instant>,
}

/// How a task that never started ended, as its observer hears it.
pub(super) struct Unstarted {
    outcome: TaskOutcome,
    /// The message of the panic that dropping its closure raised.
    panic: Option<String>,
}

impl Unstarted {
    pub(super) fn of<T, E>(outcome: &Outcome<T, E>) -> Unstarted {
        let (outcome, panic) = match outcome {
            Outcome::Failed(Failure::Panic(message)) => {
                (TaskOutcome::Panicked, Some(message.clone()))
            }
            Outcome::Aborted => (TaskOutcome::Aborted, None),
            _ => (TaskOutcome::Cancelled, None),
        };
        Unstarted { outcome, panic }
    }
}

impl Watcher {
    /// Tells `observer` of the group made on `scope`; returns its attachment, and the watcher
    /// of the group's tasks.
    pub(super) fn new(
        observer: &Arc<dyn Observer>,
        scope: &Scope,
        supervisor: bool,
    ) -> (Option<Arc<dyn Attachment>>, Option<Watcher>) {
        let group = GroupCreated { scope, supervisor };
        let attachment = observe::notify(observer, |o| o.group_created(&group));
        let slow_after = observe::notify(observer, |o| o.slow_to_stop_after());
        let watcher = Watcher {
            observer: observer.clone(),
            supervisor,
            slow_after,
            runtime: slow_after.and_then(|_| Handle::try_current().ok()),
            running: Mutex::new(Vec::new()),
        };
        (attachment, Some(watcher))
    }

    /// Whether the observer wants to hear of a task spawned now: asked for each task, so that a
    /// subscriber installed (or a filter changed) after the group was made counts from the next
    /// task on.
    pub(super) fn observes(&self, group: Group<'_>) -> bool {
        let group = GroupCreated {
            scope: group.scope,
            supervisor: self.supervisor,
        };
        observe::notify(&self.observer, |o| o.observes_tasks(&group))
    }

    /// `task` was spawned: it starts now, or waits as pending.
    pub(super) fn spawned(&self, group: Group<'_>, task: &TaskInfo, pending: bool) {
        observe::notify(&self.observer, |o| {
            o.task_spawned(&TaskSpawned {
                group: group.scope,
                task,
                pending,
            })
        });
    }

    /// `task` ended before it started: cancelled with `cause`, aborted with its runtime, or as
    /// the panic of dropping its closure.
    pub(super) fn never_started(
        &self,
        group: Group<'_>,
        task: &TaskInfo,
        ended: &Unstarted,
        cause: Option<&Cause>,
    ) {
        let panic = ended.panic.as_ref().map(|m| m as &dyn fmt::Display);
        observe::notify(&self.observer, |o| {
            o.task_finished(&TaskFinished {
                group: group.scope,
                group_attachment: group.attachment,
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

    /// `task`, recorded at `key`, starts in `scope`; the watcher follows it until
    /// [`finished`](Self::finished). Returns what the observer attached to it.
    pub(super) fn start(
        &self,
        group: Group<'_>,
        key: usize,
        task: TaskInfo,
        was_pending: bool,
        scope: &Scope,
    ) -> Option<Arc<dyn Attachment>> {
        let attachment = observe::notify(&self.observer, |o| {
            o.task_started(&TaskStarted {
                group: group.scope,
                group_attachment: group.attachment,
                task: &task,
                scope,
                was_pending,
            })
        });
        let running = Running {
            task,
            started: Instant::now(),
            attachment: attachment.as_ref().map(Arc::downgrade),
            reported_slow: false,
            stopped_at: None,
        };
        {
            let mut tasks = lock(&self.running);
            if tasks.len() <= key {
                tasks.resize_with(key + 1, || None);
            }
            tasks[key] = Some(running);
        }
        attachment
    }

    /// The task recorded at `key`, in `scope`, with `attachment`, ended with `exit`. A failure
    /// that cancelled the group (`won`) is the task's doing: its scope's cause is not what
    /// stopped it.
    pub(super) fn finished<T, E>(
        &self,
        group: Group<'_>,
        key: usize,
        attachment: Option<&dyn Attachment>,
        scope: &Scope,
        exit: &Exit<T, E>,
    ) where
        E: fmt::Display,
    {
        let now = Instant::now();
        let Some(running) = lock(&self.running).get_mut(key).and_then(Option::take) else {
            return;
        };
        // A deadline that passed before the task ended cut it short (time order decides), as
        // `join` reports it: noticed here, if nobody did.
        let looked = || scope.cause();
        let won = exit.won;
        let (outcome, error, cause): (_, Option<&dyn fmt::Display>, _) = match &exit.outcome {
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
            .and_then(|cause| running.stopped_at.or(cause.instant()))
            .map(|at| now.saturating_duration_since(at));
        observe::notify(&self.observer, |o| {
            o.task_finished(&TaskFinished {
                group: group.scope,
                group_attachment: group.attachment,
                task: &running.task,
                attachment,
                outcome,
                started: true,
                error,
                cause: cause.as_ref(),
                elapsed: now.saturating_duration_since(running.started),
                cancel_latency,
            })
        });
    }

    /// The running task `id`, recorded at `key`, was stopped alone (by its supervisor) at
    /// `at`: its cancel latency counts from then.
    pub(super) fn stopped(&self, key: usize, id: TaskId, at: Instant) {
        let mut running = lock(&self.running);
        if let Some(Some(running)) = running.get_mut(key)
            && running.task.id == id
        {
            running.stopped_at = Some(at);
        }
    }

    /// When and where to look for tasks still running after a cancellation at `since`, if the
    /// observer asked for slow-to-stop reports and a runtime is at hand.
    pub(super) fn slow_check(&self, since: Instant) -> Option<(Instant, Handle)> {
        let at = since.checked_add(self.slow_after?)?;
        let runtime = Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone())?;
        Some((at, runtime))
    }

    /// Reports the tasks still running after a cancellation at `since` with `cause`: every one,
    /// or only the task `only` (its key and id). Each task is reported once, in key order.
    pub(super) fn report_slow(
        &self,
        group: Group<'_>,
        since: Instant,
        only: Option<(usize, TaskId)>,
        cause: &Cause,
    ) {
        let slow: Vec<(TaskInfo, Option<Arc<dyn Attachment>>)> = {
            let mut running = lock(&self.running);
            let tasks = match only {
                Some((key, _)) => running.get_mut(key..=key).unwrap_or_default(),
                None => &mut running[..],
            };
            tasks
                .iter_mut()
                .flatten()
                .filter(|running| only.is_none_or(|(_, id)| running.task.id == id))
                .filter(|running| !running.reported_slow)
                .map(|running| {
                    running.reported_slow = true;
                    let attachment = running.attachment.as_ref().and_then(Weak::upgrade);
                    (running.task.clone(), attachment)
                })
                .collect()
        };
        let since_cancel = Instant::now().saturating_duration_since(since);
        for (task, attachment) in &slow {
            observe::notify(&self.observer, |o| {
                o.task_slow_to_stop(&TaskSlowToStop {
                    group: group.scope,
                    group_attachment: group.attachment,
                    task,
                    attachment: attachment.as_deref(),
                    cause,
                    since_cancel,
                })
            });
        }
    }
}
