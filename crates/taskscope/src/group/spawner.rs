//! [`Spawner`]: spawning into a group from several tasks.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;

use super::report::TrySpawnError;
use super::shared::{Admit, Shared};
use crate::BoxError;
use crate::path::Name;
use crate::{Scope, TaskError, TaskId};

/// A cloneable handle that spawns tasks into a [`TaskGroup`](crate::TaskGroup) from other
/// tasks, made by [`TaskGroup::spawner`](crate::TaskGroup::spawner): producers spawn while the
/// group's owner joins it, with errgroup semantics.
///
/// A task spawned through it is the group's like any other: over the limit it waits as
/// pending, its failure cancels the group, `join` waits for it. Unlike
/// [`TaskGroup::spawn`](crate::TaskGroup::spawn), a spawner refuses a task the group would not
/// run, and hands it back with the reason: once the group is cancelled (the error's
/// [`cause`](TrySpawnError::cause) is the group's), and once it has been joined or dropped (a
/// [`Dropped`](crate::CauseKind::Dropped) cause). `join` returns once no task is left, so a
/// producer that spawns after that is refused: stop producers (or cancel the group) before
/// joining if every item must be handled.
///
/// ```
/// use taskscope::{Scope, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let group = TaskGroup::new(&Scope::new());
/// let producers: Vec<_> = (0..4)
///     .map(|p| {
///         let spawner = group.spawner();
///         tokio::spawn(async move {
///             for n in 0..10 {
///                 spawner.spawn(format!("item-{p}-{n}"), move |_| async move { Ok(p * 10 + n) })?;
///             }
///             Ok::<_, taskscope::TrySpawnError<_>>(())
///         })
///     })
///     .collect();
/// for producer in producers {
///     producer.await?.map_err(|refused| refused.to_string())?;
/// }
/// let values = group.join().await?;
/// assert_eq!(values.len(), 40);
/// # Ok(())
/// # }
/// ```
pub struct Spawner<T, E = BoxError>
where
    T: Send + 'static,
    E: TaskError,
{
    shared: Arc<Shared<T, E>>,
}

impl<T, E> Spawner<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    pub(super) fn new(shared: Arc<Shared<T, E>>) -> Self {
        Spawner { shared }
    }

    /// Spawns a task named `name` into the group, as
    /// [`TaskGroup::spawn`](crate::TaskGroup::spawn) does, unless the group is cancelled,
    /// joined or dropped: then hands the closure back with the reason.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`].
    #[track_caller]
    pub fn spawn<F, Fut>(
        &self,
        name: impl Into<Cow<'static, str>>,
        task: F,
    ) -> Result<TaskId, TrySpawnError<F>>
    where
        F: FnOnce(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let name = Name::from(name.into());
        let spawned = self
            .shared
            .spawn(name, Location::caller(), task, Admit::Shared);
        spawned.map(|spawned| spawned.id)
    }

    /// The group's scope.
    pub fn scope(&self) -> &Scope {
        &self.shared.scope
    }
}

impl<T, E> Clone for Spawner<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn clone(&self) -> Self {
        Spawner {
            shared: self.shared.clone(),
        }
    }
}

impl<T, E> fmt::Debug for Spawner<T, E>
where
    T: Send + 'static,
    E: TaskError,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawner")
            .field("scope", &self.shared.scope)
            .finish_non_exhaustive()
    }
}
