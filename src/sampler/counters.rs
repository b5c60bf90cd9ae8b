//! Counter semantics: turning the driver's raw allowance values into counters Prometheus
//! can trust.
//!
//! The driver's values are not counters a scraper can use directly: a driver reset restarts
//! them from zero, and the ENA driver answers a read whose admin command failed with zeros
//! for every hardware statistic, for one sample, before the real values return. Here:
//!
//! * each counter starts at the driver's value when first read;
//! * it then grows by validated positive deltas only, so it never decreases;
//! * a value below the last one is a reset: the counter grows by the new value (what the
//!   driver counted since the reset), and the reset is reported;
//! * a sample in which every hardware statistic reads zero while the last good one did not is
//!   held back: nothing is counted and the baseline is kept. The next sample with a value
//!   decides, counter by counter: one that continues from the baseline was glitched, one
//!   below it was reset and counts its new value, so nothing is lost or counted twice either
//!   way. A failing admin queue can answer zeros several times in a row, so up to
//!   [`GLITCH_RUN`] zero samples are glitches; zeros that last longer are reported as a reset
//!   once (and the zero headroom exported), while the baseline is still kept for that
//!   decision;
//! * a jump larger than any ENA device can produce in the elapsed time is not counted, so one
//!   corrupt read cannot add billions of drops: the baseline is kept, and the next sample
//!   continues from whichever of the two values it follows.
//!
//! The module is pure: it sees values and timestamps, never the kernel or a clock.

use crate::base::Allowance;
use crate::history::DeviceCounters;

/// More packets per second than any ENA device could queue or drop: 100 Gbit/s of minimum
/// size frames is about 150 million; this leaves an order of magnitude of margin.
pub(crate) const MAX_PLAUSIBLE_PER_SECOND: u64 = 2_000_000_000;

/// All-zero samples in a row that are taken as the glitch; the next is a reset.
pub(crate) const GLITCH_RUN: u32 = 5;

/// The allowance values of one device in one sample: `None` where the driver lacks the stat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawAllowances {
    /// The five `*_allowance_exceeded` values, by [`Allowance::index`].
    pub exceeded: [Option<u64>; 5],
    /// `conntrack_allowance_available`.
    pub available: Option<u64>,
}

impl RawAllowances {
    fn all_zero(&self) -> bool {
        let mut any = false;
        for v in self.exceeded.iter().chain(std::iter::once(&self.available)).flatten() {
            if *v != 0 {
                return false;
            }
            any = true;
        }
        any
    }
}

/// How one sample was taken into account.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Update {
    /// Packets added to each counter by this sample.
    pub added: [u64; 5],
    /// The interval this sample closes, in seconds (0 for the first sample).
    pub interval_seconds: f64,
    /// Counters whose driver value went backwards (a driver reset).
    pub reset: [bool; 5],
    /// The sample was the ENA all-zero read and was held back.
    pub glitch: bool,
    /// Counters whose jump was implausible and was not counted.
    pub implausible: [bool; 5],
}

impl Update {
    /// Whether any counter was reset.
    pub(crate) fn any_reset(&self) -> bool {
        self.reset.iter().any(|&r| r)
    }
}

impl DeviceCounters {
    /// Takes one sample at `at_ms` (milliseconds on any clock that does not go backwards).
    pub fn update(&mut self, at_ms: i64, raw: &RawAllowances) -> Update {
        let mut up = Update::default();
        self.supported = raw.exceeded.map(|v| v.is_some());
        self.available_supported = raw.available.is_some();

        let Some(last_at_ms) = self.last_at_ms else {
            // First read: the counters start at the driver's values.
            for a in Allowance::ALL {
                let i = a.index();
                if let Some(v) = raw.exceeded[i] {
                    self.packets[i] = v;
                    self.baseline[i] = Some(v);
                }
            }
            self.available = raw.available;
            self.last_at_ms = Some(at_ms);
            return up;
        };

        let baseline_nonzero =
            self.baseline.iter().flatten().any(|&v| v != 0) || self.available.is_some_and(|v| v != 0);
        if raw.all_zero() && baseline_nonzero {
            self.held_back = self.held_back.saturating_add(1);
            if self.held_back <= GLITCH_RUN {
                up.glitch = true;
            } else if self.held_back == GLITCH_RUN + 1 {
                // Zeros this long are the driver's state, not a failed read.
                up.reset = self.baseline.map(|b| b.is_some_and(|v| v != 0));
                self.available = raw.available;
            }
            return up;
        }
        let reset_reported = self.held_back > GLITCH_RUN;
        self.held_back = 0;

        let elapsed_ms = (at_ms - last_at_ms).max(0);
        let seconds = elapsed_ms as f64 / 1000.0;
        up.interval_seconds = seconds;
        let ceiling = MAX_PLAUSIBLE_PER_SECOND
            .saturating_mul(u64::try_from(elapsed_ms.max(1000)).unwrap_or(u64::MAX) / 1000);
        for i in 0..5 {
            let Some(now) = raw.exceeded[i] else { continue };
            if let Some(suspect) = self.suspect[i].take() {
                if now >= suspect {
                    // The driver continues from the jump: accept it as the new baseline
                    // without counting the jump itself.
                    self.baseline[i] = Some(suspect);
                }
            }
            let delta = match self.baseline[i] {
                // A stat seen for the first time starts at the driver's value.
                None => {
                    self.packets[i] = self.packets[i].saturating_add(now);
                    self.baseline[i] = Some(now);
                    continue;
                }
                Some(before) if now >= before => now - before,
                Some(_) => {
                    up.reset[i] = !reset_reported;
                    now
                }
            };
            if delta > ceiling {
                up.implausible[i] = true;
                up.reset[i] = false;
                self.suspect[i] = Some(now);
                continue;
            }
            self.baseline[i] = Some(now);
            if delta > 0 {
                self.packets[i] = self.packets[i].saturating_add(delta);
                self.seconds[i] += seconds;
                up.added[i] = delta;
            }
        }
        if raw.available.is_some() {
            self.available = raw.available;
        }
        self.last_at_ms = Some(at_ms);
        up
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LL: usize = 4; // Allowance::Linklocal

    fn raw(ll: u64, pps: u64, avail: Option<u64>) -> RawAllowances {
        RawAllowances { exceeded: [Some(0), Some(0), Some(pps), Some(0), Some(ll)], available: avail }
    }

    #[test]
    fn starts_at_the_driver_value_and_grows_by_deltas() {
        let mut c = DeviceCounters::default();
        assert_eq!(c.update(0, &raw(1893, 84, Some(1000))), Update::default());
        assert_eq!(c.packets[LL], 1893);
        let up = c.update(1000, &raw(1900, 84, Some(999)));
        assert_eq!(up.added[LL], 7);
        assert_eq!(c.packets[LL], 1900);
        assert!((c.seconds[LL] - 1.0).abs() < 1e-9);
        assert!(c.seconds[Allowance::Pps.index()].abs() < 1e-9, "no increase, no seconds");
        assert_eq!(c.available, Some(999));
    }

    #[test]
    fn a_reset_keeps_growing_by_the_new_driver_values() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(500, 0, None));
        let up = c.update(1000, &raw(30, 0, None));
        assert!(up.reset[LL]);
        assert_eq!(c.packets[LL], 530);
        c.update(2000, &raw(40, 0, None));
        assert_eq!(c.packets[LL], 540);
    }

    #[test]
    fn the_ena_all_zero_glitch_never_produces_an_increase() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(1000, 10, Some(5000)));
        let up = c.update(1000, &raw(0, 0, Some(0)));
        assert!(up.glitch);
        assert_eq!(c.packets[LL], 1000);
        assert_eq!(c.available, Some(5000), "the glitch's zero is not exported as headroom");
        let up = c.update(2000, &raw(1000, 10, Some(5000)));
        assert_eq!(up, Update { interval_seconds: 2.0, ..Update::default() });
        assert_eq!(c.packets[LL], 1000);
        assert!(c.seconds[LL].abs() < 1e-9);
    }

    #[test]
    fn a_reset_seen_first_as_zeros_loses_nothing() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(1000, 0, None));
        assert!(c.update(1000, &raw(0, 0, None)).glitch);
        // The driver really restarted: it counted 5 since.
        let up = c.update(2000, &raw(5, 0, None));
        assert!(up.reset[LL]);
        assert_eq!(c.packets[LL], 1005);
    }

    #[test]
    fn zeros_that_persist_are_a_reset_not_a_glitch_forever() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(1000, 0, Some(7)));
        let mut at = 0;
        for _ in 0..GLITCH_RUN {
            at += 1000;
            assert!(c.update(at, &raw(0, 0, Some(0))).glitch);
        }
        let up = c.update(at + 1000, &raw(0, 0, Some(0)));
        assert!(!up.glitch && up.reset[LL], "the zero sample after the glitch run is the reset");
        assert_eq!(c.available, Some(0), "zeros that last are the headroom");
        let up = c.update(at + 2000, &raw(0, 0, Some(0)));
        assert_eq!(up, Update::default(), "the reset is reported once");
        let up = c.update(at + 3000, &raw(6, 0, Some(7)));
        assert_eq!((up.added[LL], up.reset[LL]), (6, false));
        assert_eq!(c.packets[LL], 1006);
    }

    /// Regression: two all-zero samples in a row (a glitch at 28 s and 29 s in a generated
    /// scenario) made the second the "reset", and the third, back at the real values,
    /// counted every packet the device had ever dropped as new drops.
    #[test]
    fn a_run_of_glitches_then_the_real_values_counts_nothing() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(1000, 10, Some(5000)));
        assert!(c.update(1000, &raw(0, 0, Some(0))).glitch);
        assert!(c.update(2000, &raw(0, 0, Some(0))).glitch);
        let up = c.update(3000, &raw(1002, 10, Some(5000)));
        assert_eq!((up.added[LL], up.reset, up.glitch), (2, [false; 5], false));
        assert_eq!(c.packets[LL], 1002);
        assert_eq!(c.available, Some(5000));
    }

    #[test]
    fn zeros_that_last_then_the_old_values_are_not_counted_again() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(1000, 0, Some(5000)));
        for s in 1..=GLITCH_RUN + 3 {
            c.update(i64::from(s) * 1000, &raw(0, 0, Some(0)));
        }
        let up = c.update(20_000, &raw(1004, 0, Some(5000)));
        assert_eq!(up.added[LL], 4, "the counter continued from its value before the zeros");
        assert_eq!(c.packets[LL], 1004);
    }

    #[test]
    fn all_zero_from_the_start_is_not_a_glitch() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(0, 0, None));
        assert!(!c.update(1000, &raw(0, 0, None)).glitch);
        assert_eq!(c.update(2000, &raw(3, 0, None)).added[LL], 3);
    }

    #[test]
    fn a_stat_that_disappears_stops_and_continues_when_it_returns() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(100, 0, Some(9)));
        let mut missing = raw(100, 0, None);
        missing.exceeded[LL] = None;
        c.update(1000, &missing);
        assert!(!c.supported[LL]);
        assert!(!c.available_supported);
        assert_eq!(c.available, Some(9));
        let up = c.update(2000, &raw(104, 0, None));
        assert!(c.supported[LL]);
        assert_eq!(up.added[LL], 4);
        assert_eq!(c.packets[LL], 104);
    }

    #[test]
    fn a_stat_that_appears_later_starts_at_its_driver_value() {
        let mut c = DeviceCounters::default();
        let mut first = raw(0, 0, None);
        first.exceeded[LL] = None;
        c.update(0, &first);
        let up = c.update(1000, &raw(77, 0, None));
        assert_eq!(up.added[LL], 0);
        assert_eq!(c.packets[LL], 77);
    }

    #[test]
    fn an_implausible_jump_is_not_counted() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(10, 0, None));
        let up = c.update(1000, &raw(u64::MAX - 5, 0, None));
        assert!(up.implausible[LL]);
        assert_eq!(c.packets[LL], 10);
        // The driver continues from the jump: only what follows it counts.
        assert_eq!(c.update(2000, &raw(u64::MAX - 2, 0, None)).added[LL], 3);
        assert_eq!(c.packets[LL], 13);
    }

    #[test]
    fn a_one_off_corrupt_read_is_neither_counted_nor_mistaken_for_a_reset() {
        let mut c = DeviceCounters::default();
        c.update(0, &raw(10, 0, None));
        assert!(c.update(1000, &raw(1 << 62, 0, None)).implausible[LL]);
        let up = c.update(2000, &raw(12, 0, None));
        assert!(!up.reset[LL]);
        assert_eq!(up.added[LL], 2);
        assert_eq!(c.packets[LL], 12);
    }

    /// A driver value: mostly growing, sometimes the glitch's zero, sometimes a reset to a
    /// small value, sometimes a wild jump.
    fn driver_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            1 => Just(0u64),
            1 => 0u64..16,
            6 => 0u64..1 << 24,
            1 => any::<u64>(),
        ]
    }

    proptest! {
        // Failing cases are saved under proptest-regressions/ and replayed first.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn counters_never_decrease_whatever_the_driver_says(
            walk in prop::collection::vec((driver_value(), 1i64..5000), 1..400)
        ) {
            let mut c = DeviceCounters::default();
            let (mut prev, mut prev_s) = ([0u64; 5], [0f64; 5]);
            let mut at = 0;
            for (v, step) in walk {
                at += step;
                c.update(at, &raw(v, v / 2, Some(v)));
                for i in 0..5 {
                    prop_assert!(c.packets[i] >= prev[i], "packets[{}] went down at {}", i, at);
                    prop_assert!(c.seconds[i] >= prev_s[i], "seconds[{}] went down at {}", i, at);
                }
                prev = c.packets;
                prev_s = c.seconds;
            }
        }
    }
}
