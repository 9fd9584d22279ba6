//! A real axum server whose requests run under taskscope scopes. Each request gets a child
//! scope of the server (`api/http/request-1`, `-2`, ...), cancelled when its deadline passes
//! (`x-timeout-ms` or `grpc-timeout` headers, 30 s by default, never more than 60 s), when the
//! client goes away, or when the server shuts down; the handler answers with the cause, and
//! every cancellation is logged with it, as a `tracing` event with the cause's kind, code and
//! origin (`RUST_LOG` filters the log; `info` by default). A timeout header that cannot be
//! read is answered 400 without running the handler. Ctrl-c (or SIGTERM) shuts the server down
//! gracefully: requests in flight get five seconds to finish, then are cancelled with the
//! signal's cause and named.
//!
//! ```text
//! cargo run --example axum_server            # listens on 127.0.0.1:3000 (PORT to change)
//! curl -i 'http://127.0.0.1:3000/slow?ms=300'                          # 200 after 300 ms
//! curl -i -H 'x-timeout-ms: 200' 'http://127.0.0.1:3000/slow?ms=5000'  # 504, deadline
//! curl -i -H 'x-timeout-ms: soon' 'http://127.0.0.1:3000/slow?ms=10'   # 400, taskscope-error
//! curl -m 1 'http://127.0.0.1:3000/slow?ms=5000'  # curl gives up: logged as client_gone
//! ```

use std::io;
use std::time::Duration;

use axum::extract::{Extension, Query};
use axum::http::{HeaderName, StatusCode, Uri};
use axum::{Router, routing::get};
use serde::Deserialize;
use taskscope::{CauseKind, Scope};
use taskscope_select::tower::{GracefulShutdown, ShutdownReport};
use taskscope_select::{FutureExt, ScopeExt, signal};
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// How much (simulated) work `/slow` does.
#[derive(Debug, Deserialize)]
pub struct Work {
    ms: u64,
}

/// `/slow?ms=N`: N milliseconds of work that stops when the request's scope is cancelled.
async fn slow(
    Extension(scope): Extension<Scope>,
    Query(work): Query<Work>,
    uri: Uri,
) -> (StatusCode, String) {
    info!(%uri, scope = %scope.path(), "request started");
    // Runs when the scope is cancelled, even if this handler's future is dropped by then (the
    // client went away): the cancellation is logged with its cause whatever happens here.
    let _log = scope.on_cancel({
        let uri = uri.clone();
        move |cause| {
            warn!(
                %uri,
                cause.kind = %cause.kind(),
                cause.code = cause.code(),
                cause.origin = cause.origin().unwrap_or("-"),
                "request cancelled: {cause}"
            );
        }
    });
    let query = tokio::time::sleep(Duration::from_millis(work.ms));
    match query.or_cancel(&scope).await {
        Ok(()) => {
            info!(%uri, "request finished");
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

/// Serves the app on `listener` until `server` is cancelled, then shuts down gracefully: requests
/// in flight get `grace` to finish, the rest are cancelled with the server's cause. Resolves to
/// the shutdown's report once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    server: &Scope,
    grace: Duration,
) -> io::Result<ShutdownReport> {
    let shutdown = GracefulShutdown::new(server, grace);
    let requests = shutdown
        .layer()
        .timeout_header(HeaderName::from_static("x-timeout-ms"))
        .default_timeout(Duration::from_secs(30))
        .max_timeout(Duration::from_secs(60));
    let router = Router::new().route("/slow", get(slow)).layer(requests);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.signal());
    let (served, report) = tokio::join!(server.into_future(), shutdown.drain());
    served?;
    Ok(report)
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let server = Scope::builder().name("api").build();
    server.cancel_on(signal::ctrl_c()?);
    #[cfg(unix)]
    server.cancel_on(signal::terminate()?);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!(
        "listening on http://{}; try /slow?ms=300; ctrl-c shuts down gracefully",
        listener.local_addr()?
    );
    let report = serve(listener, &server, Duration::from_secs(5)).await?;
    println!("{report}");
    Ok(())
}
