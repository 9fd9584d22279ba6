//! `TaskError`: a task's error says which cause it carries, and groups and supervisors read it
//! alike, whatever the error's type.

use std::fmt;
use std::time::Duration;

use taskscope::{
    BoxError, Cause, CauseKind, ChildSpec, ChildState, Outcome, Restart, Scope, SupervisorBuilder,
    TaskError, TaskGroupBuilder,
};
use tokio::time::sleep;

/// A service's own error enum, as a user writes it: a cancellation variant filled by `?` on
/// `scope.check()`, and failures of its own.
#[derive(Debug)]
enum OrderError {
    Cancelled(Cause),
    Shortage(Cause),
    Database(&'static str),
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::Cancelled(cause) | OrderError::Shortage(cause) => cause.fmt(f),
            OrderError::Database(what) => write!(f, "database: {what}"),
        }
    }
}

impl From<Cause> for OrderError {
    fn from(cause: Cause) -> Self {
        OrderError::Cancelled(cause)
    }
}

impl TaskError for OrderError {
    fn as_cause(&self) -> Option<&Cause> {
        match self {
            OrderError::Cancelled(cause) | OrderError::Shortage(cause) => Some(cause),
            OrderError::Database(_) => None,
        }
    }
}

/// A task that waits for its scope's cancellation and returns it the way a user does: `?`.
async fn echo<E: From<Cause>>(scope: Scope) -> Result<(), E> {
    scope.cancelled().await;
    scope.check()?;
    Ok(())
}

/// An error type that is `From<Cause>`, the way `?` needs it: a user's enum has it, and so
/// does the newtype over an `io::Error` made here (`io::Error::other(cause)`).
#[derive(Debug)]
struct Io(std::io::Error);

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Cause> for Io {
    fn from(cause: Cause) -> Self {
        Io(std::io::Error::other(cause))
    }
}

impl TaskError for Io {
    fn as_cause(&self) -> Option<&Cause> {
        self.0.as_cause()
    }
}

#[tokio::test(start_paused = true)]
async fn a_typed_error_carrying_the_scopes_cause_is_an_echo_not_a_failure() {
    let group = TaskGroupBuilder::<(), OrderError>::new(&Scope::new()).build();
    group.spawn("reserve", |_| async {
        Err(OrderError::Shortage(Cause::new("INVENTORY_SHORTAGE")))
    });
    group.spawn("charge", echo);
    let error = group.join().await.unwrap_err();
    assert_eq!(error.failures().len(), 1);
    assert_eq!(error.first_failure().unwrap().task.name(), "reserve");
    assert_eq!(error.cancelled().len(), 1);
    assert_eq!(error.cancelled()[0].name(), "charge");
    assert_eq!(
        error.to_string(),
        "task 'reserve' failed: cancelled (INVENTORY_SHORTAGE)"
    );
    // The failure's own cause lends its code, as a `Cause` returned as the error does.
    let cause = error.cause().unwrap();
    assert_eq!(cause.kind(), CauseKind::TaskFailed);
    assert_eq!(cause.code(), "INVENTORY_SHORTAGE");
}

#[tokio::test(start_paused = true)]
async fn a_typed_error_is_seen_as_an_echo_exactly_when_a_boxed_one_is() {
    async fn run<E: TaskError + From<Cause>>(fail: E) -> Vec<&'static str> {
        let group = TaskGroupBuilder::<(), E>::new(&Scope::new())
            .collect_all()
            .build();
        let scope = group.scope().clone();
        group.spawn("echo", |scope| echo::<E>(scope));
        // A cancellation of another scope (its own timeout, say) is a real failure.
        group.spawn("other", |_| async {
            let inner = Scope::new();
            inner.cancel(Cause::new("UPSTREAM_TIMEOUT"));
            inner.check()?;
            Ok(())
        });
        group.spawn("fails", |_| async move { Err(fail) });
        sleep(Duration::from_millis(1)).await;
        scope.cancel(Cause::new("SHUTDOWN"));
        let mut seen = Vec::new();
        let mut group = group;
        while let Some(exit) = group.join_next().await {
            seen.push(match exit.outcome {
                Outcome::Completed(()) => "completed",
                Outcome::Cancelled(_) => "cancelled",
                Outcome::Failed(_) => "failed",
                Outcome::Aborted => "aborted",
            });
        }
        seen
    }
    let typed = run(OrderError::Database("connection reset")).await;
    let boxed = run(BoxError::from("connection reset")).await;
    let io = run(Io(std::io::Error::other("connection reset"))).await;
    let cause = run(Cause::new("CONNECTION_RESET")).await;
    assert_eq!(typed, ["failed", "failed", "cancelled"]);
    assert_eq!(boxed, typed);
    assert_eq!(io, typed);
    assert_eq!(cause, typed);
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_reads_a_typed_echo_as_its_group_does() {
    async fn final_state<E: TaskError + From<Cause>>() -> ChildState {
        let supervisor = SupervisorBuilder::<E>::new()
            .child(ChildSpec::new("echo", echo::<E>).restart(Restart::Always))
            .start(&Scope::new())
            .unwrap();
        let handle = supervisor.handle();
        sleep(Duration::from_millis(1)).await;
        handle.shutdown(Cause::new("DEPLOY"));
        supervisor.join().await.unwrap();
        handle.snapshot().children[0].state
    }
    assert_eq!(final_state::<OrderError>().await, ChildState::Cancelled);
    assert_eq!(final_state::<BoxError>().await, ChildState::Cancelled);
    assert_eq!(final_state::<Io>().await, ChildState::Cancelled);
}

#[test]
fn the_provided_impls_say_which_cause_they_carry() {
    let cause = Cause::new("SHUTDOWN");
    assert!(cause.as_cause().unwrap().ptr_eq(&cause));
    let boxed: BoxError = cause.clone().into();
    assert!(boxed.as_cause().unwrap().ptr_eq(&cause));
    let io = std::io::Error::other(cause.clone());
    assert!(io.as_cause().unwrap().ptr_eq(&cause));
    assert!(std::io::Error::other("disk full").as_cause().is_none());
    assert!(String::from("disk full").as_cause().is_none());
    assert!("disk full".as_cause().is_none());
}

/// Every report of a task's end speaks one vocabulary, `TaskOutcome`: a group's exits and
/// snapshots and a supervisor's children say `panicked` for a panic and `failed` for an error.
#[tokio::test(start_paused = true)]
async fn every_report_of_an_end_names_it_alike() {
    use taskscope::observe::TaskOutcome;

    let group = TaskGroupBuilder::<(), BoxError>::new(&Scope::new())
        .collect_all()
        .build();
    group.spawn("panics", |_| async { panic!("ledger corrupted") });
    group.spawn("fails", |_| async { Err("disk full".into()) });
    let kinds = ends(group).await;
    assert_eq!(
        kinds,
        [
            ("fails".to_owned(), TaskOutcome::Failed),
            ("panics".to_owned(), TaskOutcome::Panicked)
        ]
    );

    let snapshot_group = TaskGroupBuilder::<(), BoxError>::new(&Scope::new())
        .collect_all()
        .build();
    snapshot_group.spawn("panics", |_| async { panic!("ledger corrupted") });
    sleep(Duration::from_millis(1)).await;
    let snapshot = snapshot_group.snapshot();
    assert_eq!(
        snapshot.tasks[0].state.outcome(),
        Some(TaskOutcome::Panicked)
    );
    drop(snapshot_group);

    let supervisor = SupervisorBuilder::<BoxError>::new()
        .child(
            ChildSpec::new("panics", |_| async { panic!("ledger corrupted") })
                .restart(Restart::Never),
        )
        .child(
            ChildSpec::new("fails", |_| async { Err("disk full".into()) }).restart(Restart::Never),
        )
        .run_until_shutdown()
        .start(&Scope::new())
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    let snapshot = supervisor.snapshot();
    let panics = snapshot.child("panics").unwrap().state;
    let fails = snapshot.child("fails").unwrap().state;
    assert_eq!(panics, ChildState::Panicked);
    assert_eq!(panics.outcome(), Some(TaskOutcome::Panicked));
    assert_eq!(fails.outcome(), Some(TaskOutcome::Failed));
    assert_eq!(ChildState::Running.outcome(), None);
    supervisor.shutdown(Cause::new("DONE"));
    supervisor.join().await.unwrap();
}

#[test]
fn a_boxed_io_error_wrapping_the_cause_carries_it() {
    let cause = Cause::new("SHUTDOWN");
    let boxed: BoxError = std::io::Error::other(cause.clone()).into();
    assert!(boxed.as_cause().is_some_and(|c| c.ptr_eq(&cause)));
}

#[test]
fn the_first_cause_in_the_chain_is_the_one_carried() {
    let inner = Cause::new("INNER");
    let outer = Cause::new("OUTER").with_source(inner.clone());
    let boxed: BoxError = std::io::Error::other(outer.clone()).into();
    assert!(boxed.as_cause().is_some_and(|c| c.ptr_eq(&outer)));
    let boxed: BoxError = outer.clone().into();
    assert!(boxed.as_cause().is_some_and(|c| c.ptr_eq(&outer)));
}

#[tokio::test(start_paused = true)]
async fn a_boxed_io_echo_is_cancelled_as_a_bare_io_echo_is() {
    let mut group = TaskGroupBuilder::<(), BoxError>::new(&Scope::new())
        .collect_all()
        .build();
    let scope = group.scope().clone();
    group.spawn("io-echo", |scope| async move {
        let cause = scope.cancelled().await;
        Err(std::io::Error::other(cause).into())
    });
    sleep(Duration::from_millis(1)).await;
    scope.cancel(Cause::new("SHUTDOWN"));
    let exit = group.join_next().await.unwrap();
    assert!(matches!(exit.outcome, Outcome::Cancelled(_)));
}

/// A wrapper whose source is a cause: it lends the code, and keeps its own words.
#[derive(Debug)]
struct LedgerError {
    source: Cause,
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("writing the ledger failed")
    }
}

impl std::error::Error for LedgerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[tokio::test(start_paused = true)]
async fn a_boxed_wrapper_keeps_its_message_and_lends_its_causes_code() {
    let group = TaskGroupBuilder::<(), BoxError>::new(&Scope::new()).build();
    group.spawn("ledger", |_| async {
        Err(Box::new(LedgerError {
            source: Cause::new("DISK_FULL"),
        }) as BoxError)
    });
    let cause = group.join().await.unwrap_err().cause().unwrap().clone();
    assert_eq!(cause.code(), "DISK_FULL");
    assert_eq!(
        cause.detail(),
        Some("task 'ledger' failed: writing the ledger failed")
    );
}

#[tokio::test(start_paused = true)]
async fn an_anyhow_error_carrying_the_scopes_cause_is_an_echo() {
    let group = TaskGroupBuilder::<(), anyhow::Error>::new(&Scope::new())
        .collect_all()
        .build();
    let scope = group.scope().clone();
    group.spawn("echo", |scope| async move {
        let cause = scope.cancelled().await;
        Err(anyhow::Error::new(cause).context("while charging"))
    });
    group.spawn("fails", |_| async { Err(anyhow::anyhow!("card declined")) });
    sleep(Duration::from_millis(1)).await;
    scope.cancel(Cause::new("SHUTDOWN"));
    let kinds = ends(group).await;
    assert_eq!(
        kinds,
        [
            (
                "echo".to_owned(),
                taskscope::observe::TaskOutcome::Cancelled
            ),
            ("fails".to_owned(), taskscope::observe::TaskOutcome::Failed)
        ]
    );
}

/// How each task of `group` ended, by task name.
async fn ends<T: Send + 'static, E: TaskError>(
    mut group: taskscope::TaskGroup<T, E>,
) -> Vec<(String, taskscope::TaskOutcome)> {
    let mut ends = Vec::new();
    while let Some(exit) = group.join_next().await {
        ends.push((exit.task.name().to_owned(), exit.outcome.kind()));
    }
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    ends
}
