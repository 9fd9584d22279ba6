//! The `taskscope::cancel` event, asserted through a capturing subscriber.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskscope::{Cause, CauseKind, Scope};
use taskscope_trace::{CANCEL_TARGET, trace_cancellation};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Clone, Debug)]
struct Captured {
    target: String,
    level: Level,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Visit for Captured {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields
            .insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut captured = Captured {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields: BTreeMap::new(),
        };
        event.record(&mut captured);
        self.0.lock().unwrap().push(captured);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn capture(f: impl FnOnce()) -> Vec<Captured> {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), f);
    capture.0.lock().unwrap().clone()
}

#[test]
fn an_explicit_cancel_is_one_info_event_with_stable_fields() {
    let events = capture(|| {
        let order = Scope::builder()
            .name("orders")
            .build()
            .child_builder()
            .name("order-17")
            .build();
        let reserve = order.child_builder().name("reserve").build();
        let _order = trace_cancellation(&order);
        let _reserve = trace_cancellation(&reserve);
        order.cancel(Cause::new("INVENTORY_SHORTAGE").with_detail("sku-42"));
        order.cancel(Cause::plain());
    });
    assert_eq!(
        events.len(),
        2,
        "one event per cancelled scope: {events:#?}"
    );
    let scopes: Vec<_> = events.iter().map(|e| e.fields["scope"].as_str()).collect();
    assert!(scopes.contains(&"orders/order-17") && scopes.contains(&"orders/order-17/reserve"));
    for event in &events {
        assert_eq!(event.target, CANCEL_TARGET);
        assert_eq!(event.level, Level::INFO);
        assert_eq!(event.fields["message"], "scope cancelled");
        assert_eq!(event.fields["cause.kind"], "explicit");
        assert_eq!(event.fields["cause.code"], "INVENTORY_SHORTAGE");
        assert_eq!(event.fields["cause.detail"], "sku-42");
        assert_eq!(event.fields["cause.origin"], "orders/order-17");
        assert!(event.fields["cause.location"].contains("cancel_event.rs"));
    }
}

#[test]
fn a_task_failure_is_a_warning() {
    let events = capture(|| {
        let group = Scope::new();
        let _watch = trace_cancellation(&group);
        group.cancel(Cause::of_kind(CauseKind::TaskFailed).with_detail("task 'payment' failed"));
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].level, Level::WARN);
    assert_eq!(events[0].fields["cause.kind"], "task_failed");
    assert_eq!(events[0].fields["cause.code"], "task_failed");
    assert!(
        !events[0].fields.contains_key("cause.detail")
            || events[0].fields["cause.detail"] == "task 'payment' failed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_is_reported_with_its_owner_as_origin() {
    let capture = Capture::default();
    let _default = tracing::subscriber::set_default(capture.clone());
    let payment = Scope::builder()
        .name("payment")
        .timeout(Duration::from_secs(2))
        .build();
    let _watch = trace_cancellation(&payment);
    let _ = payment.cancelled().await;
    let events = capture.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].fields["cause.kind"], "deadline_exceeded");
    assert_eq!(events[0].fields["cause.code"], "deadline");
    assert_eq!(events[0].fields["cause.origin"], "payment");
    assert!(
        !events[0].fields.contains_key("cause.detail"),
        "no detail, no field"
    );
}
