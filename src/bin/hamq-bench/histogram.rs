//! Latency histograms: nanosecond samples in log-linear buckets (exact below 256 ns, then 128
//! buckets per power of two, so a reported percentile is within 0.8 % of the exact one) with
//! the exact count, mean and max. Fixed size (about 60 KB) whatever the run length; each
//! thread keeps its own and they are merged at the end.

/// Values below this get a bucket each.
const LINEAR: u64 = 256;
/// log2 of the buckets per power of two above `LINEAR`.
const SUB_BITS: u32 = 7;
const BUCKETS: usize = LINEAR as usize + (64 - SUB_BITS as usize - 1) * (1 << SUB_BITS);

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

/// The summary reported for one latency.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS; // >= 1: v >> shift keeps 8 bits
    let mantissa = (v >> shift) as usize - (1 << SUB_BITS);
    LINEAR as usize + ((shift as usize - 1) << SUB_BITS) + mantissa
}

/// The largest value that falls in bucket `i`.
fn highest(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let rel = i - LINEAR as usize;
    let shift = (rel >> SUB_BITS) as u32 + 1;
    let mantissa = (rel & ((1 << SUB_BITS) - 1)) as u128 + (1 << SUB_BITS);
    (((mantissa + 1) << shift) - 1).min(u128::from(u64::MAX)) as u64
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.count += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The nearest-rank percentile `p` (0 < p <= 100): the smallest recorded value with at
    /// least p % of the samples at or below it, rounded up to its bucket's top (never above
    /// the max). 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest(i).min(self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count,
            mean_ns: if self.count == 0 {
                0
            } else {
                (self.sum / u128::from(self.count)) as u64
            },
            p50_ns: self.percentile(50.0),
            p90_ns: self.percentile(90.0),
            p99_ns: self.percentile(99.0),
            max_ns: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact nearest-rank percentile of sorted samples.
    fn exact(sorted: &[u64], p: f64) -> u64 {
        let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS && i >= last, "value {v}");
            assert!(
                highest(i) >= v,
                "value {v} above its bucket's top {}",
                highest(i)
            );
            last = i;
        }
        assert_eq!(highest(index(u64::MAX)), u64::MAX);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.p50_ns, s.p90_ns, s.p99_ns, s.max_ns), (50, 90, 99, 100));
        assert_eq!((s.count, s.mean_ns), (100, 50));
    }

    #[test]
    fn percentiles_within_one_percent_at_100k_samples() {
        // A skewed, deterministic distribution: 100 us .. 50 ms with a long tail.
        let mut x: u64 = 0x1234_5678;
        let mut samples = Vec::new();
        let mut parts = [Histogram::default(), Histogram::default()];
        for n in 0..100_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            let v = 100_000 + (u.powi(8) * 50_000_000.0) as u64;
            samples.push(v);
            parts[n % 2].record(v);
        }
        let mut h = Histogram::default();
        h.merge(&parts[0]);
        h.merge(&parts[1]);
        samples.sort_unstable();
        for p in [50.0, 90.0, 99.0, 99.9, 100.0] {
            let (got, want) = (h.percentile(p), exact(&samples, p));
            assert!(got >= want, "p{p}: {got} < exact {want}");
            assert!(
                (got - want) as f64 <= want as f64 * 0.008,
                "p{p}: {got} vs exact {want}"
            );
        }
        assert_eq!(h.summary().max_ns, *samples.last().unwrap());
        assert_eq!(h.summary().count, 100_000);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        assert_eq!(Histogram::default().summary(), Summary::default());
    }
}
