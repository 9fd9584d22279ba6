//! What a job's end means for the queue: a [`Verdict`] decided from the [`Cause`] that ended it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use taskscope::{Cause, CauseKind};

/// What becomes of a job that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Back to the queue as it was: the attempt is not counted. For a job its worker stopped
    /// (a shutdown), which says nothing about the job.
    Requeue,
    /// A failed attempt, tried again after `after` if the job has attempts left; given up
    /// (and compensated) otherwise.
    Retry {
        /// How long to wait before the next attempt.
        after: Duration,
    },
    /// Given up now, whatever attempts are left (apalis' *killed*), and compensated: trying
    /// again would meet the same end.
    Abort,
}

impl Verdict {
    /// Its name in records and logs: `requeue`, `retry` or `abort`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Requeue => "requeue",
            Verdict::Retry { .. } => "retry",
            Verdict::Abort => "abort",
        }
    }
}

/// A job that ended without success, as a [`JobPolicy`] sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobEnd<'a> {
    /// Why it ended: its scope's cause (its deadline, its worker's shutdown), or the one its
    /// error carried, or its panic.
    pub cause: &'a Cause,
    /// Which attempt this was, from 1.
    pub attempt: usize,
    /// How many attempts the job may make in all.
    pub max_attempts: usize,
    /// Whether the job's worker is stopping: the layer's scope is cancelled. A shutdown cause
    /// that reached the job some other way (a remote service's `UNAVAILABLE`) says nothing
    /// about this worker.
    pub worker_stopping: bool,
}

/// Decides what becomes of a job from why it ended.
///
/// [`CausePolicy`] is the default; a closure `Fn(&JobEnd<'_>) -> Verdict` is a policy too, and
/// can defer to a `CausePolicy` for the cases it does not change.
pub trait JobPolicy: Send + Sync + 'static {
    /// The verdict on `end`.
    fn decide(&self, end: &JobEnd<'_>) -> Verdict;
}

impl<F> JobPolicy for F
where
    F: Fn(&JobEnd<'_>) -> Verdict + Send + Sync + 'static,
{
    fn decide(&self, end: &JobEnd<'_>) -> Verdict {
        self(end)
    }
}

/// The default policy, by the cause's kind and code:
///
/// | the job ended by | verdict |
/// |---|---|
/// | its worker's shutdown (a cause of kind `shutdown` while the worker is stopping) | [`Requeue`](Verdict::Requeue): the attempt is not counted |
/// | a cause whose code is marked [`permanent`](CausePolicy::permanent) | [`Abort`](Verdict::Abort) |
/// | its deadline, a panic, any other failure or cancellation (a shutdown cause from elsewhere too) | [`Retry`](Verdict::Retry) with exponential backoff |
///
/// The backoff is `first × 2^(attempt − 1)`, capped at `max` (1 s and 5 min by default); it
/// is deterministic, so jobs that failed together are tried again together.
///
/// ```
/// use std::time::Duration;
/// use taskscope::{Cause, CauseKind};
/// use taskscope_apalis::{CausePolicy, JobEnd, JobPolicy, Verdict};
///
/// let policy = CausePolicy::new()
///     .permanent("INVENTORY_SHORTAGE")
///     .backoff(Duration::from_millis(100), Duration::from_secs(10));
///
/// let shortage = Cause::new("INVENTORY_SHORTAGE");
/// let end = JobEnd::new(&shortage, 1, 5);
/// assert_eq!(policy.decide(&end), Verdict::Abort);
///
/// let deadline = Cause::of_kind(CauseKind::DeadlineExceeded);
/// let end = JobEnd::new(&deadline, 3, 5);
/// assert_eq!(policy.decide(&end), Verdict::Retry { after: Duration::from_millis(400) });
///
/// let sigterm = Cause::of_kind(CauseKind::Shutdown).with_detail("SIGTERM");
/// let end = JobEnd::new(&sigterm, 1, 5).worker_stopping(true);
/// assert_eq!(policy.decide(&end), Verdict::Requeue);
/// ```
#[derive(Clone)]
pub struct CausePolicy {
    permanent: Arc<[&'static str]>,
    first: Duration,
    max: Duration,
}

impl<'a> JobEnd<'a> {
    /// A job's end: `cause`, on attempt `attempt` of `max_attempts`, its worker not stopping.
    pub fn new(cause: &'a Cause, attempt: usize, max_attempts: usize) -> JobEnd<'a> {
        JobEnd {
            cause,
            attempt,
            max_attempts,
            worker_stopping: false,
        }
    }

    /// The same end, with its worker stopping or not.
    pub fn worker_stopping(mut self, stopping: bool) -> JobEnd<'a> {
        self.worker_stopping = stopping;
        self
    }

    /// Whether this was the job's last allowed attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

impl CausePolicy {
    /// The default policy: no permanent codes, backoff from 1 s up to 5 min.
    pub fn new() -> CausePolicy {
        CausePolicy {
            permanent: Arc::new([]),
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }

    /// Marks `code` permanent: a job ended by a cause with this code is aborted, not retried.
    /// Mark the codes of outcomes a retry cannot change (`INVENTORY_SHORTAGE`,
    /// `PAYMENT_DECLINED`, a payload that does not decode).
    pub fn permanent(mut self, code: &'static str) -> CausePolicy {
        let mut codes = self.permanent.to_vec();
        codes.push(code);
        self.permanent = codes.into();
        self
    }

    /// The backoff of a retry: `first` after the first attempt, doubling, at most `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> CausePolicy {
        self.first = first;
        self.max = max.max(first);
        self
    }

    /// Whether `code` is marked permanent.
    pub fn is_permanent(&self, code: &str) -> bool {
        self.permanent.contains(&code)
    }

    /// The wait before the attempt after `attempt`.
    pub fn backoff_after(&self, attempt: usize) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        let factor = 2u32.checked_pow(doublings).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

impl Default for CausePolicy {
    fn default() -> CausePolicy {
        CausePolicy::new()
    }
}

impl fmt::Debug for CausePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CausePolicy")
            .field("permanent", &self.permanent)
            .field("first", &self.first)
            .field("max", &self.max)
            .finish()
    }
}

impl JobPolicy for CausePolicy {
    fn decide(&self, end: &JobEnd<'_>) -> Verdict {
        if end.cause.kind() == CauseKind::Shutdown && end.worker_stopping {
            Verdict::Requeue
        } else if self.is_permanent(end.cause.code()) {
            Verdict::Abort
        } else {
            Verdict::Retry {
                after: self.backoff_after(end.attempt),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_decides_by_kind_and_code() {
        let policy = CausePolicy::new().permanent("PAYMENT_DECLINED");
        let decide = |cause: Cause, attempt| policy.decide(&JobEnd::new(&cause, attempt, 3));
        let stopping =
            |cause: Cause| policy.decide(&JobEnd::new(&cause, 1, 3).worker_stopping(true));
        assert_eq!(
            stopping(Cause::of_kind(CauseKind::Shutdown)),
            Verdict::Requeue
        );
        // A shutdown cause from elsewhere (a remote service's UNAVAILABLE) is retried.
        assert_eq!(
            decide(Cause::of_kind(CauseKind::Shutdown), 1),
            Verdict::Retry {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(decide(Cause::new("PAYMENT_DECLINED"), 1), Verdict::Abort);
        let retry = |secs| Verdict::Retry {
            after: Duration::from_secs(secs),
        };
        assert_eq!(
            decide(Cause::of_kind(CauseKind::DeadlineExceeded), 1),
            retry(1)
        );
        assert_eq!(decide(Cause::of_kind(CauseKind::TaskPanicked), 2), retry(2));
        assert_eq!(decide(Cause::of_kind(CauseKind::TaskFailed), 3), retry(4));
        // A permanent code wins over the kind, except a shutdown's.
        let shutdown = Cause::of_kind(CauseKind::Shutdown).with_code("PAYMENT_DECLINED");
        assert_eq!(stopping(shutdown), Verdict::Requeue);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_never_overflows() {
        let policy = CausePolicy::new().backoff(Duration::from_millis(10), Duration::from_secs(1));
        let waits: Vec<_> = (1..=9)
            .map(|a| policy.backoff_after(a).as_millis())
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(policy.backoff_after(0), Duration::from_millis(10));
        assert_eq!(policy.backoff_after(usize::MAX), Duration::from_secs(1));
    }

    #[test]
    fn a_closure_is_a_policy_and_can_defer_to_the_default() {
        let default = CausePolicy::new();
        let policy = move |end: &JobEnd<'_>| match end.cause.code() {
            "FLAKY" => Verdict::Retry {
                after: Duration::ZERO,
            },
            _ => default.decide(end),
        };
        let flaky = Cause::new("FLAKY");
        assert_eq!(
            policy.decide(&JobEnd::new(&flaky, 4, 5)),
            Verdict::Retry {
                after: Duration::ZERO
            }
        );
        let sigterm = Cause::of_kind(CauseKind::Shutdown);
        assert_eq!(
            policy.decide(&JobEnd::new(&sigterm, 1, 5).worker_stopping(true)),
            Verdict::Requeue
        );
    }
}
