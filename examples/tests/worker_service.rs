//! The worker service example's pieces under paused time: jobs end as their SKU says, a
//! worker drains its queue and is done, and a shutdown stops jobs in flight as cancelled (their
//! `JobError::Cancelled` is an echo, not a failure).

#[path = "../worker_service.rs"]
#[allow(dead_code)]
mod worker_service;

use std::sync::Arc;
use std::time::Duration;

use taskscope::observe::TaskOutcome;
use taskscope::{Cause, ChildState, Scope, SupervisorBuilder, TaskGroupBuilder};
use tokio::sync::{Mutex, mpsc};
use worker_service::{JobError, job, worker};

#[tokio::test(start_paused = true)]
async fn jobs_end_as_their_sku_says() {
    let mut group = TaskGroupBuilder::<(), JobError>::new(&Scope::new())
        .collect_all()
        .build();
    for sku in [1, 7, 11] {
        group.spawn(format!("sku-{sku}"), move |scope| job(scope, sku));
    }
    let mut ends = Vec::new();
    while let Some(exit) = group.join_next().await {
        ends.push((exit.task.name().to_owned(), exit.outcome.kind()));
    }
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        ends,
        [
            ("sku-1".to_owned(), TaskOutcome::Completed),
            // Its own 500 ms deadline, not its worker's: a failure.
            ("sku-11".to_owned(), TaskOutcome::Failed),
            ("sku-7".to_owned(), TaskOutcome::Failed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_is_done_once_its_queue_is_drained() {
    let (send, receive) = mpsc::channel(8);
    let supervisor = SupervisorBuilder::new()
        .child(worker("orders", Arc::new(Mutex::new(receive))))
        .start(&Scope::new())
        .unwrap();
    for sku in 1..=5 {
        send.send(sku).await.unwrap();
    }
    drop(send);
    supervisor.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_job_stopped_by_its_workers_cancellation_is_cancelled_not_failed() {
    let mut group = TaskGroupBuilder::<(), JobError>::new(&Scope::new()).build();
    group.spawn("sku-10", |scope| job(scope, 10)); // 500 ms of work
    tokio::time::sleep(Duration::from_millis(120)).await;
    group.scope().cancel(Cause::new("DEPLOY"));
    let exit = group.join_next().await.unwrap();
    let taskscope::Outcome::Cancelled(cause) = exit.outcome else {
        panic!("{:?}", exit.outcome);
    };
    assert_eq!(cause.code(), "DEPLOY");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_stops_a_worker_with_jobs_in_flight() {
    let (send, receive) = mpsc::channel(8);
    let supervisor = SupervisorBuilder::new()
        .child(worker("orders", Arc::new(Mutex::new(receive))))
        .start(&Scope::new())
        .unwrap();
    let handle = supervisor.handle();
    send.send(10).await.unwrap(); // 500 ms of work
    tokio::time::sleep(Duration::from_millis(120)).await;
    handle.shutdown(Cause::new("DEPLOY"));
    supervisor.join().await.unwrap();
    let child = handle.snapshot().children[0].clone();
    assert_eq!(child.state, ChildState::Cancelled);
    assert_eq!(child.last_cause.unwrap().code(), "DEPLOY");
    assert_eq!(child.restarts, 0);
}
