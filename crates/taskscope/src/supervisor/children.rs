//! Children added, terminated, restarted and deleted at runtime (OTP's `start_child`,
//! `terminate_child`, `restart_child`, `delete_child`; Elixir's `DynamicSupervisor`).
//!
//! A handle never changes the tree itself (invariant 1): it queues a [`Request`] in the tree
//! and wakes the runner, which serves the queue in order at the end of its turn (invariant 7)
//! and answers through a oneshot channel. Once the supervisor is shutting down, no request is
//! queued; those queued before are refused when served, or when the runner ends.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::changes::SupervisorChanges;
use super::tree::Inner;
use super::{ChildRequestError, ChildSpec, SupervisorHandle};
use crate::sync::lock;
use crate::{BoxError, Cause, TaskError};

/// Where the runner answers a request.
pub(super) type Reply = oneshot::Sender<Result<(), ChildRequestError>>;

/// A change of children asked of the runner, and where to answer.
pub(super) struct Request {
    pub(super) change: Change,
    pub(super) reply: Reply,
}

/// A change of children.
pub(super) enum Change {
    /// Add this child and start it. A `ChildSpec<E>` of the runner's `E`: only a
    /// [`Supervisor<E>`](super::Supervisor) and its [`ChildStarter<E>`] make one.
    Start(Box<dyn Any + Send>),
    /// Stop this child for good; the cause names `location`, where it was asked.
    Terminate {
        name: String,
        location: &'static Location<'static>,
    },
    /// Start this terminated child again.
    Restart(String),
    /// Forget this terminated child.
    Delete(String),
}

impl Inner {
    /// Queues `change` for the runner, unless the supervisor is shutting down or has ended.
    pub(super) fn request(self: &Arc<Inner>, change: Change) -> ChildRequest {
        // Seen before the runner notices: a request made after `shutdown` returned is refused.
        if let Some(cause) = self.scope.cause() {
            return ChildRequest::refused(self, Some(cause));
        }
        let (reply, answer) = oneshot::channel();
        let request = Request { change, reply };
        let queued = lock(&self.tree).queue(request);
        match queued {
            Ok(runner) => {
                if let Some(runner) = runner {
                    runner.wake();
                }
                ChildRequest {
                    inner: self.clone(),
                    answer: Answer::Waiting(answer),
                }
            }
            // The request, which may hold the user's spec, is dropped after unlocking.
            Err((request, cause)) => {
                drop(request);
                ChildRequest::refused(self, cause)
            }
        }
    }

    /// What the supervisor stops for, as far as it is known: its shutdown's or escalation's
    /// cause, else its scope's.
    fn stop_cause(&self) -> Option<Cause> {
        let cause = lock(&self.tree).cause.clone();
        cause.or_else(|| self.scope.cause())
    }
}

/// The answer to a change of a supervisor's children at runtime: `Ok` once it is done, or why
/// it was refused. Returned by [`SupervisorHandle::terminate_child`] and the others.
///
/// The request is made when the method is called, not when this future is first polled, and
/// it is served in the order it was made, after those made before it on any handle.
///
/// # Cancel safety
///
/// Dropping it does not withdraw the request: the change is still made (or refused); only its
/// answer is lost.
#[must_use = "the request is made at once; await the answer to know whether it was served"]
pub struct ChildRequest {
    inner: Arc<Inner>,
    answer: Answer,
}

enum Answer {
    Waiting(oneshot::Receiver<Result<(), ChildRequestError>>),
    Ready(Option<Result<(), ChildRequestError>>),
}

impl ChildRequest {
    /// Answered at once.
    pub(super) fn ready(inner: &Arc<Inner>, result: Result<(), ChildRequestError>) -> Self {
        ChildRequest {
            inner: inner.clone(),
            answer: Answer::Ready(Some(result)),
        }
    }

    fn refused(inner: &Arc<Inner>, cause: Option<Cause>) -> Self {
        ChildRequest::ready(inner, Err(ChildRequestError::Stopped { cause }))
    }
}

impl Future for ChildRequest {
    type Output = Result<(), ChildRequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.answer {
            Answer::Ready(result) => result.take(),
            Answer::Waiting(answer) => Some(match std::task::ready!(Pin::new(answer).poll(cx)) {
                Ok(result) => result,
                // The runner ended, or was dropped, before serving it.
                Err(_) => Err(ChildRequestError::Stopped {
                    cause: self.inner.stop_cause(),
                }),
            }),
        };
        self.answer = Answer::Ready(None);
        Poll::Ready(result.expect("`ChildRequest` polled after completion"))
    }
}

impl fmt::Debug for ChildRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildRequest")
            .field("scope", &self.inner.scope)
            .field("answered", &matches!(self.answer, Answer::Ready(_)))
            .finish_non_exhaustive()
    }
}

/// A cloneable handle that adds children to a running [`Supervisor`](super::Supervisor) from
/// other tasks; made by [`Supervisor::starter`](super::Supervisor::starter).
///
/// Why a handle of its own: a [`ChildSpec<E>`] is generic in its children's error type (its
/// restart predicate reads the child's own error), and so is the supervisor that runs it,
/// while a [`SupervisorHandle`] is not, so that one handle type serves supervisors of every
/// error type. Terminating, restarting and deleting a child take only its name, and are on the
/// [`SupervisorHandle`]; starting one takes a spec, so it is where `E` is known: on the
/// `Supervisor<E>` and on this handle, as [`TaskGroup::spawner`](crate::TaskGroup::spawner)
/// hands out a typed [`Spawner`](crate::Spawner).
///
/// ```
/// use taskscope::{BoxError, ChildSpec, Scope, Supervisor};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let supervisor = Supervisor::builder()
///     .name("sessions")
///     .run_until_shutdown()
///     .start(&Scope::new())?;
/// let starter = supervisor.starter();
/// tokio::spawn(async move {
///     let session = ChildSpec::new("session-1", |scope: Scope| async move {
///         scope.cancelled().await;
///         Ok::<(), BoxError>(())
///     });
///     starter.start_child(session).await
/// })
/// .await??;
/// assert!(supervisor.snapshot().child("session-1").is_some());
/// # Ok(())
/// # }
/// ```
pub struct ChildStarter<E = BoxError> {
    pub(super) handle: SupervisorHandle,
    pub(super) error: PhantomData<fn(ChildSpec<E>)>,
}

impl<E> ChildStarter<E>
where
    E: TaskError,
{
    /// Adds a child to the supervisor and starts it, after the children already there: it
    /// stops before them in an ordered shutdown, and it restarts by the same rules as the
    /// others (its restart kind, the strategy, the backoff, the intensity it counts towards).
    ///
    /// The answer is `Ok` once the child's first run has started, or a
    /// [`ChildRequestError`]: [`AlreadyPresent`](ChildRequestError::AlreadyPresent) if a
    /// child already has its name (an ended child keeps it until it is deleted),
    /// [`Invalid`](ChildRequestError::Invalid) for a spec that cannot work, and
    /// [`Stopped`](ChildRequestError::Stopped), with the cause, once the supervisor is shutting
    /// down or has ended. A supervisor without
    /// [`run_until_shutdown`](crate::SupervisorBuilder::run_until_shutdown) ends by itself once
    /// every child is done, and refuses children from then on.
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it,
    /// the child is still started (or refused).
    pub fn start_child(&self, spec: ChildSpec<E>) -> ChildRequest {
        let inner = &self.handle.inner;
        if let Some(invalid) = &spec.invalid {
            return ChildRequest::ready(inner, Err(ChildRequestError::Invalid(invalid.clone())));
        }
        inner.request(Change::Start(Box::new(spec)))
    }

    /// The supervisor's handle.
    pub fn handle(&self) -> &SupervisorHandle {
        &self.handle
    }
}

impl<E> Clone for ChildStarter<E> {
    fn clone(&self) -> Self {
        ChildStarter {
            handle: self.handle.clone(),
            error: PhantomData,
        }
    }
}

impl<E> fmt::Debug for ChildStarter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildStarter")
            .field("scope", &self.handle.inner.scope)
            .finish_non_exhaustive()
    }
}

impl SupervisorHandle {
    /// Stops the child named `name` for good, the way an ordered shutdown stops one: its scope
    /// is cancelled with a [`Shutdown`](crate::CauseKind::Shutdown) cause of code
    /// `"terminate"` that names where this was called, it gets its grace, then it is aborted.
    /// It is not restarted, by itself or by a sibling's restart, until
    /// [`restart_child`](Self::restart_child); it keeps its name and its place until
    /// [`delete_child`](Self::delete_child). A child backing off before a restart is stopped
    /// at once.
    ///
    /// Children stop one at a time: a child being stopped for a restart of several (one-for-all,
    /// rest-for-one) is stopped first. Without
    /// [`run_until_shutdown`](crate::SupervisorBuilder::run_until_shutdown), terminating the
    /// last child running ends the supervisor.
    ///
    /// The answer is `Ok` once the child has stopped, at once if it had already stopped; or a
    /// [`ChildRequestError`]: [`NotFound`](ChildRequestError::NotFound), or
    /// [`Stopped`](ChildRequestError::Stopped) once the supervisor is shutting down (which
    /// stops every child anyway) or has ended.
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it, the
    /// child is still stopped.
    #[track_caller]
    pub fn terminate_child(&self, name: &str) -> ChildRequest {
        let location = Location::caller();
        self.inner.request(Change::Terminate {
            name: name.to_owned(),
            location,
        })
    }

    /// Starts the child named `name` again, once it has stopped for good: terminated, or ended
    /// and not to be restarted (a [`Never`](crate::Restart::Never) child, an
    /// [`OnFailure`](crate::Restart::OnFailure) one that returned `Ok`). The run counts as a
    /// restart in snapshots, but not towards the restart intensity, and its backoff starts
    /// over.
    ///
    /// The answer is `Ok` once it runs; or a [`ChildRequestError`]:
    /// [`NotFound`](ChildRequestError::NotFound),
    /// [`NotTerminated`](ChildRequestError::NotTerminated) while it runs, stops or waits to
    /// restart, [`Stopped`](ChildRequestError::Stopped) once the supervisor is shutting down or
    /// has ended.
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it.
    pub fn restart_child(&self, name: &str) -> ChildRequest {
        self.inner.request(Change::Restart(name.to_owned()))
    }

    /// Forgets the child named `name`, once it has stopped for good, as
    /// [`restart_child`](Self::restart_child) requires: it leaves the snapshots, and its name
    /// may be used again. The children after it keep their order. O(number of children).
    ///
    /// The answer is `Ok` once it is gone; or a [`ChildRequestError`]:
    /// [`NotFound`](ChildRequestError::NotFound),
    /// [`NotTerminated`](ChildRequestError::NotTerminated),
    /// [`Stopped`](ChildRequestError::Stopped) once the supervisor is shutting down or has
    /// ended.
    ///
    /// # Cancel safety
    ///
    /// The request is made by this call: dropping the returned future does not withdraw it.
    pub fn delete_child(&self, name: &str) -> ChildRequest {
        self.inner.request(Change::Delete(name.to_owned()))
    }

    /// The supervisor's changes of state, as a stream of snapshots: see [`SupervisorChanges`].
    pub fn changes(&self) -> SupervisorChanges {
        SupervisorChanges::new(self.inner.clone())
    }
}
