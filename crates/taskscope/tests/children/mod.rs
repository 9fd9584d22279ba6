//! Children the supervisor tests share: a log of what they did, and children that work,
//! fail, and back off quickly. Included by `supervisor.rs` and `supervisor_dynamic.rs`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskscope::{Backoff, BoxError, ChildSpec, Scope};
use tokio::time::sleep;

/// What the children did, in order: `"a start"`, `"b stop: <cause code>"`, ...
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A child that logs its start, runs until its scope is cancelled, and logs the cause's code.
pub fn worker(name: &'static str, log: &Log) -> ChildSpec {
    let log = log.clone();
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        async move {
            log.push(format!("{name} start"));
            let cause = scope.cancelled().await;
            log.push(format!("{name} stop: {}", cause.code()));
            Ok(())
        }
    })
}

/// A child that fails `failures` times (after running for `after`), then runs until cancelled.
pub fn flaky(name: &'static str, log: &Log, failures: u32, after: Duration) -> ChildSpec {
    let log = log.clone();
    let runs = Arc::new(AtomicU32::new(0));
    ChildSpec::new(name, move |scope: Scope| {
        let log = log.clone();
        let run = runs.fetch_add(1, Ordering::Relaxed);
        async move {
            log.push(format!("{name} start"));
            if run < failures {
                sleep(after).await;
                log.push(format!("{name} fails"));
                return Err(BoxError::from(format!("connection reset #{run}")));
            }
            let cause = scope.cancelled().await;
            log.push(format!("{name} stop: {}", cause.code()));
            Ok(())
        }
    })
}

pub fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(100)).factor(1.0)
}
