//! OS signals as cause sources: SIGINT and SIGTERM become [`Shutdown`](CauseKind::Shutdown)
//! causes naming the signal, and [`shutdown_on_signals`] turns them into a supervisor's ordered
//! shutdown, then a forced one.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use taskscope::{Cause, CauseKind, Stopped, SupervisorHandle};

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
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
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
    pub fn new() -> io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            Ok(Signals {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
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
        // `None` means the runtime's signal driver is gone: no signal can come any more, so
        // such a listener simply stays pending.
        #[cfg(unix)]
        {
            if let Poll::Ready(Some(())) = self.interrupt.poll_recv(cx) {
                return Poll::Ready(shutdown_cause("SIGINT"));
            }
            if let Poll::Ready(Some(())) = self.terminate.poll_recv(cx) {
                return Poll::Ready(shutdown_cause("SIGTERM"));
            }
        }
        #[cfg(windows)]
        {
            if let Poll::Ready(Some(())) = self.ctrl_c.poll_recv(cx) {
                return Poll::Ready(shutdown_cause("SIGINT"));
            }
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
}

impl ShutdownOnSignals {
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
                self.supervisor.shutdown(cause);
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
