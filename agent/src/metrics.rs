//! The process's metrics recorder and the names of the agent's metrics: what code records
//! through the `metrics` macros is rendered in the Prometheus text format by the HTTP
//! listener's `/metrics`. The names are a contract with dashboards and scripts
//! (docs/operations.md lists them): change them only with a note.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often histogram samples are folded into their buckets, so they do not pile up
/// between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Requests by `api` and `outcome`: ok, error (the answer carries a Kafka error code),
/// refused (not understood: the connection was closed).
pub const REQUESTS: &str = "shoal_requests_total";
/// Time from a request's arrival to its answer, by `api`, seconds.
pub const REQUEST_DURATION: &str = "shoal_request_duration_seconds";
/// Requests being processed.
pub const REQUESTS_IN_FLIGHT: &str = "shoal_requests_in_flight";
/// Record-batch bytes and records acknowledged to producers, by `topic`.
pub const PRODUCE_BYTES: &str = "shoal_produce_bytes_total";
pub const PRODUCE_RECORDS: &str = "shoal_produce_records_total";
/// Record-batch bytes and records sent to consumers, by `topic`.
pub const FETCH_BYTES: &str = "shoal_fetch_bytes_total";
pub const FETCH_RECORDS: &str = "shoal_fetch_records_total";
/// Fetches parked until data arrives or their wait ends: the long-poll load.
pub const FETCH_WAITING: &str = "shoal_fetch_waiting";
/// Size of each flushed object, bytes.
pub const FLUSH_BYTES: &str = "shoal_flush_bytes";
/// Time from the start of a flush to its commit, seconds.
pub const FLUSH_DURATION: &str = "shoal_flush_duration_seconds";
/// Flushes by `outcome` (ok, failed).
pub const FLUSHES: &str = "shoal_flushes_total";
/// Bytes accepted but not yet committed: buffered for the next object, or being flushed.
pub const FLUSH_BACKLOG_BYTES: &str = "shoal_flush_backlog_bytes";
/// Duration of each sequencer commit attempt, seconds.
pub const COMMIT_DURATION: &str = "shoal_sequencer_commit_duration_seconds";
/// Sequencer commits by `outcome` (ok, retried, failed).
pub const COMMITS: &str = "shoal_sequencer_commits_total";
/// Chunk reads by `result` (hit, miss, joined: waited for another reader's GET) in the read
/// cache.
pub const CACHE_REQUESTS: &str = "shoal_cache_requests_total";
/// Bytes the read cache holds.
pub const CACHE_BYTES: &str = "shoal_cache_bytes";
/// Open Kafka connections, and connections accepted.
pub const CONNECTIONS: &str = "shoal_connections";
pub const CONNECTIONS_ACCEPTED: &str = "shoal_connections_accepted_total";
/// 1 while the agent drains before stopping.
pub const DRAINING: &str = "shoal_draining";

/// Latency buckets, seconds: from a cached fetch to a long poll.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Object size buckets, bytes: 4 KiB to 64 MiB.
const BYTES_BUCKETS: &[f64] = &[
    4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// The handle of the recorder this module installed, installing it on first use. Agents and
/// the compactor call it only when their HTTP listener is on: without a listener nothing
/// would ever render or drain what is recorded.
///
/// The `metrics` facade takes one global recorder per process and several agents may run in
/// one process (tests), so installation happens once and never fails the caller: if another
/// recorder was installed first, `/metrics` shows only the series its handler computes itself.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(FLUSH_BYTES.into()), BYTES_BUCKETS)
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "histogram buckets refused; latencies are summaries");
                PrometheusBuilder::new().build_recorder()
            });
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => describe(),
            Err(e) => tracing::warn!(
                error = %e,
                "another metrics recorder is installed; /metrics shows consumer lag only"
            ),
        }
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Kafka requests by API and outcome (ok; error: the answer carries an error code; refused: the connection was closed)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        "Kafka request latency by API, from arrival to answer, in seconds (fetches include their long-poll wait)."
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Kafka requests being processed.");
    describe_counter!(
        PRODUCE_BYTES,
        "Record-batch bytes acknowledged to producers (acks=0: accepted), by topic."
    );
    describe_counter!(
        PRODUCE_RECORDS,
        "Records acknowledged to producers (acks=0: accepted), by topic."
    );
    describe_counter!(
        FETCH_BYTES,
        "Record-batch bytes sent to consumers, by topic."
    );
    describe_counter!(FETCH_RECORDS, "Records sent to consumers, by topic.");
    describe_gauge!(
        FETCH_WAITING,
        "Fetches parked until data arrives or their max wait ends (the long-poll load)."
    );
    describe_histogram!(FLUSH_BYTES, "Size of each flushed object, in bytes.");
    describe_histogram!(
        FLUSH_DURATION,
        "Time from the start of a flush (PUT) to its commit in the sequencer, in seconds."
    );
    describe_counter!(FLUSHES, "Flushes by outcome (ok, failed).");
    describe_gauge!(
        FLUSH_BACKLOG_BYTES,
        "Bytes accepted from producers and not yet committed: buffered or being flushed."
    );
    describe_histogram!(
        COMMIT_DURATION,
        "Duration of each sequencer commit attempt, in seconds."
    );
    describe_counter!(
        COMMITS,
        "Sequencer commit attempts by outcome (ok, retried, failed)."
    );
    describe_counter!(
        CACHE_REQUESTS,
        "Chunk reads from the read cache by result (hit; miss: read from the object store; joined: waited for another reader's GET of the same chunk)."
    );
    describe_gauge!(CACHE_BYTES, "Bytes held by the read cache.");
    describe_gauge!(CONNECTIONS, "Open Kafka client connections.");
    describe_counter!(CONNECTIONS_ACCEPTED, "Kafka client connections accepted.");
    describe_gauge!(
        DRAINING,
        "1 while the agent drains before stopping (readiness is off), else 0."
    );
    shoal_storage::metrics::describe();
    shoal_compactor::metrics::describe();
}

/// Gives the agent's gauges a series from the start, so dashboards and autoscalers read 0
/// rather than nothing before the first connection, flush or parked fetch.
pub fn register_gauges() {
    for gauge in [
        REQUESTS_IN_FLIGHT,
        FETCH_WAITING,
        FLUSH_BACKLOG_BYTES,
        CONNECTIONS,
        DRAINING,
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

/// Adds 1 to a gauge until dropped: in-flight requests, parked fetches, open connections.
pub struct Occupancy(metrics::Gauge);

impl Occupancy {
    pub fn enter(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Occupancy(gauge)
    }
}

impl Drop for Occupancy {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
