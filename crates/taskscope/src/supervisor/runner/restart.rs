//! Restarts: backoff, intensity, strategies, escalation.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Runner;
use crate::cause::Origin;
use crate::observe::{self, ChildRestarting};
use crate::supervisor::Strategy;
use crate::supervisor::child::Run;
use crate::supervisor::failure::{ChildFailure, LastFailure};
use crate::sync::lock;
use crate::{Cause, CauseKind, Scope, TaskError, TaskInfo};

/// A restart of several children (one-for-all, rest-for-one): they stop, then restart together.
pub(super) struct Plan {
    /// The children in it, in start order.
    pub(super) members: BTreeSet<usize>,
    /// When they restart, at the earliest.
    pub(super) at: Instant,
    /// What the stopped siblings are told.
    pub(super) cause: Cause,
    /// Every member has stopped: the restart only waits for `at`.
    pub(super) armed: bool,
}

/// Why a supervisor escalates.
pub(super) enum Escalation {
    /// A child needed more restarts within the window than allowed.
    Intensity,
    /// A child's restart predicate refused to retry its failure.
    Refused,
}

/// The path a child of the supervisor in `scope` has: `supervisor/child`.
fn child_path(scope: &Scope, name: &str) -> Option<Arc<str>> {
    let path = scope.path();
    Some(if path.is_empty() {
        Arc::from(name)
    } else {
        Arc::from(format!("{path}/{name}"))
    })
}

/// `now + delay`, or an instant so far away it never comes when that cannot be represented.
fn far_or(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

/// At most this many characters of a failure's text go into an escalation's detail.
const EXCERPT: usize = 200;

/// `text` as it appears inside an escalation's detail: its first [`EXCERPT`] characters, the
/// rest in the cause's source chain. Whole, each level of nested supervisors escalating would
/// repeat every level below it: memory quadratic in the depth.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

impl<E> Runner<E>
where
    E: TaskError,
{
    /// Restarts `child`, which ended at `now` after `uptime` (and, by the strategy, its
    /// siblings) after the backoff, unless that is one restart too many within the intensity
    /// window.
    pub(super) fn restart(
        &mut self,
        child: usize,
        task: TaskInfo,
        failure: Option<Arc<ChildFailure<E>>>,
        uptime: Duration,
        now: Instant,
    ) {
        if let Some(horizon) = now.checked_sub(self.settings.window) {
            while self.restarts.front().is_some_and(|at| *at <= horizon) {
                self.restarts.pop_front();
            }
        }
        if self.restarts.len() >= self.settings.max_restarts as usize {
            self.escalate(child, task, failure, Escalation::Intensity);
            return;
        }
        self.restarts.push_back(now);
        let backoff = &self.settings.backoff;
        let attempts = {
            let mut tree = self.tree();
            let attempts = &mut tree.children[child].attempts;
            if uptime >= backoff.reset_after_uptime() {
                *attempts = 0;
            }
            mem::replace(attempts, attempts.saturating_add(1))
        };
        let delay = backoff.delay(attempts, self.rng.next_f64());
        self.report_restart(child, delay, || {
            failure.as_ref().map(|failure| failure.cause())
        });
        let at = far_or(now, delay);
        match self.settings.strategy {
            Strategy::OneForOne if delay.is_zero() => self.restart_now(child, now),
            Strategy::OneForOne => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.set_run(child, Run::Waiting { ticket, at });
                self.timers.push(Reverse((at, child, ticket)));
            }
            Strategy::OneForAll => self.plan_restart(child, 0, at, failure),
            Strategy::RestForOne => self.plan_restart(child, child, at, failure),
        }
    }

    /// Tells the observer that `child` will restart after `delay`, because of `cause`, read only
    /// if there is an observer.
    fn report_restart<'a>(
        &self,
        child: usize,
        delay: Duration,
        cause: impl FnOnce() -> Option<&'a Cause>,
    ) {
        let Some(observer) = self.inner.scope.node.observer() else {
            return;
        };
        let cause = cause();
        // The number of this restart, as the snapshot counts it once it is done: 1 for the first.
        let restarts = self.tree().children[child].restarts.saturating_add(1);
        observe::notify(observer, |o| {
            o.child_restarting(&ChildRestarting {
                supervisor: &self.inner.scope,
                child: &self.specs[child].name,
                restarts,
                delay,
                cause,
            })
        });
    }

    /// Restarts `child` and its running siblings from `from` on together, once they have
    /// stopped, in reverse start order, and `at` has come.
    fn plan_restart(
        &mut self,
        child: usize,
        from: usize,
        at: Instant,
        failure: Option<Arc<ChildFailure<E>>>,
    ) {
        let cause = match failure {
            Some(failure) => failure.cause().clone(),
            None => {
                let spec = &self.specs[child];
                let origin = self.inner.scope.node.origin();
                Cause::of_kind(CauseKind::Shutdown)
                    .with_code("restart")
                    .with_detail(format!("restarting after '{}' returned", &*spec.name))
                    .stamped(|| origin, Instant::now(), spec.location)
            }
        };
        let mut tree = lock(&self.inner.tree);
        let plan = self.plan.get_or_insert_with(|| Plan {
            members: BTreeSet::new(),
            at,
            cause,
            armed: false,
        });
        plan.at = plan.at.max(at);
        plan.armed = false;
        plan.members.insert(child);
        let stale = tree.set_run(child, Run::Held { at: None });
        let mut siblings = Vec::new();
        for sibling in from..tree.children.len() {
            if plan.members.contains(&sibling) {
                continue;
            }
            match tree.children[sibling].run {
                Run::Running { .. } => self.stop_queue.push(sibling),
                Run::Stopping { .. } | Run::Held { .. } => {}
                // Waiting only happens one-for-one; an ended child has ended for good.
                Run::Waiting { .. } | Run::Ended(_) => continue,
            }
            plan.members.insert(sibling);
            siblings.push(sibling);
        }
        drop(tree);
        drop(stale);
        let (at, cause) = (plan.at, plan.cause.clone());
        for sibling in siblings {
            let delay = at.saturating_duration_since(Instant::now());
            self.report_restart(sibling, delay, || Some(&cause));
        }
        self.stop_queue.sort_unstable();
        self.stop_queue.dedup();
    }

    /// Starts the one-for-one restarts that are due.
    pub(super) fn restart_due(&mut self, now: Instant) -> bool {
        let mut progress = false;
        while let Some(&Reverse((at, child, ticket))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let due = matches!(
                self.tree().children[child].run,
                Run::Waiting { ticket: current, .. } if current == ticket
            );
            if due {
                self.restart_now(child, now);
                progress = true;
            }
        }
        progress
    }

    /// Restarts the plan's children in start order, once all of them have stopped and its
    /// backoff is over.
    pub(super) fn advance_plan(&mut self, now: Instant) -> bool {
        let Some(plan) = &mut self.plan else {
            return false;
        };
        if self.stopping.is_some() || !self.stop_queue.is_empty() {
            return false;
        }
        if !plan.armed {
            plan.armed = true;
            let mut tree = lock(&self.inner.tree);
            tree.changed();
            for &child in &plan.members {
                if let Run::Held { at } = &mut tree.children[child].run {
                    *at = Some(plan.at);
                }
            }
        }
        if plan.at > now {
            return false;
        }
        let plan = self.plan.take().expect("checked above");
        for child in plan.members {
            if matches!(self.tree().children[child].run, Run::Held { .. }) {
                self.restart_now(child, now);
            }
        }
        true
    }

    /// Fails the supervisor because of `child`: cancels its scope with a cause that names the
    /// child and carries its last failure, then stops every child.
    pub(super) fn escalate(
        &mut self,
        child: usize,
        task: TaskInfo,
        failure: Option<Arc<ChildFailure<E>>>,
        why: Escalation,
    ) {
        let spec = &self.specs[child];
        let name = &*spec.name;
        let failure_cause = failure.as_ref().map(|failure| failure.cause().clone());
        let kind = failure_cause
            .as_ref()
            .map_or(CauseKind::TaskFailed, Cause::kind);
        let mut detail = match why {
            Escalation::Intensity => format!(
                "child '{name}' needed more than {} restarts within {:?}",
                self.settings.max_restarts, self.settings.window
            ),
            Escalation::Refused => format!("child '{name}' failed and may not be restarted"),
        };
        let mut cause = Cause::of_kind(kind);
        match why {
            Escalation::Intensity => cause = cause.with_code("restart_intensity"),
            Escalation::Refused => {
                if let Some(failure_cause) = &failure_cause {
                    cause = cause.with_code_of(failure_cause);
                }
            }
        }
        if let Some(failure) = &failure {
            let separator = match why {
                Escalation::Intensity => "; last failure: ",
                Escalation::Refused => ": ",
            };
            detail.push_str(separator);
            detail.push_str(&excerpt(&failure.text()));
        }
        let origin = failure_cause
            .as_ref()
            .and_then(|cause| cause.origin().map(Arc::from))
            .or_else(|| child_path(&self.inner.scope, name))
            .map(Origin::from);
        let mut cause = cause.with_detail(detail);
        if let Some(failure_cause) = failure_cause {
            cause = cause.with_source(failure_cause);
        }
        let cause = cause.stamped(|| origin, Instant::now(), spec.location);
        // The child's run has ended already.
        self.escalated = Some((task, failure.map(|failure| failure.to_failure())));
        // The supervisor's own scope stays as it is: an escalation is the supervisor failing,
        // reported by its return, and a parent supervisor restarts a failed child, never a
        // cancelled one.
        self.begin_shutdown(cause);
    }
}
