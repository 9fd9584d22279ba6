//! `Cause`: constructors, accessors, display, error chain, and (feature `serde`) its record.

use std::error::Error;
use std::fmt;

use taskscope::{Cause, CauseKind, Scope};

#[derive(Debug, PartialEq)]
struct Shortage {
    sku: &'static str,
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is out of stock", self.sku)
    }
}

impl Error for Shortage {}

#[test]
fn kinds_have_default_codes_and_descriptions() {
    let all = [
        (CauseKind::Explicit, "cancelled", "cancelled"),
        (CauseKind::DeadlineExceeded, "deadline", "deadline exceeded"),
        (CauseKind::TaskFailed, "task_failed", "task failed"),
        (CauseKind::TaskPanicked, "panicked", "task panicked"),
        (CauseKind::Shutdown, "shutdown", "shut down"),
        (CauseKind::Dropped, "dropped", "dropped"),
    ];
    for (kind, code, text) in all {
        assert_eq!(CauseKind::from_name(kind.as_str()), Some(kind));
        let cause = Cause::of_kind(kind);
        assert_eq!(cause.kind(), kind);
        assert_eq!(cause.code(), code);
        assert_eq!(cause.to_string(), text);
    }
}

#[test]
fn display_shows_kind_code_and_detail_but_not_the_source() {
    assert_eq!(Cause::plain().to_string(), "cancelled");
    assert_eq!(Cause::new("X").to_string(), "cancelled (X)");
    let cause = Cause::new("INVENTORY_SHORTAGE")
        .with_detail("2 left")
        .with_source(Shortage { sku: "sku-42" });
    assert_eq!(cause.to_string(), "cancelled (INVENTORY_SHORTAGE): 2 left");
    assert_eq!(
        cause.source().unwrap().to_string(),
        "sku-42 is out of stock"
    );
}

#[test]
fn wraps_and_downcasts_a_user_error() {
    let cause = Cause::new("INVENTORY_SHORTAGE").with_source(Shortage { sku: "sku-42" });
    assert_eq!(
        cause.downcast_ref::<Shortage>(),
        Some(&Shortage { sku: "sku-42" })
    );
    assert!(cause.downcast_ref::<std::io::Error>().is_none());
    assert!(Cause::plain().downcast_ref::<Shortage>().is_none());
}

#[test]
fn an_empty_code_means_the_default() {
    assert_eq!(Cause::new("").code(), "cancelled");
    assert_eq!(
        Cause::of_kind(CauseKind::Shutdown).with_code("").code(),
        "shutdown"
    );
}

#[test]
fn cancel_stamps_origin_time_and_caller() {
    let scope = Scope::builder()
        .name("orders")
        .build()
        .child_builder()
        .name("reserve")
        .build();
    let unstamped = Cause::new("X");
    assert!(unstamped.origin().is_none() && unstamped.at().is_none());
    assert!(unstamped.location().is_none());
    let before = std::time::SystemTime::now();
    let line = line!() + 1;
    scope.cancel(unstamped);
    let cause = scope.cause().unwrap();
    assert_eq!(cause.origin(), Some("orders/reserve"));
    assert!(cause.at().unwrap() >= before);
    let location = cause.location().unwrap();
    assert!(location.file().ends_with("cause.rs"), "{location}");
    assert_eq!(location.line(), line);
}

/// `at` is fixed when the cancellation happens, whenever it is read, and keeps the order of
/// cancellations also under paused time.
#[tokio::test(start_paused = true)]
async fn at_keeps_the_order_of_cancellations_whenever_it_is_read() {
    let (a, b) = (Scope::new(), Scope::new());
    a.cancel(Cause::new("A"));
    let at_a = a.cause().unwrap().at().unwrap();
    tokio::time::advance(std::time::Duration::from_secs(100)).await;
    b.cancel(Cause::new("B"));
    tokio::time::advance(std::time::Duration::from_secs(900)).await;
    let at_b = b.cause().unwrap().at().unwrap();
    assert!(at_b > at_a, "{at_b:?} is not after {at_a:?}");
    assert_eq!(a.cause().unwrap().at().unwrap(), at_a);
}

#[test]
fn a_cause_passed_on_keeps_its_first_origin() {
    let first = Scope::builder().name("first").build();
    let second = Scope::builder().name("second").build();
    first.cancel(Cause::new("X"));
    second.cancel(first.cause().unwrap());
    assert_eq!(second.cause().unwrap().origin(), Some("first"));
    assert!(second.cause().unwrap().ptr_eq(&first.cause().unwrap()));
}

#[test]
fn debug_shows_every_field() {
    let scope = Scope::builder().name("orders").build();
    scope.cancel(Cause::new("X").with_detail("why"));
    let debug = format!("{:?}", scope.cause().unwrap());
    for field in [
        "kind: Explicit",
        "code: \"X\"",
        "detail: \"why\"",
        "origin: \"orders\"",
        "at:",
        "location:",
    ] {
        assert!(debug.contains(field), "{field} missing from {debug}");
    }
}

#[cfg(feature = "serde")]
mod record {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn stamped() -> Cause {
        let scope = Scope::builder().name("orders").build();
        scope.cancel(
            Cause::of_kind(CauseKind::Shutdown)
                .with_code("SIGTERM")
                .with_detail("operator")
                .with_source(Shortage { sku: "sku-1" }),
        );
        scope.cause().unwrap()
    }

    #[test]
    fn round_trips_every_field() {
        let cause = stamped();
        let json = serde_json::to_value(&cause).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["kind"], "shutdown");
        assert_eq!(json["code"], "SIGTERM");
        assert_eq!(json["detail"], "operator");
        assert_eq!(json["origin"], "orders");
        assert_eq!(json["source"], "sku-1 is out of stock");
        assert!(json["at_unix_us"].as_u64().unwrap() > 1_600_000_000_000_000);
        assert_eq!(json["location"]["file"], cause.location().unwrap().file());

        let back: Cause = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.kind(), CauseKind::Shutdown);
        assert_eq!(back.code(), "SIGTERM");
        assert_eq!(back.detail(), Some("operator"));
        assert_eq!(back.origin(), Some("orders"));
        assert_eq!(back.location(), cause.location());
        assert_eq!(back.source().unwrap().to_string(), "sku-1 is out of stock");
        let micros = |c: &Cause| {
            c.at()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
        };
        assert_eq!(micros(&back), micros(&cause));
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            json,
            "stable when re-encoded"
        );
    }

    #[test]
    fn minimal_record_decodes_and_unknown_fields_are_ignored() {
        let cause: Cause = serde_json::from_value(
            json!({"v": 1, "kind": "deadline_exceeded", "code": "deadline", "new_field": [1, 2]}),
        )
        .unwrap();
        assert_eq!(cause.kind(), CauseKind::DeadlineExceeded);
        assert!(cause.origin().is_none() && cause.at().is_none() && cause.source().is_none());
    }

    #[test]
    fn malformed_records_are_clear_errors() {
        let cases = [
            (
                json!({"v": 2, "kind": "explicit", "code": "X"}),
                "unsupported cause record version 2",
            ),
            (
                json!({"v": 1, "kind": "explicit", "code": ""}),
                "empty `code`",
            ),
            (
                json!({"v": 1, "kind": "exploded", "code": "X"}),
                "unknown cause kind `exploded`",
            ),
            (json!({"v": 1, "kind": "explicit"}), "missing field `code`"),
            (
                json!({"kind": "explicit", "code": "X"}),
                "missing field `v`",
            ),
            (
                json!({"v": 1, "kind": "explicit", "code": 7}),
                "invalid type",
            ),
            (
                json!({"v": 1, "kind": "explicit", "code": "X", "at_unix_us": -1}),
                "invalid value",
            ),
            (
                json!({"v": 1, "kind": "explicit", "code": "X", "at_unix_us": 10_000_000_000_000_000u64}),
                "out of range (past the year 2262)",
            ),
            (
                json!({"v": 1, "kind": "explicit", "code": "X", "location": {"file": "a.rs"}}),
                "missing field `line`",
            ),
            (json!("explicit"), "invalid type"),
        ];
        for (value, expected) in cases {
            let error = serde_json::from_value::<Cause>(value.clone())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "{value}: got {error:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error() {
        let bytes = serde_json::to_vec(&stamped()).unwrap();
        for end in 0..bytes.len() {
            assert!(
                serde_json::from_slice::<Cause>(&bytes[..end]).is_err(),
                "prefix of {end} bytes"
            );
        }
    }

    proptest! {
        #[test]
        fn garbage_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Ok is allowed (random bytes could spell a record); a panic is not.
            if let Ok(cause) = serde_json::from_slice::<Cause>(&bytes) {
                prop_assert!(!cause.code().is_empty());
            }
        }

        #[test]
        fn mangled_records_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut bytes = serde_json::to_vec(&stamped()).unwrap();
            for (index, byte) in flips {
                let at = index.index(bytes.len());
                bytes[at] = byte;
            }
            let _ = serde_json::from_slice::<Cause>(&bytes);
        }
    }
}
