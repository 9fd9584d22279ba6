//! The metrics example end to end: the workload runs in-process under the example's observer,
//! with its metrics served on 127.0.0.1 (port 0: the OS picks), and `/metrics` is scraped over
//! a raw HTTP/1.1 `GET`.
//!
//! A process has a single global metrics recorder, so everything is checked in one test, on one
//! scrape taken once the workload has ended. Nothing here sleeps to synchronise: the workload
//! returns when its last task has ended, and each network step has a limit that only turns a
//! hang into a failure.

#[path = "../metrics.rs"]
#[allow(dead_code)]
mod example;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any one step may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(20);

/// `GET path` on a new connection: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_is_scraped_as_prometheus_text() {
    let handle = example::install().unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(example::serve(listener, handle.clone()));

    let root = example::root();
    tokio::time::timeout(LIMIT, example::workload(&root))
        .await
        .expect("the workload ended in time")
        .unwrap();

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    let has = |line: &str| lines.contains(&line);
    let expected = [
        // One cancellation per scope a cause was aimed at, by code and kind.
        r#"taskscope_cancellations_total{code="INVENTORY_SHORTAGE",kind="task_failed"} 1"#,
        r#"taskscope_cancellations_total{code="QUOTE_TIMEOUT",kind="deadline_exceeded"} 1"#,
        r#"taskscope_cancellations_total{code="MAINTENANCE",kind="explicit"} 1"#,
        // The supervisor's scope, then its one child's, each told why.
        r#"taskscope_cancellations_total{code="WORKLOAD_DONE",kind="shutdown"} 2"#,
        // The user's cancel came after the deadline: first cause wins.
        r#"taskscope_lost_cancels_total{code="USER_CANCELLED",kind="explicit"} 1"#,
        // Every task has ended, none waits for a slot.
        "taskscope_tasks_running 0",
        "taskscope_tasks_pending 0",
        // Five pages, and the feed's second run, which returned when it was shut down.
        r#"taskscope_tasks_finished_total{outcome="completed"} 6"#,
        // The inventory task and the feed's first run.
        r#"taskscope_tasks_finished_total{outcome="failed"} 2"#,
        // The payment and the price feed, stopped by their scopes' cancellation.
        r#"taskscope_tasks_finished_total{outcome="cancelled"} 2"#,
        r#"taskscope_tasks_finished_total{outcome="aborted"} 1"#,
        "taskscope_tasks_aborted_total 1",
        "taskscope_tasks_slow_to_stop_total 1",
        "taskscope_restarts_total 1",
        // Cancel→exit latency, as a histogram with the example's buckets.
        "# TYPE taskscope_cancel_latency_seconds histogram",
        r#"taskscope_cancel_latency_seconds_count{outcome="cancelled"} 2"#,
        r#"taskscope_cancel_latency_seconds_bucket{outcome="cancelled",le="+Inf"} 2"#,
        // The export was aborted once its grace (150 ms) had passed, never earlier.
        r#"taskscope_cancel_latency_seconds_bucket{outcome="aborted",le="0.1"} 0"#,
        r#"taskscope_cancel_latency_seconds_bucket{outcome="aborted",le="+Inf"} 1"#,
        r#"taskscope_cancel_latency_seconds_count{outcome="aborted"} 1"#,
    ];
    let missing: Vec<&str> = expected.into_iter().filter(|line| !has(line)).collect();
    assert!(missing.is_empty(), "missing {missing:#?} in:\n{body}");

    let aborted_sum: f64 = lines
        .iter()
        .find_map(|line| {
            line.strip_prefix(r#"taskscope_cancel_latency_seconds_sum{outcome="aborted"} "#)
        })
        .expect("a latency sum for the aborted task")
        .parse()
        .unwrap();
    assert!(
        aborted_sum >= example::LEGACY_GRACE.as_secs_f64(),
        "aborted after {aborted_sum} s, before its grace"
    );

    let (status, _) = get(addr, "/").await;
    assert_eq!(status, 404, "metrics are on /metrics only");
    assert!(!server.is_finished(), "still serving");

    // The handle renders what the server serves.
    let rendered = handle.render();
    assert!(
        rendered.contains(
            r#"taskscope_cancellations_total{code="INVENTORY_SHORTAGE",kind="task_failed"} 1"#
        ),
        "{rendered}"
    );
}
