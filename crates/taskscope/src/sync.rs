//! Synchronisation primitives, swapped for loom's under `cfg(loom)` so the models in
//! `tests/loom.rs` explore every interleaving of the locks and atomics that guard the tree.
//!
//! `Arc`/`Weak` stay std's even under loom (loom has no `Weak`); reference counting is not where
//! the races of this crate live.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU32, Ordering},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

/// Locks `mutex`, ignoring poison: no user code ever runs while one of our locks is held, so a
/// poisoned lock can only come from a panic inside this crate's own short critical sections,
/// which leave the state consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
