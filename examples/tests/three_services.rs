//! The three-service demo over real loopback TCP: a gateway (axum, HTTP/JSON) → orders (tonic)
//! → inventory (tonic). Budgets shrink hop by hop; a shortage, a deadline and a shutdown in
//! inventory reach the gateway's problem body with their kind, code and the origin chain; a
//! client that leaves the gateway cancels inventory's work.
//!
//! Every service's scopes are read from an `Observer` on its root, which sends the test every
//! task start and every scope cancellation as it happens. Orders is also called directly,
//! through tonic, to show the status it answers. HTTP is spoken over a raw `TcpStream`, so
//! that a client can hang up mid-request. Real sockets need real time, so the tests wait for
//! events (each step bounded by [`LIMIT`], which only turns a hang into a failure), never for
//! a fixed time.

#[path = "../three_services.rs"]
#[allow(dead_code)]
mod three_services;

mod common;

use common::{LIMIT, Seen, Watch};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use taskscope::observe::TaskOutcome;
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::signal::shutdown_cause;
use taskscope_select::tower::{CLIENT_GONE, ShutdownReport};
use taskscope_tonic::{CallScope, CallScopeLayer, remote_cause, with_scope};
use three_services::inventory_service::{INVENTORY_SHORTAGE, Options, serve};
use three_services::proto::orders_client::OrdersClient;
use three_services::proto::{PlaceReply, PlaceRequest};
use three_services::{PLACE, Placed, serve_gateway, serve_orders};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower_layer::Layer;

/// The origin chain's first two links, as the gateway reads them.
const HOPS: &str = "taskscope.demo.v1.Orders/Place > taskscope.demo.v1.Inventory/Reserve";

/// One service: its root scope, what its scopes went through, and its server's task.
struct Service<R> {
    root: Scope,
    seen: mpsc::UnboundedReceiver<(Instant, Seen)>,
    served: JoinHandle<R>,
}

impl<R> Service<R> {
    /// Waits until the service saw something `wanted` picks; returns it, and when it was seen.
    async fn wait_for<T>(&mut self, mut wanted: impl FnMut(Seen) -> Option<T>) -> (Instant, T) {
        let seen = async {
            loop {
                let (at, seen) = self.seen.recv().await.expect("the service is gone");
                if let Some(found) = wanted(seen) {
                    return (at, found);
                }
            }
        };
        timeout(LIMIT, seen).await.expect("never seen")
    }

    /// Waits until the scope at `path` was cancelled; returns when, and the cause.
    async fn cancelled(&mut self, path: &str) -> (Instant, Cause) {
        self.wait_for(|seen| match seen {
            Seen::Cancelled(at, cause) if at == path => Some(cause),
            _ => None,
        })
        .await
    }

    /// Shuts the service down as SIGTERM would, and waits for it to stop.
    async fn shut_down(self) -> R {
        self.root.cancel(shutdown_cause("SIGTERM"));
        timeout(LIMIT, self.served)
            .await
            .expect("never stops")
            .unwrap()
    }
}

/// A root scope named `name`, watched.
fn watched(name: &str) -> (Scope, mpsc::UnboundedReceiver<(Instant, Seen)>) {
    let (sender, seen) = mpsc::unbounded_channel();
    let root = Scope::builder()
        .name(name)
        .observer(Arc::new(Watch(sender)))
        .build();
    (root, seen)
}

type Served<E> = Result<ShutdownReport, E>;

/// The three services on 127.0.0.1, and a gRPC client for orders.
struct Demo {
    inventory: Service<Served<tonic::transport::Error>>,
    orders: Service<Served<tonic::transport::Error>>,
    gateway: Service<Served<std::io::Error>>,
    gateway_addr: SocketAddr,
    orders_client: OrdersClient<CallScope<Channel>>,
}

impl Demo {
    /// Starts the three, inventory with `options`.
    async fn start(options: Options) -> Demo {
        let (root, seen) = watched("inventory");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inventory_addr = listener.local_addr().unwrap();
        let served = tokio::spawn({
            let root = root.clone();
            async move { serve(listener, &root, options).await }
        });
        let inventory = Service { root, seen, served };

        let (root, seen) = watched("orders");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let orders_addr = listener.local_addr().unwrap();
        let served = tokio::spawn({
            let root = root.clone();
            async move { serve_orders(listener, &root, inventory_addr).await }
        });
        let orders = Service { root, seen, served };

        let (root, seen) = watched("gateway");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_addr = listener.local_addr().unwrap();
        let served = tokio::spawn({
            let root = root.clone();
            async move { serve_gateway(listener, &root, orders_addr).await }
        });
        let gateway = Service { root, seen, served };

        let channel = Channel::from_shared(format!("http://{orders_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let orders_client = OrdersClient::new(CallScopeLayer::new().layer(channel));
        Demo {
            inventory,
            orders,
            gateway,
            gateway_addr,
            orders_client,
        }
    }

    /// Posts an order to the gateway with `x-timeout-ms: timeout_ms`; returns the open stream.
    async fn post(&self, sku: &str, work_ms: u32, timeout_ms: u64) -> TcpStream {
        let order = json!({"order_id": "order-17", "sku": sku, "quantity": 2, "work_ms": work_ms});
        let body = order.to_string();
        let request = format!(
            "POST /orders HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nx-timeout-ms: {timeout_ms}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(self.gateway_addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Posts an order to the gateway, and reads the answer: its status and JSON body.
    async fn order(&self, sku: &str, work_ms: u32, timeout_ms: u64) -> (u16, Value) {
        response(self.post(sku, work_ms, timeout_ms).await).await
    }

    /// Calls orders' `Place` directly under `scope`, on a task of its own.
    fn place(&self, scope: &Scope, work_ms: u32) -> JoinHandle<Result<PlaceReply, Status>> {
        let request = PlaceRequest {
            order_id: "order-18".to_owned(),
            sku: "sku-42".to_owned(),
            quantity: 1,
            work_ms,
        };
        let request = with_scope(tonic::Request::new(request), scope);
        let mut client = self.orders_client.clone();
        tokio::spawn(async move {
            let reply = client.place(request).await;
            reply.map(tonic::Response::into_inner)
        })
    }

    /// Waits until `n` reservations' tasks started in inventory.
    async fn reservations_started(&mut self, n: usize) {
        for _ in 0..n {
            self.inventory
                .wait_for(|seen| match seen {
                    Seen::Started(path) if path.ends_with("/reserve") => Some(()),
                    _ => None,
                })
                .await;
        }
    }

    /// Shuts the three down, from the gateway inward.
    async fn shut_down(self) {
        self.gateway.shut_down().await.unwrap();
        self.orders.shut_down().await.unwrap();
        self.inventory.shut_down().await.unwrap();
    }
}

/// Reads the whole response on `stream`: its status code and its body as JSON.
async fn response(mut stream: TcpStream) -> (u16, Value) {
    let mut text = String::new();
    timeout(LIMIT, stream.read_to_string(&mut text))
        .await
        .expect("the response hangs")
        .unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    if status != 200 {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
    }
    (status, body)
}

/// The answer to a call from [`Demo::place`].
async fn answer(call: JoinHandle<Result<PlaceReply, Status>>) -> Result<PlaceReply, Status> {
    timeout(LIMIT, call).await.expect("the call hangs").unwrap()
}

#[tokio::test]
async fn the_budget_shrinks_hop_by_hop_and_never_grows() {
    let demo = Demo::start(Options::default()).await;
    let (status, body) = demo.order("sku-42", 0, 1000).await;
    assert_eq!(status, 200, "{body}");
    let placed: Placed = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(placed.order_id, "order-17");
    assert_eq!(placed.reservation_id, "rsv-1");
    assert!(
        (1..=1000).contains(&placed.gateway_budget_ms),
        "gateway {body}"
    );
    assert!(
        (1..=placed.gateway_budget_ms).contains(&placed.orders_budget_ms),
        "orders {body}"
    );
    assert!(
        (1..=placed.orders_budget_ms).contains(&placed.inventory_budget_ms),
        "inventory {body}"
    );
    eprintln!("budgets: {body}");
    demo.shut_down().await;
}

#[tokio::test]
async fn a_shortage_in_inventory_reaches_the_gateway_with_the_origin_chain() {
    let demo = Demo::start(Options::default()).await;
    let (status, body) = demo.order("out-42", 0, 1000).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["kind"], "task_failed");
    assert_eq!(body["code"], INVENTORY_SHORTAGE);
    assert_eq!(body["status"], 409);
    assert_eq!(body["domain"], "taskscope");
    // Which service and method, then which, then the scope in inventory that set it.
    assert_eq!(
        body["origin"],
        format!("{HOPS} > inventory/http/request-1/reserve")
    );
    // The detail ("out-42": none left) stays in inventory: no policy on the way exposes it.
    assert!(body.get("detail").is_none(), "{body}");
    demo.shut_down().await;
}

#[tokio::test]
async fn a_client_that_leaves_the_gateway_cancels_inventorys_work() {
    let mut demo = Demo::start(Options::default()).await;
    let stream = demo.post("sku-42", 10_000, 10_000).await;
    demo.reservations_started(1).await;

    let gone_at = Instant::now();
    drop(stream);
    // Each hop sees its client go: the gateway's HTTP client, then each gRPC caller's call
    // dropped when its own request's scope was cancelled.
    let (gateway_at, cause) = demo.gateway.cancelled("gateway/http/request-1").await;
    assert_eq!(
        (cause.kind(), cause.code()),
        (CauseKind::Dropped, CLIENT_GONE)
    );
    let (orders_at, cause) = demo.orders.cancelled("orders/http/request-1").await;
    assert_eq!(
        (cause.kind(), cause.code()),
        (CauseKind::Dropped, CLIENT_GONE)
    );
    let (inventory_at, cause) = demo.inventory.cancelled("inventory/http/request-1").await;
    assert_eq!(
        (cause.kind(), cause.code()),
        (CauseKind::Dropped, CLIENT_GONE)
    );
    // And the reservation's task under it stopped, its scope cancelled with that cause. It is
    // aborted, not left to return: the handler's future, dropped when its caller went away,
    // held the task's group, and a dropped group aborts what still runs.
    let (_, (outcome, cause)) = demo
        .inventory
        .wait_for(|seen| match seen {
            Seen::Finished(task, outcome, cause) if task.ends_with("/reserve") => {
                Some((outcome, cause))
            }
            _ => None,
        })
        .await;
    assert_eq!(outcome, TaskOutcome::Aborted);
    assert_eq!(
        cause.map(|cause| cause.code().to_owned()).as_deref(),
        Some(CLIENT_GONE)
    );

    assert!(gateway_at <= orders_at && orders_at <= inventory_at);
    let took = inventory_at.duration_since(gone_at);
    eprintln!(
        "client gone: gateway +{:?}, orders +{:?}, inventory +{took:?}",
        gateway_at.duration_since(gone_at),
        orders_at.duration_since(gone_at)
    );
    assert!(took < Duration::from_millis(100), "seen after {took:?}");
    demo.shut_down().await;
}

#[tokio::test]
async fn a_deadline_in_inventory_is_deadline_exceeded_to_orders_and_504_at_the_gateway() {
    // Inventory cuts every call to 100 ms; the callers bring a second, and work takes longer.
    let options = Options {
        max_timeout: Some(Duration::from_millis(100)),
        ..Options::default()
    };
    let mut demo = Demo::start(options).await;

    let caller = Scope::new().child_with_timeout(Duration::from_secs(1));
    let status = answer(demo.place(&caller, 1000)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let cause = remote_cause(&status, PLACE);
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.code(), "deadline");
    assert_eq!(
        cause.origin(),
        Some(format!("{HOPS} > inventory/http/request-1").as_str())
    );
    let (_, cause) = demo.inventory.cancelled("inventory/http/request-1").await;
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.detail(), Some("server maximum 100ms"));

    let (status, body) = demo.order("sku-42", 1000, 1000).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["kind"], "deadline_exceeded");
    assert_eq!(body["code"], "deadline");
    assert_eq!(body["origin"], format!("{HOPS} > inventory/http/request-2"));
    let (_, cause) = demo.inventory.cancelled("inventory/http/request-2").await;
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    // It fired in inventory only: no caller's scope was cancelled.
    assert!(!caller.is_cancelled());
    assert!(demo.orders.seen.try_recv().is_err());
    assert!(demo.gateway.seen.try_recv().is_err());
    demo.shut_down().await;
}

#[tokio::test]
async fn inventory_shutting_down_mid_call_is_unavailable_to_orders_and_503_at_the_gateway() {
    let options = Options {
        grace: Duration::from_millis(50),
        ..Options::default()
    };
    let mut demo = Demo::start(options).await;
    // One order through the gateway, one placed with orders directly, both working in
    // inventory when it shuts down.
    let stream = demo.post("sku-42", 10_000, 5_000).await;
    let ordered = tokio::spawn(response(stream));
    demo.reservations_started(1).await;
    let caller = Scope::new().child_with_timeout(Duration::from_secs(5));
    let placed = demo.place(&caller, 10_000);
    demo.reservations_started(1).await;

    demo.inventory.root.cancel(shutdown_cause("SIGTERM"));

    let status = answer(placed).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let cause = remote_cause(&status, PLACE);
    assert_eq!(cause.kind(), CauseKind::Shutdown);
    assert_eq!(cause.code(), "SIGTERM");
    // Set on inventory's root, and passed on to its calls when their grace ran out.
    assert_eq!(cause.origin(), Some(format!("{HOPS} > inventory").as_str()));

    let (status, body) = timeout(LIMIT, ordered).await.unwrap().unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["kind"], "shutdown");
    assert_eq!(body["code"], "SIGTERM");
    assert_eq!(body["origin"], format!("{HOPS} > inventory"));
    assert!(!caller.is_cancelled());

    let Demo {
        inventory,
        orders,
        gateway,
        ..
    } = demo;
    let report = timeout(LIMIT, inventory.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.in_flight, 2);
    assert_eq!(report.cut_short.len(), 2, "{report}");
    gateway.shut_down().await.unwrap();
    orders.shut_down().await.unwrap();
}
