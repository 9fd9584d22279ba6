//! What taskscope's layers on both ends of a gRPC call cost its latency: a unary tonic call of
//! the inventory service's contract (`examples/proto/inventory.proto`, `Inventory.Reserve` with
//! `work_ms = 0`) over loopback TCP, with and without the layers, in one process.
//!
//! - **With both layers**: the server behind `GracefulShutdown::layer()` (a `RequestScopeLayer`
//!   that also counts requests in flight), its handler reading its request scope and the time
//!   left; the client's channel wrapped in `CallScopeLayer`, each call made under a child scope
//!   with a deadline (`with_scope`), which the call carries as `grpc-timeout`.
//! - **Without**: the same server and client, no layers, the handler doing the same work but for
//!   reading a scope.
//! - **Without, tonic's own deadline** (info): as without, each request carrying the same
//!   timeout through `tonic::Request::set_timeout`: what a deadline costs tonic alone (its
//!   server arms a timer for every `grpc-timeout`, with the layers or without).
//! - **One layer** (info): the client's layer alone (calls under a scope, to the server
//!   without the layer), and the server's alone (calls with tonic's own deadline, to the server
//!   behind the layer), each against tonic's own deadline: which end the cost sits at.
//!
//! There are two servers (each on `127.0.0.1:0`), with the layer and without, and one client
//! per side, each with its own HTTP/2 connection, made once. A sample is `calls` calls made one after the other; each call is timed from just
//! before the caller makes its scope (with) or its request (without) until the reply is in hand
//! and the scope dropped, and the sample yields its p50 and its p99. The sides are interleaved in
//! rounds as in the other benchmarks (`common/mod.rs`), after a warm-up of `warm_up` calls per
//! side and one untimed sample each; the table gives the median over the rounds of each round's
//! p50 and of each round's p99.
//!
//! Everything (both servers, both clients, the caller) runs on one current-thread tokio
//! runtime: every piece of work a call causes, in the caller, the client's connection, the
//! server's connection and the handler, is then on the call's critical path, so a layer's cost
//! shows in full in the latency (no second thread can hide it), and the sides do not depend on
//! which thread a wake-up lands on.
//!
//! ```text
//! cargo bench -p taskscope-benches --bench grpc
//! TASKSCOPE_BENCH_QUICK=1 cargo bench -p taskscope-benches --bench grpc   # smoke run
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it also does only the smoke run.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Pair, Stats, Target, interleaved_phases, phase_pair, print_table, row};
use taskscope::{Cause, Scope};
use taskscope_select::tower::GracefulShutdown;
use taskscope_tonic::{CallScope, CallScopeLayer, with_scope};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tower_layer::Layer;

/// The code generated from `examples/proto/inventory.proto`.
mod proto {
    // Generated: the client's and server's options this benchmark does not use (compression,
    // message sizes, interceptors) would otherwise each be a dead-code warning.
    #![allow(dead_code)]
    tonic::include_proto!("taskscope.demo.v1");
}

use proto::inventory_client::InventoryClient;
use proto::inventory_server::{self, InventoryServer};
use proto::{ReserveReply, ReserveRequest};

/// The deadline of every call that has one: long enough never to pass.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    /// Rounds (odd, so the median is a sample).
    rounds: usize,
    /// Calls per sample, one after the other on one connection.
    calls: usize,
    /// Calls per side before the first sample.
    warm_up: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick_mode();
        if quick {
            Config {
                quick,
                rounds: 3,
                calls: 200,
                warm_up: 200,
            }
        } else {
            Config {
                quick,
                rounds: 21,
                calls: 2_000,
                warm_up: 2_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// `Inventory.Reserve` with `work_ms = 0`: a reservation id and the call's budget at once.
#[derive(Debug, Default)]
struct Inventory {
    /// Whether the handler reads its request scope: the server behind the layer. Otherwise it
    /// answers `budget_ms = -1`, as a call without deadline would get.
    scoped: bool,
    reservations: AtomicU64,
}

#[tonic::async_trait]
impl inventory_server::Inventory for Inventory {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveReply>, Status> {
        let budget_ms = if self.scoped {
            let Some(scope) = request.extensions().get::<Scope>() else {
                return Err(Status::internal("no request scope"));
            };
            scope.remaining().map_or(-1, |left| {
                i64::try_from(left.as_millis()).unwrap_or(i64::MAX)
            })
        } else {
            -1
        };
        let order = request.into_inner();
        std::hint::black_box(&order);
        // Relaxed: the number only has to be unique.
        let n = self.reservations.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Response::new(ReserveReply {
            reservation_id: format!("rsv-{n}"),
            budget_ms,
        }))
    }
}

fn order() -> ReserveRequest {
    ReserveRequest {
        order_id: "order-17".to_owned(),
        sku: "sku-42".to_owned(),
        quantity: 2,
        work_ms: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Servers and clients
// ---------------------------------------------------------------------------------------------

/// A listener on an ephemeral loopback port, as the server's incoming connections, with
/// `TCP_NODELAY` (tonic's `Endpoint` sets it on the client's end by default; `TcpIncoming` made
/// from a listener leaves it off, and Nagle's algorithm would then hold small replies back).
async fn listen() -> (TcpIncoming, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    (TcpIncoming::from(listener).with_nodelay(Some(true)), addr)
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to the benchmark's server")
}

/// Both servers, running on the current runtime, and a client of each.
struct Setup {
    app: Scope,
    /// With the client's layer, to the server with the layer.
    both: InventoryClient<CallScope<Channel>>,
    /// Without, to the server without.
    neither: InventoryClient<Channel>,
    /// With the client's layer, to the server without.
    client_only: InventoryClient<CallScope<Channel>>,
    /// Without the client's layer, to the server with.
    server_only: InventoryClient<Channel>,
    served: Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Setup {
    async fn start() -> Setup {
        let app = Scope::new();
        let shutdown = GracefulShutdown::new(&app, Duration::from_secs(1));

        let (incoming, layered_addr) = listen().await;
        let layered_server = Server::builder()
            .layer(shutdown.layer())
            .add_service(InventoryServer::new(Inventory {
                scoped: true,
                ..Inventory::default()
            }))
            .serve_with_incoming_shutdown(incoming, shutdown.signal());

        let (incoming, plain_addr) = listen().await;
        let plain_server = Server::builder()
            .add_service(InventoryServer::new(Inventory::default()))
            .serve_with_incoming_shutdown(incoming, shutdown.signal());

        let served = vec![tokio::spawn(layered_server), tokio::spawn(plain_server)];
        let scoped = |channel| InventoryClient::new(CallScopeLayer::new().layer(channel));
        Setup {
            app,
            both: scoped(connect(layered_addr).await),
            neither: InventoryClient::new(connect(plain_addr).await),
            client_only: scoped(connect(plain_addr).await),
            server_only: InventoryClient::new(connect(layered_addr).await),
            served,
        }
    }

    /// Closes the connections and stops both servers.
    async fn stop(self) {
        drop((self.both, self.neither, self.client_only, self.server_only));
        self.app.cancel(Cause::new("BENCH_DONE"));
        for served in self.served {
            let served = tokio::time::timeout(Duration::from_secs(5), served)
                .await
                .expect("the servers stop within 5 s");
            served.expect("server task").expect("server");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One call of each side
// ---------------------------------------------------------------------------------------------

/// Checks the budget the server answered: a server behind the layer saw the deadline the call
/// carried; the other answers -1.
fn check_budget(reply: &Response<ReserveReply>, scoped_server: bool) {
    let budget_ms = reply.get_ref().budget_ms;
    if scoped_server {
        assert!(budget_ms > 0, "the deadline did not arrive: {reply:?}");
    } else {
        assert_eq!(budget_ms, -1, "{reply:?}");
    }
}

/// Through the client's layer: a call under a child scope of `caller` with a deadline. Its
/// latency.
async fn call_scoped(
    client: &mut InventoryClient<CallScope<Channel>>,
    caller: &Scope,
    scoped_server: bool,
) -> Duration {
    let start = Instant::now();
    let scope = caller.child_with_timeout(CALL_TIMEOUT);
    let reply = client
        .reserve(with_scope(Request::new(order()), &scope))
        .await
        .expect("reserve, through the client's layer");
    drop(scope);
    let elapsed = start.elapsed();
    check_budget(&reply, scoped_server);
    elapsed
}

/// Without the client's layer: the same call, with tonic's own `grpc-timeout` or with no
/// deadline. Its latency.
async fn call_plain(
    client: &mut InventoryClient<Channel>,
    timeout: Option<Duration>,
    scoped_server: bool,
) -> Duration {
    let start = Instant::now();
    let mut request = Request::new(order());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let reply = client
        .reserve(request)
        .await
        .expect("reserve, without the client's layer");
    let elapsed = start.elapsed();
    check_budget(&reply, scoped_server);
    elapsed
}

/// Nearest-rank percentile `p` (in 0..=1) of `latencies`, which it sorts.
fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    let rank = (p * latencies.len() as f64).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1]
}

/// The p50 and p99 of `latencies`.
fn p50_p99(mut latencies: Vec<Duration>) -> [Duration; 2] {
    [
        percentile(&mut latencies, 0.50),
        percentile(&mut latencies, 0.99),
    ]
}

/// Which side a sample is of.
#[derive(Clone, Copy)]
enum Side {
    Both,
    Neither,
    /// Neither layer, the calls carrying tonic's own deadline.
    TonicDeadline,
    ClientOnly,
    ServerOnly,
}

const SIDES: [Side; 5] = [
    Side::Both,
    Side::Neither,
    Side::TonicDeadline,
    Side::ClientOnly,
    Side::ServerOnly,
];

/// One sample of `side`: `calls` calls one after the other, and their p50 and p99.
fn sample(
    rt: &Runtime,
    setup: &mut Setup,
    caller: &Scope,
    side: Side,
    calls: usize,
) -> [Duration; 2] {
    rt.block_on(async {
        let mut latencies = Vec::with_capacity(calls);
        for _ in 0..calls {
            latencies.push(match side {
                Side::Both => call_scoped(&mut setup.both, caller, true).await,
                Side::Neither => call_plain(&mut setup.neither, None, false).await,
                Side::TonicDeadline => {
                    call_plain(&mut setup.neither, Some(CALL_TIMEOUT), false).await
                }
                Side::ClientOnly => call_scoped(&mut setup.client_only, caller, false).await,
                Side::ServerOnly => {
                    call_plain(&mut setup.server_only, Some(CALL_TIMEOUT), true).await
                }
            });
        }
        p50_p99(latencies)
    })
}

/// `pair` with both sides in microseconds instead of nanoseconds.
fn micros(pair: Pair) -> Pair {
    let us = |s: Stats| Stats {
        median: s.median / 1e3,
        min: s.min / 1e3,
        max: s.max / 1e3,
    };
    Pair {
        a: us(pair.a),
        b: us(pair.b),
    }
}

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "taskscope's gRPC layers vs none, unary tonic calls over loopback TCP ({} mode; {} \
         rounds of {} calls per side; available parallelism {})",
        if config.quick { "QUICK" } else { "full" },
        config.rounds,
        config.calls,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    // IO for the sockets, time for the deadlines.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime");
    let mut setup = rt.block_on(Setup::start());
    // The caller's own scope, of which each layered call makes a child with a deadline.
    let caller = Scope::new();

    for side in SIDES {
        sample(&rt, &mut setup, &caller, side, config.warm_up);
    }
    eprintln!("[{:>5.1}s] warmed up", started.elapsed().as_secs_f64());

    // Each side's closure borrows the clients in turn.
    let shared = std::cell::RefCell::new(setup);
    let run = |side| sample(&rt, &mut shared.borrow_mut(), &caller, side, config.calls);
    let mut sides = SIDES.map(|side| move || run(side));
    let stats = interleaved_phases(
        config.rounds,
        &[1; SIDES.len()],
        &mut sides
            .each_mut()
            .map(|side| side as &mut dyn FnMut() -> [Duration; 2]),
    );
    let setup = shared.into_inner();
    eprintln!("[{:>5.1}s] calls done", started.elapsed().as_secs_f64());

    let (p50, p99) = (0, 1);
    let rows = [
        row(
            "1. p50, both layers vs none",
            "us/call",
            &micros(phase_pair(&stats, 0, 1, p50)),
            Target::AtMost(1.03),
        ),
        row(
            "1'. p99, both layers vs none",
            "us/call",
            &micros(phase_pair(&stats, 0, 1, p99)),
            Target::None,
        ),
        row(
            "2. p50, both layers vs tonic's deadline",
            "us/call",
            &micros(phase_pair(&stats, 0, 2, p50)),
            Target::None,
        ),
        row(
            "2'. p99, both layers vs tonic's deadline",
            "us/call",
            &micros(phase_pair(&stats, 0, 2, p99)),
            Target::None,
        ),
        row(
            "3. p50, client layer only vs tonic's deadline",
            "us/call",
            &micros(phase_pair(&stats, 3, 2, p50)),
            Target::None,
        ),
        row(
            "4. p50, server layer only vs tonic's deadline",
            "us/call",
            &micros(phase_pair(&stats, 4, 2, p50)),
            Target::None,
        ),
    ];
    print_table(&rows);
    rt.block_on(setup.stop());
    println!();
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
