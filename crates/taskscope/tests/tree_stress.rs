//! Seeded stress test of concurrent cancels in one tree, on OS threads: the races the loom
//! models check on a handful of scopes, on random trees of up to 80.
//!
//! Each seed builds a random tree and gives four threads a list of things to do at once: cancel
//! a scope with a cause of their own, make a child, register an `on_cancel` callback. Every
//! round checks that each `cancel` returned only once its whole subtree was marked, that each
//! scope reports the cause that won at it or else its parent's (the very same cause), that each
//! winning call is the one whose cause its scope reports, that each callback ran once with its
//! scope's cause, and that nothing stays linked. A failing round prints its seed;
//! `TASKSCOPE_STRESS_SEED=<seed>` replays it, `TASKSCOPE_STRESS_ROUNDS=<n>` runs more.

// Only the generator: these rounds run on OS threads, not on the shared async driver.
#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use common::Rng;
use taskscope::{Cause, Scope};

const THREADS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Action {
    Cancel(usize),
    Child(usize),
    OnCancel(usize),
}

/// What the threads did, to check once they are done.
#[derive(Default)]
struct Seen {
    /// (scope, its cause, whether the call won), per cancel call.
    cancels: Vec<(usize, Cause, bool)>,
    /// (parent, the child made), per child made during the round.
    children: Vec<(usize, Scope)>,
}

fn round(seed: u64) {
    let mut rng = Rng::new(seed);
    let size = 2 + rng.below(79) as usize;
    let mut parents = vec![None];
    let mut scopes = vec![Scope::builder().name("root").build()];
    for index in 1..size {
        let parent = rng.below(index as u64) as usize;
        let builder = scopes[parent].child_builder();
        let scope = if rng.below(2) == 0 {
            builder.name(format!("n{index}")).build()
        } else {
            builder.build()
        };
        parents.push(Some(parent));
        scopes.push(scope);
    }
    let plans: Vec<Vec<Action>> = (0..THREADS)
        .map(|_| {
            (0..1 + rng.below(6))
                .map(|_| {
                    let node = rng.below(size as u64) as usize;
                    match rng.below(4) {
                        0 | 1 => Action::Cancel(node),
                        2 => Action::Child(node),
                        _ => Action::OnCancel(node),
                    }
                })
                .collect()
        })
        .collect();
    // The root always ends cancelled, so every scope does.
    let finisher = vec![Action::Cancel(0)];

    let subtree = |node: usize| -> Vec<usize> {
        (0..size)
            .filter(|&other| {
                std::iter::successors(Some(other), |&at| parents[at]).any(|at| at == node)
            })
            .collect()
    };
    let seen = Mutex::new(Seen::default());
    let callbacks: Vec<Arc<Mutex<Vec<Cause>>>> = (0..size)
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let registered: Vec<AtomicUsize> = (0..size).map(|_| AtomicUsize::new(0)).collect();
    let barrier = Barrier::new(THREADS + 1);
    std::thread::scope(|threads| {
        for (thread, plan) in plans.iter().chain([&finisher]).enumerate() {
            let (scopes, seen, callbacks) = (&scopes, &seen, &callbacks);
            let (barrier, subtree, registered) = (&barrier, &subtree, &registered);
            threads.spawn(move || {
                barrier.wait();
                for (step, &action) in plan.iter().enumerate() {
                    match action {
                        Action::Cancel(node) => {
                            let code = if thread == THREADS { "FINISH" } else { "RACE" };
                            let cause = Cause::new(code).with_detail(format!("{thread}.{step}"));
                            let won = scopes[node].cancel(cause);
                            for below in subtree(node) {
                                assert!(
                                    scopes[below].is_cancelled(),
                                    "seed {seed}: cancel of {node} returned before {below} was marked"
                                );
                            }
                            let cause = scopes[node].cause().expect("just cancelled");
                            seen.lock().unwrap().cancels.push((node, cause, won));
                        }
                        Action::Child(node) => {
                            let child = scopes[node].child();
                            seen.lock().unwrap().children.push((node, child));
                        }
                        Action::OnCancel(node) => {
                            let runs = callbacks[node].clone();
                            registered[node].fetch_add(1, Ordering::SeqCst);
                            // Kept registered: dropping the handle does not stop it.
                            let _ = scopes[node]
                                .on_cancel(move |cause| runs.lock().unwrap().push(cause.clone()));
                        }
                    }
                }
            });
        }
    });

    let seen = seen.into_inner().unwrap();
    let causes: Vec<Cause> = scopes
        .iter()
        .map(|scope| scope.cause().expect("the root was cancelled"))
        .collect();
    for (node, parent) in parents.iter().enumerate() {
        let cause = &causes[node];
        let won_here = seen
            .cancels
            .iter()
            .filter(|(at, _, won)| *at == node && *won)
            .collect::<Vec<_>>();
        assert!(
            won_here.len() <= 1,
            "seed {seed}: two cancels of {node} both won"
        );
        match (won_here.first(), parent) {
            (Some((_, won, _)), _) => assert!(
                won.ptr_eq(cause),
                "seed {seed}: {node} reports {cause}, not the cause of the call that won"
            ),
            (None, Some(parent)) => assert!(
                causes[*parent].ptr_eq(cause),
                "seed {seed}: {node} reports {cause}, not its parent's {}",
                causes[*parent]
            ),
            (None, None) => panic!("seed {seed}: the root is cancelled and no call won"),
        }
        for ran in callbacks[node].lock().unwrap().iter() {
            assert!(
                ran.ptr_eq(cause),
                "seed {seed}: callback of {node} saw {ran}"
            );
        }
        assert_eq!(
            callbacks[node].lock().unwrap().len(),
            registered[node].load(Ordering::SeqCst),
            "seed {seed}: every callback of {node} runs exactly once"
        );
        assert_eq!(
            scopes[node].live_children(),
            0,
            "seed {seed}: {node} holds children"
        );
    }
    for (parent, child) in &seen.children {
        let cause = child
            .cause()
            .expect("made under a scope that ended cancelled");
        assert!(
            cause.ptr_eq(&causes[*parent]),
            "seed {seed}: a child made under {parent} during the cancel reports {cause}"
        );
    }
}

#[test]
fn concurrent_cancels_in_random_trees() {
    let seeds = common::seeds(300);
    for seed in seeds {
        round(seed);
    }
}
