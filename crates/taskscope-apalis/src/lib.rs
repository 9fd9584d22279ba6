//! taskscope for [apalis] job workers: each job runs under a scope of its own, and what
//! becomes of a job that did not succeed is decided by the [`Cause`](taskscope::Cause) that
//! ended it.
//!
//! Job engines see a job's end as success or error. A job cut off by its worker's SIGTERM is
//! then a failed attempt, retried like a bug; one that ran out of time and one that found no
//! stock are retried alike. With a [`JobScopeLayer`] on the worker, the default
//! [`CausePolicy`] says:
//!
//! | the job ended by | what becomes of it |
//! |---|---|
//! | its worker's shutdown (a cause of kind `shutdown` while the worker's scope is cancelled: SIGTERM, ctrl-c, a supervisor's shutdown) | back to the queue, its attempt **not** counted |
//! | its deadline | retried with backoff |
//! | a cause whose code is marked permanent (`INVENTORY_SHORTAGE`) | given up at once, and compensated |
//! | a panic, any other failure (a shutdown cause from another service too) | a failed attempt, retried with backoff up to the job's limit, then given up and compensated |
//!
//! [`postgres::Settle`] writes these outcomes to apalis-postgres' jobs table, which apalis'
//! own bookkeeping cannot (it counts every attempt and retries at once). The guide's
//! operations section says what happens on SIGTERM and on `kill -9`.
//!
//! [apalis]: https://docs.rs/apalis
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod layer;
mod policy;
mod settle;

#[cfg(feature = "postgres")]
pub mod postgres;

pub use layer::{
    COMPENSATION_FAILED, Compensate, JobOutcome, JobScope, JobScopeLayer, JobScopeService,
    MissingJobScope, NoCompensation,
};
pub use policy::{CausePolicy, JobEnd, JobPolicy, Verdict};
pub use settle::{ApalisResult, Job, Settle};

/// The README's example compiles.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
