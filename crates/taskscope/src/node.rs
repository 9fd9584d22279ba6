//! The cancellation tree behind [`Scope`](crate::Scope).
//!
//! Each scope is one reference-counted [`Node`]. A child holds its parent strongly and the parent
//! holds its children weakly, so dropping the last handle of a leaf frees it and unlinks it from
//! its parent, and an inner node lives exactly as long as a handle or a descendant needs it.
//!
//! Invariants:
//!
//! 1. A node's cause is set at most once, under its `state` lock; `cancelled` is set (Release)
//!    right after and never cleared. A set cause is final ("first cause wins").
//! 2. A node whose cause is set has no linked children and no listeners: cancelling drains both
//!    under the same lock that sets the cause, and nothing is linked or registered afterwards
//!    (a child made then is born cancelled; a waiter or callback made then fires at once).
//!    Slab keys are therefore only ever freed by their owner or by that drain, never reused
//!    behind an owner's back. The one move, compacting a sparse children slab, happens under
//!    the parent's lock, only to children it can upgrade (so not to one being dropped), and
//!    updates the child's `slot` there; a child reads its `slot` only once it is being dropped.
//! 3. Every cancellation in a tree runs under the tree lock of the tree's root (a root or a
//!    detached scope), from marking the first node to marking the last descendant. So
//!    cancellations of one tree are totally ordered, a cancellation that loses a race returns
//!    only once the winner has marked the whole subtree, and every scope of the tree agrees on
//!    one winner.
//! 4. Lock order is tree lock, then one node lock at a time. No user code (callbacks, wakers,
//!    `Drop` of user values such as a cause's source error) runs while any of these locks is
//!    held: a cancellation releases the references it took only after releasing its locks.
//! 5. A node's effective deadline is fixed at creation: the earliest of its own and its
//!    parent's (the parent's on a tie), with that deadline's cause. So a node's deadline is never
//!    later than any ancestor's, up to the nearest detached scope.
//! 6. Deadlines are observed lazily and ordered by time, not by observation: whenever a
//!    cancellation reaches a node at time `t` (including a deadline being observed), the node
//!    takes its deadline's cause instead if that deadline is `<= t`. Observing a passed deadline
//!    from any node that has it cancels the deadline's owner. Nothing runs in the background; a
//!    waiting `Cancelled` future holds the only timer, released when it resolves or is dropped.

use std::mem;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::observe::{self, CancelLost, Observer, ScopeCancelled};
use crate::slab::{self, Slab};
use crate::sync::{AtomicBool, AtomicU32, Mutex, Ordering, lock};
use crate::{Cause, ScopePath};

/// A callback registered with [`Scope::on_cancel`](crate::Scope::on_cancel).
pub(crate) type Callback = Box<dyn FnOnce(&Cause) + Send + 'static>;

/// `Node::slot` of a node that is not linked into its parent's children.
pub(crate) const UNLINKED: u32 = u32::MAX;

/// The listener key of `State::waker`.
const INLINE_WAKER: usize = usize::MAX;

pub(crate) struct Node {
    /// Mirrors `state.cause.is_some()` for lock-free reads (invariant 1).
    cancelled: AtomicBool,
    state: Mutex<State>,
    /// Serialises cancellations of the tree this node is the root of (invariant 3); unused on
    /// nodes that are not tree roots.
    tree_lock: Mutex<()>,
    parent: Option<Arc<Node>>,
    /// Key of this node in `parent.state.children`, or `UNLINKED`. Written once, under the
    /// parent's lock, before anyone but the parent can see the node; read under that lock.
    slot: AtomicU32,
    detached: bool,
    /// This scope's own path segment. Full paths are built on demand by walking up, so making a
    /// scope never copies its ancestors' names.
    name: Option<Name>,
    deadline: Option<Arc<Deadline>>,
    /// Inherited from the parent (detached or not) unless the scope was built with its own.
    /// A thin pointer: every scope has this field, few install an observer.
    observer: Option<Arc<Installed>>,
}

/// An observer installed on a scope, shared by the scopes that inherit it.
struct Installed(Arc<dyn Observer>);

// The observer is the one field that is not unwind-safe by its type. A node never relies on its
// observer's state: every call into it is caught and its panic ignored (`observe::notify`).
impl std::panic::UnwindSafe for Node {}
impl std::panic::RefUnwindSafe for Node {}

/// A scope's or a task's name: borrowed when it is a literal, shared otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Name::Static(name) => name,
            Name::Shared(name) => name,
        }
    }
}

impl From<std::borrow::Cow<'static, str>> for Name {
    fn from(name: std::borrow::Cow<'static, str>) -> Name {
        match name {
            std::borrow::Cow::Borrowed(name) => Name::Static(name),
            std::borrow::Cow::Owned(name) => Name::Shared(Arc::from(name)),
        }
    }
}

pub(crate) struct State {
    cause: Option<Cause>,
    children: Slab<Weak<Node>>,
    /// The first waiting task, inline: the common case of one waiter per scope costs no
    /// allocation, and cancelling it touches no other memory.
    waker: Option<Waker>,
    /// Further waiters and callbacks. Boxed because most scopes never have any.
    listeners: Option<Box<Slab<Listener>>>,
}

pub(crate) enum Listener {
    Waker(Waker),
    Callback(Callback),
}

pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) cause: Cause,
    /// The scope whose deadline this is. Observing the deadline from any scope that inherited
    /// it cancels the owner, so the owner's whole subtree and callbacks see it at once. Alive
    /// whenever a scope that inherited the deadline is, since children hold their parents.
    owner: Weak<Node>,
}

impl Node {
    pub(crate) fn new(
        parent: Option<&Arc<Node>>,
        detached: bool,
        name: Option<Name>,
        own_deadline: Option<(Instant, Cause)>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Node> {
        let attached_parent = parent.filter(|_| !detached);
        // Invariant 5.
        let inherited = attached_parent.and_then(|p| p.deadline.as_ref());
        let own_deadline = own_deadline.filter(|(at, _)| inherited.is_none_or(|i| *at < i.at));
        let node = Arc::new_cyclic(|owner| Node {
            cancelled: AtomicBool::new(false),
            state: Mutex::new(State {
                cause: None,
                children: Slab::new(),
                waker: None,
                listeners: None,
            }),
            tree_lock: Mutex::new(()),
            parent: parent.cloned(),
            slot: AtomicU32::new(UNLINKED),
            detached,
            name,
            deadline: match own_deadline {
                Some((at, cause)) => Some(Arc::new(Deadline {
                    at,
                    cause,
                    owner: owner.clone(),
                })),
                None => inherited.cloned(),
            },
            observer: match observer {
                Some(own) => Some(Arc::new(Installed(own))),
                None => parent.and_then(|p| p.observer.clone()),
            },
        });
        let Some(parent) = attached_parent else {
            return node;
        };
        let mut parent_state = lock(&parent.state);
        match parent_state.cause.clone() {
            None => {
                let key = parent_state.children.insert(Arc::downgrade(&node));
                node.slot.store(slab::index(key), Ordering::Relaxed);
            }
            Some(cause) => {
                drop(parent_state);
                // Born cancelled with the parent's cause. Nobody else can see the node yet, so
                // this needs no tree lock.
                lock(&node.state).cause = Some(cause);
                node.cancelled.store(true, Ordering::Release);
            }
        }
        node
    }

    /// The names of this node and its ancestors, innermost first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(Some(self), |node| node.parent.as_deref())
            .filter_map(|node| node.name.as_deref())
            .filter(|name| !name.is_empty())
    }

    /// Writes this node's path: its and its ancestors' names, outermost first, joined by `/`.
    pub(crate) fn write_path(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        let mut names: Vec<&str> = self.names().collect();
        names.reverse();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.write_char('/')?;
            }
            out.write_str(name)?;
        }
        Ok(())
    }

    /// This node's path, built now; `None` when neither it nor an ancestor is named.
    pub(crate) fn path(&self) -> Option<Arc<str>> {
        let mut path = String::new();
        self.write_path(&mut path)
            .expect("writing to a String cannot fail");
        (!path.is_empty()).then(|| Arc::from(path))
    }

    pub(crate) fn parent(&self) -> Option<&Arc<Node>> {
        self.parent.as_ref()
    }

    pub(crate) fn is_detached(&self) -> bool {
        self.detached
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.as_deref().map(|installed| &installed.0)
    }

    pub(crate) fn deadline(&self) -> Option<&Deadline> {
        self.deadline.as_deref()
    }

    pub(crate) fn live_children(&self) -> usize {
        lock(&self.state).children.len()
    }

    /// Whether this node's cause is set, without observing its deadline.
    pub(crate) fn is_marked(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Whether this node is cancelled, observing a passed deadline (invariant 6).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) || self.observe_deadline()
    }

    /// This node's cause, observing a passed deadline (invariant 6).
    pub(crate) fn cause(&self) -> Option<Cause> {
        if self.is_cancelled() {
            self.recorded_cause()
        } else {
            None
        }
    }

    /// The cause as recorded, without observing the deadline.
    pub(crate) fn recorded_cause(&self) -> Option<Cause> {
        lock(&self.state).cause.clone()
    }

    /// Cancels this node now if its deadline has passed; returns whether it did or already was.
    pub(crate) fn observe_deadline(&self) -> bool {
        let Some(deadline) = &self.deadline else {
            return false;
        };
        if Instant::now() < deadline.at {
            return false;
        }
        let owner = deadline.owner.upgrade();
        let target = owner.as_deref().unwrap_or(self);
        // A callback that panics here reported its panic through the panic hook; it is not
        // resumed in whoever happened to look.
        let _ = target.cancel(deadline.cause.clone(), Location::caller());
        true
    }

    /// Cancels this node and its subtree with `cause`; returns whether `cause` is the one this
    /// node ended up with, and the first panic of a callback or waker, if any.
    pub(crate) fn cancel(&self, cause: Cause, location: &'static Location<'static>) -> Cancel {
        // A deadline of this node that has passed came first (invariant 6): it cancels its
        // owner, whose whole subtree and callbacks see it, and `cause` then loses to it. (The
        // owner's own cancellation is that deadline: no further look.)
        let mut first_panic = None;
        if let Some(deadline) = &self.deadline
            && !deadline.cause.ptr_eq(&cause)
            && !self.is_marked()
            && deadline.at <= Instant::now()
        {
            let owner = deadline.owner.upgrade();
            let target = owner.as_deref().unwrap_or(self);
            first_panic = target.cancel(deadline.cause.clone(), location).panic;
        }
        let mut fired = Fired::default();
        let (cause, marked) = {
            let root = self.tree_root();
            let _tree = lock(&root.tree_lock);
            // Taken under the tree lock, so the time order of cancellations is their lock order.
            let now = Instant::now();
            let cause = cause.stamped(|| self.path(), (SystemTime::now(), now), location);
            let marked = self.mark(&cause, now, &mut fired);
            // Descendants, iteratively (trees may be 100 000 deep), each visited once: upgraded,
            // marked and released while its memory is hot.
            while let Some(child) = fired.pending.pop() {
                let Some(child) = child.upgrade() else {
                    continue;
                };
                let marked = child.mark(&cause, now, &mut fired);
                // A descendant whose own deadline had passed takes that instead (invariant 6):
                // a cancellation of its own, reported as one.
                if let Ok(own) = marked
                    && child.observer.is_some()
                    && !own.ptr_eq(&cause)
                    && child.owns_deadline()
                {
                    fired.deadlines.push((child.clone(), own));
                }
                // Released once the locks are: ours may be the last reference (invariant 4).
                fired.taken.push(child);
            }
            (cause, marked)
        };
        let won = marked.as_ref().is_ok_and(|marked| marked.ptr_eq(&cause));
        // Before the callbacks, so that what they cause is reported after the cancellation. The
        // very cause losing to itself (a deadline noticed twice at once) is no news.
        let echo = marked.as_ref().is_err_and(|current| current.ptr_eq(&cause));
        if let (Some(observer), false) = (self.observer(), echo) {
            let scope = ScopePath::of(self);
            observe::notify(observer, |observer| match &marked {
                Ok(marked) => observer.scope_cancelled(&ScopeCancelled {
                    scope,
                    cause: marked,
                }),
                Err(current) => observer.cancel_lost(&CancelLost {
                    scope,
                    lost: &cause,
                    cause: current,
                }),
            });
        }
        for (node, own) in mem::take(&mut fired.deadlines) {
            if let Some(observer) = node.observer() {
                let scope = ScopePath::of(&node);
                observe::notify(observer, |o| {
                    o.scope_cancelled(&ScopeCancelled { scope, cause: &own })
                });
            }
            fired.taken.push(node);
        }
        let panic = fired.run();
        Cancel {
            won,
            panic: first_panic.or(panic),
        }
    }

    /// Sets this node's cause (its passed deadline's, or `cause`) unless it has one; moves its
    /// children, wakers and callbacks into `fired`. Returns the cause it set, or the one it had.
    fn mark(&self, cause: &Cause, now: Instant, fired: &mut Fired) -> Result<Cause, Cause> {
        let mut state = lock(&self.state);
        if let Some(current) = &state.cause {
            return Err(current.clone());
        }
        let cause = match &self.deadline {
            Some(deadline) if deadline.at <= now => deadline.cause.clone(),
            _ => cause.clone(),
        };
        state.cause = Some(cause.clone());
        self.cancelled.store(true, Ordering::Release);
        if state.children.len() > 0 {
            fired.pending.extend(state.children.drain());
        }
        if let Some(waker) = state.waker.take() {
            fired.wakers.push(waker);
        }
        if let Some(mut listeners) = state.listeners.take() {
            for listener in listeners.drain() {
                match listener {
                    Listener::Waker(waker) => fired.wakers.push(waker),
                    Listener::Callback(callback) => fired.callbacks.push((callback, cause.clone())),
                }
            }
        }
        Ok(cause)
    }

    /// Whether this node's deadline is its own, not inherited.
    fn owns_deadline(&self) -> bool {
        self.deadline
            .as_ref()
            .is_some_and(|deadline| std::ptr::eq(deadline.owner.as_ptr(), self))
    }

    fn tree_root(&self) -> &Node {
        let mut node = self;
        while let (false, Some(parent)) = (node.detached, &node.parent) {
            node = parent;
        }
        node
    }

    /// Registers `listener`, unless the node is cancelled: then hands it back with the cause.
    pub(crate) fn listen(&self, listener: Listener) -> Result<usize, (Listener, Cause)> {
        let mut state = lock(&self.state);
        if let Some(cause) = &state.cause {
            return Err((listener, cause.clone()));
        }
        let listener = match listener {
            Listener::Waker(waker) if state.waker.is_none() => {
                state.waker = Some(waker);
                return Ok(INLINE_WAKER);
            }
            listener => listener,
        };
        Ok(state
            .listeners
            .get_or_insert_with(|| Box::new(Slab::new()))
            .insert(listener))
    }

    /// Replaces the waker at `key` unless it would wake the same task. Returns false if the node
    /// is cancelled (the waker was drained and woken).
    pub(crate) fn update_waker(&self, key: usize, waker: &Waker) -> bool {
        let mut state = lock(&self.state);
        let slot = if key == INLINE_WAKER {
            state.waker.as_mut()
        } else {
            match state.listeners.as_mut().and_then(|l| l.get_mut(key)) {
                Some(Listener::Waker(old)) => Some(old),
                _ => None,
            }
        };
        match slot {
            Some(old) => {
                if !old.will_wake(waker) {
                    old.clone_from(waker);
                }
                true
            }
            None => false,
        }
    }

    /// Removes the listener at `key` if it is still registered (the node is not cancelled).
    /// The caller drops what it gets back, outside the lock.
    pub(crate) fn unlisten(&self, key: usize) -> Option<Listener> {
        let mut state = lock(&self.state);
        if key == INLINE_WAKER {
            return state.waker.take().map(Listener::Waker);
        }
        let listeners = state.listeners.as_mut()?;
        let listener = listeners.remove(key);
        if listeners.len() == 0 {
            state.listeners = None;
        }
        listener
    }

    /// Removes the child at `slot` from this node's children, unless cancelling drained them,
    /// and compacts the children once few are left, so memory follows the live count.
    fn unlink_child(&self, slot: u32) {
        if slot == UNLINKED {
            return;
        }
        let slot = slot as usize;
        let mut relocated = Vec::new();
        let mut state = lock(&self.state);
        // By invariant 2 a cancelled node's children were drained; the slot may not be ours.
        if state.cause.is_none() {
            state.children.remove(slot);
            if state.children.is_sparse() {
                // A child that is being dropped cannot be upgraded; it keeps its key and unlinks
                // itself once we release the lock (invariant 2).
                state.children.compact(|child, key| match child.upgrade() {
                    Some(child) => {
                        child.slot.store(slab::index(key), Ordering::Relaxed);
                        relocated.push(child);
                        true
                    }
                    None => false,
                });
            }
        }
        drop(state);
        // Released after the lock: one of these may be the last reference (invariant 4).
        drop(relocated);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unlink from the parent, and release ancestors iteratively: dropping the last handle of
        // a 100 000-deep chain must not recurse.
        let mut slot = self.slot.load(Ordering::Relaxed);
        let mut next = self.parent.take();
        while let Some(parent) = next {
            parent.unlink_child(slot);
            next = None;
            if let Some(mut parent) = Arc::into_inner(parent) {
                slot = parent.slot.load(Ordering::Relaxed);
                next = parent.parent.take();
            }
        }
    }
}

/// What a cancellation must do once its locks are released (invariant 4).
#[derive(Default)]
struct Fired {
    pending: Vec<Weak<Node>>,
    /// References taken while cancelling, released once the locks are (invariant 4).
    taken: Vec<Arc<Node>>,
    wakers: Vec<Waker>,
    callbacks: Vec<(Callback, Cause)>,
    /// Observed descendants that took their own passed deadline's cause, to report.
    deadlines: Vec<(Arc<Node>, Cause)>,
}

impl Fired {
    /// Wakes every waiter and runs every callback, even if one panics; returns the first panic.
    fn run(self) -> Option<PanicPayload> {
        drop(self.taken);
        let mut panicked = None;
        let mut catch = |f: &mut dyn FnMut()| {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
                panicked.get_or_insert(payload);
            }
        };
        for waker in self.wakers {
            let mut waker = Some(waker);
            catch(&mut || waker.take().map_or((), Waker::wake));
        }
        for (callback, cause) in self.callbacks {
            let mut callback = Some(callback);
            catch(&mut || callback.take().map_or((), |callback| callback(&cause)));
        }
        panicked
    }
}

pub(crate) type PanicPayload = Box<dyn std::any::Any + Send + 'static>;

/// The outcome of [`Node::cancel`].
#[must_use]
pub(crate) struct Cancel {
    /// Whether the given cause is the one the node ended up with.
    pub(crate) won: bool,
    /// The first panic of a waker or callback; every other one still ran.
    pub(crate) panic: Option<PanicPayload>,
}
