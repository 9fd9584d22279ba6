//! Cancel at every await point: a test harness for code that runs under
//! [taskscope] scopes.
//!
//! Cancel safety is hard to get right and easy to break. A [`Sweep`] runs a piece of work once
//! to record its await points (every `Poll::Pending` of the work's future and of every task
//! spawned through taskscope under it), then once per point, interrupting the work there,
//! cooperatively (its scope is cancelled with a cause) or abruptly (the suspended future is
//! dropped, as a lost `select!` or an aborted task would drop it). After each run it checks the
//! user's invariant on the world, that nothing is left running or holding the root scope, that
//! no task had to be aborted (every group joined, within its grace), that the work reported the cause it was cancelled with, and that it
//! ended in time. Time is paused and each run has its own current-thread runtime, so a run is
//! deterministic where the work is.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use taskscope::{BoxError, Scope, TaskGroup};
//! use taskscope_test::Sweep;
//!
//! /// Moves money between two accounts, then says so in a log: not cancel safe, since a
//! /// cancellation between the two steps leaves a transfer nobody logged.
//! async fn transfer(ledger: Arc<Mutex<(u32, u32)>>, scope: Scope) -> Result<(), BoxError> {
//!     let group = TaskGroup::new(&scope);
//!     group.spawn("transfer", move |scope| async move {
//!         ledger.lock().unwrap().0 += 1; // moved
//!         tokio::time::sleep(Duration::from_millis(5)).await;
//!         scope.check()?;
//!         ledger.lock().unwrap().1 += 1; // logged
//!         Ok(())
//!     });
//!     group.join().await?;
//!     Ok(())
//! }
//!
//! let report = Sweep::new(
//!     "transfer",
//!     || async { Arc::new(Mutex::new((0, 0))) },
//!     transfer,
//! )
//! .invariant(|ledger| async move {
//!     let (moved, logged) = *ledger.lock().unwrap();
//!     if moved == logged { Ok(()) } else { Err(format!("{moved} moved, {logged} logged")) }
//! })
//! .run();
//! assert!(!report.is_ok());
//! // Aborted at its first await, the task moved the money and never logged it.
//! let aborted = report
//!     .runs
//!     .iter()
//!     .find(|run| run.mode == "abort" && run.point.as_ref().unwrap().task == "sweep/transfer#1")
//!     .unwrap();
//! assert_eq!(aborted.violations, ["invariant: 1 moved, 0 logged"]);
//! println!("{report}");
//! ```
//!
//! The JSON report ([`Report::to_json`]) names each point by its task and suspension number;
//! the repository's `docs/cancel-safety.md` walks through testing your own code with it.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod probe;
mod report;
mod sweep;

pub use probe::Point;
pub use report::{Report, RunReport};
pub use sweep::{Mode, Sample, Sweep};
