//! `tokio::select!`-friendly adapters for [`taskscope`]: futures that end when a scope is
//! cancelled, and say why.
//!
//! An existing tokio application adopts taskscope without rewriting its loops: wrap a future
//! with [`or_cancel`](FutureExt::or_cancel) and it resolves to `Err(cause)` instead of running on
//! after its scope was cancelled.
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
//! What this crate holds today: the [`OrCancel`] and [`OrCancelOwned`] futures, and OS signals
//! as shutdown causes (`signal`). Stream adapters, `CancellationToken` bridges and tower glue
//! come next.
//!
//! # Features
//!
//! - `signal` (default): the `signal` module, on unix and Windows. `Signals` receives SIGINT
//!   and SIGTERM (ctrl-c on Windows) as [`Shutdown`](taskscope::CauseKind::Shutdown) causes
//!   whose code names the signal (`"SIGTERM"`), and `shutdown_on_signals` turns the first into
//!   a supervisor's ordered shutdown and a second into a forced one. Adds tokio's `signal`
//!   feature.

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
