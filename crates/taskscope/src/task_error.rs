//! [`TaskError`]: what a task's error must be, and how it says it only echoes a cancellation.

use std::error::Error;
use std::fmt;
use std::io;

use crate::Cause;

/// The default error type of a task: any error, boxed.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The error type of a [`TaskGroup`](crate::TaskGroup)'s tasks and a
/// [`Supervisor`](crate::Supervisor)'s children: printable, shareable between threads, and able
/// to say which [`Cause`] it carries.
///
/// A task that stops because its scope was cancelled usually returns an error saying so
/// (`scope.check()?`). That error is an *echo* of the cancellation, not a failure, when
/// [`as_cause`](TaskError::as_cause) returns the very cause its scope was cancelled with: the
/// task is then reported cancelled, never restarted by a supervisor, and not counted among a
/// group's failures. A genuine failure that carries a cause of its own
/// (`Cause::new("INVENTORY_SHORTAGE")`) lends its code to the cause that cancels the group.
///
/// [`BoxError`] (the default), [`Cause`], [`io::Error`], `String` and `&'static str` implement it.
/// An error enum of your own implements it in a few lines:
///
/// ```
/// use taskscope::{Cause, Scope, TaskError, TaskGroupBuilder};
///
/// #[derive(Debug)]
/// enum OrderError {
///     Cancelled(Cause),
///     OutOfStock { sku: u32 },
/// }
///
/// impl std::fmt::Display for OrderError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             OrderError::Cancelled(cause) => write!(f, "{cause}"),
///             OrderError::OutOfStock { sku } => write!(f, "sku-{sku} is out of stock"),
///         }
///     }
/// }
///
/// impl From<Cause> for OrderError {
///     fn from(cause: Cause) -> Self {
///         OrderError::Cancelled(cause)
///     }
/// }
///
/// impl TaskError for OrderError {
///     fn as_cause(&self) -> Option<&Cause> {
///         match self {
///             OrderError::Cancelled(cause) => Some(cause),
///             OrderError::OutOfStock { .. } => None,
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroupBuilder::<(), OrderError>::new(&Scope::new()).build();
/// group.spawn("reserve", |_| async { Err(OrderError::OutOfStock { sku: 42 }) });
/// group.spawn("charge", |scope| async move {
///     scope.cancelled().await;
///     scope.check()?; // the echo: `Err(OrderError::Cancelled(..))`
///     Ok(())
/// });
/// let error = group.join().await.unwrap_err();
/// assert_eq!(error.failures().len(), 1); // `reserve`'s
/// assert_eq!(error.cancelled()[0].name(), "charge");
/// # }
/// ```
///
/// An error type that never carries a cause needs only `impl TaskError for MyError {}`. A
/// foreign error type cannot implement it (Rust's orphan rule): box it in a [`BoxError`], or
/// wrap it in an enum of your own. `anyhow::Error` implements it with the `anyhow` feature.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `taskscope::TaskError`, so tasks cannot fail with it",
    label = "a task's error type",
    note = "implement it (`impl taskscope::TaskError for {Self} {{}}`, plus `as_cause` if it can carry a `Cause`), or use `taskscope::BoxError`"
)]
pub trait TaskError: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The cause this error is, or carries; `None` by default.
    ///
    /// Return the cause a cancellation handed the task (the error of `scope.check()`,
    /// `scope.cancelled().await`, or a nested group's), so that the task is seen stopping
    /// because of it; or a cause the task made itself, whose code its failure then reports.
    ///
    /// The echo is recognised by identity: keep the cause as it was handed over. A cause
    /// changed on the way (`cause.with_detail(..)`) is a new cause, and the task a failure.
    /// An echo is reported as the cancellation alone: what else the error held (a nested
    /// group's aborted tasks, its later failures) is not in the outer group's report; the
    /// observer's events name those tasks.
    fn as_cause(&self) -> Option<&Cause> {
        None
    }
}

impl TaskError for Cause {
    fn as_cause(&self) -> Option<&Cause> {
        Some(self)
    }
}

impl TaskError for BoxError {
    /// The first cause in the error's source chain: a boxed [`Cause`], or a nested group's
    /// [`GroupError`](crate::GroupError), whose source is its cause.
    fn as_cause(&self) -> Option<&Cause> {
        cause_in(&**self)
    }
}

impl TaskError for io::Error {
    /// The first cause in its chain: the error it wraps (`io::Error::other(cause)`), and that
    /// one's sources.
    fn as_cause(&self) -> Option<&Cause> {
        cause_in(self)
    }
}

#[cfg(feature = "anyhow")]
impl TaskError for anyhow::Error {
    /// The first cause in its chain (`anyhow!(cause)`, `.context(..)` on one).
    fn as_cause(&self) -> Option<&Cause> {
        self.downcast_ref::<Cause>()
    }
}

impl TaskError for String {}

impl TaskError for &'static str {}

/// The first [`Cause`] in `error`'s chain, starting with `error` itself. An [`io::Error`]'s
/// next link is the error it wraps: its `source()` skips that one.
fn cause_in<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Cause> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(cause) = error.downcast_ref::<Cause>() {
            return Some(cause);
        }
        next = match error.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => error.source(),
        };
    }
    None
}
