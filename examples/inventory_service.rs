//! The inventory service of the demo, over gRPC (`proto/inventory.proto`): each call runs under
//! a request scope whose deadline is the caller's `grpc-timeout` (capped by `--max-timeout-ms`),
//! that is cancelled when the caller goes away, and that the server's shutdown reaches once the
//! in-flight calls had their grace. A call that ends because of its scope answers with the
//! cause's status (deadline → `DEADLINE_EXCEEDED`, caller gone → `CANCELLED`, shutdown →
//! `UNAVAILABLE`) and the cause itself in a `google.rpc.ErrorInfo`; a `sku` starting with
//! `out-` fails with code `INVENTORY_SHORTAGE` and `FAILED_PRECONDITION`.
//!
//! `Reserve` answers `budget_ms`, the call's remaining time when the server started on it (−1
//! without a deadline), after working `work_ms` milliseconds. Every call and every cancellation
//! is logged with `tracing` (`RUST_LOG` filters; `info` by default). SIGTERM or ctrl-c shuts
//! down gracefully: calls in flight get `--grace-ms` (2 s by default) to finish, then end
//! `UNAVAILABLE` with the signal's cause.
//!
//! ```text
//! cargo run --example inventory_service -- --addr 127.0.0.1:50051 [--max-timeout-ms N] [--grace-ms N]
//! ```
//!
//! Any gRPC client can call it with `examples/proto/inventory.proto`; `tests/inventory_service.rs`
//! calls it through tonic with `taskscope_tonic::CallScopeLayer`, under a caller's scope.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use taskscope::{Cause, Scope, TaskGroup};
use taskscope_select::tower::{GracefulShutdown, ShutdownReport};
use taskscope_select::{FutureExt, ScopeExt, signal};
use taskscope_tonic::{AnswerLayer, StatusPolicy};
use taskscope_trace::TraceObserver;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The code generated from `proto/inventory.proto`.
pub mod proto {
    tonic::include_proto!("taskscope.demo.v1");
}

use proto::inventory_server::{self, InventoryServer};
use proto::{ReserveReply, ReserveRequest};

/// The gRPC method a reservation is, as `remote_cause` wants it.
pub const RESERVE: &str = "/taskscope.demo.v1.Inventory/Reserve";

/// The code of the cause a reservation of a `sku` that is out of stock fails with.
pub const INVENTORY_SHORTAGE: &str = "INVENTORY_SHORTAGE";

/// How the server runs, from its flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest deadline a call gets, whatever its caller asked; none by default.
    pub max_timeout: Option<Duration>,
    /// How long calls in flight at shutdown may take to finish before they are cancelled.
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_timeout: None,
            grace: Duration::from_secs(2),
        }
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "The taskscope demo's inventory gRPC service")]
struct Args {
    /// The address to listen on.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// The longest deadline a call gets, in milliseconds: a caller's longer `grpc-timeout` (or
    /// none) is cut to it.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    max_timeout_ms: Option<u64>,
    /// How long calls in flight at shutdown may take to finish, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    grace_ms: u64,
}

/// The address to listen on and the options, from command-line `args` (the program's name
/// first). A bad flag is an error whose `Display` says which and why (`clap`'s usage message).
pub fn parse_args<I, T>(args: I) -> Result<(SocketAddr, Options), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    let options = Options {
        max_timeout: args.max_timeout_ms.map(Duration::from_millis),
        grace: Duration::from_millis(args.grace_ms),
    };
    Ok((args.addr, options))
}

/// The `Inventory` service.
#[derive(Debug, Default)]
pub struct Inventory {
    reservations: AtomicU64,
}

#[tonic::async_trait]
impl inventory_server::Inventory for Inventory {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveReply>, Status> {
        // Put there by `RequestScopeLayer`, which `serve` puts around the service.
        let Some(scope) = request.extensions().get::<Scope>().cloned() else {
            return Err(Status::internal(
                "no request scope: serve behind RequestScopeLayer",
            ));
        };
        let budget_ms = scope.remaining().map_or(-1, |left| {
            i64::try_from(left.as_millis()).unwrap_or(i64::MAX)
        });
        let order = request.into_inner();
        // The order id and sku are the caller's text: `?` quotes and escapes them.
        info!(
            scope = %scope.path(),
            order_id = ?order.order_id,
            sku = ?order.sku,
            quantity = order.quantity,
            work_ms = order.work_ms,
            budget_ms,
            "reserve"
        );
        // Runs when the scope is cancelled, even if this future is dropped by then (the caller
        // went away: the layer cancels the scope first).
        let _log = scope.on_cancel({
            let scope = scope.path().to_string();
            move |cause| {
                warn!(
                    %scope,
                    cause.kind = %cause.kind(),
                    cause.code = cause.code(),
                    cause.origin = cause.origin().unwrap_or("-"),
                    "reservation cancelled: {cause}"
                );
            }
        });

        let n = self.reservations.fetch_add(1, Ordering::Relaxed) + 1;
        let group = TaskGroup::new(&scope);
        group.spawn("reserve", move |task| reserve(task, order, n));
        // The scope ends the call as soon as it is cancelled, in the same poll that notices it
        // (`or_cancel`: the scope wins a tie): tonic runs its own `grpc-timeout` timer around
        // the service and answers `CANCELLED` when it fires, so a deadline is only answered
        // `DEADLINE_EXCEEDED` if the answer does not wait for the task to see it first.
        let status = match group.join().or_cancel(&scope).await {
            Ok(Ok(mut reserved)) => {
                let reservation_id = reserved.pop().unwrap_or_default();
                info!(scope = %scope.path(), reservation_id, "reserved");
                return Ok(Response::new(ReserveReply {
                    reservation_id,
                    budget_ms,
                }));
            }
            Ok(Err(failed)) => match failed.cause() {
                Some(cause) => StatusPolicy::default().status(cause),
                // Not cancelled, yet failed: nothing for the caller but the fact (the task's
                // error text is this service's own business).
                None => Status::internal("the reservation failed"),
            },
            Err(cause) => StatusPolicy::default().status(&cause),
        };
        info!(scope = %scope.path(), code = ?status.code(), message = status.message(), "not reserved");
        Err(status)
    }
}

/// One reservation: `work_ms` of work under the task's scope, then a reservation id, or a
/// shortage for a `sku` starting with `out-`.
async fn reserve(
    task: Scope,
    order: ReserveRequest,
    n: u64,
) -> Result<String, taskscope::BoxError> {
    let work = tokio::time::sleep(Duration::from_millis(order.work_ms.into()));
    work.or_cancel(&task).await?;
    if order.sku.starts_with("out-") {
        let shortage = Cause::new(INVENTORY_SHORTAGE).with_detail(format!(
            "{:?}: none left, {} wanted",
            order.sku, order.quantity
        ));
        return Err(shortage.into());
    }
    Ok(format!("rsv-{n}"))
}

/// Serves `Inventory` on `listener` until `root` is cancelled, then shuts down gracefully:
/// calls in flight get `options.grace` to finish, the rest are cancelled with `root`'s cause
/// (and answer `UNAVAILABLE` for a shutdown). Each call runs under a scope
/// `{root}/http/request-{n}`. Resolves to the shutdown's report once every connection closed.
///
/// # Errors
///
/// The server's, should it fail; `root` is then left as it is.
///
/// # Cancel safety
///
/// Dropping the future stops the server where it is: its connections close and the calls in
/// flight are dropped unanswered (their scopes see their clients go). Cancel `root` for the
/// graceful stop.
pub async fn serve(
    listener: TcpListener,
    root: &Scope,
    options: Options,
) -> Result<ShutdownReport, tonic::transport::Error> {
    // An unnamed child: it adds nothing to the requests' paths, and a failing server can stop
    // the drain below without cancelling the caller's root.
    let app = root.child();
    let shutdown = GracefulShutdown::new(&app, options.grace);
    let mut requests = shutdown.layer();
    if let Some(max) = options.max_timeout {
        requests = requests.max_timeout(max);
    }
    let server = Server::builder()
        .layer(requests)
        // Inside the scope layer: a call its scope ends is answered with the cause at once,
        // whatever the handler is doing.
        .layer(AnswerLayer::new(StatusPolicy::default()))
        .add_service(InventoryServer::new(Inventory::default()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.signal());
    let served = async {
        let served = server.await;
        if let Err(error) = &served {
            app.cancel(Cause::new("SERVER_FAILED").with_detail(error.to_string()));
        }
        served
    };
    let (served, report) = tokio::join!(served, shutdown.drain());
    served.map(|()| report)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let (addr, options) = match parse_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        // `--help` too: clap prints it, to stdout, and says it is no failure.
        Err(error) => {
            let _ = error.print();
            return std::process::ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match run(addr, options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("inventory_service: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(addr: SocketAddr, options: Options) -> Result<(), String> {
    let root = Scope::builder()
        .name("inventory")
        .observer(Arc::new(TraceObserver::new()))
        .build();
    let no_signals = |error| format!("cannot listen for signals: {error}");
    root.cancel_on(signal::ctrl_c().map_err(no_signals)?);
    #[cfg(unix)]
    root.cancel_on(signal::terminate().map_err(no_signals)?);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
    let local = listener.local_addr().map_err(|error| error.to_string())?;
    info!(addr = %local, max_timeout = ?options.max_timeout, grace = ?options.grace, "inventory listening");
    let report = serve(listener, &root, options)
        .await
        .map_err(|error| format!("server failed: {error}"))?;
    info!("{report}");
    Ok(())
}
