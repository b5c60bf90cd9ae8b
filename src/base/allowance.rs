//! The ENA allowance statistics: which driver stats enawatch understands and how.
//!
//! This table is the only place that knows driver stat names; everything else refers to an
//! [`Allowance`] or to [`CONNTRACK_AVAILABLE`].

/// One of the five per-ENI allowances whose `*_allowance_exceeded` counter the ENA driver
/// reports (ENA driver >= 2.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Allowance {
    /// Inbound bandwidth.
    BwIn,
    /// Outbound bandwidth.
    BwOut,
    /// Packets per second (also counts drops from the per-ENI egress-fragment limit).
    Pps,
    /// Tracked connections.
    Conntrack,
    /// 1024 packets per second to link-local services (DNS resolver, IMDS, Time Sync).
    Linklocal,
}

impl Allowance {
    /// All five, in the order used everywhere (arrays indexed by [`Allowance::index`]).
    pub const ALL: [Allowance; 5] = [Self::BwIn, Self::BwOut, Self::Pps, Self::Conntrack, Self::Linklocal];

    /// Position in [`Allowance::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `allowance` label value of the native metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::BwIn => "bw_in",
            Self::BwOut => "bw_out",
            Self::Pps => "pps",
            Self::Conntrack => "conntrack",
            Self::Linklocal => "linklocal",
        }
    }

    /// The driver's statistic name (`ethtool -S`).
    pub fn stat(self) -> &'static str {
        match self {
            Self::BwIn => "bw_in_allowance_exceeded",
            Self::BwOut => "bw_out_allowance_exceeded",
            Self::Pps => "pps_allowance_exceeded",
            Self::Conntrack => "conntrack_allowance_exceeded",
            Self::Linklocal => "linklocal_allowance_exceeded",
        }
    }

    /// The allowance whose exceeded counter has this driver name.
    pub(crate) fn from_stat(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.stat() == name)
    }
}

/// The gauge of tracked connections still available (ENA >= 2.8.1, Nitro only).
pub(crate) const CONNTRACK_AVAILABLE: &str = "conntrack_allowance_available";

/// The six allowance statistics, in the order `ena_stat_supported` lists them; also the
/// default selection of the compatibility families.
pub const ALLOWANCE_STATS: [&str; 6] = [
    "bw_in_allowance_exceeded",
    "bw_out_allowance_exceeded",
    "pps_allowance_exceeded",
    "conntrack_allowance_exceeded",
    "linklocal_allowance_exceeded",
    CONNTRACK_AVAILABLE,
];

/// The driver whose devices are watched by default.
pub(crate) const ENA_DRIVER: &str = "ena";

/// Where the allowance statistics sit in one device's stat list. Built once per stat set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowanceIndex {
    /// Position of each allowance's exceeded counter, by [`Allowance::index`].
    pub exceeded: [Option<usize>; 5],
    /// Position of `conntrack_allowance_available`.
    pub available: Option<usize>,
}

impl AllowanceIndex {
    /// Finds the allowance stats among `names`, by name (never by position: drivers reorder).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let mut index = Self::default();
        for (i, name) in names.iter().enumerate() {
            let name = name.as_ref();
            if let Some(a) = Allowance::from_stat(name) {
                index.exceeded[a.index()].get_or_insert(i);
            } else if name == CONNTRACK_AVAILABLE {
                index.available.get_or_insert(i);
            }
        }
        index
    }

    /// Whether the driver reports the `k`-th stat of [`ALLOWANCE_STATS`].
    pub(crate) fn supports(&self, k: usize) -> bool {
        if k < 5 {
            self.exceeded[k].is_some()
        } else {
            self.available.is_some()
        }
    }

    /// Picks the allowance values out of a full value list.
    pub fn pick(&self, values: &[u64]) -> ([Option<u64>; 5], Option<u64>) {
        let get = |i: Option<usize>| i.and_then(|i| values.get(i).copied());
        (self.exceeded.map(get), get(self.available))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_stats_round_trip() {
        for a in Allowance::ALL {
            assert_eq!(Allowance::from_stat(a.stat()), Some(a));
            assert_eq!(ALLOWANCE_STATS[a.index()], a.stat());
            assert!(a.stat().starts_with(a.label()));
        }
    }

    #[test]
    fn index_maps_by_name_whatever_the_order() {
        let v1 = ["tx_timeout", "bw_in_allowance_exceeded", "linklocal_allowance_exceeded"];
        let v2 = ["linklocal_allowance_exceeded", "queue_0_tx_cnt", "bw_in_allowance_exceeded"];
        let (a, b) = (AllowanceIndex::new(&v1), AllowanceIndex::new(&v2));
        assert_eq!(a.pick(&[7, 1, 2]).0, [Some(1), None, None, None, Some(2)]);
        assert_eq!(b.pick(&[2, 7, 1]).0, [Some(1), None, None, None, Some(2)]);
        assert!(!a.supports(5));
    }
}
