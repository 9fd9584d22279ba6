//! [`Sweep`]: runs the work once to record its await points, then once per point, interrupted
//! there, and checks each run.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use taskscope::{Cause, Scope};
use tokio::runtime::{Builder, Handle};

use crate::probe::{Action, Ended, Point, Run, RunObserver, WorkProbe};
use crate::report::{Report, RunReport};

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
type Invariant<W> = Box<dyn Fn(W) -> LocalFuture<Result<(), String>>>;
type CauseOf<O> = Box<dyn Fn(&O) -> Option<Cause>>;

/// How a run interrupts the work at its point.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Cooperatively: cancels a scope with a cause, and lets the work stop by itself. `scope`
    /// is the path of a group's or a task's scope under the root (`sweep/order/payment`);
    /// `None` cancels the root. A scope not started yet when the point is reached is not
    /// cancelled (the run then only checks the work as it is).
    Cancel {
        /// The scope's path; `None` for the root.
        scope: Option<String>,
        /// The cause it is cancelled with: the work's reported cause must be this one.
        cause: Cause,
    },
    /// Abruptly: drops the suspended future right there, as dropping the work (a `select!`
    /// that lost, a timeout) or aborting the task would.
    Abort,
}

impl Mode {
    /// Cancels the root scope with `cause`.
    pub fn cancel_root(cause: Cause) -> Mode {
        Mode::Cancel { scope: None, cause }
    }

    /// Cancels the scope at `path` (a group's or a task's, as its [`path`](Scope::path)
    /// prints) with `cause`.
    pub fn cancel_scope(path: impl Into<String>, cause: Cause) -> Mode {
        Mode::Cancel {
            scope: Some(path.into()),
            cause,
        }
    }

    fn action(&self) -> Action {
        match self {
            Mode::Cancel { scope, cause } => Action::Cancel {
                scope: scope.clone(),
                cause: cause.clone(),
            },
            Mode::Abort => Action::Abort,
        }
    }

    fn label(&self) -> String {
        match self {
            Mode::Cancel { scope: None, cause } => format!("cancel root ({})", cause.code()),
            Mode::Cancel {
                scope: Some(path),
                cause,
            } => format!("cancel {path} ({})", cause.code()),
            Mode::Abort => "abort".to_owned(),
        }
    }
}

/// Which of the recorded points a sweep interrupts the work at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    /// Every one.
    All,
    /// The first and every `n`-th after it.
    EveryNth(NonZeroUsize),
    /// `count` distinct points, picked by a generator seeded with `seed`: the same seed picks
    /// the same points.
    Random {
        /// How many; all of them if there are fewer.
        count: usize,
        /// The generator's seed.
        seed: u64,
    },
}

impl Sample {
    /// The indexes of the points picked among `len`, in order.
    fn pick(self, len: usize) -> Vec<usize> {
        match self {
            Sample::All => (0..len).collect(),
            Sample::EveryNth(n) => (0..len).step_by(n.get()).collect(),
            Sample::Random { count, seed } => {
                // A partial Fisher-Yates shuffle driven by SplitMix64: deterministic for a
                // seed, on every platform, with no dependency.
                let mut state = seed;
                let mut next = move || {
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^ (z >> 31)
                };
                let mut all: Vec<usize> = (0..len).collect();
                let count = count.min(len);
                for i in 0..count {
                    let j = i + (next() % (len - i) as u64) as usize;
                    all.swap(i, j);
                }
                all.truncate(count);
                all.sort_unstable();
                all
            }
        }
    }
}

/// A cancel-at-every-await-point sweep of one piece of work.
///
/// Each run makes a fresh world with `setup`, and runs `work` with it under a new root scope
/// (named `sweep`) on its own current-thread runtime with paused time. The first run records
/// the await points: every `Poll::Pending` of the work's future and of every task spawned
/// through taskscope under the root (a [`TaskGroup`](taskscope::TaskGroup)'s, a
/// [`Supervisor`](taskscope::Supervisor)'s children). Then, for each sampled point and each
/// [`Mode`], one run interrupts the work there, and [`run`](Sweep::run) checks that it:
///
/// - ended within the time bound ([`within`](Sweep::within), 60 s of paused time by default);
/// - reported the injected cause, if it reports one ([`reports_cause`](Sweep::reports_cause)),
///   or the cause of a scope under the root that was already cancelled when it was injected
///   (first cause wins: a shortage that cancelled an order's steps stays their cause);
/// - left no tokio task alive, and nothing holding the root (a scope under it or a handle of
///   it outliving the work);
/// - had no task aborted, when cancelled cooperatively: a task is aborted when its
///   [`TaskGroup`](taskscope::TaskGroup) is dropped before it ended (not joined), or when it
///   outlives the group's shutdown grace (aborting is what an abrupt stop does);
/// - kept the user's [`invariant`](Sweep::invariant) on the world.
///
/// The first run is checked the same way, uninterrupted.
///
/// What it sees: the root's observer is the sweep's, and every scope under the root inherits
/// it, so every task of a group or supervisor under the root is seen, but not those under a
/// scope built with an observer of its own (`ScopeBuilder::observer`), nor a task spawned with
/// `tokio::spawn` (which is caught only if it outlives the work).
///
/// Set `TASKSCOPE_SWEEP=all` to sweep every point whatever the [`sample`](Sweep::sample), and
/// `TASKSCOPE_SWEEP_REPORT_DIR` to write each sweep's JSON report there.
pub struct Sweep<W, O> {
    name: String,
    setup: Box<dyn Fn() -> LocalFuture<W>>,
    work: Box<dyn Fn(W, Scope) -> LocalFuture<O>>,
    invariant: Option<Invariant<W>>,
    cause_of: Option<CauseOf<O>>,
    modes: Vec<Mode>,
    sample: Sample,
    bound: Duration,
}

impl<W, O> Sweep<W, O>
where
    W: Clone + 'static,
    O: 'static,
{
    /// A sweep named `name` of `work`, run with the world `setup` makes, fresh for each run.
    /// By default it interrupts at every point, cancelling the root with a cause of code
    /// `SWEEP`, and aborting.
    pub fn new<S, SF, F, WF>(name: impl Into<String>, setup: S, work: F) -> Self
    where
        S: Fn() -> SF + 'static,
        SF: Future<Output = W> + 'static,
        F: Fn(W, Scope) -> WF + 'static,
        WF: Future<Output = O> + 'static,
    {
        Sweep {
            name: name.into(),
            setup: Box::new(move || Box::pin(setup())),
            work: Box::new(move |world, scope| Box::pin(work(world, scope))),
            invariant: None,
            cause_of: None,
            modes: vec![Mode::cancel_root(Cause::new("SWEEP")), Mode::Abort],
            sample: Sample::All,
            bound: Duration::from_secs(60),
        }
    }

    /// What must hold of the world after every run, however it was interrupted: `Err` says
    /// what does not.
    pub fn invariant<I, IF>(mut self, check: I) -> Self
    where
        I: Fn(W) -> IF + 'static,
        IF: Future<Output = Result<(), String>> + 'static,
    {
        self.invariant = Some(Box::new(move |world| Box::pin(check(world))));
        self
    }

    /// How to read the cause the work reports from its output, if it reports one. A run that
    /// cancelled with a cause checks the work reported that one (its kind and code), or one
    /// that had already cancelled a scope under the root when it was injected.
    pub fn reports_cause(mut self, cause_of: impl Fn(&O) -> Option<Cause> + 'static) -> Self {
        self.cause_of = Some(Box::new(cause_of));
        self
    }

    /// How each point is interrupted: one run per point and mode.
    pub fn modes(mut self, modes: impl IntoIterator<Item = Mode>) -> Self {
        self.modes = modes.into_iter().collect();
        self
    }

    /// Which points are interrupted; [`Sample::All`] by default.
    pub fn sample(mut self, sample: Sample) -> Self {
        self.sample = sample;
        self
    }

    /// How long (of paused time) a run may take; 60 s by default.
    pub fn within(mut self, bound: Duration) -> Self {
        self.bound = bound;
        self
    }

    /// Runs the sweep: the recording run, then one per sampled point and mode.
    ///
    /// # Panics
    ///
    /// When called inside a tokio runtime (each run has its own), or when the runtime cannot
    /// be built.
    pub fn run(self) -> Report {
        let started = std::time::Instant::now();
        let (baseline, points) = self.run_once(None);
        let sample = match std::env::var("TASKSCOPE_SWEEP").as_deref() {
            Ok("all") => Sample::All,
            _ => self.sample,
        };
        let mut runs = Vec::new();
        for index in sample.pick(points.len()) {
            for mode in &self.modes {
                let point = points[index].clone();
                let (mut run, _) = self.run_once(Some((point, mode)));
                run.index = index + 1;
                runs.push(run);
            }
        }
        let report = Report {
            name: self.name,
            points: points.len(),
            baseline,
            runs,
            wall: started.elapsed(),
        };
        if let Ok(dir) = std::env::var("TASKSCOPE_SWEEP_REPORT_DIR") {
            let path = std::path::Path::new(&dir).join(format!("{}.json", report.file_name()));
            if let Err(error) = report.write_json(&path) {
                eprintln!("taskscope-test: cannot write {}: {error}", path.display());
            }
        }
        report
    }

    /// One run, interrupted at `target` if any: what it found, and the points it went through.
    fn run_once(&self, target: Option<(Point, &Mode)>) -> (RunReport, Vec<Point>) {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime with paused time");
        let mode = target.as_ref().map(|(_, mode)| (*mode).clone());
        let point = target.as_ref().map(|(point, _)| point.clone());
        let run = Run::new(target.map(|(point, mode)| (point, mode.action())));
        let mut report = RunReport {
            index: 0,
            point,
            mode: mode.as_ref().map_or_else(|| "none".to_owned(), Mode::label),
            reached: true,
            violations: Vec::new(),
            took: Duration::ZERO,
        };
        runtime.block_on(async {
            let world = (self.setup)().await;
            let root = Scope::builder()
                .name("sweep")
                .observer(Arc::new(RunObserver(run.clone())))
                .build();
            run.set_root(&root);
            let started = tokio::time::Instant::now();
            let probe = WorkProbe {
                run: run.clone(),
                work: Some((self.work)(world.clone(), root)),
                suspensions: 0,
            };
            match tokio::time::timeout(self.bound, probe).await {
                Err(_) => report.violations.push(format!(
                    "did not end within {:?}: it hangs, or waits on something that never comes",
                    self.bound
                )),
                Ok(Ended::Dropped) => {}
                Ok(Ended::Returned(output)) => {
                    let same = |a: &Cause, b: &Cause| a.kind() == b.kind() && a.code() == b.code();
                    // A scope under the root already cancelled for a reason of its own when the
                    // cause was injected keeps that reason (first cause wins): the work may
                    // report it.
                    if let (Some(Mode::Cancel { cause, .. }), Some(cause_of), true) =
                        (&mode, &self.cause_of, run.fired())
                        && let Some(reported) = cause_of(&output)
                        && !same(&reported, cause)
                        && !run
                            .prior_causes()
                            .iter()
                            .any(|prior| same(&reported, prior))
                    {
                        report.violations.push(format!(
                            "reported the cause {} ({}), not the injected {} ({})",
                            reported.code(),
                            reported.kind(),
                            cause.code(),
                            cause.kind(),
                        ));
                    }
                }
            }
            report.took = started.elapsed();
            // What the work left running gets the rest of the bound to end: its tasks, and
            // what still holds the root (a blocking call the work walked away from, which
            // `num_alive_tasks` does not count).
            let handle = Handle::current();
            let deadline = started + self.bound;
            let root_held = || run.root().and_then(|root| root.upgrade()).is_some();
            while (handle.metrics().num_alive_tasks() > 0 || root_held())
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let alive = handle.metrics().num_alive_tasks();
            if alive > 0 {
                report.violations.push(format!(
                    "{alive} tokio task(s) still alive {:?} after the run began",
                    self.bound
                ));
            }
            if let Some(root) = run.root().and_then(|root| root.upgrade()) {
                report.violations.push(format!(
                    "the root scope outlived the work: a handle of it, or a scope under it, is \
                     still held ({} child scope(s) linked)",
                    root.live_children()
                ));
            }
            if !matches!(mode, Some(Mode::Abort)) {
                for task in run.aborted() {
                    report.violations.push(format!(
                        "the task {task} was aborted: its group was dropped before it ended \
                         (not joined), or it outlived the group's shutdown grace"
                    ));
                }
            }
            if let Some(invariant) = &self.invariant
                && let Err(broken) = invariant(world).await
            {
                report.violations.push(format!("invariant: {broken}"));
            }
        });
        if mode.is_some() && !run.fired() {
            report.reached = false;
        }
        (report, run.points())
    }
}
