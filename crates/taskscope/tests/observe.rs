//! The observer hook (`taskscope::observe`): which events scopes, groups and supervisors report
//! to the observer installed on a scope, with which fields and in which order; attachments; and
//! observers that panic.
//!
//! A recording observer keeps every event as owned values. Time is tokio's paused clock
//! throughout; the tests wait on events, never on real time.

use std::any::Any;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{self, PanicHookInfo};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use taskscope::observe::{
    Attachment, CancelLost, ChildRestarting, GroupCreated, Observer, ScopeCancelled, TaskFinished,
    TaskOutcome, TaskSlowToStop, TaskSpawned, TaskStarted,
};
use taskscope::{
    Backoff, BoxError, Cause, CauseKind, ChildSpec, ChildState, Scope, Supervisor, TaskGroup,
    TaskGroupBuilder,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::{advance, sleep};

// ---------------------------------------------------------------------------------------------
// What the recording observer keeps

/// One observer event, as owned values.
#[derive(Clone, Debug)]
enum Event {
    Cancelled(Cancelled),
    Lost(Lost),
    GroupCreated(GroupMade),
    Spawned(Spawned),
    Started(Started),
    Finished(Finished),
    Slow(Slow),
    Restarting(Restarting),
}

#[derive(Clone, Debug)]
struct Cancelled {
    scope: String,
    cause: Cause,
}

#[derive(Clone, Debug)]
struct Lost {
    scope: String,
    lost: Cause,
    winner: Cause,
}

#[derive(Clone, Debug)]
struct GroupMade {
    group: String,
    /// The span the recorder attached to the group, if it attaches spans.
    span: Option<u64>,
}

#[derive(Clone, Debug)]
struct Spawned {
    group: String,
    task: String,
    line: u32,
    pending: bool,
}

#[derive(Clone, Debug)]
struct Started {
    task: String,
    scope: String,
    was_pending: bool,
    group_span: Option<u64>,
    /// The span the recorder attached to the task.
    span: Option<u64>,
}

#[derive(Clone, Debug)]
struct Finished {
    group: String,
    task: String,
    outcome: TaskOutcome,
    started: bool,
    error: Option<String>,
    cause: Option<Cause>,
    elapsed: Duration,
    cancel_latency: Option<Duration>,
    group_span: Option<u64>,
    span: Option<u64>,
    /// How many times the task's span had been entered when the task finished.
    enters: Option<usize>,
}

#[derive(Clone, Debug)]
struct Slow {
    task: String,
    file: String,
    line: u32,
    cause: Cause,
    since_cancel: Duration,
    span: Option<u64>,
}

#[derive(Clone, Debug)]
struct Restarting {
    supervisor: String,
    child: String,
    restarts: u32,
    delay: Duration,
    cause: Option<Cause>,
}

impl Event {
    fn kind(&self) -> &'static str {
        match self {
            Event::Cancelled(_) => "cancelled",
            Event::Lost(_) => "lost",
            Event::GroupCreated(_) => "group_created",
            Event::Spawned(_) => "spawned",
            Event::Started(_) => "started",
            Event::Finished(_) => "finished",
            Event::Slow(_) => "slow",
            Event::Restarting(_) => "restarting",
        }
    }

    /// The task a task event is about.
    fn task(&self) -> Option<&str> {
        match self {
            Event::Spawned(e) => Some(&e.task),
            Event::Started(e) => Some(&e.task),
            Event::Finished(e) => Some(&e.task),
            Event::Slow(e) => Some(&e.task),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spans: attachments that count their entries and drops

thread_local! {
    /// The span entered on this thread, if any.
    static ENTERED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The span entered on this thread, if any.
fn entered() -> Option<u64> {
    ENTERED.get()
}

/// An attachment like a tracing span: entering it marks the thread as inside it.
struct Span {
    id: u64,
    enters: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

impl Attachment for Span {
    fn enter(&self, f: &mut dyn FnMut()) {
        self.enters.fetch_add(1, Ordering::SeqCst);
        let outer = ENTERED.replace(Some(self.id));
        f();
        ENTERED.set(outer);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Makes the spans of a recorder.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    dropped: Arc<AtomicUsize>,
}

impl Spans {
    fn open(&self) -> Arc<Span> {
        Arc::new(Span {
            id: self.next.fetch_add(1, Ordering::SeqCst) + 1,
            enters: AtomicUsize::new(0),
            dropped: self.dropped.clone(),
        })
    }
}

/// The span an event carries, downcast from the attachment.
fn span_of(attachment: Option<&dyn Attachment>) -> Option<&Span> {
    attachment.and_then(|attachment| (attachment as &dyn Any).downcast_ref::<Span>())
}

fn span_id(attachment: Option<&dyn Attachment>) -> Option<u64> {
    span_of(attachment).map(|span| span.id)
}

// ---------------------------------------------------------------------------------------------
// The recording observer

type Reaction = Box<dyn Fn(&Event) + Send + Sync>;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Notify,
    /// Its answer to `slow_to_stop_after`.
    slow_after: Option<Duration>,
    /// Answers `false` to `observes_tasks`.
    ignores_tasks: bool,
    /// Attaches a span to every group and task.
    spans: Option<Spans>,
    /// Called with every event once it is recorded (outside the recorder's lock).
    reaction: OnceLock<Reaction>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn slow_after(after: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            slow_after: Some(after),
            ..Recorder::default()
        })
    }

    fn with_spans() -> Arc<Recorder> {
        Arc::new(Recorder {
            spans: Some(Spans::default()),
            ..Recorder::default()
        })
    }

    /// Calls `reaction` with every event from now on, from inside the hook.
    fn react(&self, reaction: impl Fn(&Event) + Send + Sync + 'static) {
        assert!(
            self.reaction.set(Box::new(reaction)).is_ok(),
            "one reaction"
        );
    }

    fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event.clone());
        self.changed.notify_waiters();
        if let Some(react) = self.reaction.get() {
            react(&event);
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `done` holds. Panics if it does not within an hour of (paused) tokio time,
    /// which auto-advances as soon as nothing else can happen.
    async fn wait_until(&self, what: &str, done: impl Fn(&Recorder) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(3600), waiting)
            .await
            .is_err()
        {
            panic!("waited in vain for {what}; events: {:#?}", self.events());
        }
    }

    fn pick<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(pick)
            .collect()
    }

    fn cancellations(&self) -> Vec<Cancelled> {
        self.pick(|e| match e {
            Event::Cancelled(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn cancelled_scopes(&self) -> Vec<String> {
        self.cancellations().into_iter().map(|e| e.scope).collect()
    }

    fn losses(&self) -> Vec<Lost> {
        self.pick(|e| match e {
            Event::Lost(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn groups(&self) -> Vec<GroupMade> {
        self.pick(|e| match e {
            Event::GroupCreated(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn spawned(&self) -> Vec<Spawned> {
        self.pick(|e| match e {
            Event::Spawned(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn started(&self) -> Vec<Started> {
        self.pick(|e| match e {
            Event::Started(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn finished(&self) -> Vec<Finished> {
        self.pick(|e| match e {
            Event::Finished(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn slow(&self) -> Vec<Slow> {
        self.pick(|e| match e {
            Event::Slow(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn restarts(&self) -> Vec<Restarting> {
        self.pick(|e| match e {
            Event::Restarting(e) => Some(e.clone()),
            _ => None,
        })
    }

    fn started_of(&self, task: &str) -> Vec<Started> {
        let mut started = self.started();
        started.retain(|e| e.task == task);
        started
    }

    #[track_caller]
    fn spawned_once(&self, task: &str) -> Spawned {
        exactly_one(self.spawned().into_iter().filter(|e| e.task == task))
    }

    #[track_caller]
    fn started_once(&self, task: &str) -> Started {
        exactly_one(self.started_of(task))
    }

    #[track_caller]
    fn finished_once(&self, task: &str) -> Finished {
        exactly_one(self.finished().into_iter().filter(|e| e.task == task))
    }

    /// The kinds of the events about `task`, in the order they came.
    fn lifecycle(&self, task: &str) -> Vec<&'static str> {
        self.pick(|e| (e.task() == Some(task)).then(|| e.kind()))
    }

    /// Where the first event of `kind` about `task` came among all events.
    #[track_caller]
    fn position(&self, kind: &str, task: &str) -> usize {
        let events = self.events();
        events
            .iter()
            .position(|e| e.kind() == kind && e.task() == Some(task))
            .unwrap_or_else(|| panic!("no {kind} event for {task}: {events:#?}"))
    }

    fn spans_dropped(&self) -> usize {
        let spans = self.spans.as_ref().expect("a recorder with spans");
        spans.dropped.load(Ordering::SeqCst)
    }

    fn open_span(&self) -> Option<Arc<Span>> {
        self.spans.as_ref().map(Spans::open)
    }
}

impl Observer for Recorder {
    fn scope_cancelled(&self, event: &ScopeCancelled<'_>) {
        self.record(Event::Cancelled(Cancelled {
            scope: event.scope.to_string(),
            cause: event.cause.clone(),
        }));
    }

    fn cancel_lost(&self, event: &CancelLost<'_>) {
        self.record(Event::Lost(Lost {
            scope: event.scope.to_string(),
            lost: event.lost.clone(),
            winner: event.cause.clone(),
        }));
    }

    fn group_created(&self, event: &GroupCreated<'_>) -> Option<Arc<dyn Attachment>> {
        let span = self.open_span();
        self.record(Event::GroupCreated(GroupMade {
            group: event.scope.path().to_string(),
            span: span.as_ref().map(|span| span.id),
        }));
        span.map(|span| span as Arc<dyn Attachment>)
    }

    fn observes_tasks(&self, _: &GroupCreated<'_>) -> bool {
        !self.ignores_tasks
    }

    fn task_spawned(&self, event: &TaskSpawned<'_>) {
        self.record(Event::Spawned(Spawned {
            group: event.group.path().to_string(),
            task: event.task.name().to_owned(),
            line: event.task.spawned_at().line(),
            pending: event.pending,
        }));
    }

    fn task_started(&self, event: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        let span = self.open_span();
        self.record(Event::Started(Started {
            task: event.task.name().to_owned(),
            scope: event.scope.path().to_string(),
            was_pending: event.was_pending,
            group_span: span_id(event.group_attachment),
            span: span.as_ref().map(|span| span.id),
        }));
        span.map(|span| span as Arc<dyn Attachment>)
    }

    fn task_finished(&self, event: &TaskFinished<'_>) {
        self.record(Event::Finished(Finished {
            group: event.group.path().to_string(),
            task: event.task.name().to_owned(),
            outcome: event.outcome,
            started: event.started,
            error: event.error.map(ToString::to_string),
            cause: event.cause.cloned(),
            elapsed: event.elapsed,
            cancel_latency: event.cancel_latency,
            group_span: span_id(event.group_attachment),
            span: span_id(event.attachment),
            enters: span_of(event.attachment).map(|span| span.enters.load(Ordering::SeqCst)),
        }));
    }

    fn task_slow_to_stop(&self, event: &TaskSlowToStop<'_>) {
        self.record(Event::Slow(Slow {
            task: event.task.name().to_owned(),
            file: event.task.spawned_at().file().to_owned(),
            line: event.task.spawned_at().line(),
            cause: event.cause.clone(),
            since_cancel: event.since_cancel,
            span: span_id(event.attachment),
        }));
    }

    fn child_restarting(&self, event: &ChildRestarting<'_>) {
        self.record(Event::Restarting(Restarting {
            supervisor: event.supervisor.path().to_string(),
            child: event.child.to_owned(),
            restarts: event.restarts,
            delay: event.delay,
            cause: event.cause.cloned(),
        }));
    }

    fn slow_to_stop_after(&self) -> Option<Duration> {
        self.slow_after
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

type Group = TaskGroup<(), BoxError>;

/// A root scope named `name` that reports to `recorder`.
fn observed_root(name: &str, recorder: &Arc<Recorder>) -> Scope {
    Scope::builder()
        .name(name)
        .observer(recorder.clone())
        .build()
}

fn group_on(scope: &Scope, name: &str) -> Group {
    TaskGroup::builder(scope).name(name).build()
}

fn limit(n: usize) -> NonZeroUsize {
    n.try_into().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[track_caller]
fn exactly_one<T: fmt::Debug>(items: impl IntoIterator<Item = T>) -> T {
    let mut items: Vec<T> = items.into_iter().collect();
    assert_eq!(items.len(), 1, "expected exactly one: {items:#?}");
    items.pop().unwrap()
}

/// Asserts `actual` is `expected`, give or take the 1 ms resolution of tokio's timers.
#[track_caller]
fn assert_about(actual: Duration, expected: Duration) {
    assert!(
        actual.abs_diff(expected) <= ms(1),
        "{actual:?} is not {expected:?} (within 1 ms)"
    );
}

/// A well-behaved task: returns its scope's cause as soon as it is cancelled.
async fn until_cancelled(scope: Scope) -> Result<(), BoxError> {
    Err(scope.cancelled().await.into())
}

async fn fails(_: Scope) -> Result<(), BoxError> {
    Err("disk full".into())
}

async fn panics(_: Scope) -> Result<(), BoxError> {
    panic!("boom")
}

/// A task that pays no attention to its cancellation and runs for `duration`.
fn ignores_cancel_for(duration: Duration) -> impl FnOnce(Scope) -> BoxedTask {
    move |_| {
        Box::pin(async move {
            sleep(duration).await;
            Ok(())
        })
    }
}

type BoxedTask = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// A task that records whether its closure was ever called.
fn records_its_call(called: &Arc<AtomicBool>) -> impl FnOnce(Scope) -> BoxedTask + use<> {
    let called = called.clone();
    move |_| {
        called.store(true, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

fn names(tasks: &[taskscope::TaskInfo]) -> Vec<&str> {
    tasks.iter().map(|task| task.name()).collect()
}

/// A supervisor child that fails `failures` times, a second after each start, then runs until
/// it is stopped.
fn flaky(name: &'static str, failures: u32) -> ChildSpec {
    let runs = Arc::new(AtomicU32::new(0));
    ChildSpec::new(name, move |scope: Scope| {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        async move {
            if run < failures {
                sleep(Duration::from_secs(1)).await;
                return Err(BoxError::from(format!("connection reset #{run}")));
            }
            scope.cancelled().await;
            Ok(())
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Scopes

#[tokio::test(start_paused = true)]
async fn cancel_is_reported_once_for_the_scope_it_was_aimed_at_not_its_descendants() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let orders = app.child_builder().name("orders").build();
    let order = orders.child_builder().name("order-17").build();

    assert!(orders.cancel(Cause::new("USER_CANCELLED")));

    assert!(order.is_cancelled());
    let event = exactly_one(recorder.cancellations());
    assert_eq!(event.scope, "app/orders");
    assert_eq!(event.cause.kind(), CauseKind::Explicit);
    assert_eq!(event.cause.code(), "USER_CANCELLED");
    assert_eq!(event.cause.origin(), Some("app/orders"));
    assert!(event.cause.ptr_eq(&orders.cause().unwrap()));
    assert!(recorder.losses().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_losing_cancel_is_reported_with_the_cause_that_won() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let orders = app.child_builder().name("orders").build();
    let order = orders.child_builder().name("order-17").build();

    assert!(orders.cancel(Cause::new("USER_CANCELLED")));
    assert!(!orders.cancel(Cause::new("RETRY")));
    assert!(!order.cancel(Cause::new("ORDER_DONE")));

    let losses = recorder.losses();
    let lost: Vec<_> = losses
        .iter()
        .map(|e| (e.scope.as_str(), e.lost.code(), e.winner.code()))
        .collect();
    assert_eq!(
        lost,
        [
            ("app/orders", "RETRY", "USER_CANCELLED"),
            ("app/orders/order-17", "ORDER_DONE", "USER_CANCELLED"),
        ]
    );
    let winner = orders.cause().unwrap();
    assert!(recorder.losses().iter().all(|e| e.winner.ptr_eq(&winner)));
    assert_eq!(recorder.cancelled_scopes(), ["app/orders"]);
}

#[tokio::test(start_paused = true)]
async fn scopes_made_under_an_observed_scope_report_to_its_observer_detached_ones_too() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let orders = app.child_builder().name("orders").build();
    let order = orders.child_builder().name("order-17").build();
    let cleanup = app.child_builder().name("cleanup").detached().build();

    order.cancel(Cause::new("ORDER_DONE"));
    cleanup.cancel(Cause::new("CLEANED_UP"));

    assert_eq!(
        recorder.cancelled_scopes(),
        ["app/orders/order-17", "app/cleanup"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_scope_with_its_own_observer_reports_to_that_one_only() {
    let outer = Recorder::new();
    let inner = Recorder::new();
    let app = observed_root("app", &outer);
    let tenant = app
        .child_builder()
        .name("tenant")
        .observer(inner.clone())
        .build();
    let job = tenant.child_builder().name("job").build();
    let _group = group_on(&tenant, "workers");

    job.cancel(Cause::new("JOB_DONE"));
    app.cancel(Cause::new("SHUTDOWN"));

    assert!(tenant.is_cancelled());
    assert_eq!(inner.cancelled_scopes(), ["app/tenant/job"]);
    assert_eq!(outer.cancelled_scopes(), ["app"]);
    let inner_groups: Vec<_> = inner.groups().into_iter().map(|g| g.group).collect();
    assert_eq!(inner_groups, ["app/tenant/workers"]);
    assert!(outer.groups().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_scope_built_without_an_observer_reports_nothing() {
    let recorder = Recorder::new();
    let quiet = Scope::builder().name("quiet").build();
    let observed = quiet
        .child_builder()
        .name("observed")
        .observer(recorder.clone())
        .build();
    let sibling = quiet.child_builder().name("sibling").build();

    assert!(sibling.cancel(Cause::new("FIRST")));
    assert!(!sibling.cancel(Cause::new("SECOND")));
    let group = group_on(&quiet, "workers");
    group.spawn("work", |_| async { Ok(()) });
    group.join().await.unwrap();
    assert!(quiet.cancel(Cause::new("DONE")));

    assert!(observed.is_cancelled());
    assert!(recorder.events().is_empty(), "{:#?}", recorder.events());
}

#[tokio::test(start_paused = true)]
async fn an_observer_may_cancel_another_scope_from_inside_a_hook() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let primary = app.child_builder().name("primary").build();
    let replica = app.child_builder().name("replica").build();
    let weak_replica = replica.downgrade();
    recorder.react(move |event| {
        if let Event::Cancelled(event) = event
            && event.scope == "app/primary"
            && let Some(replica) = weak_replica.upgrade()
        {
            replica.cancel(Cause::new("PRIMARY_GONE"));
        }
    });

    primary.cancel(Cause::new("FAILOVER"));

    assert_eq!(replica.cause().unwrap().code(), "PRIMARY_GONE");
    assert_eq!(recorder.cancelled_scopes(), ["app/primary", "app/replica"]);
}

// ---------------------------------------------------------------------------------------------
// Deadlines

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_reported_once_when_it_is_noticed() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let request = app
        .child_builder()
        .name("request")
        .timeout(Duration::from_secs(1))
        .build();
    let query = request.child_builder().name("query").build();

    advance(Duration::from_secs(1)).await;
    assert!(recorder.events().is_empty(), "nobody has looked yet");

    assert!(query.is_cancelled());
    assert!(request.is_cancelled());
    let cause = request.cancelled().await;

    let event = exactly_one(recorder.cancellations());
    assert_eq!(event.scope, "app/request", "the deadline's owner");
    assert_eq!(event.cause.kind(), CauseKind::DeadlineExceeded);
    assert!(event.cause.ptr_eq(&cause));
    assert!(recorder.losses().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_descendant_past_its_own_deadline_reports_it_when_an_ancestor_is_cancelled() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let request = app
        .child_builder()
        .name("request")
        .timeout(Duration::from_secs(1))
        .build();
    let query = request.child_builder().name("query").build();

    advance(Duration::from_secs(2)).await;
    app.cancel(Cause::new("SHUTTING_DOWN"));

    let events = recorder.cancellations();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].scope, "app");
    assert_eq!(events[0].cause.code(), "SHUTTING_DOWN");
    assert_eq!(
        events[1].scope, "app/request",
        "the deadline's owner, not its child"
    );
    assert_eq!(events[1].cause.kind(), CauseKind::DeadlineExceeded);
    assert!(events[1].cause.ptr_eq(&query.cause().unwrap()));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_waited_on_is_reported_when_it_passes() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let request = app.child_builder().name("request").timeout(ms(250)).build();

    request.cancelled().await;

    let event = exactly_one(recorder.cancellations());
    assert_eq!(event.scope, "app/request");
    assert_eq!(event.cause.kind(), CauseKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_after_an_unnoticed_deadline_is_reported_as_lost_to_it() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let request = app
        .child_builder()
        .name("request")
        .timeout(Duration::from_secs(1))
        .build();
    advance(Duration::from_secs(1)).await;

    assert!(!request.cancel(Cause::new("TOO_LATE")));

    let cancelled = exactly_one(recorder.cancellations());
    assert_eq!(cancelled.cause.kind(), CauseKind::DeadlineExceeded);
    let lost = exactly_one(recorder.losses());
    assert_eq!(lost.scope, "app/request");
    assert_eq!(lost.lost.code(), "TOO_LATE");
    assert_eq!(lost.winner.kind(), CauseKind::DeadlineExceeded);
}

// ---------------------------------------------------------------------------------------------
// Groups: task events

#[tokio::test(start_paused = true)]
async fn a_task_is_reported_spawned_started_and_finished_before_join_returns() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let spawn_line = line!() + 1;
    group.spawn("ok", |_| async { Ok(()) });
    group.join().await.unwrap();

    // Nothing waited for: every event came before `join` returned.
    let groups: Vec<_> = recorder.groups().into_iter().map(|g| g.group).collect();
    assert_eq!(groups, ["app/batch"]);
    assert_eq!(recorder.lifecycle("ok"), ["spawned", "started", "finished"]);
    let spawned = recorder.spawned_once("ok");
    assert_eq!(spawned.group, "app/batch");
    assert_eq!(spawned.line, spawn_line);
    assert!(!spawned.pending);
    let started = recorder.started_once("ok");
    assert_eq!(started.scope, "app/batch/ok");
    assert!(!started.was_pending);
    let finished = recorder.finished_once("ok");
    assert_eq!(finished.group, "app/batch");
    assert_eq!(finished.outcome, TaskOutcome::Completed);
    assert!(finished.started);
    assert_eq!(finished.error, None);
    assert!(finished.cause.is_none());
    assert_eq!(finished.cancel_latency, None);
}

#[tokio::test(start_paused = true)]
async fn join_cannot_return_while_the_task_finished_event_is_being_delivered() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let (release, released) = oneshot::channel::<()>();
    group.spawn("last", |_| async move {
        let _ = released.await;
        Ok(())
    });
    let join = Arc::new(Mutex::new(Some(tokio_test::task::spawn(group.join()))));
    let joined_in_hook = Arc::new(Mutex::new(None));
    let (hook_join, hook_joined) = (join.clone(), joined_in_hook.clone());
    recorder.react(move |event| {
        if let Event::Finished(_) = event
            && let Some(join) = hook_join.lock().unwrap().as_mut()
        {
            *hook_joined.lock().unwrap() = Some(join.poll().is_ready());
        }
    });
    assert!(join.lock().unwrap().as_mut().unwrap().poll().is_pending());

    release.send(()).unwrap();
    recorder
        .wait_until("the task's end", |r| !r.finished().is_empty())
        .await;

    assert_eq!(*joined_in_hook.lock().unwrap(), Some(false));
    let mut join = join.lock().unwrap().take().unwrap();
    assert!(join.is_woken());
    assert!(matches!(join.poll(), std::task::Poll::Ready(Ok(_))));
}

#[tokio::test(start_paused = true)]
async fn each_way_a_task_ends_is_reported_with_its_outcome_and_error_text() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group: Group = TaskGroup::builder(&app).name("batch").collect_all().build();
    group.spawn("cancelled", until_cancelled);
    group.spawn("completes", |_| async { Ok(()) });
    group.spawn("fails", fails);
    group.spawn("panics", panics);
    recorder
        .wait_until("three tasks finished", |r| r.finished().len() == 3)
        .await;
    group.scope().cancel(Cause::new("STOP"));
    let error = group.join().await.unwrap_err();
    assert_eq!(error.failures().len(), 2);

    let outcome = |task| {
        let finished = recorder.finished_once(task);
        (finished.outcome, finished.error)
    };
    assert_eq!(outcome("completes"), (TaskOutcome::Completed, None));
    assert_eq!(
        outcome("fails"),
        (TaskOutcome::Failed, Some("disk full".to_owned()))
    );
    assert_eq!(
        outcome("panics"),
        (TaskOutcome::Panicked, Some("boom".to_owned()))
    );
    assert_eq!(outcome("cancelled"), (TaskOutcome::Cancelled, None));
    let cancelled = recorder.finished_once("cancelled");
    assert_eq!(cancelled.cause.unwrap().code(), "STOP");
}

#[tokio::test(start_paused = true)]
async fn a_failing_task_cancels_its_group_and_reports_no_cause_of_its_own() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("waits", until_cancelled);
    group.spawn("fails", fails);
    group.join().await.unwrap_err();

    let cancelled = exactly_one(recorder.cancellations());
    assert_eq!(cancelled.scope, "app/batch");
    assert_eq!(cancelled.cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cancelled.cause.origin(), Some("app/batch/fails"));
    let failed = recorder.finished_once("fails");
    assert_eq!(failed.outcome, TaskOutcome::Failed);
    assert!(
        failed.cause.is_none(),
        "its own failure is not what stopped it"
    );
    let waits = recorder.finished_once("waits");
    assert_eq!(waits.outcome, TaskOutcome::Cancelled);
    assert!(waits.cause.unwrap().ptr_eq(&cancelled.cause));
}

#[tokio::test(start_paused = true)]
async fn a_later_failure_is_reported_as_a_lost_cancel_and_as_stopped_by_the_first() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("first", |_| async {
        sleep(ms(10)).await;
        Err("first broke".into())
    });
    group.spawn("second", |_| async {
        sleep(ms(25)).await;
        Err("second broke".into())
    });
    group.join().await.unwrap_err();

    let cancelled = exactly_one(recorder.cancellations());
    assert_eq!(cancelled.cause.origin(), Some("app/batch/first"));
    let lost = exactly_one(recorder.losses());
    assert_eq!(lost.scope, "app/batch");
    assert_eq!(lost.lost.origin(), Some("app/batch/second"));
    assert!(lost.winner.ptr_eq(&cancelled.cause));
    let second = recorder.finished_once("second");
    assert_eq!(second.outcome, TaskOutcome::Failed);
    assert_eq!(second.error.as_deref(), Some("second broke"));
    assert!(second.cause.unwrap().ptr_eq(&cancelled.cause));
    assert_about(second.cancel_latency.unwrap(), ms(15));
}

#[tokio::test(start_paused = true)]
async fn a_task_over_the_limit_waits_pending_and_starts_when_a_slot_frees() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group: Group = TaskGroup::builder(&app)
        .name("batch")
        .limit(limit(1))
        .build();
    group.spawn("first", ignores_cancel_for(ms(100)));
    group.spawn("second", ignores_cancel_for(ms(50)));

    assert!(!recorder.spawned_once("first").pending);
    assert!(recorder.spawned_once("second").pending);
    assert!(recorder.started_of("second").is_empty());
    group.join().await.unwrap();

    assert!(recorder.started_once("second").was_pending);
    assert_eq!(
        recorder.lifecycle("second"),
        ["spawned", "started", "finished"]
    );
    assert!(recorder.position("finished", "first") < recorder.position("started", "second"));
    // From its start, not its spawn.
    assert_about(recorder.finished_once("second").elapsed, ms(50));
}

#[tokio::test(start_paused = true)]
async fn pending_tasks_of_a_cancelled_group_are_reported_cancelled_without_starting() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group: Group = TaskGroup::builder(&app)
        .name("batch")
        .limit(limit(1))
        .build();
    let called = Arc::new(AtomicBool::new(false));
    group.spawn("running", until_cancelled);
    group.spawn("waiting", records_its_call(&called));

    group.scope().cancel(Cause::new("STOP"));

    // Reported by the cancel itself.
    let waiting = recorder.finished_once("waiting");
    assert_eq!(waiting.outcome, TaskOutcome::Cancelled);
    assert!(!waiting.started);
    assert_eq!(waiting.cause.unwrap().code(), "STOP");
    assert_eq!(waiting.elapsed, Duration::ZERO);
    assert_eq!(waiting.cancel_latency, None);
    assert_eq!(recorder.lifecycle("waiting"), ["spawned", "finished"]);
    let error = group.join().await.unwrap_err();
    assert_eq!(names(error.cancelled()), ["running", "waiting"]);
    assert!(!called.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_task_spawned_into_a_cancelled_group_is_reported_pending_then_cancelled() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.scope().cancel(Cause::new("STOP"));
    let called = Arc::new(AtomicBool::new(false));

    group.spawn("late", records_its_call(&called));
    let refused = group.try_spawn("refused", |_| async { Ok(()) });

    assert_eq!(recorder.lifecycle("late"), ["spawned", "finished"]);
    assert!(recorder.spawned_once("late").pending);
    let late = recorder.finished_once("late");
    assert_eq!(late.outcome, TaskOutcome::Cancelled);
    assert!(!late.started);
    assert_eq!(late.cause.unwrap().code(), "STOP");
    assert!(refused.is_err());
    assert!(recorder.lifecycle("refused").is_empty(), "never admitted");
    let error = group.join().await.unwrap_err();
    assert_eq!(names(error.cancelled()), ["late"]);
    assert!(!called.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_group_is_cancelled_as_it_is_spawned_starts_and_ends_at_once() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let weak_group = group.scope().downgrade();
    // The window between spawn and start, widened by the observer itself.
    recorder.react(move |event| {
        if let Event::Spawned(_) = event
            && let Some(group) = weak_group.upgrade()
        {
            group.cancel(Cause::new("STOP"));
        }
    });
    let called = Arc::new(AtomicBool::new(false));

    group.spawn("racer", records_its_call(&called));

    assert_eq!(
        recorder.lifecycle("racer"),
        ["spawned", "started", "finished"]
    );
    let racer = recorder.finished_once("racer");
    assert_eq!(racer.outcome, TaskOutcome::Cancelled);
    assert!(racer.started, "reported as running since its spawn");
    assert_eq!(racer.cause.unwrap().code(), "STOP");
    assert!(!called.load(Ordering::SeqCst));
    let error = group.join().await.unwrap_err();
    assert_eq!(names(error.cancelled()), ["racer"]);
}

#[tokio::test(start_paused = true)]
async fn every_task_finishes_exactly_once_after_its_spawn_and_start() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group: Group = TaskGroup::builder(&app)
        .name("batch")
        .limit(limit(3))
        .build();
    let mut tasks: Vec<String> = Vec::new();
    for i in 0..8u64 {
        let name = format!("t{i}");
        tasks.push(name.clone());
        group.spawn(name, move |scope| async move {
            match i % 4 {
                0 => Ok(()),
                1 => {
                    sleep(ms(10 * i)).await;
                    Ok(())
                }
                2 => until_cancelled(scope).await,
                _ => {
                    sleep(ms(30)).await;
                    Err(format!("t{i} failed").into())
                }
            }
        });
    }
    recorder
        .wait_until("the group's cancellation", |r| {
            !r.cancellations().is_empty()
        })
        .await;
    group.spawn("late", |_| async { Ok(()) });
    tasks.push("late".into());
    group.join().await.unwrap_err();

    assert_eq!(recorder.spawned().len(), tasks.len());
    assert_eq!(recorder.finished().len(), tasks.len());
    for task in &tasks {
        let finished = recorder.finished_once(task);
        let expected = if finished.started {
            &["spawned", "started", "finished"][..]
        } else {
            &["spawned", "finished"][..]
        };
        assert_eq!(recorder.lifecycle(task), expected, "{task}: {finished:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Groups: timing

#[tokio::test(start_paused = true)]
async fn cancel_latency_runs_from_the_cancel_to_the_task_returning() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("drains", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(300)).await;
        Err(cause.into())
    });

    sleep(Duration::from_secs(1)).await;
    group.scope().cancel(Cause::new("STOP"));
    group.join().await.unwrap_err();

    let drains = recorder.finished_once("drains");
    assert_eq!(drains.outcome, TaskOutcome::Cancelled);
    assert_about(drains.cancel_latency.unwrap(), ms(300));
    assert_about(drains.elapsed, ms(1300));
}

#[tokio::test(start_paused = true)]
async fn cancel_latency_of_a_deadline_runs_from_the_deadline_even_when_noticed_late() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let request = app
        .child_builder()
        .name("request")
        .timeout(Duration::from_secs(1))
        .build();
    let group = group_on(&request, "batch");
    group.spawn("slow-query", ignores_cancel_for(Duration::from_secs(3)));

    // Nobody looks at the deadline until the task ends, at 3 s.
    sleep(Duration::from_secs(5)).await;
    group.join().await.unwrap_err();

    let query = recorder.finished_once("slow-query");
    assert_eq!(query.outcome, TaskOutcome::Completed);
    assert_eq!(query.cause.unwrap().kind(), CauseKind::DeadlineExceeded);
    assert_about(query.cancel_latency.unwrap(), Duration::from_secs(2));
    assert_about(query.elapsed, Duration::from_secs(3));
    assert_eq!(recorder.cancelled_scopes(), ["app/request"]);
}

#[tokio::test(start_paused = true)]
async fn a_task_ignoring_its_cancel_is_reported_aborted_after_the_grace() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group: Group = TaskGroup::builder(&app)
        .name("batch")
        .grace(Duration::from_secs(1))
        .build();
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(3600)));

    group.scope().cancel(Cause::new("STOP"));
    let error = group.join().await.unwrap_err();

    assert_eq!(names(error.aborted()), ["stubborn"]);
    let stubborn = recorder.finished_once("stubborn");
    assert_eq!(stubborn.outcome, TaskOutcome::Aborted);
    assert!(stubborn.started);
    assert_eq!(stubborn.cause.unwrap().code(), "STOP");
    assert_about(stubborn.cancel_latency.unwrap(), Duration::from_secs(1));
    assert_about(stubborn.elapsed, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_group_reports_its_running_tasks_aborted() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(3600)));

    drop(group);
    recorder
        .wait_until("the task's end", |r| !r.finished().is_empty())
        .await;

    let stubborn = recorder.finished_once("stubborn");
    assert_eq!(stubborn.outcome, TaskOutcome::Aborted);
    assert_eq!(stubborn.cause.unwrap().kind(), CauseKind::Dropped);
    let cancelled = exactly_one(recorder.cancellations());
    assert_eq!(cancelled.scope, "app/batch");
    assert_eq!(cancelled.cause.kind(), CauseKind::Dropped);
}

// ---------------------------------------------------------------------------------------------
// Slow to stop

#[tokio::test(start_paused = true)]
async fn a_task_running_past_the_threshold_is_reported_slow_to_stop_once() {
    let recorder = Recorder::slow_after(ms(500));
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let spawn_line = line!() + 1;
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(2)));

    group.scope().cancel(Cause::new("STOP"));
    // Reported whether or not anyone joins the group.
    recorder
        .wait_until("a slow-to-stop report", |r| !r.slow().is_empty())
        .await;
    group.join().await.unwrap_err();

    let slow = exactly_one(recorder.slow());
    assert_eq!(slow.task, "stubborn");
    assert!(slow.file.ends_with("observe.rs"), "{}", slow.file);
    assert_eq!(slow.line, spawn_line);
    assert_eq!(slow.cause.code(), "STOP");
    assert_about(slow.since_cancel, ms(500));
    assert_eq!(
        recorder.lifecycle("stubborn"),
        ["spawned", "started", "slow", "finished"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_stopping_within_the_threshold_is_not_reported_slow() {
    let recorder = Recorder::slow_after(ms(500));
    let app = observed_root("app", &recorder);
    let mut group = group_on(&app, "batch");
    group.spawn("prompt", |scope| async move {
        let cause = scope.cancelled().await;
        sleep(ms(100)).await;
        Err(cause.into())
    });

    group.scope().cancel(Cause::new("STOP"));
    while group.join_next().await.is_some() {}
    // Past the threshold, with the group still alive: its check has run.
    sleep(Duration::from_secs(1)).await;

    assert!(recorder.slow().is_empty(), "{:#?}", recorder.slow());
    assert_eq!(
        recorder.lifecycle("prompt"),
        ["spawned", "started", "finished"]
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_threshold_no_task_is_reported_slow() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(2)));

    group.scope().cancel(Cause::new("STOP"));
    group.join().await.unwrap_err();

    assert!(recorder.slow().is_empty(), "{:#?}", recorder.slow());
    let stubborn = recorder.finished_once("stubborn");
    assert_about(stubborn.cancel_latency.unwrap(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_own_scope_alone_is_cancelled_is_not_reported_slow() {
    let recorder = Recorder::slow_after(ms(500));
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let (send_scope, task_scope) = oneshot::channel();
    group.spawn("worker", move |scope| {
        send_scope.send(scope.clone()).unwrap();
        async move {
            scope.cancelled().await;
            sleep(Duration::from_secs(2)).await;
            Ok(())
        }
    });

    task_scope
        .await
        .unwrap()
        .cancel(Cause::new("JUST_THIS_ONE"));
    group.join().await.unwrap();

    assert!(recorder.slow().is_empty(), "{:#?}", recorder.slow());
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_child_slow_to_stop_at_shutdown_is_reported() {
    let recorder = Recorder::slow_after(ms(500));
    let app = observed_root("app", &recorder);
    let supervisor = Supervisor::builder()
        .name("workers")
        .child(ChildSpec::new("feed", |scope: Scope| async move {
            scope.cancelled().await;
            sleep(Duration::from_secs(2)).await;
            Ok(())
        }))
        .start(&app)
        .unwrap();
    recorder
        .wait_until("the child's start", |r| !r.started_of("feed").is_empty())
        .await;

    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    let slow = exactly_one(recorder.slow());
    assert_eq!(slow.task, "feed");
    assert_eq!(slow.cause.kind(), CauseKind::Shutdown);
    assert_about(slow.since_cancel, ms(500));
}

#[tokio::test(start_paused = true)]
async fn an_observer_not_interested_in_tasks_gets_no_task_events() {
    let recorder = Arc::new(Recorder {
        ignores_tasks: true,
        slow_after: Some(ms(10)),
        ..Recorder::default()
    });
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(1)));

    group.scope().cancel(Cause::new("STOP"));
    group.join().await.unwrap_err();

    let kinds: Vec<_> = recorder.events().iter().map(Event::kind).collect();
    assert_eq!(kinds, ["group_created", "cancelled"]);
}

// ---------------------------------------------------------------------------------------------
// Attachments

#[tokio::test(start_paused = true)]
async fn a_task_attachment_is_entered_around_its_closure_and_every_poll() {
    let recorder = Recorder::with_spans();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let seen = Arc::new(Mutex::new(Vec::new()));

    let log = seen.clone();
    group.spawn("traced", move |_| {
        log.lock().unwrap().push(entered()); // calling the closure
        async move {
            log.lock().unwrap().push(entered()); // first poll
            tokio::task::yield_now().await;
            log.lock().unwrap().push(entered()); // second poll
            Ok(())
        }
    });
    group.join().await.unwrap();

    let span = recorder.started_once("traced").span;
    assert!(span.is_some());
    assert_eq!(*seen.lock().unwrap(), [span; 3]);
    assert_eq!(entered(), None, "left again outside the task");
    let enters = recorder.finished_once("traced").enters.unwrap();
    assert!(enters >= 3, "entered {enters} times");
}

#[tokio::test(start_paused = true)]
async fn task_events_carry_the_attachments_the_observer_returned() {
    let recorder = Arc::new(Recorder {
        spans: Some(Spans::default()),
        slow_after: Some(ms(500)),
        ..Recorder::default()
    });
    let app = observed_root("app", &recorder);
    let group: Group = TaskGroup::builder(&app)
        .name("batch")
        .limit(limit(1))
        .build();
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(2)));
    group.spawn("queued", |_| async { Ok(()) });

    group.scope().cancel(Cause::new("STOP"));
    group.join().await.unwrap_err();

    let group_span = exactly_one(recorder.groups()).span.unwrap();
    let started = recorder.started_once("stubborn");
    let task_span = started.span.unwrap();
    assert_ne!(task_span, group_span);
    assert_eq!(started.group_span, Some(group_span));
    let finished = recorder.finished_once("stubborn");
    assert_eq!(
        (finished.group_span, finished.span),
        (Some(group_span), Some(task_span))
    );
    assert_eq!(exactly_one(recorder.slow()).span, Some(task_span));
    let queued = recorder.finished_once("queued");
    assert_eq!((queued.group_span, queued.span), (Some(group_span), None));
}

#[tokio::test(start_paused = true)]
async fn attachments_are_dropped_when_their_task_and_their_group_end() {
    let recorder = Recorder::with_spans();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    let (release, released) = oneshot::channel::<()>();
    group.spawn("waits", |_| async move {
        let _ = released.await;
        Ok(())
    });
    assert_eq!(recorder.spans_dropped(), 0);

    release.send(()).unwrap();
    recorder
        .wait_until("the task's end", |r| !r.finished().is_empty())
        .await;
    assert_eq!(
        recorder.spans_dropped(),
        1,
        "the task's span, once it ended"
    );

    group.join().await.unwrap();
    assert_eq!(recorder.spans_dropped(), 2, "the group's, with the group");
}

#[tokio::test(start_paused = true)]
async fn attachments_of_a_dropped_group_are_dropped_once_its_tasks_are_aborted() {
    let recorder = Recorder::with_spans();
    let app = observed_root("app", &recorder);
    let group = group_on(&app, "batch");
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(3600)));

    drop(group);
    recorder
        .wait_until("the task's end", |r| !r.finished().is_empty())
        .await;

    assert_eq!(recorder.spans_dropped(), 2, "the task's and the group's");
}

// ---------------------------------------------------------------------------------------------
// Supervisors

#[tokio::test(start_paused = true)]
async fn a_restarting_child_is_reported_with_its_restart_count_and_failure() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(Backoff::exponential(ms(100)))
        .child(flaky("feed", 2))
        .start(&app)
        .unwrap();
    recorder
        .wait_until("the third start", |r| r.started_of("feed").len() == 3)
        .await;
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    let restarts = recorder.restarts();
    assert_eq!(restarts.len(), 2, "{restarts:#?}");
    for (n, event) in restarts.iter().enumerate() {
        assert_eq!(event.supervisor, "app/workers");
        assert_eq!(event.child, "feed");
        assert_eq!(event.restarts, n as u32 + 1, "restarts count from 1");
        let cause = event.cause.as_ref().expect("restarted for a failure");
        assert_eq!(cause.kind(), CauseKind::TaskFailed);
        assert_eq!(cause.origin(), Some("app/workers/feed"));
        let detail = cause.detail().unwrap();
        assert!(
            detail.contains(&format!("connection reset #{n}")),
            "{detail}"
        );
    }
    let delays: Vec<_> = restarts.iter().map(|e| e.delay).collect();
    assert_eq!(delays, [ms(100), ms(200)]);
}

#[tokio::test(start_paused = true)]
async fn siblings_restarted_with_a_failing_child_are_reported_too() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let supervisor = Supervisor::builder()
        .name("workers")
        .strategy(taskscope::Strategy::OneForAll)
        .backoff(Backoff::exponential(ms(100)))
        .child(ChildSpec::new("steady", |scope: Scope| async move {
            scope.cancelled().await;
            Ok(())
        }))
        .child(flaky("feed", 1))
        .start(&app)
        .unwrap();
    recorder
        .wait_until("both restarted", |r| {
            r.started_of("feed").len() == 2 && r.started_of("steady").len() == 2
        })
        .await;
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    let restarts = recorder.restarts();
    let children: Vec<&str> = restarts.iter().map(|e| e.child.as_str()).collect();
    assert_eq!(children, ["feed", "steady"], "{restarts:#?}");
    let (feed, steady) = (&restarts[0], &restarts[1]);
    assert_eq!(steady.delay, ms(100), "restarts with the failing child");
    assert!(
        steady
            .cause
            .as_ref()
            .unwrap()
            .ptr_eq(feed.cause.as_ref().unwrap()),
        "told the failure's cause"
    );
}

#[tokio::test(start_paused = true)]
async fn each_child_stopped_at_shutdown_counts_its_latency_from_its_own_stop() {
    let recorder = Recorder::new();
    let app = observed_root("app", &recorder);
    let takes_a_second = |name| {
        ChildSpec::new(name, |scope: Scope| async move {
            scope.cancelled().await;
            sleep(Duration::from_secs(1)).await;
            Ok(())
        })
    };
    let supervisor = Supervisor::builder()
        .name("workers")
        .child(takes_a_second("a"))
        .child(takes_a_second("b"))
        .start(&app)
        .unwrap();
    recorder
        .wait_until("both started", |r| r.started_of("b").len() == 1)
        .await;
    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();

    // b stops first (1 s), then a (1 s more): each took a second after its own stop.
    assert_about(
        recorder.finished_once("b").cancel_latency.unwrap(),
        Duration::from_secs(1),
    );
    assert_about(
        recorder.finished_once("a").cancel_latency.unwrap(),
        Duration::from_secs(1),
    );
}

// ---------------------------------------------------------------------------------------------
// Observers that panic

/// What `Panicky` panics with.
const OBSERVER_BUG: &str = "observer bug";

/// An observer that panics in every hook, and remembers which hooks it panicked in. With
/// `observes_tasks` it does ask for its groups' tasks, and for slow-to-stop reports after
/// 10 ms, so that the task hooks are called (and panic) too.
struct Panicky {
    observes_tasks: bool,
    panicked_in: Mutex<BTreeSet<&'static str>>,
}

impl Panicky {
    fn new(observes_tasks: bool) -> Arc<Panicky> {
        Arc::new(Panicky {
            observes_tasks,
            panicked_in: Mutex::default(),
        })
    }

    fn bug(&self, hook: &'static str) -> ! {
        self.panicked_in.lock().unwrap().insert(hook);
        panic::panic_any(OBSERVER_BUG)
    }

    fn panicked_in(&self) -> BTreeSet<&'static str> {
        self.panicked_in.lock().unwrap().clone()
    }
}

impl Observer for Panicky {
    fn scope_cancelled(&self, _: &ScopeCancelled<'_>) {
        self.bug("scope_cancelled")
    }
    fn cancel_lost(&self, _: &CancelLost<'_>) {
        self.bug("cancel_lost")
    }
    fn group_created(&self, _: &GroupCreated<'_>) -> Option<Arc<dyn Attachment>> {
        self.bug("group_created")
    }
    fn observes_tasks(&self, _: &GroupCreated<'_>) -> bool {
        self.observes_tasks || self.bug("observes_tasks")
    }
    fn task_spawned(&self, _: &TaskSpawned<'_>) {
        self.bug("task_spawned")
    }
    fn task_started(&self, _: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        self.bug("task_started")
    }
    fn task_finished(&self, _: &TaskFinished<'_>) {
        self.bug("task_finished")
    }
    fn task_slow_to_stop(&self, _: &TaskSlowToStop<'_>) {
        self.bug("task_slow_to_stop")
    }
    fn child_restarting(&self, _: &ChildRestarting<'_>) {
        self.bug("child_restarting")
    }
    fn slow_to_stop_after(&self) -> Option<Duration> {
        if self.observes_tasks {
            Some(ms(10))
        } else {
            self.bug("slow_to_stop_after")
        }
    }
}

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// How many `QuietObserverPanics` are alive, and the panic hook they replaced.
static QUIET: Mutex<(usize, Option<Arc<PanicHook>>)> = Mutex::new((0, None));

/// While alive, the panic hook stays silent about `Panicky`'s panics (and only those); the
/// hook it replaced is restored when the last one is dropped. Tests run in parallel, so the
/// hook is shared.
struct QuietObserverPanics;

impl QuietObserverPanics {
    fn install() -> QuietObserverPanics {
        let mut quiet = QUIET.lock().unwrap_or_else(PoisonError::into_inner);
        if quiet.0 == 0 {
            let previous = Arc::new(panic::take_hook());
            quiet.1 = Some(previous.clone());
            panic::set_hook(Box::new(move |info| {
                if info.payload().downcast_ref::<&str>() != Some(&OBSERVER_BUG) {
                    previous(info);
                }
            }));
        }
        quiet.0 += 1;
        QuietObserverPanics
    }
}

impl Drop for QuietObserverPanics {
    fn drop(&mut self) {
        let mut quiet = QUIET.lock().unwrap_or_else(PoisonError::into_inner);
        quiet.0 -= 1;
        // Hooks cannot be changed while panicking; the quiet one then stays, harmlessly.
        if quiet.0 == 0 && !std::thread::panicking() {
            drop(panic::take_hook());
            let previous = quiet.1.take().expect("installed with the first guard");
            match Arc::try_unwrap(previous) {
                Ok(previous) => panic::set_hook(previous),
                Err(previous) => panic::set_hook(Box::new(move |info| previous(info))),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_stop_scopes_from_cancelling() {
    let _quiet = QuietObserverPanics::install();
    let observer = Panicky::new(false);
    let app = Scope::builder()
        .name("app")
        .observer(observer.clone())
        .build();
    let child = app.child_builder().name("child").build();
    let request = app.child_builder().name("request").timeout(ms(100)).build();
    let callback_ran = Arc::new(AtomicBool::new(false));
    let ran = callback_ran.clone();
    let _callback = app.on_cancel(move |_| ran.store(true, Ordering::SeqCst));

    assert!(child.cancel(Cause::new("FIRST")));
    assert!(!child.cancel(Cause::new("SECOND")));
    assert_eq!(child.cause().unwrap().code(), "FIRST");
    assert_eq!(
        request.cancelled().await.kind(),
        CauseKind::DeadlineExceeded
    );
    assert!(app.cancel(Cause::new("SHUTDOWN")));

    assert!(callback_ran.load(Ordering::SeqCst), "callbacks still run");
    assert_eq!(request.cause().unwrap().kind(), CauseKind::DeadlineExceeded);
    assert_eq!(
        observer.panicked_in(),
        BTreeSet::from(["cancel_lost", "scope_cancelled"])
    );
}

/// Runs a group with a task of every kind on a scope reporting to `observer`.
async fn run_a_group_of_every_kind_of_task(observer: Arc<Panicky>) {
    let app = Scope::builder().name("app").observer(observer).build();
    let group: Group = TaskGroup::builder(&app)
        .name("batch")
        .limit(limit(3))
        .grace(Duration::from_secs(1))
        .build();
    group.spawn("completes", |_| async { Ok(()) });
    group.spawn("stubborn", ignores_cancel_for(Duration::from_secs(3600)));
    group.spawn("fails", |_| async {
        sleep(ms(10)).await;
        Err("disk full".into())
    });
    // Starts when "completes" ends.
    group.spawn("runs-next", until_cancelled);
    group.spawn("queued", |_| async { Ok(()) });
    group.scope().cancelled().await;
    group.spawn("late", |_| async { Ok(()) });

    let error = group.join().await.unwrap_err();

    assert_eq!(error.cause().unwrap().kind(), CauseKind::TaskFailed);
    assert_eq!(exactly_one(error.failures()).task.name(), "fails");
    assert_eq!(names(error.aborted()), ["stubborn"]);
    assert_eq!(names(error.cancelled()), ["runs-next", "queued", "late"]);

    let dropped = group_on(&app, "dropped");
    dropped.spawn("stubborn", ignores_cancel_for(Duration::from_secs(3600)));
    drop(dropped);
    sleep(ms(100)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_change_how_a_group_ends() {
    let _quiet = QuietObserverPanics::install();
    let observer = Panicky::new(false);
    run_a_group_of_every_kind_of_task(observer.clone()).await;
    assert_eq!(
        observer.panicked_in(),
        BTreeSet::from([
            "group_created",
            "observes_tasks",
            "scope_cancelled",
            "slow_to_stop_after"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_of_tasks_does_not_change_how_a_group_ends() {
    let _quiet = QuietObserverPanics::install();
    let observer = Panicky::new(true);
    run_a_group_of_every_kind_of_task(observer.clone()).await;
    let panicked_in = observer.panicked_in();
    for hook in [
        "task_spawned",
        "task_started",
        "task_finished",
        "task_slow_to_stop",
    ] {
        assert!(panicked_in.contains(hook), "{hook}: {panicked_in:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_stop_a_supervisor_from_restarting() {
    let _quiet = QuietObserverPanics::install();
    let observer = Panicky::new(true);
    let app = Scope::builder()
        .name("app")
        .observer(observer.clone())
        .build();
    let supervisor = Supervisor::builder()
        .name("workers")
        .backoff(Backoff::exponential(ms(100)))
        .child(flaky("feed", 2))
        .start(&app)
        .unwrap();

    // Fails at 1 s and 2.1 s, runs again from 2.3 s.
    sleep(Duration::from_secs(10)).await;
    let snapshot = supervisor.snapshot();
    let feed = snapshot.child("feed").unwrap();
    assert_eq!(feed.state, ChildState::Running);
    assert_eq!(feed.restarts, 2);

    supervisor.shutdown(Cause::of_kind(CauseKind::Shutdown));
    supervisor.join().await.unwrap();
    assert!(observer.panicked_in().contains("child_restarting"));
}

/// An attachment whose `enter` panics without running the task.
struct BrokenEnter;

impl Attachment for BrokenEnter {
    fn enter(&self, _: &mut dyn FnMut()) {
        panic!("{OBSERVER_BUG}");
    }
}

struct BrokenSpans;

impl Observer for BrokenSpans {
    fn task_started(&self, _: &TaskStarted<'_>) -> Option<Arc<dyn Attachment>> {
        Some(Arc::new(BrokenEnter))
    }
}

#[tokio::test(start_paused = true)]
async fn an_attachment_whose_enter_panics_does_not_change_how_a_task_runs() {
    let _quiet = QuietObserverPanics::install();
    let scope = Scope::builder().observer(Arc::new(BrokenSpans)).build();
    let group: TaskGroup<u32> = TaskGroup::new(&scope);
    group.spawn("answer", |_| async {
        tokio::task::yield_now().await;
        Ok(42)
    });
    let values = tokio::time::timeout(Duration::from_secs(10), group.join())
        .await
        .expect("join ends")
        .unwrap();
    assert_eq!(values, [42]);
}

/// Counts `task_finished`, slowly: a report takes a while, as an audit log flushed per record.
#[derive(Default)]
struct SlowCounter {
    finished: AtomicUsize,
}

impl Observer for SlowCounter {
    fn task_finished(&self, _: &TaskFinished<'_>) {
        std::thread::sleep(Duration::from_millis(5));
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn join_returns_only_once_every_task_has_been_reported() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..20 {
        let counter = Arc::new(SlowCounter::default());
        let scope = Scope::builder().observer(counter.clone()).build();
        let group: Group = TaskGroup::builder(&scope).limit(limit(1)).build();
        let (ready, running) = std::sync::mpsc::channel();
        runtime.block_on(async {
            group.spawn("running", move |scope| async move {
                ready.send(()).unwrap();
                Err(scope.cancelled().await.into())
            });
            group.spawn("pending-1", until_cancelled);
            group.spawn("pending-2", until_cancelled);
        });
        running.recv().unwrap();
        let canceller = std::thread::spawn({
            let scope = group.scope().clone();
            move || scope.cancel(Cause::new("STOP"))
        });
        let error = runtime.block_on(group.join()).unwrap_err();
        assert_eq!(error.cancelled().len(), 3);
        assert_eq!(
            counter.finished.load(Ordering::SeqCst),
            3,
            "every task was reported before join returned"
        );
        canceller.join().unwrap();
    }
}

/// Aborts each task at its `at`-th suspension, and counts the suspensions it saw.
struct AbortAt {
    at: u32,
    seen: Arc<AtomicU32>,
}

struct Suspensions {
    at: u32,
    seen: Arc<AtomicU32>,
}

impl taskscope::observe::Attachment for Suspensions {
    fn suspended(&self) -> taskscope::observe::Suspended {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.at {
            taskscope::observe::Suspended::Abort
        } else {
            taskscope::observe::Suspended::Continue
        }
    }
}

impl Observer for AbortAt {
    fn observes_tasks(&self, _: &GroupCreated<'_>) -> bool {
        true
    }

    fn task_started(
        &self,
        _: &taskscope::observe::TaskStarted<'_>,
    ) -> Option<Arc<dyn taskscope::observe::Attachment>> {
        Some(Arc::new(Suspensions {
            at: self.at,
            seen: self.seen.clone(),
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn an_attachment_can_abort_a_task_at_an_await_point() {
    let seen = Arc::new(AtomicU32::new(0));
    let root = Scope::builder()
        .observer(Arc::new(AbortAt {
            at: 2,
            seen: seen.clone(),
        }))
        .build();
    let reached = Arc::new(AtomicU32::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let mut group = TaskGroupBuilder::<(), BoxError>::new(&root).build();
    group.spawn("steps", {
        let (reached, dropped) = (reached.clone(), dropped.clone());
        move |_| async move {
            struct SetOnDrop(Arc<AtomicBool>);
            impl Drop for SetOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = SetOnDrop(dropped);
            for step in 1..=3 {
                sleep(Duration::from_secs(1)).await;
                reached.store(step, Ordering::SeqCst);
            }
            Ok(())
        }
    });
    let exit = group.join_next().await.unwrap();
    assert!(matches!(exit.outcome, taskscope::Outcome::Aborted));
    // Suspended at its second sleep: the first step was done, the second never.
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(
        dropped.load(Ordering::SeqCst),
        "its future was dropped there"
    );
}
