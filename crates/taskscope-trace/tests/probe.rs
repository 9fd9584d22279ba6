mod common;
use common::Capture;
use std::sync::Arc;
use std::time::Duration;
use taskscope::{Backoff, BoxError, Cause, CauseKind, ChildSpec, Scope, Supervisor, TaskGroup};
use taskscope_trace::TraceObserver;
use tokio::time::sleep;

#[tokio::test(start_paused = true)]
async fn dropped_group() {
    let capture = Capture::new();
    let _g = capture.set_default();
    let orders = Scope::builder()
        .name("orders")
        .observer(Arc::new(TraceObserver::new()))
        .build();
    let group: TaskGroup<()> = TaskGroup::builder(&orders).name("g").build();
    group.spawn("t", |_| async move {
        sleep(Duration::from_secs(10)).await;
        Ok(())
    });
    group.spawn("u", |s| async move { Err(s.cancelled().await.into()) });
    sleep(Duration::from_millis(100)).await;
    group.scope().cancel(Cause::new("FIRST"));
    drop(group);
    sleep(Duration::from_millis(100)).await;
    for e in capture.events() {
        println!("{} {} {} {:?}", e.level, e.target, e.message, e.fields);
    }
    for s in capture.spans() {
        println!("{:?}", s);
    }
}

#[tokio::test(start_paused = true)]
async fn restarts() {
    let capture = Capture::new();
    let _g = capture.set_default();
    let orders = Scope::builder()
        .name("orders")
        .observer(Arc::new(TraceObserver::new()))
        .build();
    let spec = ChildSpec::new("feed", |_s: Scope| async move {
        sleep(Duration::from_secs(1)).await;
        Err(BoxError::from("boom"))
    });
    let sup = Supervisor::builder()
        .name("ingest")
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .child(spec)
        .start(&orders)
        .unwrap();
    sleep(Duration::from_millis(3500)).await;
    sup.shutdown(Cause::of_kind(CauseKind::Shutdown));
    let _ = sup.join().await;
    for e in capture.events_of("taskscope::supervisor", "") {
        println!("{} {} {} {:?}", e.level, e.target, e.message, e.fields);
    }
    for e in capture.events_of("taskscope::cancel", "") {
        println!("{} {} {} {:?}", e.level, e.target, e.message, e.fields);
    }
}
