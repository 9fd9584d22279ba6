//! A cause as a gRPC status and back: the code table, the round trip over hops, what is
//! exposed, and what a hostile or foreign status turns into.

use std::collections::HashMap;

use taskscope::{Cause, CauseKind};
use taskscope_tonic::{DOMAIN, MAX_DETAIL, StatusPolicy, keys, remote_cause};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

const RESERVE: &str = "/taskscope.demo.v1.Inventory/Reserve";

/// A cause as it would have been set in a scope at `origin`.
fn cause(kind: CauseKind, code: &str, origin: &str, detail: Option<&str>) -> Cause {
    serde_json::from_value(serde_json::json!({
        "v": 1, "kind": kind.as_str(), "code": code, "origin": origin, "detail": detail,
    }))
    .unwrap()
}

fn info(status: &Status) -> tonic_types::ErrorInfo {
    status.get_details_error_info().expect("an ErrorInfo")
}

#[test]
fn each_kind_maps_to_its_status_code() {
    let policy = StatusPolicy::default();
    let table = [
        (CauseKind::DeadlineExceeded, Code::DeadlineExceeded),
        (CauseKind::Explicit, Code::Cancelled),
        (CauseKind::Dropped, Code::Cancelled),
        (CauseKind::Shutdown, Code::Unavailable),
        (CauseKind::TaskPanicked, Code::Internal),
        (CauseKind::TaskFailed, Code::FailedPrecondition),
    ];
    for (kind, code) in table {
        assert_eq!(policy.status(&Cause::of_kind(kind)).code(), code, "{kind}");
    }
    let policy = StatusPolicy::default().failure(Code::Aborted);
    assert_eq!(policy.code(CauseKind::TaskFailed), Code::Aborted);
}

#[test]
fn the_cause_travels_in_an_error_info_without_its_detail_by_default() {
    let shortage = cause(
        CauseKind::TaskFailed,
        "INVENTORY_SHORTAGE",
        "inventory/request-3/reserve",
        Some("sku-42: 2 left, 5 wanted (db at /var/lib/inventory)"),
    );
    let status = StatusPolicy::default().status(&shortage);
    assert_eq!(status.message(), "task_failed: INVENTORY_SHORTAGE");
    let info = info(&status);
    assert_eq!(info.reason, "INVENTORY_SHORTAGE");
    assert_eq!(info.domain, DOMAIN);
    assert_eq!(info.metadata[keys::KIND], "task_failed");
    assert_eq!(info.metadata[keys::ORIGIN], "inventory/request-3/reserve");
    assert!(!info.metadata.contains_key(keys::DETAIL));

    let exposed = StatusPolicy::default()
        .expose_detail(true)
        .status(&shortage);
    assert_eq!(
        exposed.message(),
        "task_failed: INVENTORY_SHORTAGE: sku-42: 2 left, 5 wanted (db at /var/lib/inventory)"
    );
    assert_eq!(
        info_detail(&exposed),
        Some("sku-42: 2 left, 5 wanted (db at /var/lib/inventory)".to_owned())
    );
}

fn info_detail(status: &Status) -> Option<String> {
    info(status).metadata.get(keys::DETAIL).cloned()
}

#[test]
fn over_two_hops_the_origin_names_each_service_and_method() {
    // Inventory sets it; orders, which called inventory, is cancelled with it and answers the
    // gateway with it.
    let set = cause(
        CauseKind::TaskFailed,
        "INVENTORY_SHORTAGE",
        "inventory/request-3/reserve",
        None,
    );
    let policy = StatusPolicy::default();
    let at_orders = remote_cause(&policy.status(&set), RESERVE);
    let at_gateway = remote_cause(
        &policy.status(&at_orders),
        "/taskscope.demo.v1.Orders/Place",
    );
    assert_eq!(at_gateway.kind(), CauseKind::TaskFailed);
    assert_eq!(at_gateway.code(), "INVENTORY_SHORTAGE");
    assert_eq!(
        at_gateway.origin(),
        Some(
            "taskscope.demo.v1.Orders/Place > taskscope.demo.v1.Inventory/Reserve > \
             inventory/request-3/reserve"
        )
    );
}

#[test]
fn a_status_without_a_cause_maps_from_its_code() {
    let table = [
        (
            Code::DeadlineExceeded,
            CauseKind::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
        ),
        (Code::Cancelled, CauseKind::Explicit, "CANCELLED"),
        (Code::Unavailable, CauseKind::Shutdown, "UNAVAILABLE"),
        (Code::Internal, CauseKind::TaskFailed, "INTERNAL"),
        (Code::NotFound, CauseKind::TaskFailed, "NOT_FOUND"),
    ];
    for (code, kind, name) in table {
        let cause = remote_cause(&Status::new(code, "upstream says no"), RESERVE);
        assert_eq!((cause.kind(), cause.code()), (kind, name));
        assert_eq!(cause.origin(), Some("taskscope.demo.v1.Inventory/Reserve"));
        assert_eq!(cause.detail(), Some("upstream says no"));
    }
}

/// A status carrying an `ErrorInfo` of `domain` with `reason` and `metadata`.
fn hostile(domain: &str, reason: &str, metadata: &[(&str, String)]) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect();
    Status::with_error_details(
        Code::FailedPrecondition,
        "hostile",
        ErrorDetails::with_error_info(reason, domain, metadata),
    )
}

#[test]
fn what_comes_from_the_wire_is_checked_and_bounded() {
    // A code that would break a log line or grow a metric's labels: the status code's name.
    for reason in ["", "two words", "LINE\nBREAK", &"X".repeat(64), "ÉCLAIR"] {
        let cause = remote_cause(&hostile(DOMAIN, reason, &[]), RESERVE);
        assert_eq!(cause.code(), "FAILED_PRECONDITION", "{reason:?}");
    }
    // An unknown kind: the status code's.
    let cause = remote_cause(
        &hostile(DOMAIN, "OK_CODE", &[(keys::KIND, "meteor".to_owned())]),
        RESERVE,
    );
    assert_eq!(
        (cause.kind(), cause.code()),
        (CauseKind::TaskFailed, "OK_CODE")
    );
    // An origin with a control character, or too long: left out.
    for origin in ["a\u{1b}[31mred".to_owned(), "a/".repeat(300)] {
        let cause = remote_cause(
            &hostile(DOMAIN, "OK_CODE", &[(keys::ORIGIN, origin)]),
            RESERVE,
        );
        assert_eq!(cause.origin(), Some("taskscope.demo.v1.Inventory/Reserve"));
    }
    // A detail too long: cut.
    let cause = remote_cause(
        &hostile(DOMAIN, "OK_CODE", &[(keys::DETAIL, "é".repeat(MAX_DETAIL))]),
        RESERVE,
    );
    let detail = cause.detail().unwrap();
    assert!(detail.len() <= MAX_DETAIL && detail.chars().all(|c| c == 'é'));
    // A detail that would forge a log line or colour a terminal: its control characters go.
    let cause = remote_cause(
        &hostile(
            DOMAIN,
            "OK_CODE",
            &[(keys::DETAIL, "ok\n WARN forged line \u{1b}[31m".to_owned())],
        ),
        RESERVE,
    );
    assert_eq!(
        cause.detail(),
        Some("ok\u{fffd} WARN forged line \u{fffd}[31m")
    );
    // Another domain's ErrorInfo is not a taskscope cause.
    let cause = remote_cause(&hostile("googleapis.com", "STOCKOUT", &[]), RESERVE);
    assert_eq!(cause.code(), "FAILED_PRECONDITION");
    // Details that are not a google.rpc.Status at all.
    let garbage = Status::with_details(Code::Unavailable, "", vec![0xff, 0x00, 0x13].into());
    let cause = remote_cause(&garbage, RESERVE);
    assert_eq!(
        (cause.kind(), cause.code()),
        (CauseKind::Shutdown, "UNAVAILABLE")
    );
    assert_eq!(cause.detail(), None);
    // A method name that is not one.
    let cause = remote_cause(&Status::cancelled(""), "bad\nmethod");
    assert_eq!(cause.origin(), Some("?"));
}
