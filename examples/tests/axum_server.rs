//! The axum example over real HTTP on 127.0.0.1: a request past its deadline gets a timeout
//! response and its cause is logged; a client that hangs up cancels its handler's scope with
//! *client gone*; a shutdown lets in-flight requests finish, and cancels and names those still
//! running after the grace.
//!
//! The example's log is read back from its `tracing` events, captured by a subscriber that is
//! this test thread's default: every test runs on a current-thread runtime, so the server's
//! tasks (and the cancel callbacks they run) log on that thread.
//!
//! Real sockets need real time, so these tests wait for events (with a generous limit that only
//! turns a hang into a failure), never for a fixed time.

#[path = "../axum_server.rs"]
#[allow(dead_code)]
mod axum_server;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use axum_server::serve;
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::tower::{CLIENT_GONE, ShutdownReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

/// How long any one step may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(20);

/// One `tracing` event: its message and its fields, as text.
#[derive(Debug, Default)]
struct Logged {
    fields: HashMap<&'static str, String>,
}

impl Logged {
    fn message(&self) -> &str {
        self.field("message")
    }

    fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

impl Visit for Logged {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields.insert(field.name(), format!("{value:?}"));
    }
}

/// Sends every event to the test.
struct Capture(mpsc::UnboundedSender<Logged>);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut logged = Logged::default();
        event.record(&mut logged);
        let _ = self.0.send(logged);
    }
}

struct Server {
    addr: SocketAddr,
    scope: Scope,
    log: mpsc::UnboundedReceiver<Logged>,
    served: JoinHandle<std::io::Result<ShutdownReport>>,
    _capturing: DefaultGuard,
}

async fn start(grace: Duration) -> Server {
    let (sender, log) = mpsc::unbounded_channel();
    let capturing = tracing::subscriber::set_default(Registry::default().with(Capture(sender)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scope = Scope::builder().name("api").build();
    let served = tokio::spawn({
        let scope = scope.clone();
        async move { serve(listener, &scope, grace).await }
    });
    Server {
        addr,
        scope,
        log,
        served,
        _capturing: capturing,
    }
}

impl Server {
    /// The next event logged whose message starts with `message` and whose `uri` is `uri`.
    async fn logged(&mut self, message: &str, uri: &str) -> Logged {
        tokio::time::timeout(LIMIT, async {
            loop {
                let logged = self.log.recv().await.expect("the server is logging");
                if logged.message().starts_with(message) && logged.field("uri") == uri {
                    return logged;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{message:?} for {uri} was logged in time"))
    }

    async fn shut_down(&mut self, cause: Cause) -> ShutdownReport {
        self.scope.cancel(cause);
        tokio::time::timeout(LIMIT, &mut self.served)
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

#[tokio::test]
async fn a_request_answers_when_its_work_is_done() {
    let mut server = start(Duration::from_secs(5)).await;
    let (status, body) = response(send(server.addr, "/slow?ms=10", &[]).await).await;
    assert_eq!(status, 200);
    assert_eq!(body, "done after 10 ms\n");
    let started = server.logged("request started", "/slow?ms=10").await;
    assert_eq!(started.field("scope"), "api/http/request-1");
    server.logged("request finished", "/slow?ms=10").await;
    server.shut_down(Cause::new("TEST_OVER")).await;
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_a_timeout_and_its_cause_is_logged() {
    let mut server = start(Duration::from_secs(5)).await;
    let stream = send(server.addr, "/slow?ms=60000", &[("x-timeout-ms", "200")]).await;
    let (status, body) = response(stream).await;
    assert_eq!(status, 504);
    assert!(body.starts_with("deadline exceeded"), "{body}");

    let cancelled = server.logged("request cancelled", "/slow?ms=60000").await;
    assert_eq!(
        cancelled.field("cause.kind"),
        CauseKind::DeadlineExceeded.to_string()
    );
    assert_eq!(cancelled.field("cause.code"), "deadline");
    assert_eq!(cancelled.field("cause.origin"), "api/http/request-1");
    assert!(
        cancelled
            .message()
            .starts_with("request cancelled: deadline exceeded"),
        "{cancelled:?}"
    );
    server.shut_down(Cause::new("TEST_OVER")).await;
}

#[tokio::test]
async fn a_timeout_header_that_cannot_be_read_is_answered_400_without_the_handler() {
    let mut server = start(Duration::from_secs(5)).await;
    let mut stream = send(server.addr, "/slow?ms=10", &[("x-timeout-ms", "soon")]).await;
    let mut text = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut text))
        .await
        .expect("the response came in time")
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains(
            r#"taskscope-error: invalid x-timeout-ms header "soon": is not a whole number"#
        ),
        "{text}"
    );
    // The handler logs before it answers: had it run, its event would be here by now.
    while let Ok(logged) = server.log.try_recv() {
        assert!(!logged.message().starts_with("request"), "{logged:?}");
    }
    server.shut_down(Cause::new("TEST_OVER")).await;
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_handlers_scope_with_client_gone() {
    let mut server = start(Duration::from_secs(5)).await;
    let stream = send(server.addr, "/slow?ms=60000", &[]).await;
    server.logged("request started", "/slow?ms=60000").await;
    drop(stream); // the client goes away mid-request

    let cancelled = server.logged("request cancelled", "/slow?ms=60000").await;
    assert_eq!(cancelled.field("cause.code"), CLIENT_GONE);
    assert_eq!(
        cancelled.field("cause.kind"),
        CauseKind::Dropped.to_string()
    );
    assert_eq!(cancelled.field("cause.origin"), "api/http/request-1");
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
    server.logged("request started", "/slow?ms=300").await;

    let ((status, body), report) = tokio::join!(
        response(stream),
        server.shut_down(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM")),
    );
    assert_eq!(status, 200, "finished during the grace: {body}");
    assert_eq!(report.in_flight, 1);
    assert!(report.cut_short.is_empty(), "{report}");
    assert_eq!(report.cause.code(), "SIGTERM");
    assert!(server.scope.is_cancelled());
}

#[tokio::test]
async fn shutdown_cancels_and_names_requests_still_running_after_the_grace() {
    let mut server = start(Duration::from_millis(200)).await;
    let stream = send(server.addr, "/slow?ms=60000", &[]).await;
    server.logged("request started", "/slow?ms=60000").await;

    let ((status, body), report) = tokio::join!(
        response(stream),
        server.shut_down(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM")),
    );
    assert_eq!(status, 503);
    assert!(body.contains("SIGTERM"), "{body}");
    assert_eq!(report.in_flight, 1);
    assert_eq!(report.cut_short.len(), 1, "{report}");
    assert_eq!(report.cut_short[0].uri, "/slow?ms=60000");
    assert!(
        report.to_string().contains("GET /slow?ms=60000"),
        "{report}"
    );
    let cancelled = server.logged("request cancelled", "/slow?ms=60000").await;
    assert_eq!(cancelled.field("cause.code"), "SIGTERM");
    assert_eq!(
        cancelled.field("cause.kind"),
        CauseKind::Shutdown.to_string()
    );
    assert_eq!(cancelled.field("cause.origin"), "api");
}
