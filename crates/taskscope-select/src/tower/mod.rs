//! tower glue for HTTP servers (axum, tonic, hyper), behind the `tower` feature.
//!
//! - [`RequestScopeLayer`] gives each request its own child scope, in the request's extensions,
//!   cancelled when the request's deadline passes (the caller's `grpc-timeout`,
//!   `Connect-Timeout-Ms` or a configurable header, or the server's default, capped by its
//!   maximum; the cause says which), when the client goes away ([`client_gone`]), or when the
//!   server shuts down.
//! - [`CallScopeLayer`] binds an outgoing HTTP request to the scope in its extensions: its
//!   remaining time goes in a header, and the request is dropped when the scope is cancelled.
//! - [`ProblemPolicy`] answers a request its scope stopped with the status the cause's kind
//!   maps to and an RFC 9457 problem body carrying the cause.
//! - [`GracefulShutdown`] stops the server when an app scope is cancelled, lets in-flight
//!   requests finish within a grace period, then cancels the rest with the shutdown's cause and
//!   names them in a [`ShutdownReport`].
//!
//! `cargo run --example axum_server` runs both in a real axum server.

mod budget;
mod call;
mod deadline;
mod future;
mod layer;
mod problem;
mod reject;
mod shutdown;

pub use call::{CallError, CallFuture, CallScope, CallScopeLayer};
pub use deadline::{
    ParseTimeoutError, parse_connect_timeout, parse_grpc_timeout, parse_millis_timeout,
};
pub use future::{CLIENT_GONE, ResponseFuture, client_gone};
pub use layer::{RequestScope, RequestScopeLayer};
pub use problem::{CLIENT_CLOSED_REQUEST, ProblemPolicy};
pub use reject::ERROR_HEADER;
pub use shutdown::{GracefulShutdown, InFlightRequest, ShutdownReport, ShutdownSignal};
