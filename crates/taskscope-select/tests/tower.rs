//! The tower glue: a request's scope, its deadline from headers, *client gone* on drop, the
//! server's cause, and graceful shutdown with its report. Paused time; no network (the axum
//! example's test sends real HTTP).

#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::future::pending;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, Request, Response};
use taskscope::{BoxError, Cause, CauseKind, Scope, TaskGroup};
use taskscope_select::FutureExt;
use taskscope_select::tower::{
    CLIENT_GONE, ERROR_HEADER, GracefulShutdown, RequestScopeLayer, parse_connect_timeout,
    parse_grpc_timeout, parse_millis_timeout,
};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

type Seen = Arc<Mutex<Vec<Scope>>>;

/// A handler that records its request's scope, then waits for `work` (or the scope's cancel)
/// and answers 200, 504 on a deadline, 503 otherwise.
fn handler(
    seen: &Seen,
    work: Duration,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ use<> {
    let seen = seen.clone();
    service_fn(move |request: Request<()>| {
        let seen = seen.clone();
        async move {
            let scope = request
                .extensions()
                .get::<Scope>()
                .expect("a scope")
                .clone();
            seen.lock().unwrap().push(scope.clone());
            let (status, body) = match tokio::time::sleep(work).or_cancel(&scope).await {
                Ok(()) => (200, "done".to_owned()),
                Err(cause) if cause.kind() == CauseKind::DeadlineExceeded => {
                    (504, cause.to_string())
                }
                Err(cause) => (503, cause.to_string()),
            };
            Ok(Response::builder().status(status).body(body).unwrap())
        }
    })
}

fn get(headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::builder().uri("/orders?page=2");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_request_gets_a_child_scope_of_the_server() {
    let server = Scope::builder().name("http").build();
    let seen = Seen::default();
    let mut service =
        RequestScopeLayer::new(&server).layer(handler(&seen, Duration::from_millis(1)));
    for _ in 0..2 {
        let response = service.ready().await.unwrap().call(get(&[])).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].path(), "http/request-1");
    assert_eq!(seen[1].path(), "http/request-2");
    assert!(
        seen[0].deadline().is_none(),
        "no header, no default: no deadline"
    );
    assert!(
        !seen[0].is_cancelled(),
        "a completed request is not cancelled"
    );
    assert!(!seen[0].path().to_string().is_empty());
    server.cancel(Cause::plain());
    assert!(seen[1].is_cancelled(), "a child of the server");
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_sets_the_deadline_and_ends_as_a_timeout() {
    let server = Scope::new();
    let seen = Seen::default();
    let mut service =
        RequestScopeLayer::new(&server).layer(handler(&seen, Duration::from_secs(60)));
    let start = Instant::now();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(&[("grpc-timeout", "250m")]))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(response.status(), 504);
    assert!(response.body().contains("deadline"), "{}", response.body());
    assert!(
        !server.is_cancelled(),
        "a request's deadline stays in the request"
    );
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_ms_sets_the_deadline_and_names_it() {
    let server = Scope::new();
    let seen = Seen::default();
    let mut service =
        RequestScopeLayer::new(&server).layer(handler(&seen, Duration::from_secs(60)));
    let start = Instant::now();
    let request = get(&[
        ("content-type", "application/json"),
        ("Connect-Protocol-Version", "1"),
        ("Connect-Timeout-Ms", "200"),
    ]);
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.body(),
        "deadline exceeded: connect-timeout-ms 200ms from caller"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cause_says_where_the_budget_came_from() {
    let cases = [
        (
            ("grpc-timeout", "750m"),
            750,
            "grpc-timeout 750ms from caller",
        ),
        (
            ("connect-timeout-ms", "200"),
            200,
            "connect-timeout-ms 200ms from caller",
        ),
        (
            ("x-timeout-ms", "200"),
            200,
            "x-timeout-ms 200ms from caller",
        ),
        (("x-unrelated", "1"), 30_000, "server default 30s"),
        (("grpc-timeout", "2H"), 60_000, "server maximum 60s"),
        (
            ("connect-timeout-ms", "9999999999"),
            60_000,
            "server maximum 60s",
        ),
    ];
    for ((name, value), millis, detail) in cases {
        let server = Scope::builder().name("http").build();
        let seen = Seen::default();
        let mut service = RequestScopeLayer::new(&server)
            .timeout_header(HeaderName::from_static("x-timeout-ms"))
            .default_timeout(Duration::from_secs(30))
            .max_timeout(Duration::from_secs(60))
            .layer(handler(&seen, Duration::from_secs(3600)));
        let start = Instant::now();
        let response = service
            .ready()
            .await
            .unwrap()
            .call(get(&[(name, value)]))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(millis), "{name}");
        assert_eq!(response.status(), 504, "{name}");
        let cause = seen.lock().unwrap()[0].cause().expect("past its deadline");
        assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
        assert_eq!(cause.code(), "deadline");
        assert_eq!(cause.detail(), Some(detail), "{name}: {value}");
        assert_eq!(cause.origin(), Some("http/request-1"));
        assert_eq!(response.body(), &format!("deadline exceeded: {detail}"));
    }
}

#[tokio::test(start_paused = true)]
async fn the_earliest_header_wins_and_the_cap_bounds_it() {
    let header = HeaderName::from_static("x-timeout-ms");
    type Headers = &'static [(&'static str, &'static str)];
    let cases: [(Headers, Option<u64>, &str); 11] = [
        (
            &[("x-timeout-ms", "1500")],
            Some(1500),
            "x-timeout-ms 1500ms from caller",
        ),
        (
            &[("x-timeout-ms", "1500"), ("grpc-timeout", "1S")],
            Some(1000),
            "grpc-timeout 1s from caller",
        ),
        (
            &[("x-timeout-ms", "500"), ("grpc-timeout", "1S")],
            Some(500),
            "x-timeout-ms 500ms from caller",
        ),
        (
            &[("connect-timeout-ms", "700"), ("grpc-timeout", "1S")],
            Some(700),
            "connect-timeout-ms 700ms from caller",
        ),
        (
            &[
                ("grpc-timeout", "900m"),
                ("connect-timeout-ms", "800"),
                ("x-timeout-ms", "600"),
            ],
            Some(600),
            "x-timeout-ms 600ms from caller",
        ),
        // A tie names the first of grpc-timeout, Connect-Timeout-Ms, the configured header.
        (
            &[
                ("x-timeout-ms", "1000"),
                ("connect-timeout-ms", "1000"),
                ("grpc-timeout", "1000m"),
            ],
            Some(1000),
            "grpc-timeout 1s from caller",
        ),
        // A caller may ask for more than the default, which is only for those that ask none...
        (
            &[("connect-timeout-ms", "4000")],
            Some(4000),
            "connect-timeout-ms 4s from caller",
        ),
        // ... but never more than the maximum.
        (&[("grpc-timeout", "2H")], Some(5000), "server maximum 5s"),
        (
            &[("connect-timeout-ms", "5001"), ("x-timeout-ms", "9000")],
            Some(5000),
            "server maximum 5s",
        ),
        // On a tie with the maximum, the caller's budget is named.
        (
            &[("connect-timeout-ms", "5000")],
            Some(5000),
            "connect-timeout-ms 5s from caller",
        ),
        (&[], Some(3000), "server default 3s"),
    ];
    for (headers, expected, detail) in cases {
        let server = Scope::new();
        let seen = Seen::default();
        let mut service = RequestScopeLayer::new(&server)
            .timeout_header(header.clone())
            .default_timeout(Duration::from_secs(3))
            .max_timeout(Duration::from_secs(5))
            .layer(handler(&seen, Duration::ZERO));
        let start = Instant::now();
        service
            .ready()
            .await
            .unwrap()
            .call(get(headers))
            .await
            .unwrap();
        let scope = seen.lock().unwrap()[0].clone();
        assert_eq!(
            scope
                .deadline()
                .map(|deadline| (deadline - start).as_millis() as u64),
            expected,
            "{headers:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let cause = scope.cause().expect("past its deadline");
        assert_eq!(cause.detail(), Some(detail), "{headers:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_header_that_cannot_be_read_is_rejected_with_400_and_why() {
    let header = HeaderName::from_static("x-timeout-ms");
    let cases = [
        (
            "grpc-timeout",
            "12x",
            r#"invalid grpc-timeout header "12x": does not end in a unit (H, M, S, m, u or n)"#,
        ),
        (
            "grpc-timeout",
            "123456789S",
            r#"invalid grpc-timeout header "123456789S": has too many digits"#,
        ),
        (
            "x-timeout-ms",
            "soon",
            r#"invalid x-timeout-ms header "soon": is not a whole number"#,
        ),
        (
            "connect-timeout-ms",
            "0",
            r#"invalid connect-timeout-ms header "0": is not positive"#,
        ),
        (
            "connect-timeout-ms",
            "12345678901",
            r#"invalid connect-timeout-ms header "12345678901": has too many digits"#,
        ),
        (
            "connect-timeout-ms",
            "-200",
            r#"invalid connect-timeout-ms header "-200": is not a whole number"#,
        ),
    ];
    for (name, value, why) in cases {
        let server = Scope::new();
        let seen = Seen::default();
        let mut service = RequestScopeLayer::new(&server)
            .timeout_header(header.clone())
            .default_timeout(Duration::from_secs(3))
            .layer(handler(&seen, Duration::ZERO));
        // A valid header beside it does not make up for it.
        let request = get(&[
            (name, value),
            ("grpc-timeout", "1S"),
            ("x-timeout-ms", "500"),
        ]);
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 400, "{name}: {value}");
        assert_eq!(response.headers()[ERROR_HEADER], why);
        assert!(response.body().is_empty());
        assert!(seen.lock().unwrap().is_empty(), "the handler is not called");
    }

    let server = Scope::new();
    let seen = Seen::default();
    let mut service = RequestScopeLayer::new(&server).layer(handler(&seen, Duration::ZERO));
    let mut request = get(&[]);
    request.headers_mut().insert(
        "grpc-timeout",
        http::HeaderValue::from_bytes(b"1\xffS").unwrap(),
    );
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()[ERROR_HEADER],
        "invalid grpc-timeout header: not visible ASCII"
    );
    assert!(seen.lock().unwrap().is_empty(), "the handler is not called");
}

#[tokio::test(start_paused = true)]
async fn a_grpc_request_with_a_bad_timeout_gets_invalid_argument() {
    let server = Scope::new();
    let seen = Seen::default();
    let mut service = RequestScopeLayer::new(&server).layer(handler(&seen, Duration::ZERO));
    let request = get(&[
        ("content-type", "application/grpc+proto"),
        ("grpc-timeout", "10%"),
    ]);
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200, "gRPC errors travel in grpc-status");
    assert_eq!(response.headers()["grpc-status"], "3");
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(
        response.headers()["grpc-message"],
        r#"invalid grpc-timeout header "10%25": does not end in a unit (H, M, S, m, u or n)"#,
        "percent-encoded"
    );
    assert!(response.headers().get(ERROR_HEADER).is_none());
    assert!(seen.lock().unwrap().is_empty(), "the handler is not called");
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_have_scopes_and_cause_origins_of_their_own() {
    let server = Scope::builder().name("http").build();
    let seen = Seen::default();
    let layer =
        RequestScopeLayer::new(&server).request_id_header(HeaderName::from_static("x-request-id"));
    // Two services from one layer count together.
    let mut first = layer.layer(handler(&seen, Duration::from_secs(60)));
    let mut second = layer.clone().layer(handler(&seen, Duration::from_secs(60)));
    let first = tokio::spawn(first.ready().await.unwrap().call(get(&[
        ("grpc-timeout", "1S"),
        ("x-request-id", "4bf92f3577b34da6"),
    ])));
    let second = tokio::spawn(
        second
            .ready()
            .await
            .unwrap()
            .call(get(&[("grpc-timeout", "1S")])),
    );
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(first.status(), 504);
    assert_eq!(second.status(), 504);
    let seen = seen.lock().unwrap();
    let origins: Vec<_> = seen
        .iter()
        .map(|scope| scope.cause().unwrap().origin().unwrap().to_owned())
        .collect();
    assert_eq!(
        origins,
        ["http/request-1:4bf92f3577b34da6", "http/request-2"],
        "the deadline names the request it ended"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_id_that_is_not_short_and_plain_is_left_out_of_the_name() {
    let server = Scope::builder().name("http").build();
    let seen = Seen::default();
    let mut service = RequestScopeLayer::new(&server)
        .request_id_header(HeaderName::from_static("x-request-id"))
        .layer(handler(&seen, Duration::ZERO));
    let long = "a".repeat(65);
    for id in ["../../admin", "a b", "", long.as_str()] {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(get(&[("x-request-id", id)]))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "never rejected for its id");
    }
    let paths: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|scope| scope.path().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "http/request-1",
            "http/request-2",
            "http/request-3",
            "http/request-4"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_cancels_the_scope_with_client_gone_before_the_handler_drops() {
    let server = Scope::new();
    let task_scope = Arc::new(Mutex::new(None::<Scope>));
    let service = service_fn({
        let task_scope = task_scope.clone();
        move |request: Request<()>| {
            let task_scope = task_scope.clone();
            async move {
                let scope = request.extensions().get::<Scope>().unwrap().clone();
                // Work under a group: dropping the handler drops the group, whose own cause
                // ("dropped") would win if the request's cause came second.
                let group = TaskGroup::<(), BoxError>::new(&scope);
                group.spawn("report", move |scope| async move {
                    *task_scope.lock().unwrap() = Some(scope.clone());
                    scope.cancelled().await;
                    Ok(())
                });
                let _ = group.join().await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        }
    });
    let mut service = RequestScopeLayer::new(&server).layer(service);
    let mut response = task::spawn(service.ready().await.unwrap().call(get(&[])));
    while task_scope.lock().unwrap().is_none() {
        assert_pending!(response.poll());
        tokio::task::yield_now().await;
    }
    drop(response); // the client went away
    let cause = task_scope
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .cause()
        .expect("cancelled");
    assert_eq!(cause.code(), CLIENT_GONE);
    assert_eq!(cause.kind(), CauseKind::Dropped);
    assert!(!server.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_server_cancel_reaches_the_request_with_its_cause() {
    let server = Scope::builder().name("http").build();
    let seen = Seen::default();
    let mut service =
        RequestScopeLayer::new(&server).layer(handler(&seen, Duration::from_secs(60)));
    let mut response = task::spawn(service.ready().await.unwrap().call(get(&[])));
    assert_pending!(response.poll());
    server.cancel(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM"));
    let response = assert_ready!(response.poll()).unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.body().contains("SIGTERM"), "{}", response.body());
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_lets_requests_finish_within_the_grace() {
    let app = Scope::builder().name("api").build();
    let shutdown = GracefulShutdown::new(&app, Duration::from_secs(10));
    let seen = Seen::default();
    let mut service = shutdown
        .layer()
        .layer(handler(&seen, Duration::from_secs(3)));
    let response = tokio::spawn(service.ready().await.unwrap().call(get(&[])));
    tokio::task::yield_now().await;
    assert_eq!(shutdown.in_flight(), 1);

    let mut signal = task::spawn(shutdown.signal());
    assert_pending!(signal.poll());
    let start = Instant::now();
    app.cancel(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM"));
    assert_ready!(signal.poll());
    assert!(
        !seen.lock().unwrap()[0].is_cancelled(),
        "not cancelled during the grace"
    );

    let report = shutdown.drain().await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "as soon as the last one finished"
    );
    assert_eq!(response.await.unwrap().unwrap().status(), 200);
    assert_eq!(report.in_flight, 1);
    assert!(report.cut_short.is_empty());
    assert_eq!(report.cause.code(), "SIGTERM");
    assert_eq!(shutdown.in_flight(), 0);
    assert!(
        report
            .to_string()
            .contains("1 request(s) in flight finished"),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_cancels_and_names_requests_past_the_grace() {
    let app = Scope::builder().name("api").build();
    let shutdown = GracefulShutdown::new(&app, Duration::from_secs(2));
    let seen = Seen::default();
    let mut quick = shutdown
        .layer()
        .layer(handler(&seen, Duration::from_secs(1)));
    let mut slow = shutdown
        .layer()
        .layer(handler(&seen, Duration::from_secs(3600)));
    let quick = tokio::spawn(quick.ready().await.unwrap().call(get(&[])));
    let slow = tokio::spawn(
        slow.ready()
            .await
            .unwrap()
            .call(Request::post("/export").body(()).unwrap()),
    );
    tokio::task::yield_now().await;
    assert_eq!(shutdown.in_flight(), 2);

    let start = Instant::now();
    app.cancel(Cause::of_kind(CauseKind::Shutdown).with_code("SIGTERM"));
    let report = shutdown.drain().await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "the grace, then no more"
    );
    assert_eq!(quick.await.unwrap().unwrap().status(), 200);
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 503, "cancelled with the app's cause");
    assert!(slow.body().contains("SIGTERM"));

    assert_eq!(report.in_flight, 2);
    assert_eq!(report.cut_short.len(), 1);
    assert_eq!(report.cut_short[0].method, http::Method::POST);
    assert_eq!(report.cut_short[0].uri, "/export");
    assert_eq!(report.cut_short[0].running_for, Duration::from_secs(2));
    let text = report.to_string();
    assert!(text.contains("1 of 2 request(s)"), "{text}");
    assert!(
        text.contains("POST /export (running for 2000 ms)"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_with_zero_grace_cancels_at_once_and_with_none_in_flight_returns() {
    let app = Scope::new();
    let idle = GracefulShutdown::new(&app, Duration::from_secs(10));
    app.cancel(Cause::plain());
    let report = idle.drain().await;
    assert_eq!(report.in_flight, 0);
    assert_eq!(report.waited, Duration::ZERO);

    let app = Scope::new();
    let shutdown = GracefulShutdown::new(&app, Duration::ZERO);
    let seen = Seen::default();
    let mut service = shutdown
        .layer()
        .layer(handler(&seen, Duration::from_secs(60)));
    let response = tokio::spawn(service.ready().await.unwrap().call(get(&[])));
    tokio::task::yield_now().await;
    app.cancel(Cause::new("NOW"));
    let report = shutdown.drain().await;
    assert_eq!(report.cut_short.len(), 1);
    assert_eq!(response.await.unwrap().unwrap().status(), 503);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_is_no_longer_in_flight() {
    let app = Scope::new();
    let shutdown = GracefulShutdown::new(&app, Duration::from_secs(10));
    let mut service = shutdown.layer().layer(service_fn(|_: Request<()>| async {
        pending::<Result<Response<String>, Infallible>>().await
    }));
    let response = service.ready().await.unwrap().call(get(&[]));
    assert_eq!(shutdown.in_flight(), 1);
    drop(response);
    assert_eq!(shutdown.in_flight(), 0);
}

#[test]
fn timeout_headers_parse_or_say_why_not() {
    assert_eq!(parse_grpc_timeout("1H"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout("2M"), Ok(Duration::from_secs(120)));
    assert_eq!(
        parse_grpc_timeout("99999999u"),
        Ok(Duration::from_micros(99_999_999))
    );
    assert_eq!(parse_grpc_timeout("5n"), Ok(Duration::from_nanos(5)));
    assert_eq!(
        parse_grpc_timeout("99999999H"),
        Ok(Duration::from_secs(99_999_999 * 3600))
    );
    assert_eq!(
        parse_millis_timeout("1500"),
        Ok(Duration::from_millis(1500))
    );
    for (bad, why) in [
        ("", "is empty"),
        ("S", "has no digits"),
        ("123456789S", "has too many digits"),
        ("12s", "does not end in a unit"),
        ("+1S", "is not a whole number"),
        ("1.5S", "is not a whole number"),
        ("1é", "does not end in a unit"),
    ] {
        let error = parse_grpc_timeout(bad).unwrap_err();
        assert!(error.to_string().contains(why), "{bad:?}: {error}");
    }
    for bad in ["", "-1", " 1", "1e3", "9999999999999"] {
        assert!(parse_millis_timeout(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        parse_connect_timeout("9999999999"),
        Ok(Duration::from_millis(9_999_999_999))
    );
    assert_eq!(
        parse_connect_timeout("0200"),
        Ok(Duration::from_millis(200))
    );
    for (bad, why) in [
        ("", "has no digits"),
        ("0", "is not positive"),
        ("0000", "is not positive"),
        ("-1", "is not a whole number"),
        ("+1", "is not a whole number"),
        ("1.5", "is not a whole number"),
        ("12345678901", "has too many digits"),
    ] {
        let error = parse_connect_timeout(bad).unwrap_err();
        assert!(error.to_string().contains(why), "{bad:?}: {error}");
    }
    assert_eq!(
        parse_millis_timeout("soon").unwrap_err().to_string(),
        "timeout header \"soon\" is not a whole number"
    );
}

#[test]
fn a_panicking_handler_cancels_the_request_as_panicked_not_client_gone() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let server = Scope::new();
    let request_scope = Arc::new(Mutex::new(None::<Scope>));
    let service = service_fn({
        let request_scope = request_scope.clone();
        move |request: Request<()>| {
            let request_scope = request_scope.clone();
            async move {
                let scope = request.extensions().get::<Scope>().unwrap().clone();
                // A callback that panics too must not turn the unwinding into an abort.
                let _ = scope.on_cancel(|_| panic!("callback"));
                *request_scope.lock().unwrap() = Some(scope);
                panic!("handler");
                #[allow(unreachable_code)]
                Ok::<Response<String>, Infallible>(Response::new(String::new()))
            }
        }
    });
    let mut service = RequestScopeLayer::new(&server).layer(service);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(service.call(get(&[])))
    }));
    assert!(result.is_err(), "the handler's panic reaches the caller");
    let scope = request_scope.lock().unwrap().clone().unwrap();
    let cause = scope.cause().expect("cancelled");
    assert_eq!(cause.kind(), CauseKind::TaskPanicked);
    assert!(!server.is_cancelled());
}
