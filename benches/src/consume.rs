//! Consumers: members of one consumer group, each a librdkafka client on its own thread.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext};
use tracing::warn;

use crate::produce::{latency_histogram, sent_at, unix_nanos};

/// What all consumers observed.
pub struct ConsumeStats {
    latency_us: Mutex<Histogram<u64>>,
    consumed: AtomicU64,
    /// Per partition, one past the highest consumed offset.
    next_offsets: Vec<AtomicI64>,
    /// Per consumer, how many partitions the group assigned it.
    assigned: Vec<AtomicUsize>,
}

impl ConsumeStats {
    pub fn new(partitions: usize, consumers: usize) -> Self {
        ConsumeStats {
            latency_us: Mutex::new(latency_histogram()),
            consumed: AtomicU64::new(0),
            next_offsets: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            assigned: (0..consumers).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    pub fn latency_us(&self) -> Histogram<u64> {
        self.latency_us.lock().expect("histogram lock").clone()
    }

    /// Whether the group has spread every partition, and each consumer holds some if there
    /// are enough to go round: producing before that would add the join time to latencies.
    pub fn group_settled(&self) -> bool {
        let counts: Vec<usize> = self
            .assigned
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let all_busy =
            counts.len() > self.next_offsets.len() || counts.iter().all(|&count| count > 0);
        counts.iter().sum::<usize>() == self.next_offsets.len() && all_busy
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

struct GroupContext {
    stats: Arc<ConsumeStats>,
    index: usize,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let count = match rebalance {
            Rebalance::Assign(partitions) => partitions.count(),
            Rebalance::Revoke(_) | Rebalance::Error(_) => 0,
        };
        self.stats.assigned[self.index].store(count, Ordering::Relaxed);
    }
}

/// Consumes until `stop` is set. End-to-end latency is recorded only for records sent at or
/// after `since` (unix nanos), so older data in the topic does not skew it.
pub fn run(
    index: usize,
    config: &ClientConfig,
    topic: &str,
    since: &AtomicU64,
    stats: Arc<ConsumeStats>,
    stop: &AtomicBool,
) -> Result<()> {
    let consumer: BaseConsumer<GroupContext> = config
        .create_with_context(GroupContext {
            stats: Arc::clone(&stats),
            index,
        })
        .context("creating consumer")?;
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
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
