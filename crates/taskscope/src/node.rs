//! The cancellation tree behind [`Scope`](crate::Scope).
//!
//! Each scope is one reference-counted [`Node`]. A child holds its parent strongly and the parent
//! holds its children weakly, so dropping the last handle of a leaf frees it and unlinks it from
//! its parent, and an inner node lives exactly as long as a handle or a descendant needs it.
//!
//! There is no lock per tree: every lock and every latch below belongs to one node or to one
//! cancellation, so cancellations of disjoint subtrees take no lock in common. The one shared
//! write is a reference count: a cancellation stamps its cause with the node's path link, and an
//! unnamed node shares its nearest named ancestor's (invariant 7).
//!
//! Invariants:
//!
//! 1. A node's cause is set at most once, under its `state` lock (the state turns from `Live`
//!    to `Cancelled`); `cancelled` is set (Release) right after and never cleared. A set cause
//!    is final ("first cause wins"), so every thread agrees on each node's winner.
//! 2. A cancelled node has no linked children and no listeners: `State::Cancelled` has no room
//!    for them. Setting the cause takes them out in the same critical section, and nothing is
//!    linked or registered afterwards (a child made then is born cancelled; a waiter or callback
//!    made then fires at once). Slab keys are therefore only ever freed by their owner or by that
//!    drain, never reused behind an owner's back. The one move, compacting a sparse children
//!    slab, happens under the parent's lock, only to children it can upgrade (so not to one
//!    being dropped), and updates the child's `slot` there; a child reads its `slot` only once
//!    it is being dropped.
//! 3. A cancellation marks its subtree from the top, holding one node lock at a time. Each node
//!    is marked by exactly one cancellation (invariant 1), which also takes its children, so the
//!    nodes a cancellation marks form a connected region hanging from the node it started at,
//!    and a node it finds already marked (and that node's subtree) belong to another one. A
//!    cancellation that takes children out of a node leaves its [`Latch`] in the node, and opens
//!    it once its region is marked *and* every cancellation whose latch it found below its
//!    region is done. A cancellation that finds a node already marked waits on that node's latch
//!    before it returns (the node had no children if it has none). So a cancellation that loses,
//!    at its own node or below it, returns only once the whole subtree is marked. A cancellation
//!    waits only on one that marked a node at or below its own starting node, and one that lost
//!    at its starting node marks nothing that anyone waits on: waits never form a cycle.
//! 4. No thread holds two node locks, nor a node lock while it waits on a latch. No user code
//!    (callbacks, wakers, `Drop` of user values such as a cause's source error, observers) runs
//!    while a node lock is held or before the cancellation's own latch is open (that code may
//!    cancel a scope of the region and wait on the latch): a cancellation releases the
//!    references it took, wakes and calls back only after opening its latch. The one
//!    cancellation made inside another, of a passed deadline's owner (invariant 6), is complete
//!    before the outer one marks anything or makes a latch, so it holds up nobody.
//! 5. A node's effective deadline is fixed at creation: the earliest of its own and its
//!    parent's (the parent's on a tie), with that deadline's cause. So a node's deadline is never
//!    later than any ancestor's, up to the nearest detached scope.
//! 6. Deadlines are observed lazily and ordered by time, not by observation: a cancellation reads
//!    the clock once, before any lock, and whenever it reaches a node at that time `t`
//!    (including a deadline being observed), the node takes its deadline's cause instead if that
//!    deadline is `<= t`. Observing a passed deadline from any node that has it cancels the
//!    deadline's owner. Concurrent cancellations are each ordered by their own reading: one still
//!    marking when a deadline below it passes may find that deadline observed first by someone
//!    else, as if it had come later. Nothing runs in the background; a waiting `Cancelled` future holds the
//!    only timer, released when it resolves or is dropped.
//! 7. Nothing walks up the tree on a hot path: a node's path is one link away
//!    ([`PathLink`]), its deadline is its own field, and a cause names its origin by a link,
//!    rendered when read. Cloning that link is the one write a cancellation makes outside its
//!    own subtree: to the nearest named ancestor's link when the node is unnamed.

use std::mem;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::{Arc, Weak};
use std::task::Waker;

use tokio::time::Instant;

use crate::cause::Origin;
use crate::observe::{self, CancelLost, Observer, ScopeCancelled};
use crate::path::{self, PathLink};
use crate::slab::{self, Slab};
use crate::sync::{AtomicBool, AtomicU32, Condvar, Mutex, Ordering, lock};
use crate::{Cause, ScopePath};

/// A callback registered with [`Scope::on_cancel`](crate::Scope::on_cancel).
pub(crate) type Callback = Box<dyn FnOnce(&Cause) + Send + 'static>;

/// `Node::slot` of a node that is not linked into its parent's children.
pub(crate) const UNLINKED: u32 = u32::MAX;

/// The key of the first listener of a node: inline in `Listeners::One`, or at key 0 of
/// `Listeners::Many` once others joined it.
const FIRST: usize = usize::MAX;

pub(crate) struct Node {
    /// Mirrors whether `state` is `Cancelled`, for lock-free reads (invariant 1).
    cancelled: AtomicBool,
    detached: bool,
    /// Key of this node in its parent's children, or `UNLINKED`. Written under the parent's
    /// lock: when the node is linked, before anyone but the parent can see it, and when
    /// compaction moves it (invariant 2).
    slot: AtomicU32,
    state: Mutex<State>,
    parent: Option<Arc<Node>>,
    /// This scope's path: its own link if it is named, else its nearest named ancestor's
    /// (invariant 7).
    path: Option<Arc<PathLink>>,
    deadline: Option<Arc<Deadline>>,
    /// Inherited from the parent (detached or not) unless the scope was built with its own.
    /// A thin pointer: every scope has this field, few install an observer.
    observer: Option<Arc<Installed>>,
}

// Pinned: with the `Arc`'s counts, 120 bytes a scope (`docs/performance.md`, scope row 5 and
// the memory per idle request). The first listener inline costs nothing here: `Listeners` is
// as large as the inline waker and boxed slab it replaced. (loom's locks are larger.)
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Node>() <= 104);

/// An observer installed on a scope, shared by the scopes that inherit it.
struct Installed(Arc<dyn Observer>);

// The observer is the one field that is not unwind-safe by its type. A node never relies on its
// observer's state: every call into it is caught and its panic ignored (`observe::notify`).
impl std::panic::UnwindSafe for Node {}
impl std::panic::RefUnwindSafe for Node {}

enum State {
    Live(Live),
    Cancelled {
        cause: Cause,
        /// The latch of the cancellation that took this node's children, if it had any
        /// (invariant 3).
        latch: Option<Arc<Latch>>,
    },
}

/// What a node holds until it is cancelled (invariant 2).
#[derive(Default)]
struct Live {
    children: Slab<Weak<Node>>,
    listeners: Listeners,
}

/// A node's waiters and callbacks. Most scopes have none or one (a task waiting, a bridge's
/// callback): that one is inline, costs no allocation, and cancelling touches no other memory.
#[derive(Default)]
enum Listeners {
    #[default]
    None,
    /// The first listener, key [`FIRST`].
    One(Listener),
    /// The first listener, if still registered, at key 0, and the others.
    Many(Box<Slab<Listener>>),
}

impl Listeners {
    fn insert(&mut self, listener: Listener) -> usize {
        match mem::take(self) {
            Listeners::None => {
                *self = Listeners::One(listener);
                FIRST
            }
            Listeners::One(first) => {
                let mut many = Box::new(Slab::new());
                // A fresh slab's first key: where `FIRST` points from now on.
                let first_key = many.insert(first);
                debug_assert_eq!(first_key, 0);
                let key = many.insert(listener);
                *self = Listeners::Many(many);
                key
            }
            Listeners::Many(mut many) => {
                let key = many.insert(listener);
                *self = Listeners::Many(many);
                key
            }
        }
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut Listener> {
        match (self, key) {
            (Listeners::One(first), FIRST) => Some(first),
            (Listeners::Many(many), FIRST) => many.get_mut(0),
            (Listeners::Many(many), key) => many.get_mut(key),
            _ => None,
        }
    }

    fn remove(&mut self, key: usize) -> Option<Listener> {
        match (&mut *self, key) {
            (Listeners::One(_), FIRST) => match mem::take(self) {
                Listeners::One(first) => Some(first),
                _ => unreachable!("matched as one"),
            },
            (Listeners::Many(many), key) => {
                let listener = many.remove(if key == FIRST { 0 } else { key });
                if many.len() == 0 {
                    *self = Listeners::None;
                }
                listener
            }
            _ => None,
        }
    }

    fn drain(self, mut each: impl FnMut(Listener)) {
        match self {
            Listeners::None => {}
            Listeners::One(first) => each(first),
            Listeners::Many(mut many) => many.drain().for_each(each),
        }
    }
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

/// Opens once a cancellation's region, and every region below it that it found in progress,
/// is marked (invariant 3). One per cancellation that takes children out of a node; none for
/// the cancellation of a leaf.
pub(crate) struct Latch {
    open: AtomicBool,
    lock: Mutex<()>,
    opened: Condvar,
}

impl Latch {
    fn new() -> Latch {
        Latch {
            open: AtomicBool::new(false),
            lock: Mutex::new(()),
            opened: Condvar::new(),
        }
    }

    fn open(&self) {
        // Under the lock, so a waiter that has seen it closed is already waiting on `opened`.
        let guard = lock(&self.lock);
        // Release: a waiter that sees it open sees every node of the region marked.
        self.open.store(true, Ordering::Release);
        drop(guard);
        self.opened.notify_all();
    }

    fn wait(&self) {
        // Acquire: pairs with `open`. A latch stays in the nodes of its region, so most waits
        // find it long open and touch nothing but this flag.
        if self.open.load(Ordering::Acquire) {
            return;
        }
        let mut guard = lock(&self.lock);
        while !self.open.load(Ordering::Acquire) {
            guard = self
                .opened
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Node {
    pub(crate) fn new(
        parent: Option<&Arc<Node>>,
        detached: bool,
        path: Option<Arc<PathLink>>,
        own_deadline: Option<(Instant, Cause)>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Node> {
        let attached_parent = parent.filter(|_| !detached);
        // Invariant 5.
        let inherited = attached_parent.and_then(|p| p.deadline.as_ref());
        let own_deadline = own_deadline.filter(|(at, _)| inherited.is_none_or(|i| *at < i.at));
        let node = Arc::new_cyclic(|owner| Node {
            cancelled: AtomicBool::new(false),
            detached,
            slot: AtomicU32::new(UNLINKED),
            state: Mutex::new(State::Live(Live::default())),
            parent: parent.cloned(),
            path,
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
        match &mut *parent_state {
            State::Live(live) => {
                let key = live.children.insert(Arc::downgrade(&node));
                node.slot.store(slab::index(key), Ordering::Relaxed);
            }
            State::Cancelled { cause, .. } => {
                let cause = cause.clone();
                drop(parent_state);
                // Born cancelled with the parent's cause, and with no children to wait for.
                // Nobody else can see the node yet.
                *lock(&node.state) = State::Cancelled { cause, latch: None };
                node.cancelled.store(true, Ordering::Release);
            }
        }
        node
    }

    /// The path of a child of this node named `name` (or unnamed).
    pub(crate) fn child_path(&self, name: Option<crate::path::Name>) -> Option<Arc<PathLink>> {
        PathLink::child(self.path.as_ref(), name)
    }

    /// `link`, if it is the path of a child of this node named `name`: a child can share the
    /// link of a sibling of the same name instead of making its own.
    pub(crate) fn sibling_path(&self, link: &Arc<PathLink>, name: &str) -> Option<Arc<PathLink>> {
        link.is_child_of(self.path.as_ref(), name)
            .then(|| link.clone())
    }

    /// This node's path, for a cause's origin; `None` when neither it nor an ancestor is named.
    pub(crate) fn origin(&self) -> Option<Origin> {
        self.path.clone().map(Origin::from)
    }

    /// The names of this node and its ancestors, innermost first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.path.iter().flat_map(|path| path.names())
    }

    /// Writes this node's path: its and its ancestors' names, outermost first, joined by `/`.
    pub(crate) fn write_path(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        path::write(self.path.as_deref(), out)
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
        match &*lock(&self.state) {
            State::Live(live) => live.children.len(),
            State::Cancelled { .. } => 0,
        }
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
        match &*lock(&self.state) {
            State::Live(_) => None,
            State::Cancelled { cause, .. } => Some(cause.clone()),
        }
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
        // The one reading of the clock that orders this cancellation against every deadline it
        // meets (invariant 6), taken with the cause's stamp before any lock.
        let now = Instant::now();
        // A deadline of this node that has passed came first (invariant 6): it cancels its
        // owner, whose whole subtree and callbacks see it, and `cause` then loses to it. (The
        // owner's own cancellation is that deadline: no further look.)
        let mut first_panic = None;
        if let Some(deadline) = &self.deadline
            && !deadline.cause.ptr_eq(&cause)
            && !self.is_marked()
            && deadline.at <= now
        {
            let owner = deadline.owner.upgrade();
            let target = owner.as_deref().unwrap_or(self);
            first_panic = target.cancel(deadline.cause.clone(), location).panic;
        }
        let cause = cause.stamped(|| self.origin(), now, location);
        let mut walk = Walk::default();
        let marked = self.mark(&cause, now, &mut walk);
        if let Mark::Lost(_, Some(latch)) = &marked {
            walk.waits.push(latch.clone());
        }
        // Descendants, iteratively (trees may be 100 000 deep), each visited once: upgraded,
        // marked and kept until the latch is open (invariant 4).
        while let Some(child) = walk.pending.pop() {
            let Some(child) = child.upgrade() else {
                continue;
            };
            match child.mark(&cause, now, &mut walk) {
                // A descendant whose own deadline had passed takes that instead (invariant 6):
                // a cancellation of its own, reported as one.
                Mark::Deadline(own) if child.observer.is_some() && child.owns_deadline() => {
                    walk.deadlines.push((child.clone(), own));
                }
                Mark::Set | Mark::Deadline(_) | Mark::Lost(_, None) => {}
                // Another cancellation got here first; its subtree is its own (invariant 3).
                Mark::Lost(_, Some(latch)) => walk.waits.push(latch),
            }
            walk.taken.push(child);
        }
        for latch in mem::take(&mut walk.waits) {
            latch.wait();
        }
        if let Some(latch) = walk.latch.take() {
            latch.open();
        }
        let won = matches!(marked, Mark::Set);
        if let Some(observer) = self.observer() {
            let scope = ScopePath::of(self);
            observe::notify(observer, |observer| match &marked {
                Mark::Set => observer.scope_cancelled(&ScopeCancelled {
                    scope,
                    cause: &cause,
                }),
                Mark::Deadline(own) => {
                    observer.scope_cancelled(&ScopeCancelled { scope, cause: own })
                }
                // Before the callbacks, so that what they cause is reported after the
                // cancellation. The very cause losing to itself (a deadline noticed twice at
                // once) is no news.
                Mark::Lost(current, _) if current.ptr_eq(&cause) => {}
                Mark::Lost(current, _) => observer.cancel_lost(&CancelLost {
                    scope,
                    lost: &cause,
                    cause: current,
                }),
            });
        }
        for (node, own) in mem::take(&mut walk.deadlines) {
            if let Some(observer) = node.observer() {
                let scope = ScopePath::of(&node);
                observe::notify(observer, |o| {
                    o.scope_cancelled(&ScopeCancelled { scope, cause: &own })
                });
            }
            walk.taken.push(node);
        }
        let panic = walk.run();
        Cancel {
            won,
            panic: first_panic.or(panic),
        }
    }

    /// Sets this node's cause (its passed deadline's, or `cause`) unless it has one, and moves
    /// its children, wakers and callbacks into `walk`.
    fn mark(&self, cause: &Cause, now: Instant, walk: &mut Walk) -> Mark {
        let (cause, mark) = match &self.deadline {
            Some(deadline) if deadline.at <= now && !deadline.cause.ptr_eq(cause) => {
                (&deadline.cause, Mark::Deadline(deadline.cause.clone()))
            }
            _ => (cause, Mark::Set),
        };
        let mut state = lock(&self.state);
        let live = match &mut *state {
            State::Live(live) => mem::take(live),
            State::Cancelled { cause, latch } => {
                return Mark::Lost(cause.clone(), latch.clone());
            }
        };
        let latch = (live.children.len() > 0).then(|| {
            walk.latch
                .get_or_insert_with(|| Arc::new(Latch::new()))
                .clone()
        });
        *state = State::Cancelled {
            cause: cause.clone(),
            latch,
        };
        self.cancelled.store(true, Ordering::Release);
        drop(state);
        // Ours alone now (invariant 2): sorted outside the lock.
        let Live {
            mut children,
            listeners,
        } = live;
        if children.len() > 0 {
            walk.pending.extend(children.drain());
        }
        listeners.drain(|listener| match listener {
            Listener::Waker(waker) => walk.wakers.push(waker),
            Listener::Callback(callback) => walk.callbacks.push((callback, cause.clone())),
        });
        mark
    }

    /// Whether this node's deadline is its own, not inherited.
    fn owns_deadline(&self) -> bool {
        self.deadline
            .as_ref()
            .is_some_and(|deadline| std::ptr::eq(deadline.owner.as_ptr(), self))
    }

    /// Registers `listener`, unless the node is cancelled: then hands it back with the cause.
    pub(crate) fn listen(&self, listener: Listener) -> Result<usize, (Listener, Cause)> {
        let mut state = lock(&self.state);
        match &mut *state {
            State::Live(live) => Ok(live.listeners.insert(listener)),
            State::Cancelled { cause, .. } => Err((listener, cause.clone())),
        }
    }

    /// Replaces the waker at `key` unless it would wake the same task. Returns false if the node
    /// is cancelled (the waker was drained and woken).
    pub(crate) fn update_waker(&self, key: usize, waker: &Waker) -> bool {
        match self.with_waker(key, |old| old.will_wake(waker)) {
            None => return false,
            Some(true) => return true,
            Some(false) => {}
        }
        // Cloned and dropped outside the lock (invariant 4).
        let mut new = Some(waker.clone());
        let replaced = self.with_waker(key, |old| {
            mem::swap(old, new.as_mut().expect("swapped once"))
        });
        replaced.is_some()
    }

    /// Runs `f` on the waker at `key` under the lock; `None` if it is gone (drained by a
    /// cancellation).
    fn with_waker<R>(&self, key: usize, f: impl FnOnce(&mut Waker) -> R) -> Option<R> {
        let mut state = lock(&self.state);
        let State::Live(live) = &mut *state else {
            return None;
        };
        let waker = match live.listeners.get_mut(key) {
            Some(Listener::Waker(waker)) => Some(waker),
            _ => None,
        };
        waker.map(f)
    }

    /// Removes the listener at `key` if it is still registered (the node is not cancelled).
    /// The caller drops what it gets back, outside the lock.
    pub(crate) fn unlisten(&self, key: usize) -> Option<Listener> {
        let mut state = lock(&self.state);
        let State::Live(live) = &mut *state else {
            return None;
        };
        live.listeners.remove(key)
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
        if let State::Live(live) = &mut *state {
            live.children.remove(slot);
            if live.children.is_sparse() {
                // A child that is being dropped cannot be upgraded; it keeps its key and unlinks
                // itself once we release the lock (invariant 2).
                live.children.compact(|child, key| match child.upgrade() {
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

/// One cancellation's work: the nodes left to mark, and what to do once its latch is open
/// (invariants 3 and 4).
#[derive(Default)]
struct Walk {
    pending: Vec<Weak<Node>>,
    /// Made when this cancellation first takes children out of a node.
    latch: Option<Arc<Latch>>,
    /// Latches of the cancellations that marked a node of this subtree first.
    waits: Vec<Arc<Latch>>,
    /// References taken while cancelling, released once the latch is open (invariant 4).
    taken: Vec<Arc<Node>>,
    wakers: Vec<Waker>,
    callbacks: Vec<(Callback, Cause)>,
    /// Observed descendants that took their own passed deadline's cause, to report.
    deadlines: Vec<(Arc<Node>, Cause)>,
}

/// What [`Node::mark`] did.
enum Mark {
    /// Set the given cause.
    Set,
    /// Set the node's own passed deadline's cause instead (invariant 6).
    Deadline(Cause),
    /// Found a cause already set, and the latch of the cancellation that set it, if that one
    /// took children out of the node (invariant 3).
    Lost(Cause, Option<Arc<Latch>>),
}

impl Walk {
    /// Wakes every waiter and runs every callback, even if one panics; returns the first panic.
    fn run(self) -> Option<PanicPayload> {
        drop(self.taken);
        if self.wakers.is_empty() && self.callbacks.is_empty() {
            return None;
        }
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
