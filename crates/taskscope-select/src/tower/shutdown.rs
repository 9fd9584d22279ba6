//! [`GracefulShutdown`]: stop taking requests, give in-flight ones a grace period, then cancel
//! them with the shutdown's cause and name them.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Uri};
use taskscope::futures::CancelledOwned;
use taskscope::{Cause, Scope};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::RequestScopeLayer;

/// Graceful shutdown for an HTTP server (axum, hyper, tonic): a future that tells the server to
/// stop accepting, a layer that counts in-flight requests, and [`drain`](GracefulShutdown::drain),
/// which gives those requests a grace period and then cancels the ones still running with the
/// shutdown's cause, and reports them by method and URI, where `Server.Shutdown` in Go (or
/// hyper's graceful shutdown on its own) waits forever or drops them silently.
///
/// Requests run under a [detached](Scope::detached_child) child of `app` named `http`, so the
/// app's cancellation tells the server to stop accepting without cancelling the requests at
/// once; `drain` passes the app's cause on to them once the grace is over. So **`drain` must
/// run** alongside the server: without it, the app's cancellation never reaches the requests
/// (and, being detached, they do not inherit the app's deadline either).
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Extension, Router, routing::get};
/// use taskscope::Scope;
/// use taskscope_select::tower::GracefulShutdown;
/// use taskscope_select::{ScopeExt, signal};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let app = Scope::builder().name("api").build();
/// app.cancel_on(signal::ctrl_c()?);
/// let shutdown = GracefulShutdown::new(&app, Duration::from_secs(10));
///
/// let router = Router::new()
///     .route("/", get(|Extension(scope): Extension<Scope>| async move { "hello" }))
///     .layer(shutdown.layer());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.signal());
/// let (served, report) = tokio::join!(server.into_future(), shutdown.drain());
/// served?;
/// eprintln!("{report}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GracefulShutdown {
    app: Scope,
    requests: Scope,
    grace: Duration,
    tracker: Arc<Tracker>,
    /// Request numbers, shared by every [`layer`](GracefulShutdown::layer) so names stay unique.
    numbered: Arc<AtomicU64>,
}

impl GracefulShutdown {
    /// Shuts down when `app` is cancelled, giving in-flight requests `grace` to finish. A zero
    /// grace cancels them at once; [`Duration::MAX`] waits for them however long they take.
    pub fn new(app: &Scope, grace: Duration) -> Self {
        GracefulShutdown {
            app: app.clone(),
            requests: app.child_builder().name("http").detached().build(),
            grace,
            tracker: Arc::new(Tracker::default()),
            numbered: Arc::default(),
        }
    }

    /// The layer to put around the server's routes: a [`RequestScopeLayer`] whose request
    /// scopes are children of this shutdown's `http` scope, and which counts requests in flight.
    pub fn layer(&self) -> RequestScopeLayer {
        RequestScopeLayer::with_tracker(
            self.requests.clone(),
            Some(self.tracker.clone()),
            self.numbered.clone(),
        )
    }

    /// The future to hand to the server's graceful shutdown (axum's and hyper-util's
    /// `with_graceful_shutdown`): it resolves when `app` is cancelled, and the server then stops
    /// accepting connections.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            cancelled: self.app.clone().cancelled_owned(),
        }
    }

    /// How many requests are in flight now: called, with no response yet.
    pub fn in_flight(&self) -> usize {
        self.tracker.lock().requests.len()
    }

    /// Waits for `app` to be cancelled, then for the requests in flight to finish, at most the
    /// grace period; then cancels every request still running with the app's cause and
    /// resolves to a report naming them. Run it alongside the server (`tokio::join!`): the
    /// server returns once the cancelled requests have answered.
    ///
    /// A handler that ignores its scope's cancellation keeps running after this; the report
    /// names it, and the server's own future does not end until it does. `drain` itself
    /// resolves only after `app` is cancelled: a server future that ends first (an error) should
    /// cancel `app` so that a `tokio::join!` of the two ends too.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves the requests uncancelled; call it again to resume
    /// (the grace then starts anew).
    pub async fn drain(&self) -> ShutdownReport {
        let cause = self.app.cancelled().await;
        let started = Instant::now();
        let in_flight = self.in_flight();
        let drained = tokio::time::timeout(self.grace, self.tracker.idle())
            .await
            .is_ok();
        let now = Instant::now();
        let cut_short = if drained {
            Vec::new()
        } else {
            let tracked = self.tracker.lock();
            tracked
                .requests
                .values()
                .map(|request| InFlightRequest {
                    method: request.method.clone(),
                    uri: request.uri.clone(),
                    running_for: now.saturating_duration_since(request.started),
                })
                .collect()
        };
        self.requests.cancel(cause.clone());
        ShutdownReport {
            cause,
            grace: self.grace,
            waited: now.saturating_duration_since(started),
            in_flight,
            cut_short,
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves when the app scope is cancelled; returned by [`GracefulShutdown::signal`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Scope::cancelled`].
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ShutdownSignal {
        cancelled: CancelledOwned,
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(self.project().cancelled).poll(cx).map(drop)
    }
}

/// What [`GracefulShutdown::drain`] did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// The app's cause, passed on to the requests that were cut short.
    pub cause: Cause,
    /// The grace period requests had.
    pub grace: Duration,
    /// How long it waited for requests to finish: the grace, or less if they all did.
    pub waited: Duration,
    /// How many requests were in flight when the shutdown began.
    pub in_flight: usize,
    /// The requests still running when the grace ran out, in the order they arrived; their
    /// scopes were then cancelled with [`cause`](ShutdownReport::cause) (one that finished in
    /// that instant is listed, but finished uncancelled).
    pub cut_short: Vec<InFlightRequest>,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.cause)?;
        if self.cut_short.is_empty() {
            return write!(
                f,
                "{} request(s) in flight finished in {} ms",
                self.in_flight,
                self.waited.as_millis()
            );
        }
        write!(
            f,
            "{} of {} request(s) in flight still running after the {} ms grace, cancelled:",
            self.cut_short.len(),
            self.in_flight,
            self.grace.as_millis()
        )?;
        for request in &self.cut_short {
            write!(f, "\n  {request}")?;
        }
        Ok(())
    }
}

/// A request that was still running when a shutdown's grace ran out.
#[derive(Debug, Clone)]
pub struct InFlightRequest {
    /// Its method.
    pub method: Method,
    /// Its URI as the server received it (path and query, for HTTP/1).
    pub uri: Uri,
    /// How long it had been running.
    pub running_for: Duration,
}

impl fmt::Display for InFlightRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (running for {} ms)",
            self.method,
            self.uri,
            self.running_for.as_millis()
        )
    }
}

/// The requests in flight, for [`GracefulShutdown`].
#[derive(Debug, Default)]
pub(super) struct Tracker {
    state: Mutex<InFlight>,
    /// Notified when the last request in flight ends.
    idle: Notify,
}

#[derive(Debug, Default)]
struct InFlight {
    next: u64,
    /// By arrival: ids only grow.
    requests: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    method: Method,
    uri: Uri,
    started: Instant,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // The map stays consistent whatever panicked while holding it: every change is one
        // insert or remove.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `request` in flight until the returned guard is dropped.
    pub(super) fn track<B>(self: &Arc<Self>, request: &Request<B>) -> Tracked {
        let entry = Entry {
            method: request.method().clone(),
            uri: request.uri().clone(),
            started: Instant::now(),
        };
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.requests.insert(id, entry);
        Tracked {
            tracker: self.clone(),
            id,
        }
    }

    /// Resolves once no request is in flight.
    async fn idle(&self) {
        loop {
            let mut notified = pin!(self.idle.notified());
            // Registered before looking, so an end between the look and the wait is not missed.
            notified.as_mut().enable();
            if self.lock().requests.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// A request counted in flight; dropping it ends the count.
#[derive(Debug)]
pub(super) struct Tracked {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut state = self.tracker.lock();
        state.requests.remove(&self.id);
        if state.requests.is_empty() {
            drop(state);
            self.tracker.idle.notify_waiters();
        }
    }
}
