//! `tokio::select!`-friendly adapters for [`taskscope`]: futures and streams that end when a
//! scope is cancelled and say why, bridges to `CancellationToken`s and OS signals, and tower
//! glue for HTTP servers. An existing tokio application adopts taskscope without rewriting its
//! loops, its tokens or its server.
//!
//! | you have | you write | you get |
//! |---|---|---|
//! | a future | [`fut.or_cancel(&scope)`](FutureExt::or_cancel) | `Ok(output)` or `Err(cause)` |
//! | a future and a time budget | [`fut.timeout_with_cause(d, cause)`](FutureExt::timeout_with_cause) | `Err(cause)`, a deadline cause, past `d` |
//! | a stream | [`stream.until_cancelled(&scope)`](StreamExt::until_cancelled) | its items, then the cause from [`cause()`](UntilCancelled::cause) |
//! | a loop or a long computation | [`scope.check()?`](taskscope::Scope::check) | an early return with the cause |
//! | code that takes a `CancellationToken` | [`scope.to_token()`](ScopeExt::to_token) | a token cancelled with the scope, no task |
//! | a `CancellationToken` | [`token.to_scope_with(cause)`](TokenExt::to_scope_with) | a scope cancelled with `cause` |
//! | a signal, a message, any future | [`scope.cancel_on(fut)`](ScopeExt::cancel_on) | the scope cancelled with its cause |
//! | an axum/tonic/hyper server (feature `tower`) | `tower::RequestScopeLayer`, `tower::GracefulShutdown` | a scope per request; shutdown that names what it cut short |
//!
//! ```
//! use std::time::Duration;
//! use taskscope::{Cause, Scope};
//! use taskscope_select::FutureExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let request = Scope::builder().name("request").build();
//! let slow_query = tokio::time::sleep(Duration::from_secs(30));
//!
//! request.cancel(Cause::new("CLIENT_GONE"));
//! let cause = slow_query.or_cancel(&request).await.unwrap_err();
//! assert_eq!(cause.code(), "CLIENT_GONE");
//! # }
//! ```
//!
//! # Fairness and cancel safety
//!
//! Every adapter here follows one rule when the scope is cancelled and the wrapped future or
//! stream is ready at the same time: **the scope wins**. So no work starts on a cancelled
//! scope, and a source that is always ready (a busy channel) still stops. Nothing is lost by
//! it: an output not yet returned was never produced, and a stream's unread items stay in it.
//! Each adapter is cancel-safe exactly when what it wraps is; waiting on a scope is always
//! cancel-safe and level-triggered (a cancelled scope stays cancelled).
//!
//! # Patterns with `tokio::select!`
//!
//! [`Scope::cancelled`](taskscope::Scope::cancelled) works in `select!` as it is. Put it
//! first with `biased;` to give it the same priority as the adapters:
//!
//! ```
//! use taskscope::{Cause, Scope};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (tx, mut jobs) = tokio::sync::mpsc::channel::<u32>(16);
//! let worker = Scope::builder().name("worker").build();
//! tx.send(1).await.unwrap();
//! worker.cancel(Cause::new("DRAINING"));
//!
//! // A loop: stop at the cancel, even though a job is waiting.
//! let cause = loop {
//!     tokio::select! {
//!         biased;
//!         cause = worker.cancelled() => break cause,
//!         Some(job) = jobs.recv() => println!("job {job}"),
//!     }
//! };
//! assert_eq!(cause.code(), "DRAINING");
//! assert_eq!(jobs.try_recv().unwrap(), 1, "the job is still queued for someone else");
//! # }
//! ```
//!
//! Cleanup that must run *because* of the cancel goes after the loop, in a
//! [detached](taskscope::Scope::detached_child) child with its own time budget, so that the
//! cancel does not cut the cleanup short too; it can read the cause that stopped the work:
//!
//! ```
//! use std::time::Duration;
//! use taskscope::{Cause, Scope};
//! use taskscope_select::FutureExt;
//!
//! # async fn release_reservation(_order: u32) {}
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let order = Scope::builder().name("order-17").build();
//! order.cancel(Cause::new("PAYMENT_DECLINED"));
//!
//! if let Err(cause) = std::future::pending::<()>().or_cancel(&order).await {
//!     let compensation = order.detached_child();
//!     assert!(!compensation.is_cancelled(), "not cancelled with the order");
//!     assert_eq!(compensation.parent_cause().unwrap().code(), "PAYMENT_DECLINED");
//!     let cleanup = compensation.child_with_timeout(Duration::from_secs(5));
//!     release_reservation(17).or_cancel(&cleanup).await.expect("released in time");
//!     println!("order-17 compensated after {cause}");
//! }
//! # }
//! ```
//!
//! Avoid re-creating a non-cancel-safe future in each turn of a `select!` loop (for example
//! `reader.read_exact(..)`): a losing branch drops it with whatever it had read. Pin it once
//! outside the loop and select on `&mut` it, or wrap the whole operation in
//! [`or_cancel`](FutureExt::or_cancel) once.
//!
//! # Bridges
//!
//! ```
//! use taskscope::{Cause, CauseKind};
//! use taskscope_select::{ScopeExt, TokenExt};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The application already has a shutdown token: its cancellation becomes a cause.
//! let shutdown = CancellationToken::new();
//! let app = shutdown.to_scope_with(Cause::of_kind(CauseKind::Shutdown).with_code("DEPLOY"));
//!
//! // A library that takes a token gets one that follows a scope.
//! let request = app.child();
//! let token = request.to_token();
//!
//! shutdown.cancel();
//! token.cancelled().await;
//! assert_eq!(request.cause().unwrap().code(), "DEPLOY");
//! # }
//! ```
//!
//! # Features
//!
//! - `signal` (default): the [`signal`] module, on unix and Windows. [`signal::ctrl_c`],
//!   `signal::terminate` and `signal::hangup` (unix) are futures of one signal resolving to a
//!   [`Shutdown`](taskscope::CauseKind::Shutdown) cause whose code names it (`"SIGTERM"`), for
//!   [`cancel_on`](ScopeExt::cancel_on); `Signals` and `shutdown_on_signals` turn SIGINT and
//!   SIGTERM into a supervisor's ordered shutdown, then a forced one. Adds tokio's `signal`
//!   feature.
//! - `tower`: the `tower` module, a scope per HTTP request and graceful shutdown for tower
//!   servers (axum, tonic, hyper). Adds `http`, `tower-layer` and `tower-service`.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod bridge;
mod or_cancel;
#[cfg(all(feature = "signal", any(unix, windows)))]
pub mod signal;
mod stream;
#[cfg(feature = "tower")]
pub mod tower;

pub use bridge::{ScopeExt, TokenExt};
pub use or_cancel::{FutureExt, OrCancel, OrCancelOwned};
pub use stream::{StreamExt, UntilCancelled, UntilCancelledOwned};

// The code of the Go migration and cancel safety guides is tested as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/go-migration.md")]
struct GoMigrationDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../docs/cancel-safety.md")]
struct CancelSafetyDoctests;
