//! What the seeded stress tests share: a seedable generator, a live-future counter, and the
//! driver that runs one round per seed on a two-worker runtime.
//!
//! A failing round prints its seed; `TASKSCOPE_STRESS_SEED=<seed>` replays it,
//! `TASKSCOPE_STRESS_ROUNDS=<n>` runs more.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// xorshift64*: small, seedable, good enough to pick behaviours.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Counts live task futures, so a round can check that none outlives its owner.
pub struct Live(Arc<AtomicUsize>);

impl Live {
    pub fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Whether the rounds should say what they do (a single seed is being replayed).
pub fn replaying() -> bool {
    std::env::var("TASKSCOPE_STRESS_SEED").is_ok()
}

/// The seeds to run: `TASKSCOPE_STRESS_SEED` alone, or the first `TASKSCOPE_STRESS_ROUNDS`
/// (`default_rounds` unless set).
pub fn seeds(default_rounds: u64) -> Vec<u64> {
    match std::env::var("TASKSCOPE_STRESS_SEED") {
        Ok(seed) => vec![seed.parse().expect("TASKSCOPE_STRESS_SEED is a number")],
        Err(_) => {
            let rounds = std::env::var("TASKSCOPE_STRESS_ROUNDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(default_rounds);
            (0..rounds).collect()
        }
    }
}

/// Runs `round(seed)` for every seed (`default_rounds` of them unless the environment says
/// otherwise) on a multi-thread runtime with two workers, each within 20 s; a panic or a hang
/// fails the test with its seed.
pub fn run_seeds<F, Fut>(default_rounds: u64, round: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let seeds = seeds(default_rounds);
    // Panicking tasks are expected; keep their messages out of the test output.
    std::panic::set_hook(Box::new(|_| {}));
    for seed in seeds {
        let done = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), tokio::spawn(round(seed))).await
        });
        match done {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => {
                let _ = std::panic::take_hook();
                let payload = panic.into_panic();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("seed {seed}: {message}");
            }
            Err(_) => {
                let _ = std::panic::take_hook();
                panic!("seed {seed}: the round hung");
            }
        }
    }
    let _ = std::panic::take_hook();
}
