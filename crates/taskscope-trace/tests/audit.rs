//! Audit records: written as JSON lines to a writer or as `tracing` events, read back with
//! `AuditRecord::parse`. Paused tokio time throughout; a capturing subscriber in every test.

mod common;

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Capture, SharedBuf, site};
use taskscope::{Cause, CauseKind, Scope, TaskGroup};
use taskscope_trace::{
    AUDIT_TARGET, AUDIT_VERSION, AuditEvent, AuditLog, AuditRecord, AuditTask, TraceObserver,
};
use tokio::time::sleep;
use tracing::Level;

const SOURCE: &str = include_str!("audit.rs");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn orders(log: &AuditLog) -> Scope {
    Scope::builder()
        .name("orders")
        .observer(Arc::new(TraceObserver::new().audit(log.clone())))
        .build()
}

#[track_caller]
fn parse_all(lines: &[String]) -> Vec<AuditRecord> {
    lines
        .iter()
        .map(|line| AuditRecord::parse(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

fn now_unix_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_micros()).unwrap()
}

/// The task of a `task_stopped` record named `name`; panics unless there is exactly one.
#[track_caller]
fn stopped<'a>(records: &'a [AuditRecord], name: &str) -> (&'a AuditRecord, &'a AuditTask) {
    let found: Vec<_> = records
        .iter()
        .filter(|record| record.event == AuditEvent::TaskStopped)
        .filter(|record| record.task.as_ref().is_some_and(|task| task.name == name))
        .collect();
    assert_eq!(found.len(), 1, "one record for {name}: {records:#?}");
    (found[0], found[0].task.as_ref().unwrap())
}

fn scope_cancelled(records: &[AuditRecord]) -> Vec<&AuditRecord> {
    records
        .iter()
        .filter(|record| record.event == AuditEvent::ScopeCancelled)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_record_per_cancellation_and_per_task_it_stopped() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let buf = SharedBuf::default();
    let log = AuditLog::to_writer(buf.clone());
    let orders = orders(&log);
    let before = now_unix_us();

    let mut group: TaskGroup<()> = TaskGroup::builder(&orders)
        .name("order-17")
        .limit(2.try_into().unwrap())
        .build();
    // Ends before the cancellation: no record.
    group.spawn("quote", |_| async { Ok(()) });
    group.join_next().await.unwrap();
    let payment_line = line!() + 1;
    group.spawn("payment", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(120)).await;
        Err(cause.into())
    });
    group.spawn("shipping", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    // Over the limit: pending, never starts.
    group.spawn("invoice", |_| async { Ok(()) });
    sleep(ms(30)).await;
    assert!(buf.contents().is_empty(), "nothing cancelled yet");

    group
        .scope()
        .cancel(Cause::new("USER_CANCELLED").with_detail("customer clicked cancel"));
    let _ = group.join().await.unwrap_err();
    assert_eq!(log.write_errors(), 0);

    let lines = buf.lines();
    assert!(buf.contents().ends_with('\n'));
    let records = parse_all(&lines);
    assert_eq!(records.len(), 4, "{lines:#?}");

    // The cancellation comes first, once, for the group's scope (not the task scopes it
    // reached).
    let cancelled = scope_cancelled(&records);
    assert_eq!(cancelled.len(), 1, "{records:#?}");
    let cancel = &records[0];
    assert_eq!(cancel.event, AuditEvent::ScopeCancelled);
    assert_eq!(cancel.v, AUDIT_VERSION);
    assert_eq!(cancel.scope, "orders/order-17");
    assert!(cancel.task.is_none());
    assert_eq!(cancel.cause.kind(), CauseKind::Explicit);
    assert_eq!(cancel.cause.code(), "USER_CANCELLED");
    assert_eq!(cancel.cause.detail(), Some("customer clicked cancel"));
    assert_eq!(cancel.cause.origin(), Some("orders/order-17"));
    assert!(cancel.cause.at().is_some());
    assert!(cancel.recorded_at_unix_us >= before);
    assert!(cancel.recorded_at_unix_us <= now_unix_us());
    assert!(
        lines[0].contains(r#""event":"scope_cancelled""#),
        "{}",
        lines[0]
    );

    let (record, payment) = stopped(&records, "payment");
    assert_eq!(record.v, AUDIT_VERSION);
    assert_eq!(record.scope, "orders/order-17/payment");
    assert_eq!(payment.id, 1);
    assert_eq!(
        payment.spawned_at,
        site(SOURCE, file!(), payment_line, "spawn(")
    );
    assert_eq!(payment.outcome, "cancelled");
    assert_eq!(payment.cancel_latency_us, Some(120_000));
    assert_eq!(payment.elapsed_us, 150_000);
    assert_eq!(record.cause.code(), "USER_CANCELLED");
    assert_eq!(record.cause.kind(), CauseKind::Explicit);
    assert_eq!(record.cause.origin(), Some("orders/order-17"));

    let (record, shipping) = stopped(&records, "shipping");
    assert_eq!(record.scope, "orders/order-17/shipping");
    assert_eq!(shipping.outcome, "cancelled");
    assert_eq!(shipping.cancel_latency_us, Some(0));
    assert_eq!(record.cause.code(), "USER_CANCELLED");

    let (record, invoice) = stopped(&records, "invoice");
    assert_eq!(record.scope, "orders/order-17/invoice");
    assert_eq!(invoice.outcome, "cancelled");
    assert_eq!(invoice.elapsed_us, 0);
    assert_eq!(invoice.cancel_latency_us, None, "it never started");
    assert_eq!(record.cause.code(), "USER_CANCELLED");
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_recorded_with_its_task_as_origin_and_the_failed_task_is_not_stopped() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let buf = SharedBuf::default();
    let log = AuditLog::to_writer(buf.clone());
    let orders = orders(&log);

    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("inventory", |_| async {
        sleep(ms(10)).await;
        Err(Cause::new("INVENTORY_SHORTAGE")
            .with_detail("sku-42: 2 left")
            .into())
    });
    group.spawn("payment", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(5)).await;
        Err(cause.into())
    });
    let _ = group.join().await.unwrap_err();

    let records = parse_all(&buf.lines());
    assert_eq!(records.len(), 2, "{records:#?}");
    let cancel = scope_cancelled(&records)[0];
    assert_eq!(cancel.scope, "orders/order-17");
    assert_eq!(cancel.cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cancel.cause.code(), "INVENTORY_SHORTAGE");
    assert_eq!(cancel.cause.origin(), Some("orders/order-17/inventory"));
    assert_eq!(
        cancel.cause.detail(),
        Some("task 'inventory' failed: sku-42: 2 left")
    );

    let (record, payment) = stopped(&records, "payment");
    assert_eq!(payment.outcome, "cancelled");
    assert_eq!(payment.cancel_latency_us, Some(5_000));
    assert_eq!(record.cause.kind(), CauseKind::TaskFailed);
    assert_eq!(record.cause.origin(), Some("orders/order-17/inventory"));
    assert!(
        !records.iter().any(|record| record
            .task
            .as_ref()
            .is_some_and(|task| task.name == "inventory")),
        "a failed task was not stopped by a cancellation: {records:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_aborted_task_is_recorded_as_aborted() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let buf = SharedBuf::default();
    let log = AuditLog::to_writer(buf.clone());
    let orders = orders(&log);

    let group: TaskGroup<()> = TaskGroup::builder(&orders)
        .name("sync")
        .grace(Duration::from_secs(1))
        .build();
    group.spawn("stubborn", |_| async {
        sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    tokio::task::yield_now().await;
    group.scope().cancel(Cause::of_kind(CauseKind::Shutdown));
    let _ = group.join().await.unwrap_err();

    let records = parse_all(&buf.lines());
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(scope_cancelled(&records)[0].cause.code(), "shutdown");
    let (record, stubborn) = stopped(&records, "stubborn");
    assert_eq!(record.scope, "orders/sync/stubborn");
    assert_eq!(stubborn.outcome, "aborted");
    let latency = stubborn.cancel_latency_us.unwrap();
    assert!(
        (1_000_000..=1_001_000).contains(&latency),
        "cancel_latency_us = {latency}"
    );
    assert_eq!(record.cause.kind(), CauseKind::Shutdown);
    assert_eq!(record.cause.origin(), Some("orders/sync"));
}

#[tokio::test(start_paused = true)]
async fn a_detail_with_newlines_and_quotes_stays_on_one_line() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let buf = SharedBuf::default();
    let log = AuditLog::to_writer(buf.clone());
    let orders = orders(&log);
    let detail = "line one\nline \"two\"\r\n\ttab \u{1F600} \\ end";
    orders.cancel(Cause::new("ODD").with_detail(detail));

    let lines = buf.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(!lines[0].contains(r#""task""#), "{}", lines[0]);
    let record = AuditRecord::parse(&lines[0]).unwrap();
    assert_eq!(record.scope, "orders");
    assert_eq!(record.cause.detail(), Some(detail));
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct Unprintable;

impl std::fmt::Display for Unprintable {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("Display is not implemented yet")
    }
}

impl std::error::Error for Unprintable {}

/// A cause whose source cannot be printed is still recorded, with a placeholder for the text.
#[tokio::test(start_paused = true)]
async fn a_cause_whose_source_display_panics_is_recorded_with_a_placeholder() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let buf = SharedBuf::default();
    let log = AuditLog::to_writer(buf.clone());
    let orders = orders(&log);
    orders.cancel(Cause::new("ODD").with_source(Unprintable));

    let records = parse_all(&buf.lines());
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].cause.code(), "ODD");
    let source = std::error::Error::source(&records[0].cause).unwrap();
    assert_eq!(source.to_string(), "(its Display panicked)");
    assert_eq!(log.write_errors(), 0);
}

/// A writer that always fails.
struct Broken;

impl io::Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("disk full"))
    }
}

#[tokio::test(start_paused = true)]
async fn write_errors_are_counted_and_reported_without_a_panic() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let log = AuditLog::to_writer(Broken);
    let orders = orders(&log);

    let first = orders.child_builder().name("order-1").build();
    first.cancel(Cause::new("USER_CANCELLED"));
    assert_eq!(log.write_errors(), 1);

    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-2").build();
    group.spawn("payment", |scope| async move {
        Err(scope.cancelled().await.into())
    });
    group.scope().cancel(Cause::new("USER_CANCELLED"));
    let _ = group.join().await.unwrap_err();
    // Later records are still attempted: the cancellation and the task it stopped.
    assert_eq!(log.write_errors(), 3);

    let warnings = capture.events_of(AUDIT_TARGET, "");
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for warning in &warnings {
        assert_eq!(warning.target, "taskscope::audit");
        assert_eq!(warning.level, Level::WARN);
        assert_eq!(warning.message, "audit record not written");
        assert_eq!(warning.field("error"), "disk full");
    }
    assert!(format!("{log:?}").contains("write_errors: 3"), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn the_tracing_sink_emits_info_events_whose_record_parses() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let log = AuditLog::tracing();
    let orders = orders(&log);

    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("order-17").build();
    group.spawn("payment", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(7)).await;
        Err(cause.into())
    });
    group
        .scope()
        .cancel(Cause::new("USER_CANCELLED").with_detail("by phone"));
    let _ = group.join().await.unwrap_err();
    assert_eq!(log.write_errors(), 0);

    let events = capture.events_of(AUDIT_TARGET, "");
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in &events {
        assert_eq!(event.level, Level::INFO);
        assert_eq!(event.message, "audit record");
    }
    let records: Vec<_> = events
        .iter()
        .map(|event| AuditRecord::parse(event.field("record")).unwrap())
        .collect();
    assert_eq!(records[0].event, AuditEvent::ScopeCancelled);
    assert_eq!(records[0].scope, "orders/order-17");
    assert_eq!(records[0].cause.code(), "USER_CANCELLED");
    assert_eq!(records[0].cause.detail(), Some("by phone"));
    let (record, payment) = stopped(&records, "payment");
    assert_eq!(record.scope, "orders/order-17/payment");
    assert_eq!(payment.outcome, "cancelled");
    assert_eq!(payment.cancel_latency_us, Some(7_000));
}

/// A record as this crate writes it, to mangle.
const VALID: &str = r#"{"v":1,"event":"task_stopped","scope":"orders/order-17/payment","task":{"name":"payment","id":1,"spawned_at":"src/orders.rs:42:11","outcome":"cancelled","elapsed_us":3000,"cancel_latency_us":120},"cause":{"v":1,"kind":"task_failed","code":"INVENTORY_SHORTAGE","origin":"orders/order-17/inventory"},"recorded_at_unix_us":1763800000000000}"#;

#[test]
fn a_valid_line_parses_and_unknown_fields_are_ignored() {
    let _guard = Capture::new().set_default();
    let record = AuditRecord::parse(VALID).unwrap();
    assert_eq!(record.event, AuditEvent::TaskStopped);
    assert_eq!(record.scope, "orders/order-17/payment");
    let task = record.task.as_ref().unwrap();
    assert_eq!(task.name, "payment");
    assert_eq!(task.cancel_latency_us, Some(120));
    assert_eq!(record.cause.kind(), CauseKind::TaskFailed);
    assert_eq!(record.cause.code(), "INVENTORY_SHORTAGE");
    assert_eq!(record.recorded_at_unix_us, 1_763_800_000_000_000);

    let later = VALID.replacen(r#""v":1,"#, r#""v":1,"host":"web-3","#, 1);
    assert_eq!(AuditRecord::parse(&later).unwrap().scope, record.scope);
}

#[test]
fn malformed_lines_are_errors_never_panics() {
    let _guard = Capture::new().set_default();
    let cause = r#"{"v":1,"kind":"explicit","code":"X"}"#;
    let record = |v: &str, event: &str, cause: &str| {
        format!(
            r#"{{"v":{v},"event":"{event}","scope":"orders","cause":{cause},"recorded_at_unix_us":0}}"#
        )
    };
    // The shape is right: these parse.
    assert!(AuditRecord::parse(&record("1", "scope_cancelled", cause)).is_ok());

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let malformed = [
        // Garbage.
        String::new(),
        " ".to_owned(),
        "garbage".to_owned(),
        "{".to_owned(),
        "null".to_owned(),
        "42".to_owned(),
        "[]".to_owned(),
        "{}".to_owned(),
        "\u{0}\u{feff}".to_owned(),
        deep,
        format!("{VALID} trailing"),
        // Wrong versions.
        record("2", "scope_cancelled", cause),
        record("0", "scope_cancelled", cause),
        record(r#""1""#, "scope_cancelled", cause),
        record("-1", "scope_cancelled", cause),
        record("99999999999999999999", "scope_cancelled", cause),
        record("1.5", "scope_cancelled", cause),
        VALID.replacen(r#""v":1,"#, "", 1),
        // Missing or bad cause.
        r#"{"v":1,"event":"scope_cancelled","scope":"orders","recorded_at_unix_us":0}"#.to_owned(),
        record("1", "scope_cancelled", "null"),
        record("1", "scope_cancelled", r#""explicit""#),
        record(
            "1",
            "scope_cancelled",
            r#"{"v":1,"kind":"exploded","code":"X"}"#,
        ),
        record(
            "1",
            "scope_cancelled",
            r#"{"v":1,"kind":"Explicit","code":"X"}"#,
        ),
        record("1", "scope_cancelled", r#"{"v":1,"code":"X"}"#),
        record("1", "scope_cancelled", r#"{"v":1,"kind":"explicit"}"#),
        record(
            "1",
            "scope_cancelled",
            r#"{"v":1,"kind":"explicit","code":""}"#,
        ),
        record(
            "1",
            "scope_cancelled",
            r#"{"v":7,"kind":"explicit","code":"X"}"#,
        ),
        record("1", "scope_cancelled", r#"{"kind":"explicit","code":"X"}"#),
        // Other fields.
        record("1", "exploded", cause),
        record("1", "ScopeCancelled", cause),
        VALID.replacen(r#""scope":"orders/order-17/payment","#, "", 1),
        VALID.replacen(
            r#""recorded_at_unix_us":1763800000000000"#,
            r#""recorded_at_unix_us":-1"#,
            1,
        ),
        VALID.replacen(r#""name":"payment","#, "", 1),
        VALID.replacen(r#""id":1"#, r#""id":"one""#, 1),
        VALID.replacen(r#""task":{"#, r#""task":["#, 1),
    ];
    for line in &malformed {
        match AuditRecord::parse(line) {
            Ok(record) => panic!("parsed {line:?} as {record:?}"),
            Err(error) => {
                let message = error.to_string();
                assert!(
                    message.starts_with("malformed audit record: "),
                    "{line:?}: {message}"
                );
            }
        }
    }

    let error = AuditRecord::parse(&record("2", "scope_cancelled", cause)).unwrap_err();
    assert!(error.to_string().contains("version 2"), "{error}");
    let bad_kind = record(
        "1",
        "scope_cancelled",
        r#"{"v":1,"kind":"exploded","code":"X"}"#,
    );
    let error = AuditRecord::parse(&bad_kind).unwrap_err();
    assert!(error.to_string().contains("exploded"), "{error}");

    // Every proper prefix of a valid line is malformed.
    for end in 0..VALID.len() {
        assert!(
            AuditRecord::parse(&VALID[..end]).is_err(),
            "{:?}",
            &VALID[..end]
        );
    }
}
