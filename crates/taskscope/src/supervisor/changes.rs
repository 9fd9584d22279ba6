//! A supervisor's changes of state, for those who would rather not poll its snapshot.
//!
//! The runner counts the changes it makes to its tree (`Tree::version`, invariant 8). A
//! subscriber remembers the version of the last snapshot it returned and takes a new one when
//! the count has moved: the snapshot is built by the subscriber, when it asks, under the
//! tree's lock like any other (never torn), and nothing is built while nobody asks. A
//! subscriber waiting for a change leaves a waker in its slot of [`Watchers`]; the runner
//! takes them all out at the end of a turn that changed the tree, and wakes them after
//! unlocking. Wakers are cloned and dropped outside the lock too (invariant 2).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::SupervisorSnapshot;
use super::tree::Inner;
use crate::sync::lock;

/// The subscribers of one supervisor: a slot each, holding its waker while it waits.
#[derive(Default)]
pub(super) struct Watchers {
    slots: Vec<Option<Waker>>,
    /// Slots of subscribers dropped, to reuse.
    free: Vec<usize>,
    /// How many slots hold a waker: none, and a turn's end costs nothing more.
    waiting: usize,
    /// The tree's version when they were last woken.
    woken: u64,
}

impl Watchers {
    /// A slot for a new subscriber.
    fn subscribe(&mut self) -> usize {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    /// Frees `slot`; returns its waker, to be dropped after unlocking.
    fn unsubscribe(&mut self, slot: usize) -> Option<Waker> {
        let waker = self.slots[slot].take();
        self.waiting -= usize::from(waker.is_some());
        self.free.push(slot);
        waker
    }

    /// Whether `slot` already holds a waker that wakes the same task as `waker` (a comparison
    /// of pointers, no waker code).
    fn holds(&self, slot: usize, waker: &Waker) -> bool {
        self.slots[slot]
            .as_ref()
            .is_some_and(|held| held.will_wake(waker))
    }

    /// Puts `waker` in `slot`; returns the one it replaces, to be dropped after unlocking.
    fn wait(&mut self, slot: usize, waker: Waker) -> Option<Waker> {
        let old = self.slots[slot].replace(waker);
        self.waiting += usize::from(old.is_none());
        old
    }

    /// The wakers to wake, taken out of their slots, if the tree is at another `version` than
    /// when they were last woken; to be woken after unlocking.
    pub(super) fn take(&mut self, version: u64) -> Vec<Waker> {
        if self.waiting == 0 || self.woken == version {
            return Vec::new();
        }
        self.woken = version;
        self.waiting = 0;
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

/// Wakes `wakers`; call after unlocking (invariant 2).
pub(super) fn wake(wakers: Vec<Waker>) {
    wakers.into_iter().for_each(Waker::wake);
}

/// The changes of a supervisor's state, as snapshots; made by
/// [`SupervisorHandle::changes`](crate::SupervisorHandle::changes).
///
/// [`next`](SupervisorChanges::next) returns the supervisor's current snapshot first, then a
/// new one each time its state or one of its children's has changed since the last one
/// returned, and `None` once the supervisor has ended and its final state was returned.
/// Latest value only, as a [`tokio::sync::watch`] receiver: changes that follow each other
/// while the subscriber is busy come as one snapshot of the latest state, which is never torn
/// (each supervisor's level is read under its lock). A nested supervisor's tree is shown as
/// of each snapshot; its own changes do not make one.
///
/// Nothing is built for a subscriber that does not ask: the snapshot is made by
/// [`next`](SupervisorChanges::next), on the calling task, and a supervisor without
/// subscribers pays nothing for them.
///
/// ```
/// use taskscope::{BoxError, ChildSpec, ChildState, Restart, Scope, Supervisor};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let supervisor = Supervisor::builder()
///     .child(
///         ChildSpec::new("once", |_scope: Scope| async { Ok::<(), BoxError>(()) })
///             .restart(Restart::Never),
///     )
///     .start(&Scope::new())?;
/// let mut changes = supervisor.changes();
/// let mut last = None;
/// while let Some(snapshot) = changes.next().await {
///     last = Some(snapshot);
/// }
/// // The stream ends with the supervisor, on its final state.
/// let last = last.unwrap();
/// assert_eq!(last.child("once").unwrap().state, ChildState::Completed);
/// # Ok(())
/// # }
/// ```
pub struct SupervisorChanges {
    inner: Arc<Inner>,
    slot: usize,
    /// The version of the last snapshot returned.
    seen: Option<u64>,
}

impl SupervisorChanges {
    pub(super) fn new(inner: Arc<Inner>) -> SupervisorChanges {
        let slot = lock(&inner.tree).watchers.subscribe();
        SupervisorChanges {
            inner,
            slot,
            seen: None,
        }
    }

    /// Waits for a state not returned yet and returns its snapshot: at once the first time;
    /// `None` once the supervisor has ended and its final state was returned.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future loses nothing; the next call returns the latest state
    /// not returned yet.
    // A stream's `next` (as `StreamExt::next`, `JoinSet::join_next`): a future, not an
    // iterator's item, and core has no `Stream` trait to implement.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> NextChange<'_> {
        NextChange { changes: self }
    }

    /// Polls for a state not returned yet, as [`next`](SupervisorChanges::next) does: for a
    /// `Stream` (`futures::stream::poll_fn(|cx| changes.poll_next(cx))`). Only the waker of the
    /// last call is woken.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<SupervisorSnapshot>> {
        // A clone of the task's waker, made outside the lock on the first pass.
        let mut waker = None;
        loop {
            let step = {
                let mut tree = lock(&self.inner.tree);
                if self.seen != Some(tree.version) {
                    Step::Take
                } else if tree.ended {
                    Step::End
                } else if tree.watchers.holds(self.slot, cx.waker()) {
                    Step::Wait(None)
                } else if let Some(waker) = waker.take() {
                    Step::Wait(tree.watchers.wait(self.slot, waker))
                } else {
                    Step::Clone
                }
            };
            match step {
                Step::Take => {
                    drop(waker);
                    let (version, snapshot) = self.inner.versioned_snapshot();
                    self.seen = Some(version);
                    return Poll::Ready(Some(snapshot));
                }
                Step::End => return Poll::Ready(None),
                Step::Wait(stale) => {
                    drop((stale, waker));
                    return Poll::Pending;
                }
                Step::Clone => waker = Some(cx.waker().clone()),
            }
        }
    }
}

/// What a subscriber does after looking at the tree.
enum Step {
    /// Take a snapshot: the tree changed since the last one.
    Take,
    /// Nothing more will change.
    End,
    /// Wait; drop this waker (it was replaced) after unlocking.
    Wait(Option<Waker>),
    /// Clone the task's waker outside the lock, and look again.
    Clone,
}

impl Drop for SupervisorChanges {
    fn drop(&mut self) {
        let waker = lock(&self.inner.tree).watchers.unsubscribe(self.slot);
        drop(waker);
    }
}

impl fmt::Debug for SupervisorChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorChanges")
            .field("scope", &self.inner.scope)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

/// The next state of a supervisor; returned by [`SupervisorChanges::next`].
///
/// # Cancel safety
///
/// Cancel-safe.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct NextChange<'a> {
    changes: &'a mut SupervisorChanges,
}

impl Future for NextChange<'_> {
    type Output = Option<SupervisorSnapshot>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.changes.poll_next(cx)
    }
}
