//! The inventory gRPC service over real loopback TCP, called through the generated client on a
//! tonic `Channel` wrapped in `CallScopeLayer`: the budget a call brings, a shortage's cause at
//! the caller, a deadline, a caller that goes away, and a shutdown mid-call.
//!
//! The server's side is read from an `Observer` on its root scope, which sends the test every
//! task start and every scope cancellation as it happens. Real sockets need real time, so the
//! tests wait for events (each step bounded by [`LIMIT`], which only turns a hang into a
//! failure), never for a fixed time.

#[path = "../inventory_service.rs"]
#[allow(dead_code)]
mod inventory_service;

#[allow(dead_code)] // The variants this test does not match on.
mod common;

use common::{LIMIT, Seen, Watch};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use inventory_service::proto::inventory_client::InventoryClient;
use inventory_service::proto::{ReserveReply, ReserveRequest};
use inventory_service::{INVENTORY_SHORTAGE, Options, RESERVE, parse_args, serve};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::signal::shutdown_cause;
use taskscope_select::tower::{CLIENT_GONE, ShutdownReport};
use taskscope_tonic::{CallScope, CallScopeLayer, remote_cause, with_scope};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower_layer::Layer;

/// The service on 127.0.0.1, and a client for it.
struct Server {
    root: Scope,
    seen: mpsc::UnboundedReceiver<(Instant, Seen)>,
    served: JoinHandle<Result<ShutdownReport, tonic::transport::Error>>,
    client: InventoryClient<CallScope<Channel>>,
}

impl Server {
    async fn start(options: Options) -> Server {
        let (sender, seen) = mpsc::unbounded_channel();
        let root = Scope::builder()
            .name("inventory")
            .observer(Arc::new(Watch(sender)))
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let served = tokio::spawn({
            let root = root.clone();
            async move { serve(listener, &root, options).await }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = InventoryClient::new(CallScopeLayer::new().layer(channel));
        Server {
            root,
            seen,
            served,
            client,
        }
    }

    /// Calls `Reserve` under `scope`, on a task of its own.
    fn call(
        &self,
        scope: &Scope,
        sku: &str,
        work_ms: u32,
    ) -> JoinHandle<Result<ReserveReply, Status>> {
        let request = ReserveRequest {
            order_id: "order-17".to_owned(),
            sku: sku.to_owned(),
            quantity: 2,
            work_ms,
        };
        let request = with_scope(tonic::Request::new(request), scope);
        let mut client = self.client.clone();
        tokio::spawn(async move {
            let reply = client.reserve(request).await;
            reply.map(tonic::Response::into_inner)
        })
    }

    /// Calls `Reserve` under `scope`, and waits for the answer.
    async fn reserve(
        &self,
        scope: &Scope,
        sku: &str,
        work_ms: u32,
    ) -> Result<ReserveReply, Status> {
        answer(self.call(scope, sku, work_ms)).await
    }

    /// Waits until the server saw something `wanted` picks; returns it, and when it was seen.
    async fn wait_for<T>(&mut self, mut wanted: impl FnMut(Seen) -> Option<T>) -> (Instant, T) {
        let seen = async {
            loop {
                let (at, seen) = self.seen.recv().await.expect("the server is gone");
                if let Some(found) = wanted(seen) {
                    return (at, found);
                }
            }
        };
        timeout(LIMIT, seen).await.expect("never seen")
    }

    /// Waits until a reservation's task started.
    async fn reserve_started(&mut self) {
        self.wait_for(|seen| match seen {
            Seen::Started(path) if path.ends_with("/reserve") => Some(()),
            _ => None,
        })
        .await;
    }

    /// Shuts the server down as SIGTERM would, and waits for it to stop.
    async fn shut_down(self) -> ShutdownReport {
        self.root.cancel(shutdown_cause("SIGTERM"));
        let served = timeout(LIMIT, self.served).await.expect("never stops");
        served.unwrap().unwrap()
    }
}

/// The answer to a call from [`Server::call`].
async fn answer(call: JoinHandle<Result<ReserveReply, Status>>) -> Result<ReserveReply, Status> {
    timeout(LIMIT, call).await.expect("the call hangs").unwrap()
}

#[tokio::test]
async fn a_call_brings_its_budget_capped_by_the_server() {
    let server = Server::start(Options::default()).await;
    let caller = Scope::new().child_with_timeout(Duration::from_millis(500));
    let reply = server.reserve(&caller, "sku-42", 0).await.unwrap();
    assert!(
        (1..=500).contains(&reply.budget_ms),
        "budget {} ms",
        reply.budget_ms
    );
    assert!(!reply.reservation_id.is_empty());

    // No deadline: no budget.
    let reply = server.reserve(&Scope::new(), "sku-42", 0).await.unwrap();
    assert_eq!(reply.budget_ms, -1);
    server.shut_down().await;

    // `--max-timeout-ms 100` cuts a caller's second to at most 100 ms.
    let (_, options) = parse_args(["inventory_service", "--max-timeout-ms", "100"]).unwrap();
    let server = Server::start(options).await;
    let caller = Scope::new().child_with_timeout(Duration::from_secs(1));
    let reply = server.reserve(&caller, "sku-42", 0).await.unwrap();
    assert!(
        (1..=100).contains(&reply.budget_ms),
        "budget {} ms",
        reply.budget_ms
    );
    // And gives a call that brings none a budget all the same.
    let reply = server.reserve(&Scope::new(), "sku-42", 0).await.unwrap();
    assert!(
        (1..=100).contains(&reply.budget_ms),
        "budget {} ms",
        reply.budget_ms
    );
    server.shut_down().await;
}

#[tokio::test]
async fn a_shortage_reaches_the_caller_as_its_cause_with_the_origin_chain() {
    let server = Server::start(Options::default()).await;
    let caller = Scope::new().child_with_timeout(Duration::from_secs(2));
    let status = server.reserve(&caller, "out-42", 0).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    // The detail ("out-42": none left) stays on the server: the default policy exposes none.
    assert_eq!(status.message(), "task_failed: INVENTORY_SHORTAGE");

    let cause = remote_cause(&status, RESERVE);
    assert_eq!(cause.code(), INVENTORY_SHORTAGE);
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    // The requests are children of the `http` scope `GracefulShutdown` puts under the root.
    assert_eq!(
        cause.origin(),
        Some("taskscope.demo.v1.Inventory/Reserve > inventory/http/request-1/reserve")
    );
    server.shut_down().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_fails_with_deadline_exceeded() {
    let server = Server::start(Options::default()).await;
    // The caller's deadline passes first in the caller, whose clock started first: its
    // `CallScopeLayer` ends the call with its own cause, and the server sees it go.
    let caller = Scope::new().child_with_timeout(Duration::from_millis(100));
    let status = server.reserve(&caller, "sku-42", 1000).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        remote_cause(&status, RESERVE).kind(),
        CauseKind::DeadlineExceeded
    );
    server.shut_down().await;

    // A deadline that passes in the server, not in the caller (whose second is cut to 100 ms),
    // comes back as the server's cause.
    let options = Options {
        max_timeout: Some(Duration::from_millis(100)),
        ..Options::default()
    };
    let server = Server::start(options).await;
    let caller = Scope::new().child_with_timeout(Duration::from_secs(1));
    let status = server.reserve(&caller, "sku-42", 1000).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let cause = remote_cause(&status, RESERVE);
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(
        cause.origin(),
        Some("taskscope.demo.v1.Inventory/Reserve > inventory/http/request-1")
    );
    assert!(!caller.is_cancelled());
    server.shut_down().await;
}

#[tokio::test]
async fn a_caller_that_goes_away_cancels_the_call_in_the_server() {
    let mut server = Server::start(Options::default()).await;
    let caller = Scope::new();
    let call = server.call(&caller, "sku-42", 10_000);
    server.reserve_started().await;

    let gone_at = Instant::now();
    caller.cancel(Cause::new("USER_LEFT"));
    let status = answer(call).await.unwrap_err();
    // The caller's own cause, at the caller.
    assert_eq!(status.code(), Code::Cancelled);
    assert_eq!(remote_cause(&status, RESERVE).code(), "USER_LEFT");

    let (at, cause) = server
        .wait_for(|seen| match seen {
            Seen::Cancelled(path, cause) if path == "inventory/http/request-1" => Some(cause),
            _ => None,
        })
        .await;
    assert_eq!(cause.code(), CLIENT_GONE);
    assert_eq!(cause.kind(), CauseKind::Dropped);
    let took = at.duration_since(gone_at);
    assert!(took < Duration::from_millis(100), "seen after {took:?}");
    server.shut_down().await;
}

#[tokio::test]
async fn a_shutdown_mid_call_gives_the_caller_unavailable_after_the_grace() {
    let options = Options {
        grace: Duration::from_millis(300),
        ..Options::default()
    };
    let mut server = Server::start(options).await;
    let caller = Scope::new().child_with_timeout(Duration::from_secs(4));
    // One call that finishes within the grace, one that does not.
    let quick = server.call(&caller, "sku-42", 100);
    server.reserve_started().await;
    let slow = server.call(&caller, "sku-42", 10_000);
    server.reserve_started().await;

    let root = server.root.clone();
    let served = server.served;
    root.cancel(shutdown_cause("SIGTERM"));

    let quick = answer(quick).await;
    assert!(quick.is_ok(), "{quick:?}");
    let status = answer(slow).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let cause = remote_cause(&status, RESERVE);
    assert_eq!(cause.kind(), CauseKind::Shutdown);
    assert_eq!(cause.code(), "SIGTERM");
    // Set on the server's root, and passed on to the call when its grace ran out.
    assert_eq!(
        cause.origin(),
        Some("taskscope.demo.v1.Inventory/Reserve > inventory")
    );
    assert!(!caller.is_cancelled());

    let report = timeout(LIMIT, served).await.unwrap().unwrap().unwrap();
    assert_eq!(report.in_flight, 2);
    assert_eq!(report.cut_short.len(), 1, "{report}");
}

#[test]
fn bad_flags_are_errors_that_say_what_is_wrong() {
    let error = |args: &[&str]| {
        let args = std::iter::once("inventory_service").chain(args.iter().copied());
        parse_args(args).unwrap_err().to_string()
    };
    assert!(error(&["--addr", "nowhere"]).contains("--addr"));
    assert!(error(&["--max-timeout-ms", "0"]).contains("--max-timeout-ms"));
    assert!(error(&["--max-timeout-ms", "soon"]).contains("--max-timeout-ms"));
    assert!(error(&["--grace-ms", "-1"]).contains("-1"));
    assert!(error(&["--port", "1"]).contains("--port"));

    let (addr, options) = parse_args(["inventory_service", "--addr", "127.0.0.1:50051"]).unwrap();
    assert_eq!(addr.to_string(), "127.0.0.1:50051");
    assert_eq!(options.max_timeout, None);
    assert_eq!(options.grace, Duration::from_secs(2));
}
