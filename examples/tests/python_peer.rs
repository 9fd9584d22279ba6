//! Interop with a non-Rust gRPC peer, Python's `grpcio`, over loopback TCP:
//!
//! - a Python client (`examples/python/inventory_client.py`) calls the Rust inventory service:
//!   a timeout shorter than the work ends `DEADLINE_EXCEEDED`, a shortage carries its
//!   `ErrorInfo` as `grpcio-status` reads it, and the budget the service saw is within the
//!   client's timeout;
//! - a Python server (`examples/python/inventory_server.py`), called through taskscope's client
//!   layer, sees the propagated deadline in `context.time_remaining()`.
//!
//! The Python side needs `grpcio`, `grpcio-tools` and `grpcio-status`. `.ci/run` installs them
//! in a virtual environment under `target/pyenv`, points `TASKSCOPE_PYTHON` at its interpreter,
//! and sets `TASKSCOPE_REQUIRE_PYTHON`, so that there a missing peer fails the test instead of
//! skipping it. To run it by hand:
//!
//! ```text
//! python3 -m venv target/pyenv && target/pyenv/bin/pip install grpcio grpcio-tools grpcio-status
//! TASKSCOPE_PYTHON=target/pyenv/bin/python cargo test -p taskscope-examples --test python_peer
//! ```

#[path = "../inventory_service.rs"]
#[allow(dead_code)]
mod inventory_service;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use inventory_service::proto::ReserveRequest;
use inventory_service::proto::inventory_client::InventoryClient;
use inventory_service::{Options, serve};
use taskscope::{Cause, CauseKind, Scope};
use taskscope_tonic::{CallScopeLayer, with_scope};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::timeout;
use tonic::transport::Channel;
use tower_layer::Layer;

/// How long any one step may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// The Python interpreter with the gRPC packages, or `None` (and why) if there is none.
fn python() -> Result<PathBuf, String> {
    let python =
        std::env::var_os("TASKSCOPE_PYTHON").map_or_else(|| "python3".into(), PathBuf::from);
    let probe = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .output()
        .map_err(|error| format!("cannot run {}: {error}", python.display()))?;
    if probe.status.success() {
        Ok(python)
    } else {
        Err(format!(
            "{} has no grpcio, grpcio-tools or grpcio-status: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ))
    }
}

/// The interpreter, with the inventory stubs generated into a fresh directory; `None` if the
/// peer is missing and not required.
fn peer(name: &str) -> Option<(PathBuf, TempDir)> {
    let python = match python() {
        Ok(python) => python,
        Err(why) if std::env::var_os("TASKSCOPE_REQUIRE_PYTHON").is_some() => {
            panic!("the Python gRPC peer is required (TASKSCOPE_REQUIRE_PYTHON) but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why} (see this test's module docs to run it)");
            return None;
        }
    };
    let stubs = TempDir::new(name);
    let proto = examples().join("proto");
    let generated = std::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.0.display()))
        .arg(format!("--grpc_python_out={}", stubs.0.display()))
        .arg(proto.join("inventory.proto"))
        .output()
        .expect("grpc_tools.protoc runs");
    assert!(
        generated.status.success(),
        "generating the Python stubs failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    Some((python, stubs))
}

/// `PYTHONPATH` with the stubs first, and whatever it held (where `.ci/run` may have put the
/// packages) after.
fn python_path(stubs: &Path) -> std::ffi::OsString {
    let mut paths = vec![stubs.to_owned()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).expect("paths without separators")
}

fn examples() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "taskscope-python-peer-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_sees_deadlines_causes_and_its_budget() {
    let Some((python, stubs)) = peer("client") else {
        return;
    };
    let root = Scope::builder().name("inventory").build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let root = root.clone();
        async move { serve(listener, &root, Options::default()).await }
    });

    let output = timeout(
        LIMIT,
        Command::new(&python)
            .arg(examples().join("python/inventory_client.py"))
            .args(["--addr", &addr.to_string()])
            .env("PYTHONPATH", python_path(&stubs.0))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client ends in time")
    .expect("the Python client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python client's checks failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["deadline"], "DEADLINE_EXCEEDED");
    assert_eq!(summary["shortage"], "FAILED_PRECONDITION");
    let info = &summary["error_info"];
    assert_eq!(info["reason"], "INVENTORY_SHORTAGE");
    assert_eq!(info["domain"], "taskscope");
    assert_eq!(info["metadata"]["kind"], "task_failed");
    let budget = summary["budget_ms"].as_i64().unwrap();
    assert!(0 < budget && budget <= 500, "{budget}");

    root.cancel(Cause::of_kind(CauseKind::Shutdown));
    timeout(LIMIT, server).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_server_sees_the_deadline_the_rust_client_propagated() {
    let Some((python, stubs)) = peer("server") else {
        return;
    };
    let mut server = Command::new(&python)
        .arg(examples().join("python/inventory_server.py"))
        .env("PYTHONPATH", python_path(&stubs.0))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the Python server starts");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port = timeout(LIMIT, lines.next_line())
        .await
        .expect("the Python server says its port in time")
        .unwrap()
        .expect("a port");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = InventoryClient::new(CallScopeLayer::new().layer(channel));
    let reserve = |order_id: &str| ReserveRequest {
        order_id: order_id.to_owned(),
        sku: "sku-1".to_owned(),
        quantity: 1,
        work_ms: 0,
    };

    let call = Scope::new().child_with_timeout(Duration::from_millis(300));
    let reply = timeout(
        LIMIT,
        client.reserve(with_scope(tonic::Request::new(reserve("1")), &call)),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert!(
        0 < reply.budget_ms && reply.budget_ms <= 300,
        "the Python server saw {} ms left",
        reply.budget_ms
    );
    assert_eq!(reply.reservation_id, "py-1");

    // No deadline, no budget.
    let open = Scope::new();
    let reply = timeout(
        LIMIT,
        client.reserve(with_scope(tonic::Request::new(reserve("2")), &open)),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(reply.budget_ms, -1);

    // Closing its stdin stops it.
    server.stdin.take().unwrap().shutdown().await.unwrap();
    let status = timeout(LIMIT, server.wait()).await.unwrap().unwrap();
    assert!(status.success());
}
