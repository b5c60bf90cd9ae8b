//! Exponential backoff with equal jitter, validated when it is made.

use std::time::Duration;

use crate::base::time::wall_ms;

/// Exponential backoff with equal jitter: attempt `n` waits a random time between half and
/// all of `initial × factorⁿ` (capped at `max`). The guaranteed half keeps a receiver that
/// is down from being hammered; the random half spreads agents that lost the same receiver
/// at the same moment, so they do not come back in lockstep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
}

/// Parameters a [`Backoff`] cannot work with.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum BackoffError {
    /// A zero first step would retry at once, forever.
    #[error("the initial backoff must be positive")]
    ZeroInitial,
    /// The cap is below the first step.
    #[error("the longest backoff ({max:?}) must be at least the initial one ({initial:?})")]
    MaxBelowInitial {
        /// The first step.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
    /// Below 1 the steps would shrink; NaN and infinity mean nothing.
    #[error("the backoff factor must be a finite number of at least 1, not {0}")]
    Factor(f64),
}

/// The longest `Retry-After` honoured: a receiver asking for more is asked again sooner.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl Backoff {
    /// A backoff starting at `initial`, multiplied by `factor` after each attempt, never
    /// above `max`. `const`, so fixed parameters are checked when the crate compiles.
    pub const fn new(initial: Duration, max: Duration, factor: f64) -> Result<Self, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if max.as_nanos() < initial.as_nanos() {
            return Err(BackoffError::MaxBelowInitial { initial, max });
        }
        if !factor.is_finite() || factor < 1.0 {
            return Err(BackoffError::Factor(factor));
        }
        Ok(Self { initial, max, factor })
    }

    /// The step of attempt `attempt` (0 for the first retry), before jitter.
    pub fn step(&self, attempt: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        if grown.is_finite() && grown < self.max.as_secs_f64() {
            // Float rounding may land a nanosecond outside the bounds.
            Duration::from_secs_f64(grown).clamp(self.initial, self.max)
        } else {
            self.max
        }
    }

    /// The wait before attempt `attempt`: half the step plus `random`'s share of the other
    /// half, so always within `[step / 2, step]`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let step = self.step(attempt);
        let half = step / 2;
        let spread = u64::try_from(step.saturating_sub(half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random % spread.saturating_add(1))
    }

    /// The waits of one delivery, seeded from the process, `salt` (say, which receiver) and
    /// the clock, so agents and receivers do not draw the same jitter.
    pub fn retries(&self, salt: u64) -> Retries {
        let pid = u64::from(std::process::id());
        let now = wall_ms().unsigned_abs();
        Retries { backoff: *self, attempt: 0, state: mix(pid << 32 ^ salt ^ mix(now)) | 1 }
    }
}

/// One delivery's way through a [`Backoff`]: each call is the next wait.
#[derive(Clone, Debug)]
pub struct Retries {
    backoff: Backoff,
    attempt: u32,
    /// xorshift64 state: never zero.
    state: u64,
}

impl Retries {
    /// How long to wait before the next attempt: `Retry-After` when the receiver gave one
    /// (at most [`MAX_RETRY_AFTER`]), the jittered step otherwise. The step grows either way.
    pub(crate) fn next_wait(&mut self, retry_after: Option<Duration>) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let jittered = self.backoff.delay(self.attempt, self.state);
        self.attempt = self.attempt.saturating_add(1);
        retry_after.map_or(jittered, |after| after.min(MAX_RETRY_AFTER))
    }
}

/// SplitMix64's finaliser: close seeds give unrelated jitter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_rejects_nonsense() {
        let s = Duration::from_secs;
        assert_eq!(Backoff::new(Duration::ZERO, s(1), 2.0), Err(BackoffError::ZeroInitial));
        assert_eq!(
            Backoff::new(s(2), s(1), 2.0),
            Err(BackoffError::MaxBelowInitial { initial: s(2), max: s(1) })
        );
        for factor in [0.5, 0.0, -2.0, f64::INFINITY] {
            assert_eq!(Backoff::new(s(1), s(2), factor), Err(BackoffError::Factor(factor)));
        }
        assert!(matches!(Backoff::new(s(1), s(2), f64::NAN), Err(BackoffError::Factor(f)) if f.is_nan()));
        assert!(Backoff::new(s(1), s(1), 1.0).is_ok(), "a constant backoff is fine");
        let message = Backoff::new(s(2), s(1), 2.0).unwrap_err().to_string();
        assert!(message.contains("at least the initial one"), "{message}");
    }

    #[test]
    fn steps_grow_to_the_cap_and_stay_there() {
        let b = Backoff::new(100 * MS, Duration::from_secs(1), 2.0).unwrap();
        let steps: Vec<Duration> = (0..7).map(|n| b.step(n)).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS));
        assert_eq!(b.step(u32::MAX), Duration::from_secs(1), "no overflow, however long it fails");
    }

    #[test]
    fn jittered_delays_stay_within_half_and_all_of_the_step() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2.0).unwrap();
        let mut retries = b.retries(7);
        let mut previous_step = Duration::ZERO;
        for attempt in 0..12 {
            let step = b.step(attempt);
            assert!(step >= previous_step, "steps never shrink");
            previous_step = step;
            let wait = retries.next_wait(None);
            assert!(
                wait >= step / 2 && wait <= step,
                "attempt {attempt}: {wait:?} outside [{step:?}/2, {step:?}]"
            );
            assert!(wait >= b.initial / 2 && wait <= b.max);
        }
        // The extremes of the random draw land on the ends of the range.
        assert_eq!(b.delay(3, 0), Duration::from_secs(4));
        let spread = u64::try_from(Duration::from_secs(4).as_nanos()).unwrap();
        assert_eq!(b.delay(3, spread), Duration::from_secs(8));
    }

    #[test]
    fn retry_after_wins_over_the_step_up_to_a_cap() {
        let b = Backoff::new(100 * MS, Duration::from_secs(1), 2.0).unwrap();
        let mut retries = b.retries(0);
        assert_eq!(retries.next_wait(Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(retries.next_wait(Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
        // The step grew meanwhile: attempt 2 is 400 ms.
        let wait = retries.next_wait(None);
        assert!(wait >= 200 * MS && wait <= 400 * MS, "{wait:?}");
    }
}
