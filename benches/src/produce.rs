//! Producers: each is a librdkafka client on its own thread, paced or flat out.
//!
//! Produce latency is measured in the delivery callback from the send time embedded in the
//! payload, so no per-record state is kept: librdkafka's bounded queue (QueueFull) is the only
//! in-flight buffer.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tracing::warn;

/// Distinct keys, enough for the default partitioner to spread records evenly.
const KEYS: usize = 4096;

/// Size of the shared text that record payloads are cut from.
const TEXT_BYTES: usize = 1 << 20;

/// Current time as unix nanoseconds, the clock embedded in payloads.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Send time embedded in a payload by [`Workload::stamp`], if it has one.
pub fn sent_at(payload: Option<&[u8]>) -> Option<u64> {
    let head = payload?.get(..8)?;
    Some(u64::from_be_bytes(head.try_into().ok()?))
}

/// A histogram of latencies in microseconds, from 1 µs to one hour at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Keys and payload text computed once, so sending costs only a copy and a timestamp.
pub struct Workload {
    keys: Vec<String>,
    text: Vec<u8>,
    record_size: usize,
}

impl Workload {
    pub fn new(record_size: usize) -> Self {
        Workload {
            keys: (0..KEYS).map(|k| format!("key-{k:04}")).collect(),
            text: log_like_text(TEXT_BYTES.max(2 * record_size)),
            record_size,
        }
    }

    /// Fills `buf` with record `seq`'s body: a different window of the text for each record,
    /// so batches compress like logs do rather than like one repeated record.
    fn fill(&self, seq: u64, buf: &mut [u8]) {
        let windows = (self.text.len() - self.record_size + 1) as u64;
        let start = (seq.wrapping_mul(7919) % windows) as usize;
        buf[8..].copy_from_slice(&self.text[start + 8..start + self.record_size]);
    }

    /// Writes the send time into the first 8 bytes (big-endian unix nanos).
    fn stamp(buf: &mut [u8]) {
        buf[..8].copy_from_slice(&unix_nanos().to_be_bytes());
    }

    fn key(&self, seq: u64) -> &str {
        &self.keys[(seq % KEYS as u64) as usize]
    }
}

/// Pseudo-random words and numbers (xorshift), compressible about as well as access logs.
fn log_like_text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "GET",
        "POST",
        "/api/v1/orders",
        "/healthz",
        "200",
        "404",
        "user",
        "session",
        "latency_ms",
        "shard",
        "eu-west-1",
        "INFO",
        "WARN",
        "request",
        "retry",
        "ok",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = Vec::with_capacity(len + 32);
    while text.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = WORDS[(state % WORDS.len() as u64) as usize];
        text.extend_from_slice(format!("{word}={} ", (state >> 32) % 100_000).as_bytes());
    }
    text.truncate(len);
    text
}

/// What all producers observed, filled in by delivery callbacks.
pub struct ProduceStats {
    latency_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    bytes: AtomicU64,
    /// Per partition, one past the highest delivered offset: where consumers must get to.
    next_offsets: Vec<AtomicI64>,
    first_error: Mutex<Option<String>>,
}

impl ProduceStats {
    pub fn new(partitions: usize) -> Self {
        ProduceStats {
            latency_us: Mutex::new(latency_histogram()),
            delivered: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            next_offsets: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            first_error: Mutex::new(None),
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn latency_us(&self) -> Histogram<u64> {
        self.latency_us.lock().expect("histogram lock").clone()
    }

    pub fn next_offsets(&self) -> Vec<i64> {
        self.next_offsets
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect()
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("error lock").clone()
    }

    /// Keeps the first error for the report and logs it; failures are counted as records
    /// sent but never delivered.
    fn note_error(&self, err: &KafkaError) {
        let mut first = self.first_error.lock().expect("error lock");
        if first.is_none() {
            warn!("delivery failed: {err} (further failures are only counted)");
            *first = Some(err.to_string());
        }
    }
}

struct DeliveryContext(Arc<ProduceStats>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let stats = &self.0;
        match result {
            Ok(msg) => {
                let now = unix_nanos();
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                let payload = msg.payload();
                stats
                    .bytes
                    .fetch_add(payload.map_or(0, <[u8]>::len) as u64, Ordering::Relaxed);
                if let Some(sent) = sent_at(payload) {
                    let micros = now.saturating_sub(sent) / 1000;
                    let mut hist = stats.latency_us.lock().expect("histogram lock");
                    hist.saturating_record(micros.max(1));
                }
                if let Some(next) = stats.next_offsets.get(msg.partition() as usize) {
                    next.fetch_max(msg.offset() + 1, Ordering::Relaxed);
                }
            }
            Err((err, _)) => stats.note_error(err),
        }
    }
}

/// One producer's share of the run.
pub struct Plan {
    /// Sequence offset so producers do not all send the same key at the same moment.
    pub first_seq: u64,
    pub records: Option<u64>,
    pub deadline: Option<Instant>,
    /// Records per second; 0 for flat out.
    pub rate: f64,
    /// How long to wait for outstanding deliveries once sending stops.
    pub drain: Duration,
}

/// Sends until the plan's record count or deadline is reached, then waits for deliveries.
/// Returns the number of records handed to the client (delivered or failed).
pub fn run(
    config: &ClientConfig,
    topic: &str,
    workload: &Workload,
    plan: &Plan,
    stats: Arc<ProduceStats>,
) -> Result<u64> {
    let producer: ThreadedProducer<DeliveryContext> = config
        .create_with_context(DeliveryContext(Arc::clone(&stats)))
        .context("creating producer")?;
    let mut buf = vec![0u8; workload.record_size];
    let start = Instant::now();
    let mut sent = 0u64;
    while plan.records.is_none_or(|n| sent < n) {
        let now = Instant::now();
        if plan.deadline.is_some_and(|d| now >= d) {
            break;
        }
        if plan.rate > 0.0 {
            // Sleep only when more than 1 ms ahead, so high rates go out in small bursts.
            let due = start + Duration::from_secs_f64(sent as f64 / plan.rate);
            if due > now + Duration::from_millis(1) {
                thread::sleep(due - now);
            }
        }
        let seq = plan.first_seq + sent;
        workload.fill(seq, &mut buf);
        loop {
            // Stamped on each attempt: latency counts from when the client accepts the record.
            Workload::stamp(&mut buf);
            let record = BaseRecord::to(topic).key(workload.key(seq)).payload(&buf);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err((err, _)) => {
                    stats.note_error(&err);
                    break;
                }
            }
        }
        sent += 1;
    }
    if let Err(err) = producer.flush(plan.drain) {
        warn!(
            "{} records still undelivered after {}: {err}",
            producer.in_flight_count(),
            humantime::format_duration(plan.drain)
        );
    }
    Ok(sent)
}
