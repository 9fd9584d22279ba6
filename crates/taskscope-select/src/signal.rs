//! OS signals as cause sources: SIGINT, SIGTERM and SIGHUP become
//! [`Shutdown`](CauseKind::Shutdown) causes naming the signal. [`ctrl_c`], [`terminate`] and
//! [`hangup`] are futures of one signal, to hand to
//! [`ScopeExt::cancel_on`](crate::ScopeExt::cancel_on); [`Signals`] receives SIGINT and SIGTERM
//! again and again, and [`shutdown_on_signals`] turns them into a supervisor's ordered
//! shutdown, then a forced one.
//!
//! ```
//! use taskscope::Scope;
//! use taskscope_select::{ScopeExt, signal};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let app = Scope::builder().name("app").build();
//! app.cancel_on(signal::ctrl_c()?);
//! # #[cfg(unix)]
//! app.cancel_on(signal::terminate()?);
//! // ... run the application's work under `app`; ctrl-c or SIGTERM cancels it with a cause
//! // of kind `Shutdown` and code "SIGINT" or "SIGTERM".
//! # Ok(())
//! # }
//! ```

use std::future::{Future, poll_fn};
use std::io;
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use taskscope::{Cause, CauseKind, SupervisorHandle};

use taskscope::futures::Stopped;

/// A [`Shutdown`](CauseKind::Shutdown) cause naming the signal `name`: its code is the name
/// (`"SIGTERM"`), a stable metric label, and its detail says `received SIGTERM`.
///
/// ```
/// use taskscope::CauseKind;
/// use taskscope_select::signal::shutdown_cause;
///
/// let cause = shutdown_cause("SIGTERM");
/// assert_eq!(cause.kind(), CauseKind::Shutdown);
/// assert_eq!(cause.code(), "SIGTERM");
/// assert_eq!(cause.to_string(), "shut down (SIGTERM): received SIGTERM");
/// ```
pub fn shutdown_cause(name: &'static str) -> Cause {
    Cause::of_kind(CauseKind::Shutdown)
        .with_code(name)
        .with_detail(format!("received {name}"))
}

/// Resolves to the [`shutdown_cause`] of one signal when it arrives; made by [`ctrl_c`],
/// [`terminate`] or [`hangup`]. Polled again after that, it waits for the next one. The cause's
/// [`location`](Cause::location) is the call that made it (or [`Signals::new`]'s): where the
/// application installed its signal handling.
///
/// Listening starts when it is made, not when it is first polled: a signal that arrives in
/// between is kept. Once it exists, the signal no longer ends the process by default, for as
/// long as the process lives (tokio never uninstalls its handlers).
///
/// # Cancel safety
///
/// Cancel-safe when polled by reference (`&mut signal` in a `tokio::select!` loop): a branch
/// that loses keeps the signal for the next turn. Dropping it stops listening, and a signal
/// that had arrived but was not yet polled goes with it.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Signal {
    name: &'static str,
    /// Where it was made: the location of the causes it resolves to.
    installed_at: &'static Location<'static>,
    #[cfg(unix)]
    inner: tokio::signal::unix::Signal,
    #[cfg(windows)]
    inner: tokio::signal::windows::CtrlC,
}

impl Future for Signal {
    type Output = Cause;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cause> {
        // `None`: the runtime's signal driver is gone, no signal can come any more.
        match self.inner.poll_recv(cx) {
            Poll::Ready(Some(())) => {
                Poll::Ready(shutdown_cause(self.name).with_location(self.installed_at))
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// The next ctrl-c: SIGINT on unix, ctrl-c on Windows, reported as `"SIGINT"` on both.
///
/// # Errors
///
/// When the OS refuses to install the handler.
///
/// # Panics
///
/// Outside a tokio runtime with its I/O driver enabled (`enable_all`, as `#[tokio::main]`).
#[track_caller]
pub fn ctrl_c() -> io::Result<Signal> {
    #[cfg(unix)]
    let inner = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    #[cfg(windows)]
    let inner = tokio::signal::windows::ctrl_c()?;
    Ok(Signal {
        name: "SIGINT",
        installed_at: Location::caller(),
        inner,
    })
}

/// The next SIGTERM, what process managers (systemd, Kubernetes, docker stop) send to ask for a
/// graceful stop.
///
/// # Errors
///
/// When the OS refuses to install the handler.
///
/// # Panics
///
/// Outside a tokio runtime with its I/O driver enabled.
#[cfg(unix)]
#[track_caller]
pub fn terminate() -> io::Result<Signal> {
    unix_signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")
}

/// The next SIGHUP: the controlling terminal went away, or (by convention for daemons) a
/// request to reload. As a cause it is a shutdown named `"SIGHUP"`; a service that reloads
/// instead reads it with `tokio::signal::unix` directly.
///
/// # Errors
///
/// When the OS refuses to install the handler.
///
/// # Panics
///
/// Outside a tokio runtime with its I/O driver enabled.
#[cfg(unix)]
#[track_caller]
pub fn hangup() -> io::Result<Signal> {
    unix_signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")
}

#[cfg(unix)]
#[track_caller]
fn unix_signal(kind: tokio::signal::unix::SignalKind, name: &'static str) -> io::Result<Signal> {
    Ok(Signal {
        name,
        installed_at: Location::caller(),
        inner: tokio::signal::unix::signal(kind)?,
    })
}

/// Listens for the signals that ask a process to stop: SIGINT (ctrl-c) and SIGTERM on unix,
/// ctrl-c on Windows, reported as `"SIGINT"` there too so that causes and metric labels read
/// the same on every platform.
///
/// Listening starts in [`new`](Signals::new), not at the first [`recv`](Signals::recv): a signal
/// that arrives in between is kept. Make it before starting the work it is to stop.
///
/// Once a `Signals` exists, these signals no longer end the process by default, for as long as
/// the process lives (tokio never uninstalls its handlers): whoever receives them decides.
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    #[cfg(unix)]
    terminate: Signal,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM (ctrl-c on Windows).
    ///
    /// # Errors
    ///
    /// When the OS refuses to install the handlers.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one built without its I/O driver (`enable_io`, or
    /// `enable_all` as `#[tokio::main]` does), which is what receives signals.
    #[track_caller]
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            interrupt: ctrl_c()?,
            #[cfg(unix)]
            terminate: terminate()?,
        })
    }

    /// Waits for the next signal and returns it as its [`shutdown_cause`]. Signals that arrive
    /// faster than they are received may be merged into one, as the OS does.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping it (when another `tokio::select!` branch wins) loses no signal;
    /// the next call receives it, as tokio's `Signal::recv` does.
    pub async fn recv(&mut self) -> Cause {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next signal: `Ready` with its [`shutdown_cause`], or `Pending` with the
    /// waker registered for every signal listened to.
    ///
    /// # Fairness
    ///
    /// When SIGINT and SIGTERM are both pending, SIGINT is returned first and SIGTERM at the
    /// next poll: neither is lost.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Cause> {
        if let Poll::Ready(cause) = Pin::new(&mut self.interrupt).poll(cx) {
            return Poll::Ready(cause);
        }
        #[cfg(unix)]
        if let Poll::Ready(cause) = Pin::new(&mut self.terminate).poll(cx) {
            return Poll::Ready(cause);
        }
        Poll::Pending
    }
}

/// Shuts `supervisor` down when the process is asked to stop: the first signal starts its
/// ordered shutdown ([`SupervisorHandle::shutdown`]) with a cause naming the signal, a second
/// one forces it ([`SupervisorHandle::abort`]: no more graces). Resolves once the supervisor has
/// stopped, for whatever reason, so it can be spawned, or awaited alongside
/// [`join`](taskscope::Supervisor::join).
///
/// ```
/// use taskscope::{BoxError, Cause, CauseKind, ChildSpec, Scope, Supervisor};
/// use taskscope_select::signal::{Signals, shutdown_on_signals};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Listen first: a ctrl-c during start-up is not lost.
/// let signals = Signals::new()?;
/// let app = Scope::builder().name("app").build();
/// let supervisor = Supervisor::builder()
///     .name("workers")
///     .child(ChildSpec::new("poller", |scope: Scope| async move {
///         scope.cancelled().await;
///         Ok::<(), BoxError>(())
///     }))
///     .start(&app)?;
/// let listener = tokio::spawn(shutdown_on_signals(supervisor.handle(), signals));
///
/// // ctrl-c or SIGTERM would stop it here; this example stops it on demand instead.
/// supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown).with_detail("deploy"));
/// supervisor.join().await?;
/// listener.await?;
/// # Ok(())
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping it stops listening and changes nothing else: a shutdown it started goes on. Signals
/// it had not yet received stay with `signals`, which it drops: a later one is not seen by
/// anyone, and no longer ends the process either.
pub fn shutdown_on_signals(supervisor: SupervisorHandle, signals: Signals) -> ShutdownOnSignals {
    ShutdownOnSignals {
        stopped: supervisor.stopped(),
        supervisor,
        signals,
        received: 0,
        budget: None,
    }
}

/// Turns signals into a supervisor's shutdown; returned by [`shutdown_on_signals`].
///
/// # Fairness
///
/// The supervisor is checked first: once it has stopped, the future resolves without taking
/// another signal.
///
/// # Cancel safety
///
/// As [`shutdown_on_signals`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct ShutdownOnSignals {
    supervisor: SupervisorHandle,
    signals: Signals,
    stopped: Stopped,
    /// How many signals it has acted on: the first shuts down, the second aborts.
    received: u8,
    /// The whole shutdown's budget, if it has one.
    budget: Option<Duration>,
}

impl ShutdownOnSignals {
    /// Bounds the shutdown the first signal starts to `budget` in all
    /// ([`SupervisorHandle::shutdown_within`]): what still runs then is aborted, as a second
    /// signal would. For a process manager that kills after a fixed time (Kubernetes'
    /// `terminationGracePeriodSeconds`, systemd's `TimeoutStopSec`): give it a little less.
    pub fn within(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Polls it: `Ready` once the supervisor has stopped.
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Pin::new(&mut self.stopped).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Past the second signal there is nothing more to do; later ones are left unread.
        while self.received < 2 {
            let Poll::Ready(cause) = self.signals.poll_recv(cx) else {
                break;
            };
            self.received += 1;
            if self.received == 1 {
                match self.budget {
                    Some(budget) => self.supervisor.shutdown_within(cause, budget),
                    None => self.supervisor.shutdown(cause),
                };
            } else {
                self.supervisor.abort();
            }
        }
        Poll::Pending
    }
}

impl Future for ShutdownOnSignals {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_shutdown(cx)
    }
}
