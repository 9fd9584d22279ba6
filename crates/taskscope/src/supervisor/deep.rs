//! Nested supervisors, however deep, on one thread's stack.
//!
//! A nested supervisor's builder lives inside its parent's child spec, which lives inside the
//! grandparent's builder, and so on: dropping a tree 10 000 levels deep would recurse 10 000
//! times. A [`Deferred`] value instead hands its contents to the drop already running on this
//! thread, which drops them after its own, one after the other. Starting one would recurse as
//! deep too; [`nesting`] bounds that.

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// What drops running on this thread left for the outermost one; `None` when none runs.
    static LEFT: RefCell<Option<Vec<Box<dyn Any>>>> = const { RefCell::new(None) };
}

/// Owns a `T` whose drop is deferred to the outermost [`Deferred`] drop on the thread.
pub(crate) struct Deferred<T: 'static>(Option<T>);

impl<T: 'static> Deferred<T> {
    pub(crate) fn new(value: T) -> Deferred<T> {
        Deferred(Some(value))
    }

    pub(crate) fn get(&self) -> &T {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl<T: 'static> Drop for Deferred<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            drop_in_turn(Box::new(value));
        }
    }
}

/// Drops `value` now, unless a drop of this kind is already running on this thread: then that
/// one drops it once it is done, so nested values drop one after the other.
fn drop_in_turn(value: Box<dyn Any>) {
    let value = LEFT.try_with(|left| match left.borrow_mut().as_mut() {
        Some(left) => {
            left.push(value);
            None
        }
        None => Some(value),
    });
    let value = match value {
        Ok(None) => return,
        Ok(Some(value)) => value,
        // The thread is being torn down: no queue to use; the closure that held the value has
        // dropped it already.
        Err(_) => return,
    };
    let _ = LEFT.try_with(|left| *left.borrow_mut() = Some(Vec::new()));
    // Set back however this ends, a panicking drop included.
    let _outermost = Outermost;
    drop(value);
    while let Some(next) = LEFT
        .try_with(|left| left.borrow_mut().as_mut().and_then(Vec::pop))
        .ok()
        .flatten()
    {
        drop(next);
    }
}

/// The outermost drop's guard: the queue is gone once it ends.
struct Outermost;

impl Drop for Outermost {
    fn drop(&mut self) {
        let left = LEFT
            .try_with(|left| left.borrow_mut().take())
            .ok()
            .flatten();
        drop(left);
    }
}

/// How deep this thread is in starting nested supervisors, each within its parent's start.
pub(crate) mod nesting {
    use std::cell::Cell;

    /// Deeper than this, a nested supervisor starts in its own task instead.
    const MAX: u32 = 32;

    thread_local! {
        static DEPTH: Cell<u32> = const { Cell::new(0) };
    }

    /// One level more, while the guard lives; `None` at the limit.
    pub(crate) fn enter() -> Option<Level> {
        let depth = DEPTH.try_with(Cell::get).ok()?;
        (depth < MAX).then(|| {
            let _ = DEPTH.try_with(|cell| cell.set(depth + 1));
            Level
        })
    }

    pub(crate) struct Level;

    impl Drop for Level {
        fn drop(&mut self) {
            let _ = DEPTH.try_with(|cell| cell.set(cell.get().saturating_sub(1)));
        }
    }
}
