//! Consumers: each a librdkafka client on its own thread, reading the partitions assigned to
//! it by hand (Shoal has no consumer groups): consumer i of N reads partitions p % N == i.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tracing::warn;

use crate::produce::{latency_histogram, sent_at, unix_nanos};

/// What all consumers observed.
pub struct ConsumeStats {
    latency_us: Mutex<Histogram<u64>>,
    consumed: AtomicU64,
    /// Per partition, one past the highest consumed offset.
    next_offsets: Vec<AtomicI64>,
}

impl ConsumeStats {
    pub fn new(partitions: usize) -> Self {
        ConsumeStats {
            latency_us: Mutex::new(latency_histogram()),
            consumed: AtomicU64::new(0),
            next_offsets: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    pub fn latency_us(&self) -> Histogram<u64> {
        self.latency_us.lock().expect("histogram lock").clone()
    }

    /// Waits until consumers have read up to `targets` (per partition, the offset after the
    /// last produced record) or `timeout` passes; returns how many records they are behind.
    pub fn wait_caught_up(&self, targets: &[i64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let lag: i64 = targets
                .iter()
                .zip(&self.next_offsets)
                .map(|(target, next)| (target - next.load(Ordering::Relaxed)).max(0))
                .sum();
            if lag == 0 || Instant::now() >= deadline {
                return lag as u64;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One consumer, created and assigned its partitions before the run starts.
pub struct Reader {
    index: usize,
    consumer: BaseConsumer,
}

impl Reader {
    /// Consumer `index` of `count`: it reads every partition p with p % count == index,
    /// starting at `starts[p]`.
    pub fn assigned(
        index: usize,
        count: usize,
        config: &ClientConfig,
        topic: &str,
        starts: &[Offset],
    ) -> Result<Self> {
        let consumer: BaseConsumer = config.create().context("creating consumer")?;
        let mut assignment = TopicPartitionList::new();
        for (partition, &start) in starts.iter().enumerate().skip(index).step_by(count) {
            assignment.add_partition_offset(topic, partition as i32, start)?;
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning {topic} partitions to consumer {index}"))?;
        Ok(Reader { index, consumer })
    }

    /// Consumes until `stop` is set. End-to-end latency is recorded only for records sent
    /// at or after `since` (unix nanos), so older data in the topic does not skew it.
    pub fn run(self, since: &AtomicU64, stats: &ConsumeStats, stop: &AtomicBool) -> Result<()> {
        let Reader { index, consumer } = self;
        let mut latency_us = latency_histogram();
        let mut consumed = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(msg)) => {
                    let now = unix_nanos();
                    consumed += 1;
                    if let Some(sent) = sent_at(msg.payload())
                        && sent >= since.load(Ordering::Relaxed)
                    {
                        latency_us.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    }
                    if let Some(next) = stats.next_offsets.get(msg.partition() as usize) {
                        next.fetch_max(msg.offset() + 1, Ordering::Relaxed);
                    }
                }
                Some(Err(err)) => warn!("consumer {index}: {err}"),
            }
        }
        stats.consumed.fetch_add(consumed, Ordering::Relaxed);
        stats
            .latency_us
            .lock()
            .expect("histogram lock")
            .add(&latency_us)
            .context("merging latency histograms")?;
        Ok(())
    }
}
