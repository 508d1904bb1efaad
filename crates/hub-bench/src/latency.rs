//! Latency samples from thousands of receivers, kept in a few histograms.
//!
//! One histogram per client would cost megabytes per thousand clients, and
//! one shared histogram a lock per message. Receivers buffer a few hundred
//! samples each ([`Samples`]) and add them in one go to one of a few shared
//! shards ([`Latencies`]), which are merged at the end.

use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;

/// The largest latency recorded, in microseconds (an hour); longer ones are
/// recorded as this.
const HIGHEST_US: u64 = 3_600_000_000;

/// Samples a receiver keeps before adding them to a shard.
const LOCAL_SAMPLES: usize = 256;

/// An empty histogram of microseconds, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail (tested below).
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Shared, sharded latency histograms (microseconds).
#[derive(Debug)]
pub(crate) struct Latencies {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl Latencies {
    /// `shards` histograms (at least one).
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
        }
    }

    /// A sensible number of shards for this machine: twice its cores.
    pub(crate) fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self::new(2 * cores)
    }

    fn add(&self, shard: usize, samples: &[u32]) {
        let Some(shard) = self.shards.get(shard % self.shards.len()) else {
            return;
        };
        let mut histogram = shard.lock().unwrap_or_else(PoisonError::into_inner);
        for &sample in samples {
            histogram.saturating_record(u64::from(sample));
        }
    }

    /// All shards in one histogram.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &*self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds on both sides: adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

/// One receiver's buffer of samples.
#[derive(Debug)]
pub(crate) struct Samples {
    buffer: Vec<u32>,
    shard: usize,
}

impl Samples {
    /// A buffer that adds to shard `shard` (modulo the number of shards).
    pub(crate) fn new(shard: usize) -> Self {
        Self {
            buffer: Vec::with_capacity(LOCAL_SAMPLES),
            shard,
        }
    }

    /// Keeps a latency in microseconds, adding the buffer to `latencies`
    /// when it is full.
    pub(crate) fn push(&mut self, micros: u64, latencies: &Latencies) {
        self.buffer.push(u32::try_from(micros).unwrap_or(u32::MAX));
        if self.buffer.len() >= LOCAL_SAMPLES {
            self.flush(latencies);
        }
    }

    /// Adds what is buffered to `latencies`.
    pub(crate) fn flush(&mut self, latencies: &Latencies) {
        if !self.buffer.is_empty() {
            latencies.add(self.shard, &self.buffer);
            self.buffer.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_end_up_merged() {
        let latencies = Latencies::new(3);
        let mut buffers: Vec<Samples> = (0..5).map(Samples::new).collect();
        for micros in 1..=1000 {
            for buffer in &mut buffers {
                buffer.push(micros, &latencies);
            }
        }
        // Some are still buffered.
        assert!(latencies.merged().len() < 5000);
        for buffer in &mut buffers {
            buffer.flush(&latencies);
        }
        let all = latencies.merged();
        assert_eq!(all.len(), 5000);
        assert_eq!(all.max(), 1000);
        assert!((495..=505).contains(&all.value_at_quantile(0.5)));
    }

    #[test]
    fn huge_latencies_saturate() {
        let latencies = Latencies::new(1);
        let mut samples = Samples::new(0);
        samples.push(u64::MAX, &latencies);
        samples.flush(&latencies);
        assert_eq!(latencies.merged().len(), 1);
    }
}
