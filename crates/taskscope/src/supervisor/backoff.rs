//! How long a supervisor waits before restarting a child.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use super::ConfigError;

/// Exponential backoff with jitter, a cap, and a reset after a healthy uptime.
///
/// The `n`-th consecutive restart of a child (counting from 0) waits
/// `min(initial × factor^n, max)`, shortened by up to the jitter fraction: a jitter of `0.2`
/// draws the delay uniformly from `[0.8 d, d]`, so the cap is never exceeded. A child that ran
/// for at least [`reset_after`](Backoff::reset_after) before it stopped starts again from
/// `initial`. Delays are whole milliseconds (rounded down), the resolution of tokio's timers.
///
/// The default is 100 ms, doubling, capped at 10 s, with 10% jitter, reset after 30 s of uptime.
///
/// ```
/// use std::time::Duration;
/// use taskscope::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100)).max(Duration::from_secs(1));
/// let delays: Vec<Duration> = backoff.delays(7).take(6).collect();
/// assert_eq!(delays[0], Duration::from_millis(100));
/// assert_eq!(delays[5], Duration::from_secs(1)); // 3.2 s, capped
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: f64,
    reset_after: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles, capped at 10 s, without jitter, reset after 30 s of
    /// uptime.
    pub fn exponential(initial: Duration) -> Backoff {
        Backoff {
            initial,
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter: 0.0,
            reset_after: Duration::from_secs(30),
        }
    }

    /// Restarts at once, every time.
    pub fn none() -> Backoff {
        Backoff::exponential(Duration::ZERO)
    }

    /// Multiplies the delay by `factor` after each consecutive restart; finite and at least 1.
    pub fn factor(mut self, factor: f64) -> Backoff {
        self.factor = factor;
        self
    }

    /// Caps the delay. A cap too long to represent as an instant waits forever.
    pub fn max(mut self, max: Duration) -> Backoff {
        self.max = max;
        self
    }

    /// Shortens each delay by a random fraction of at most `jitter`, in `[0, 1]`, so children
    /// that failed together do not restart together.
    pub fn jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// A child that ran this long before it stopped is healthy: its next restart waits
    /// `initial` again.
    pub fn reset_after(mut self, uptime: Duration) -> Backoff {
        self.reset_after = uptime;
        self
    }

    /// The delays a child that keeps failing waits before each restart, under a supervisor
    /// seeded with `seed` (see [`SupervisorBuilder::jitter_seed`](crate::SupervisorBuilder::jitter_seed))
    /// while no other child restarts: the supervisor draws the jitter of every restart, in
    /// order, from one generator.
    pub fn delays(&self, seed: u64) -> Delays {
        Delays {
            backoff: self.clone(),
            rng: Rng::new(seed),
            attempt: 0,
        }
    }

    /// The delay before restart number `attempt` (counting consecutive restarts from 0), with
    /// `draw` in `[0, 1)` choosing the jitter.
    pub(crate) fn delay(&self, attempt: u32, draw: f64) -> Duration {
        if self.initial.is_zero() {
            // Not `0 × factor^n`, which is NaN once the power overflows.
            return Duration::ZERO;
        }
        let cap = self.max.as_secs_f64();
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let full = (self.initial.as_secs_f64() * self.factor.powi(exponent)).min(cap);
        let jittered = full * (1.0 - self.jitter * draw);
        // NaN or out of range only when the cap itself is out of range: then it is the cap.
        let delay = Duration::try_from_secs_f64(jittered)
            .unwrap_or(self.max)
            .min(self.max);
        // Whole milliseconds: tokio's timers would round up anything finer.
        match u64::try_from(delay.as_millis()) {
            Ok(millis) => Duration::from_millis(millis),
            Err(_) => delay,
        }
    }

    pub(crate) fn reset_after_uptime(&self) -> Duration {
        self.reset_after
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(ConfigError::new(format!(
                "backoff factor must be finite and at least 1, got {}",
                self.factor
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(format!(
                "backoff jitter must be between 0 and 1, got {}",
                self.jitter
            )));
        }
        Ok(())
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::exponential(Duration::from_millis(100)).jitter(0.1)
    }
}

/// The delays of consecutive restarts; made by [`Backoff::delays`]. Never ends.
#[derive(Clone, Debug)]
pub struct Delays {
    backoff: Backoff,
    rng: Rng,
    attempt: u32,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.backoff.delay(self.attempt, self.rng.next_f64());
        self.attempt = self.attempt.saturating_add(1);
        Some(delay)
    }
}

/// SplitMix64: small, fast, and good enough to spread restarts; not for cryptography. Hand
/// written rather than `rand`: the core crate depends on tokio and pin-project-lite only, and a
/// seed ([`SupervisorBuilder::jitter_seed`](crate::SupervisorBuilder::jitter_seed)) makes a
/// schedule reproducible in tests.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed that differs between supervisors and between runs.
    pub(crate) fn random_seed() -> u64 {
        RandomState::new().hash_one(0u8)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        // The top 53 bits, as many as an f64 mantissa holds.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
