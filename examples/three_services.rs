//! Three services over real loopback TCP, each running its requests under taskscope scopes:
//! an HTTP/JSON gateway (axum) → orders (gRPC, `proto/orders.proto`) → inventory (gRPC, the
//! `inventory_service` example).
//!
//! - **Budgets travel down.** The gateway gives each request a deadline from its
//!   `x-timeout-ms` header (10 s without one, never more than 30 s); each hop calls the next
//!   through `taskscope_tonic::CallScopeLayer` under its request's scope, so the call carries
//!   the time left as `grpc-timeout`, and the next hop's scope gets that deadline. The budget
//!   only shrinks: the answer shows what each hop had left when it started.
//! - **Causes travel up.** A call that fails is answered with its cause: orders answers
//!   inventory's cause as a gRPC status (`StatusPolicy`, an `ErrorInfo` whose origin now starts
//!   with `Inventory/Reserve`), the gateway answers orders' as an RFC 9457 problem
//!   (`ProblemPolicy`: deadline 504, shutdown 503, a failure such as `INVENTORY_SHORTAGE` 409),
//!   whose `origin` names every hop: `taskscope.demo.v1.Orders/Place >
//!   taskscope.demo.v1.Inventory/Reserve > inventory/http/request-1/reserve`.
//! - **A client that goes away is heard at the end of the chain.** Its request's scope at the
//!   gateway is cancelled (client gone), which drops the call to orders (the HTTP/2 stream is
//!   reset), which cancels orders' request scope the same way, which drops its call to
//!   inventory, whose reservation stops.
//!
//! ```text
//! cargo run --example three_services -- --gateway-addr 127.0.0.1:3000 [--orders-addr IP:PORT]
//!     [--inventory-addr IP:PORT] [--inventory-max-timeout-ms N]
//! curl -i -H 'x-timeout-ms: 1000' -H 'content-type: application/json' \
//!     -d '{"order_id":"o-1","sku":"sku-42","quantity":2,"work_ms":50}' \
//!     http://127.0.0.1:3000/orders   # 200, each hop's budget: 999, 999, 999 here
//! curl -i -H 'x-timeout-ms: 1000' -H 'content-type: application/json' \
//!     -d '{"order_id":"o-2","sku":"out-42","quantity":2,"work_ms":0}' \
//!     http://127.0.0.1:3000/orders   # 409, INVENTORY_SHORTAGE, origin through both services
//! curl -i -H 'x-timeout-ms: 300' -H 'content-type: application/json' \
//!     -d '{"order_id":"o-3","sku":"sku-42","quantity":2,"work_ms":5000}' \
//!     http://127.0.0.1:3000/orders   # 504, deadline, set at the gateway (its clock started first)
//! curl -m 0.3 -H 'x-timeout-ms: 5000' -H 'content-type: application/json' \
//!     -d '{"order_id":"o-4","sku":"sku-42","quantity":2,"work_ms":5000}' \
//!     http://127.0.0.1:3000/orders   # curl gives up: client_gone logged at each hop
//! ```
//!
//! With `--inventory-max-timeout-ms 100`, an order with `x-timeout-ms: 1000` and `work_ms` 500
//! gets a 504 whose deadline was set in inventory: origin `taskscope.demo.v1.Orders/Place >
//! taskscope.demo.v1.Inventory/Reserve > inventory/http/request-1`.
//!
//! Orders and inventory listen on ephemeral ports unless given; every address is printed.
//! Ctrl-c (or SIGTERM) shuts all three down gracefully. `tests/three_services.rs` drives the
//! chain: budgets, a shortage, a client that leaves, a deadline and a shutdown in inventory.

#[path = "inventory_service.rs"]
#[allow(dead_code)] // Its flags and `main` are its own program's; `serve` is used here.
pub mod inventory_service;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Json, State};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use serde::{Deserialize, Serialize};
use taskscope::{Cause, Scope};
use taskscope_select::ScopeExt;
use taskscope_select::signal;
use taskscope_select::tower::{GracefulShutdown, ProblemPolicy, ShutdownReport};
use taskscope_tonic::{
    AnswerLayer, CallScope, CallScopeLayer, StatusPolicy, call_cause, with_scope,
};
use taskscope_trace::TraceObserver;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tower_layer::Layer;
use tracing::{info, warn};

pub use inventory_service::proto;
use inventory_service::{Options as InventoryOptions, RESERVE};
use proto::inventory_client::InventoryClient;
use proto::orders_client::OrdersClient;
use proto::orders_server::{self, OrdersServer};
use proto::{PlaceReply, PlaceRequest, ReserveRequest};

/// The gRPC method placing an order is, as `call_cause` wants it.
pub const PLACE: &str = "/taskscope.demo.v1.Orders/Place";

/// How long requests in flight at shutdown may take to finish, in orders and at the gateway.
pub const GRACE: Duration = Duration::from_secs(2);

/// The gateway's budget for a request that brings no `x-timeout-ms`.
pub const GATEWAY_DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest budget the gateway gives a request, whatever its `x-timeout-ms`.
pub const GATEWAY_MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// `scope`'s remaining time in whole milliseconds, −1 without a deadline.
fn budget_ms(scope: &Scope) -> i64 {
    scope.remaining().map_or(-1, |left| {
        i64::try_from(left.as_millis()).unwrap_or(i64::MAX)
    })
}

/// A gRPC client on a lazily connected channel to `addr`, whose calls made under a scope
/// ([`with_scope`]) carry its budget and are dropped when it is cancelled.
fn channel(addr: SocketAddr) -> CallScope<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("`http://` and a socket address make a valid URI")
        .connect_lazy();
    CallScopeLayer::new().layer(channel)
}

/// The `Orders` service: places an order by reserving its stock with inventory.
#[derive(Debug, Clone)]
pub struct Orders {
    inventory: InventoryClient<CallScope<Channel>>,
}

#[tonic::async_trait]
impl orders_server::Orders for Orders {
    async fn place(
        &self,
        request: tonic::Request<PlaceRequest>,
    ) -> Result<tonic::Response<PlaceReply>, tonic::Status> {
        // Put there by `RequestScopeLayer`, which `serve_orders` puts around the service.
        let Some(scope) = request.extensions().get::<Scope>().cloned() else {
            return Err(tonic::Status::internal(
                "no request scope: serve behind RequestScopeLayer",
            ));
        };
        let budget_ms = budget_ms(&scope);
        let order = request.into_inner();
        // The order id and sku are the caller's text: `?` quotes and escapes them.
        info!(scope = %scope.path(), order_id = ?order.order_id, sku = ?order.sku, budget_ms, "place");
        let reserve = ReserveRequest {
            order_id: order.order_id,
            sku: order.sku,
            quantity: order.quantity,
            work_ms: order.work_ms,
        };
        // Under the request's scope: the call takes its remaining time along, and is dropped
        // (inventory sees its client go) if the scope is cancelled first.
        let reserve = with_scope(tonic::Request::new(reserve), &scope);
        match self.inventory.clone().reserve(reserve).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                Ok(tonic::Response::new(PlaceReply {
                    reservation_id: reply.reservation_id,
                    budget_ms,
                    inventory_budget_ms: reply.budget_ms,
                }))
            }
            Err(status) => {
                // This scope's own cause if it stopped the call, else inventory's, whose
                // origin now starts with the method: passed on, it keeps travelling up.
                let cause = call_cause(&scope, &status, RESERVE);
                warn!(
                    scope = %scope.path(),
                    cause.kind = %cause.kind(),
                    cause.code = cause.code(),
                    cause.origin = cause.origin().unwrap_or("-"),
                    cause.detail = cause.detail(),
                    "not placed"
                );
                Err(StatusPolicy::default().status(&cause))
            }
        }
    }
}

/// Serves `Orders` on `listener`, calling inventory at `inventory`, until `root` is cancelled;
/// then shuts down gracefully (calls in flight get [`GRACE`]). Each call runs under a scope
/// `{root}/http/request-{n}` whose deadline is the caller's `grpc-timeout`. Resolves to the
/// shutdown's report once every connection closed.
///
/// # Errors
///
/// The server's, should it fail.
///
/// # Cancel safety
///
/// Dropping the future stops the server where it is: its connections close and the calls in
/// flight are dropped unanswered (their scopes see their clients go). Cancel `root` for the
/// graceful stop.
pub async fn serve_orders(
    listener: TcpListener,
    root: &Scope,
    inventory: SocketAddr,
) -> Result<ShutdownReport, tonic::transport::Error> {
    let orders = Orders {
        inventory: InventoryClient::new(channel(inventory)),
    };
    // An unnamed child, as in `inventory_service::serve`: it adds nothing to the paths, and a
    // failing server can stop the drain without cancelling the caller's root.
    let app = root.child();
    let shutdown = GracefulShutdown::new(&app, GRACE);
    let server = Server::builder()
        .layer(shutdown.layer())
        .layer(AnswerLayer::new(StatusPolicy::default()))
        .add_service(OrdersServer::new(orders))
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

/// An order, as the gateway's clients post it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// The caller's id for the order.
    pub order_id: String,
    /// What to reserve; a `sku` starting with `out-` is out of stock.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// How long inventory works on the reservation, in milliseconds.
    pub work_ms: u32,
}

/// A placed order, as the gateway answers it: the reservation, and the budget each hop had
/// left when it started (in whole milliseconds, −1 without a deadline). Each is at most the
/// one before it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placed {
    /// The order's id, as posted.
    pub order_id: String,
    /// Inventory's reservation.
    pub reservation_id: String,
    /// The gateway's request budget.
    pub gateway_budget_ms: i64,
    /// Orders' call budget.
    pub orders_budget_ms: i64,
    /// Inventory's call budget.
    pub inventory_budget_ms: i64,
}

/// `POST /orders`: places the order with orders, under the request's scope.
async fn place(
    State(orders): State<OrdersClient<CallScope<Channel>>>,
    Extension(scope): Extension<Scope>,
    Json(order): Json<Order>,
) -> Response {
    let gateway_budget_ms = budget_ms(&scope);
    info!(scope = %scope.path(), order_id = ?order.order_id, budget_ms = gateway_budget_ms, "order");
    let request = PlaceRequest {
        order_id: order.order_id.clone(),
        sku: order.sku,
        quantity: order.quantity,
        work_ms: order.work_ms,
    };
    let request = with_scope(tonic::Request::new(request), &scope);
    match orders.clone().place(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Json(Placed {
                order_id: order.order_id,
                reservation_id: reply.reservation_id,
                gateway_budget_ms,
                orders_budget_ms: reply.budget_ms,
                inventory_budget_ms: reply.inventory_budget_ms,
            })
            .into_response()
        }
        Err(status) => {
            let cause = call_cause(&scope, &status, PLACE);
            warn!(
                scope = %scope.path(),
                cause.kind = %cause.kind(),
                cause.code = cause.code(),
                cause.origin = cause.origin().unwrap_or("-"),
                cause.detail = cause.detail(),
                "order failed"
            );
            ProblemPolicy::default().response(&cause)
        }
    }
}

/// Serves the gateway's `POST /orders` on `listener`, calling orders at `orders`, until `root`
/// is cancelled; then shuts down gracefully (requests in flight get [`GRACE`]). Each request
/// runs under a scope `{root}/http/request-{n}` whose deadline is its `x-timeout-ms` header
/// ([`GATEWAY_DEFAULT_TIMEOUT`] without one, capped by [`GATEWAY_MAX_TIMEOUT`]), cancelled if
/// its client goes away. Resolves to the shutdown's report once every connection closed.
///
/// # Errors
///
/// The server's, should it fail.
///
/// # Cancel safety
///
/// Dropping the future stops the server where it is: its connections close and the calls in
/// flight are dropped unanswered (their scopes see their clients go). Cancel `root` for the
/// graceful stop.
pub async fn serve_gateway(
    listener: TcpListener,
    root: &Scope,
    orders: SocketAddr,
) -> io::Result<ShutdownReport> {
    let orders = OrdersClient::new(channel(orders));
    let shutdown = GracefulShutdown::new(root, GRACE);
    let requests = shutdown
        .layer()
        .timeout_header(HeaderName::from_static("x-timeout-ms"))
        .default_timeout(GATEWAY_DEFAULT_TIMEOUT)
        .max_timeout(GATEWAY_MAX_TIMEOUT);
    let router = axum::Router::new()
        .route("/orders", post(place))
        .layer(requests)
        .with_state(orders);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.signal());
    let (served, report) = tokio::join!(server.into_future(), shutdown.drain());
    served?;
    Ok(report)
}

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "The taskscope demo: gateway (HTTP) -> orders (gRPC) -> inventory (gRPC)")]
struct Args {
    /// The gateway's address.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:3000")]
    gateway_addr: SocketAddr,
    /// Orders' address; an ephemeral port by default.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    orders_addr: SocketAddr,
    /// Inventory's address; an ephemeral port by default.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    inventory_addr: SocketAddr,
    /// The longest deadline inventory gives a call, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    inventory_max_timeout_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return std::process::ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("three_services: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A root scope named `name`, traced, and cancelled by ctrl-c and SIGTERM.
fn root(name: &str) -> Result<Scope, String> {
    let root = Scope::builder()
        .name(name)
        .observer(Arc::new(TraceObserver::new()))
        .build();
    let no_signals = |error| format!("cannot listen for signals: {error}");
    root.cancel_on(signal::ctrl_c().map_err(no_signals)?);
    #[cfg(unix)]
    root.cancel_on(signal::terminate().map_err(no_signals)?);
    Ok(root)
}

/// A listener on `addr`, and the address it got.
async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
    let local = listener.local_addr().map_err(|error| error.to_string())?;
    Ok((listener, local))
}

async fn run(args: Args) -> Result<(), String> {
    let (inventory_listener, inventory_addr) = listen(args.inventory_addr).await?;
    let (orders_listener, orders_addr) = listen(args.orders_addr).await?;
    let (gateway_listener, gateway_addr) = listen(args.gateway_addr).await?;
    let (inventory, orders, gateway) = (root("inventory")?, root("orders")?, root("gateway")?);
    let options = InventoryOptions {
        max_timeout: args.inventory_max_timeout_ms.map(Duration::from_millis),
        ..InventoryOptions::default()
    };
    println!("inventory on {inventory_addr}, orders on {orders_addr}");
    println!("gateway on http://{gateway_addr}: POST /orders; ctrl-c shuts down gracefully");
    let (inventory, orders, gateway) = tokio::join!(
        inventory_service::serve(inventory_listener, &inventory, options),
        serve_orders(orders_listener, &orders, inventory_addr),
        serve_gateway(gateway_listener, &gateway, orders_addr),
    );
    let inventory = inventory.map_err(|error| format!("inventory failed: {error}"))?;
    let orders = orders.map_err(|error| format!("orders failed: {error}"))?;
    let gateway = gateway.map_err(|error| format!("gateway failed: {error}"))?;
    info!("inventory: {inventory}");
    info!("orders: {orders}");
    info!("gateway: {gateway}");
    Ok(())
}
