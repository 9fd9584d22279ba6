//! A real axum server whose requests run under taskscope scopes. Each request gets a child
//! scope of the server, cancelled when its deadline passes (`x-timeout-ms` or `grpc-timeout`
//! headers, 30 s by default, never more than 60 s), when the client goes away, or when the
//! server shuts down; the handler answers with the cause, and every cancellation is logged
//! with it. Ctrl-c (or SIGTERM) shuts the server down gracefully: requests in flight get five
//! seconds to finish, then are cancelled with the signal's cause and named.
//!
//! ```text
//! cargo run --example axum_server            # listens on 127.0.0.1:3000 (PORT to change)
//! curl -i 'http://127.0.0.1:3000/slow?ms=300'                          # 200 after 300 ms
//! curl -i -H 'x-timeout-ms: 200' 'http://127.0.0.1:3000/slow?ms=5000'  # 504, deadline
//! curl -m 1 'http://127.0.0.1:3000/slow?ms=5000'  # curl gives up: logged as client_gone
//! ```

use std::io;
use std::time::Duration;

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderName, StatusCode, Uri};
use axum::{Router, routing::get};
use serde::Deserialize;
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::tower::{GracefulShutdown, ShutdownReport};
use taskscope_select::{FutureExt, ScopeExt, signal};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// What the server tells its log: a request started, finished, or was cancelled and why.
#[derive(Debug, Clone)]
pub enum Event {
    /// A request reached its handler.
    Started(Uri),
    /// A request's handler returned its response.
    Finished(Uri),
    /// A request's scope was cancelled: its deadline, its client, or the server's shutdown.
    Cancelled(Uri, Cause),
}

/// The handlers' shared state: where events go.
#[derive(Clone)]
pub struct App {
    events: broadcast::Sender<Event>,
}

impl App {
    /// A new app and a first subscriber to its events.
    pub fn new() -> (App, broadcast::Receiver<Event>) {
        let (events, receiver) = broadcast::channel(1024);
        (App { events }, receiver)
    }

    fn emit(&self, event: Event) {
        // No subscriber left means nobody is logging; the request goes on regardless.
        let _ = self.events.send(event);
    }
}

/// How much (simulated) work `/slow` does.
#[derive(Debug, Deserialize)]
pub struct Work {
    ms: u64,
}

/// `/slow?ms=N`: N milliseconds of work that stops when the request's scope is cancelled.
async fn slow(
    State(app): State<App>,
    Extension(scope): Extension<Scope>,
    Query(work): Query<Work>,
    uri: Uri,
) -> (StatusCode, String) {
    app.emit(Event::Started(uri.clone()));
    // Runs when the scope is cancelled, even if this handler's future is dropped by then (the
    // client went away): the cancellation is logged with its cause whatever happens here.
    let _log = scope.on_cancel({
        let app = app.clone();
        let uri = uri.clone();
        move |cause| app.emit(Event::Cancelled(uri, cause.clone()))
    });
    let query = tokio::time::sleep(Duration::from_millis(work.ms));
    match query.or_cancel(&scope).await {
        Ok(()) => {
            app.emit(Event::Finished(uri));
            (StatusCode::OK, format!("done after {} ms\n", work.ms))
        }
        Err(cause) => {
            let status = match cause.kind() {
                CauseKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, format!("{cause}\n"))
        }
    }
}

/// Serves `app` on `listener` until `server` is cancelled, then shuts down gracefully: requests
/// in flight get `grace` to finish, the rest are cancelled with the server's cause. Resolves to
/// the shutdown's report once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    server: &Scope,
    grace: Duration,
    app: App,
) -> io::Result<ShutdownReport> {
    let shutdown = GracefulShutdown::new(server, grace);
    let requests = shutdown
        .layer()
        .timeout_header(HeaderName::from_static("x-timeout-ms"))
        .default_timeout(Duration::from_secs(30))
        .max_timeout(Duration::from_secs(60));
    let router = Router::new()
        .route("/slow", get(slow))
        .with_state(app)
        .layer(requests);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.signal());
    let (served, report) = tokio::join!(server.into_future(), shutdown.drain());
    served?;
    Ok(report)
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let server = Scope::builder().name("api").build();
    server.cancel_on(signal::ctrl_c()?);
    #[cfg(unix)]
    server.cancel_on(signal::terminate()?);

    let (app, mut events) = App::new();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                Event::Started(uri) => eprintln!("{uri}: started"),
                Event::Finished(uri) => eprintln!("{uri}: finished"),
                Event::Cancelled(uri, cause) => eprintln!(
                    "{uri}: cancelled: {cause} [kind={} code={} origin={}]",
                    cause.kind(),
                    cause.code(),
                    cause.origin().unwrap_or("-"),
                ),
            }
        }
    });

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!(
        "listening on http://{}; try /slow?ms=300; ctrl-c shuts down gracefully",
        listener.local_addr()?
    );
    let report = serve(listener, &server, Duration::from_secs(5), app).await?;
    println!("{report}");
    Ok(())
}
