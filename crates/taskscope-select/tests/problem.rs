//! A cause as an HTTP problem: the status table, the body's members, what is exposed.

#![cfg(feature = "tower")]

use http::StatusCode;
use taskscope::{Cause, CauseKind};
use taskscope_select::tower::{CLIENT_CLOSED_REQUEST, ProblemPolicy};

fn body(policy: &ProblemPolicy, cause: &Cause) -> serde_json::Value {
    serde_json::from_str(&policy.body(cause)).unwrap()
}

#[test]
fn each_kind_maps_to_its_http_status() {
    let policy = ProblemPolicy::default();
    let table = [
        (CauseKind::DeadlineExceeded, 504),
        (CauseKind::Explicit, CLIENT_CLOSED_REQUEST),
        (CauseKind::Dropped, CLIENT_CLOSED_REQUEST),
        (CauseKind::Shutdown, 503),
        (CauseKind::TaskPanicked, 500),
        (CauseKind::TaskFailed, 409),
    ];
    for (kind, status) in table {
        assert_eq!(policy.status(kind).as_u16(), status, "{kind}");
        assert_eq!(body(&policy, &Cause::of_kind(kind))["status"], status);
    }
    let policy = ProblemPolicy::default().failure(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(policy.status(CauseKind::TaskFailed), 422);
}

#[test]
fn the_body_carries_the_cause_without_its_detail_by_default() {
    let shortage: Cause = serde_json::from_value(serde_json::json!({
        "v": 1, "kind": "task_failed", "code": "INVENTORY_SHORTAGE",
        "origin": "orders > inventory/request-3/reserve",
        "detail": "sku-42: \"2\" left\n(db at /var/lib)",
    }))
    .unwrap();
    let hidden = body(&ProblemPolicy::default(), &shortage);
    assert_eq!(
        hidden,
        serde_json::json!({
            "type": "about:blank",
            "title": "Conflict",
            "status": 409,
            "domain": "taskscope",
            "kind": "task_failed",
            "code": "INVENTORY_SHORTAGE",
            "origin": "orders > inventory/request-3/reserve",
        })
    );
    // Exposed, the detail is escaped as JSON: quotes and the line break stay inside the string.
    let exposed = ProblemPolicy::default().expose_detail(true);
    assert_eq!(
        body(&exposed, &shortage)["detail"],
        "sku-42: \"2\" left\n(db at /var/lib)"
    );
    let response = exposed.response::<String>(&shortage);
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(!response.body().contains('\n'), "one line of JSON");
    assert_eq!(
        body(
            &ProblemPolicy::default(),
            &Cause::of_kind(CauseKind::Explicit)
        )["title"],
        "Client Closed Request"
    );
}
