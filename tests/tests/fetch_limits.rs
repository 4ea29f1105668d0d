//! Fetch limits and positions: byte limits smaller than a batch, long polls woken by new
//! records, and fetch offsets past the end (OFFSET_OUT_OF_RANGE and `auto.offset.reset`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::Offset;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use shoal_tests::TestAgent;
use tokio::sync::mpsc;

/// Keeps the latest librdkafka statistics, which show where a consumer fetches from.
#[derive(Default)]
struct StatsContext {
    latest: Mutex<Option<Statistics>>,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        *self.latest.lock().unwrap() = Some(statistics);
    }
}

impl ConsumerContext for StatsContext {}

/// A consumer of one partition whose messages are received by a background task (which
/// also serves the statistics callbacks), so a test can wait for its fetch position.
struct TailConsumer {
    consumer: Arc<StreamConsumer<StatsContext>>,
    received: mpsc::UnboundedReceiver<Result<Consumed, KafkaError>>,
    task: tokio::task::JoinHandle<()>,
    topic: String,
    partition: i32,
}

impl TailConsumer {
    fn start(
        bootstrap: &str,
        topic: &str,
        partition: i32,
        start: Offset,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut settings = vec![("statistics.interval.ms", "20")];
        settings.extend_from_slice(extra);
        let consumer: StreamConsumer<StatsContext> = consumer_config(bootstrap, &settings)
            .create_with_context(StatsContext::default())
            .expect("consumer created");
        assign(&consumer, topic, &[(partition, start)]);
        let consumer = Arc::new(consumer);
        let (tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let consumer = consumer.clone();
            async move {
                loop {
                    let item = consumer.recv().await.map(|m| to_consumed(&m));
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            }
        });
        TailConsumer {
            consumer,
            received,
            task,
            topic: topic.to_string(),
            partition,
        }
    }

    /// Waits until the consumer fetches its partition from `offset`.
    async fn wait_fetching_from(&self, offset: i64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let state = self
                .consumer
                .context()
                .latest
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|s| {
                    let p = s.topics.get(&self.topic)?.partitions.get(&self.partition)?;
                    Some((p.fetch_state.clone(), p.next_offset))
                });
            if state == Some(("active".to_string(), offset)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consumer of {}/{} not fetching from {offset}: {state:?}",
                self.topic,
                self.partition
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next message or consumer error, failing the test after `timeout`.
    async fn next(&mut self, timeout: Duration) -> Result<Consumed, KafkaError> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing received within {timeout:?}"))
            .expect("receiving task alive")
    }
}

impl Drop for TailConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_limits_smaller_than_a_batch_still_make_progress() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "chunky", 2, &[]).await;
    // Sent together with a long linger, so batches hold many records (tens of KiB).
    let records = make_records("chunky", 2_000, 2);
    let producer = producer(&bootstrap, &[("linger.ms", "100")]);
    let deliveries = send_all(&producer, "chunky", &records).await;

    let consumer = consumer(
        &bootstrap,
        &[
            ("fetch.max.bytes", "1024"),
            ("max.partition.fetch.bytes", "1024"),
            ("message.max.bytes", "1000"),
        ],
    );
    assign(
        &consumer,
        "chunky",
        &[(0, Offset::Beginning), (1, Offset::Beginning)],
    );
    let consumed = consume(&consumer, records.len(), TIMEOUT).await;
    assert_same_records("chunky", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_at_the_end_is_woken_by_new_records() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "tail", 1, &[]).await;
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    send_all(&producer, "tail", &make_records("old", 10, 1)).await;

    // A long poll: an agent that does not wake parked fetches answers after 10 s.
    let mut tail = TailConsumer::start(
        &bootstrap,
        "tail",
        0,
        Offset::End,
        &[("fetch.wait.max.ms", "10000")],
    );
    tail.wait_fetching_from(10).await;

    let fresh = make_records("fresh", 5, 1);
    for (i, rec) in fresh.iter().enumerate() {
        let delivered = send_one(&producer, "tail", rec).await.expect("delivered");
        let sent_at = Instant::now();
        let got = tail.next(Duration::from_secs(3)).await.expect("a record");
        let waited = sent_at.elapsed();
        assert_eq!(
            got.offset,
            10 + i as i64,
            "the records sent after the start, in order"
        );
        assert_eq!(got.offset, delivered.offset);
        assert_eq!((&got.key, &got.value), (&rec.key, &rec.value));
        assert!(
            waited < Duration::from_secs(3),
            "record {i} took {waited:?}"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_past_the_end_resets_to_earliest() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "reset", 1, &[]).await;
    let records = make_records("reset", 20, 1);
    let deliveries = send_all(&producer(&bootstrap, &[]), "reset", &records).await;

    let consumer = consumer(&bootstrap, &[("auto.offset.reset", "earliest")]);
    assign(&consumer, "reset", &[(0, Offset::Offset(1_000))]);
    let consumed = consume(&consumer, records.len(), TIMEOUT).await;
    assert_same_records("reset", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_past_the_end_resets_to_latest() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "reset", 1, &[]).await;
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, "reset", &make_records("old", 20, 1)).await;

    let mut tail = TailConsumer::start(
        &bootstrap,
        "reset",
        0,
        Offset::Offset(1_000),
        &[("auto.offset.reset", "latest")],
    );
    tail.wait_fetching_from(20).await;
    let fresh = make_records("fresh", 3, 1);
    send_all(&producer, "reset", &fresh).await;
    for (i, rec) in fresh.iter().enumerate() {
        let got = tail.next(TIMEOUT).await.expect("a record");
        assert_eq!(got.offset, 20 + i as i64);
        assert_eq!((&got.key, &got.value), (&rec.key, &rec.value));
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_past_the_end_without_reset_is_an_error() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "reset", 1, &[]).await;
    send_all(
        &producer(&bootstrap, &[]),
        "reset",
        &make_records("old", 20, 1),
    )
    .await;

    let mut tail = TailConsumer::start(
        &bootstrap,
        "reset",
        0,
        Offset::Offset(1_000),
        &[("auto.offset.reset", "error")],
    );
    match tail.next(TIMEOUT).await {
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {}
        other => panic!("fetching offset 1000 of 20: {other:?}"),
    }
    agent.stop().await;
}
