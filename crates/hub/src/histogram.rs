//! Distributions of latencies and sizes, counted in fixed buckets.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The most bounds a [`Histogram`] takes.
pub const MAX_BOUNDS: usize = 32;

/// Bounds for latencies in nanoseconds, from 50 µs to 10 s in steps of
/// about 2 and 2.5: what this workspace's transports and backplanes
/// measure deliveries, handshakes and round trips in.
pub static LATENCY_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Observations counted in fixed buckets, for latencies and sizes that a
/// metrics system shows as quantiles.
///
/// Observations are integers in a unit of the caller's choice
/// (nanoseconds, bytes). Each costs a binary search through the bounds and
/// two relaxed atomic additions; where observations come in batches, a
/// [`Run`] gathers those that share a bucket and counts them at once. A
/// reader takes a [`Distribution`] at any time without stopping writers
/// (it may see an observation's bucket before its sum).
///
/// ```
/// use hub::Histogram;
///
/// static BOUNDS: [u64; 3] = [10, 100, 1000];
/// let sizes = Histogram::new(&BOUNDS);
/// for size in [3, 10, 11, 5000] {
///     sizes.observe(size);
/// }
/// let taken = sizes.snapshot();
/// // At most 10, at most 100, at most 1000, above.
/// assert_eq!(taken.counts, [2, 1, 0, 1]);
/// assert_eq!((taken.count(), taken.sum), (4, 5024));
/// ```
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with buckets up to each of `bounds` (inclusive), and one
    /// above the last.
    ///
    /// # Panics
    ///
    /// If `bounds` is empty, longer than [`MAX_BOUNDS`], or not strictly
    /// increasing: bounds are constants of the program, so this is a bug in
    /// it, found by its first test.
    #[must_use]
    pub fn new(bounds: &'static [u64]) -> Self {
        assert!(
            !bounds.is_empty() && bounds.len() <= MAX_BOUNDS,
            "a histogram takes 1 to {MAX_BOUNDS} bounds, not {}",
            bounds.len()
        );
        assert!(
            bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "a histogram's bounds must be strictly increasing: {bounds:?}"
        );
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// The bounds it was made with.
    #[must_use]
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// Counts one observation.
    pub fn observe(&self, value: u64) {
        self.counts[bucket(self.bounds, value)].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Counts `value` into `run`; when it falls in another bucket than the
    /// run's, the run is counted first and a new one starts.
    ///
    /// ```
    /// use hub::{Histogram, Run};
    ///
    /// static BOUNDS: [u64; 2] = [64, 1024];
    /// let sizes = Histogram::new(&BOUNDS);
    /// let mut run = Run::default();
    /// for size in [20, 30, 2000] {
    ///     sizes.observe_in(&mut run, size);
    /// }
    /// // The run of two small ones was counted when the large one came.
    /// assert_eq!(sizes.snapshot().counts, [2, 0, 0]);
    /// sizes.end(&mut run);
    /// assert_eq!(sizes.snapshot().counts, [2, 0, 1]);
    /// ```
    pub fn observe_in(&self, run: &mut Run, value: u64) {
        let bucket = bucket(self.bounds, value);
        if run.count > 0 && run.bucket != bucket {
            self.end(run);
        }
        run.bucket = bucket;
        run.count += 1;
        run.sum = run.sum.wrapping_add(value);
    }

    /// Counts what `run` holds, and empties it.
    pub fn end(&self, run: &mut Run) {
        if run.count > 0 {
            if let Some(count) = self.counts.get(run.bucket) {
                count.fetch_add(run.count, Relaxed);
                self.sum.fetch_add(run.sum, Relaxed);
            }
        }
        *run = Run::default();
    }

    /// The observations so far.
    #[must_use]
    pub fn snapshot(&self) -> Distribution {
        Distribution {
            bounds: self.bounds,
            counts: self.counts.iter().map(|n| n.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// Observations in one bucket, gathered apart from their [`Histogram`] by
/// one writer (for one batch, say) and counted with a single atomic
/// addition when the run ends: see [`Histogram::observe_in`].
///
/// Small (three words), for writers that keep one per connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    bucket: usize,
    count: u64,
    sum: u64,
}

/// Where `value` is counted: the first bucket whose bound is at least it.
fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|bound| *bound < value)
}

/// What a [`Histogram`] counted, from [`Histogram::snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Distribution {
    /// The buckets' upper bounds (inclusive), in the observations' unit.
    pub bounds: &'static [u64],
    /// Observations in each bucket (not cumulative): one count per bound,
    /// then the count above the last bound.
    pub counts: Vec<u64>,
    /// The observations added up (wrapping, as Prometheus sums may not).
    pub sum: u64,
}

impl Distribution {
    /// How many observations there were.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Each bucket's upper bound with the observations up to it, cumulative
    /// as Prometheus wants them, ending with `None` (no bound) and the
    /// count of all.
    #[must_use]
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        (self.counts.iter().enumerate())
            .map(|(i, n)| {
                total += n;
                (self.bounds.get(i).copied(), total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [u64; 3] = [10, 20, 30];

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::new(&BOUNDS);
        for value in [0, 10, 11, 20, 21, 30, 31, u64::MAX] {
            histogram.observe(value);
        }
        let taken = histogram.snapshot();
        assert_eq!(taken.counts, [2, 2, 2, 2]);
        assert_eq!(
            taken.cumulative(),
            [(Some(10), 2), (Some(20), 4), (Some(30), 6), (None, 8)]
        );
        assert_eq!(taken.count(), 8);
    }

    #[test]
    fn runs_count_the_same_as_observing_one_by_one() {
        let (one_by_one, in_runs) = (Histogram::new(&BOUNDS), Histogram::new(&BOUNDS));
        let mut run = Run::default();
        for value in [5, 15, 15, 100, 1, 2] {
            one_by_one.observe(value);
            in_runs.observe_in(&mut run, value);
        }
        in_runs.end(&mut run);
        assert_eq!(in_runs.snapshot(), one_by_one.snapshot());
        // Ending an empty run counts nothing.
        in_runs.end(&mut run);
        assert_eq!(in_runs.snapshot(), one_by_one.snapshot());
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn bounds_out_of_order_are_a_bug() {
        static BAD: [u64; 2] = [5, 5];
        let _ = Histogram::new(&BAD);
    }
}
