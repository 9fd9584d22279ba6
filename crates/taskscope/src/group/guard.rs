//! A running task as spawned on tokio: the user's future, and the [`Guard`] that reports how
//! it ended exactly once.
//!
//! A running task reports through its guard as soon as its future completes (after dropping
//! the future, so that what it held is released first), or as aborted when the future is
//! dropped unfinished (aborted, or its runtime shut down). A panic while polling or dropping it
//! is caught and reported as a failure. So every `Running` record becomes `Done` exactly once,
//! and `join` ends exactly when every task has ended.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::failure::panic_message;
use super::report::{Failure, Outcome};
use super::shared::{Exit, Next, Shared};
use super::state::PanicPayload;
use crate::observe::{Attachment, Suspended};
use crate::{Scope, TaskError};

pin_project! {
    /// A task's future as spawned: the user's future, and the guard that reports its end.
    pub(super) struct TaskFuture<F, T, E>
    where
        T: Send,
        T: 'static,
        E: TaskError,
    {
        #[pin]
        user: User<F>,
        guard: Guard<T, E>,
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

impl<F, T, E> TaskFuture<F, T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    pub(super) fn new(future: F, guard: Guard<T, E>) -> Self {
        TaskFuture {
            user: User::Running { future },
            guard,
        }
    }
}

impl<F, T, E> Future for TaskFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: TaskError,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let UserProj::Running { future } = this.user.as_mut().project() else {
            return Poll::Ready(());
        };
        let polled = entered(this.guard.attachment.as_deref(), || {
            panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx)))
        });
        let mut result = match polled {
            Ok(Poll::Pending) => {
                if suspended(this.guard.attachment.as_deref()) == Suspended::Continue {
                    return Poll::Pending;
                }
                // Aborted at this await point: the future goes first, as a tokio abort would
                // drop it, then the task is reported aborted.
                let mut user = this.user;
                let _ = panic::catch_unwind(AssertUnwindSafe(|| user.set(User::Done)));
                let next = this.guard.report(|_, _, _| Exit::of(Outcome::Aborted));
                this.guard.shared.run_next(next);
                return Poll::Ready(());
            }
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
            // Classifying runs user code (the error's `Display`, `source` and `as_cause`); if that panics,
            // the task is reported as having panicked.
            panic::catch_unwind(AssertUnwindSafe(|| shared.conclude(key, scope, result)))
                .unwrap_or_else(|payload| shared.conclude(key, scope, Err(payload)))
        });
        this.guard.shared.run_next(next);
        Poll::Ready(())
    }
}

/// Reports a running task's end exactly once: when its future completes, or as aborted when
/// it is dropped before that.
pub(super) struct Guard<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    pub(super) shared: Arc<Shared<T, E>>,
    /// Its record's key (a slab key fits in 32 bits: with `watched`, the guard stays as small
    /// as without it).
    pub(super) key: u32,
    /// The group's watcher follows the task.
    pub(super) watched: bool,
    /// The task's scope; taken when the task is reported.
    pub(super) scope: Option<Scope>,
    /// What the group's observer attached to the task when it started.
    pub(super) attachment: Option<Arc<dyn Attachment>>,
}

// As small as without `watched` (see `key`): it is in every task's future.
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Guard<(), String>>() == 40);

impl<T, E> Guard<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    /// Reports the task's end, unless it was; returns the pending task that takes its slot,
    /// for the caller to start.
    #[must_use]
    pub(super) fn report(
        &mut self,
        exit: impl FnOnce(&Shared<T, E>, usize, &Scope) -> Exit<T, E>,
    ) -> Option<Next<T, E>> {
        let scope = self.scope.take()?;
        let key = self.key as usize;
        let exit = exit(&self.shared, key, &scope);
        // Before the exit becomes visible, so that whoever joins the group has seen it reported.
        if self.watched {
            self.shared
                .watch_finished(key, self.attachment.take(), &scope, &exit);
        }
        // The task's scope goes first, so that it is unlinked from the group's when the exit
        // becomes visible.
        drop(scope);
        self.shared.report(key, exit)
    }
}

impl<T, E> Drop for Guard<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn drop(&mut self) {
        let next = self.report(|_, _, _| Exit::of(Outcome::Aborted));
        self.shared.run_next(next);
    }
}

/// Runs `f` inside the task's attachment, if it has one, and returns what it returned. A panic
/// of the attachment's `enter` is ignored like any observer's; if `enter` did not run `f`, it
/// runs here. `f` must not unwind (callers wrap the task's code in `catch_unwind`).
pub(super) fn entered<R>(attachment: Option<&dyn Attachment>, f: impl FnOnce() -> R) -> R {
    let Some(attachment) = attachment else {
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

/// What the task's attachment, if any, says a task suspended at an await point does next; a
/// panic of the attachment's is ignored like any observer's.
fn suspended(attachment: Option<&dyn Attachment>) -> Suspended {
    attachment.map_or(Suspended::Continue, |attachment| {
        panic::catch_unwind(AssertUnwindSafe(|| attachment.suspended()))
            .unwrap_or(Suspended::Continue)
    })
}

/// Drops a user value, containing a panic of its `Drop`: the panic hook has reported it, and
/// the group's accounting must still settle, or `join` would wait forever and the panic would
/// unwind into whoever cancelled the group.
pub(super) fn drop_contained<X>(value: X) {
    let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(value)));
}

/// Drops what a task that never started held (its closure) and says how it ended: as `ended`,
/// or as the panic that drop raised, whose payload comes back too.
pub(super) fn dropped_unstarted<X, T, E>(
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
