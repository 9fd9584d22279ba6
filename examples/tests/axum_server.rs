//! The axum example over real HTTP on 127.0.0.1: a request past its deadline gets a timeout
//! response and its cause is logged; a client that hangs up cancels its handler's scope with
//! *client gone*; a shutdown lets in-flight requests finish, and cancels and names those still
//! running after the grace.
//!
//! Real sockets need real time, so these tests wait for events (with a generous limit that only
//! turns a hang into a failure), never for a fixed time.

#[path = "../axum_server.rs"]
#[allow(dead_code)]
mod axum_server;

use std::net::SocketAddr;
use std::time::Duration;

use axum_server::{App, Event, serve};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::tower::{CLIENT_GONE, ShutdownReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How long any one step may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    scope: Scope,
    events: broadcast::Receiver<Event>,
    served: JoinHandle<std::io::Result<ShutdownReport>>,
}

async fn start(grace: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scope = Scope::builder().name("api").build();
    let (app, events) = App::new();
    let served = tokio::spawn({
        let scope = scope.clone();
        async move { serve(listener, &scope, grace, app).await }
    });
    Server {
        addr,
        scope,
        events,
        served,
    }
}

impl Server {
    /// The next event matching `wanted`, skipping others.
    async fn event(&mut self, mut wanted: impl FnMut(&Event) -> bool) -> Event {
        tokio::time::timeout(LIMIT, async {
            loop {
                let event = self.events.recv().await.expect("the server is logging");
                if wanted(&event) {
                    return event;
                }
            }
        })
        .await
        .expect("the event came in time")
    }

    /// The next cancellation logged: the request's URI and its cause.
    async fn cancelled(&mut self) -> (axum::http::Uri, Cause) {
        match self
            .event(|event| matches!(event, Event::Cancelled(..)))
            .await
        {
            Event::Cancelled(uri, cause) => (uri, cause),
            other => unreachable!("{other:?}"),
        }
    }

    async fn shut_down(self, cause: Cause) -> ShutdownReport {
        self.scope.cancel(cause);
        tokio::time::timeout(LIMIT, self.served)
            .await
            .expect("the server stopped in time")
            .unwrap()
            .unwrap()
    }
}

/// Sends `GET path` with `headers` on a new connection; returns the open stream.
async fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads the whole response: its status code and body.
async fn response(mut stream: TcpStream) -> (u16, String) {
    let mut text = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut text))
        .await
        .expect("the response came in time")
        .unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    (status, body.to_owned())
}

fn is_started(path: &'static str) -> impl FnMut(&Event) -> bool {
    move |event| matches!(event, Event::Started(uri) if uri == path)
}

#[tokio::test]
async fn a_request_answers_when_its_work_is_done() {
    let server = start(Duration::from_secs(5)).await;
    let (status, body) = response(send(server.addr, "/slow?ms=10", &[]).await).await;
    assert_eq!(status, 200);
    assert_eq!(body, "done after 10 ms\n");
    server.shut_down(Cause::new("TEST_OVER")).await;
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_a_timeout_and_its_cause_is_logged() {
    let mut server = start(Duration::from_secs(5)).await;
    let stream = send(server.addr, "/slow?ms=60000", &[("x-timeout-ms", "200")]).await;
    let (status, body) = response(stream).await;
    assert_eq!(status, 504);
    assert!(body.starts_with("deadline exceeded"), "{body}");

    let (uri, cause) = server.cancelled().await;
    assert_eq!(uri, "/slow?ms=60000");
    assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
    assert_eq!(cause.origin(), Some("api/http/request"));
    server.shut_down(Cause::new("TEST_OVER")).await;
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_handlers_scope_with_client_gone() {
    let mut server = start(Duration::from_secs(5)).await;
    let stream = send(server.addr, "/slow?ms=60000", &[]).await;
    server.event(is_started("/slow?ms=60000")).await;
    drop(stream); // the client goes away mid-request

    let (uri, cause) = server.cancelled().await;
    assert_eq!(uri, "/slow?ms=60000");
    assert_eq!(cause.code(), CLIENT_GONE);
    assert_eq!(cause.kind(), CauseKind::Dropped);
    let report = server.shut_down(Cause::new("TEST_OVER")).await;
    assert_eq!(
        report.in_flight, 0,
        "the abandoned request is no longer in flight"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut server = start(Duration::from_secs(15)).await;
    let stream = send(server.addr, "/slow?ms=300", &[]).await;
    server.event(is_started("/slow?ms=300")).await;

    let scope = server.scope.clone();
    let served =
        tokio::spawn(server.shut_down(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM")));
    let (status, body) = response(stream).await;
    assert_eq!(status, 200, "finished during the grace: {body}");
    let report = served.await.unwrap();
    assert_eq!(report.in_flight, 1);
    assert!(report.cut_short.is_empty(), "{report}");
    assert_eq!(report.cause.code(), "SIGTERM");
    assert!(scope.is_cancelled());
}

#[tokio::test]
async fn shutdown_cancels_and_names_requests_still_running_after_the_grace() {
    let mut server = start(Duration::from_millis(200)).await;
    let stream = send(server.addr, "/slow?ms=60000", &[]).await;
    server.event(is_started("/slow?ms=60000")).await;

    let report =
        tokio::spawn(server.shut_down(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM")));
    let (status, body) = response(stream).await;
    assert_eq!(status, 503);
    assert!(body.contains("SIGTERM"), "{body}");
    let report = report.await.unwrap();
    assert_eq!(report.in_flight, 1);
    assert_eq!(report.cut_short.len(), 1, "{report}");
    assert_eq!(report.cut_short[0].uri, "/slow?ms=60000");
    assert!(
        report.to_string().contains("GET /slow?ms=60000"),
        "{report}"
    );
}
