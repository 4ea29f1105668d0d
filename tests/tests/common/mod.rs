//! Client helpers shared by the integration tests: librdkafka producers, consumers and admin
//! clients set up for what Shoal implements (no consumer groups, no idempotent producers),
//! deterministic test records, and the checks that compare what was sent with what was read.

#![allow(dead_code)]

pub mod member;
pub mod raw;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Upper bound for any single client operation or wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka's `assign()` refuses consumers without a `group.id`, so consumers carry one.
/// They never subscribe, join, fetch or commit offsets: the group is never used.
pub const UNUSED_GROUP: &str = "shoal-tests-unused-group";

/// A record to produce, with everything a consumer should read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Explicit CreateTime; `None` lets the producer stamp the current time.
    pub timestamp: Option<i64>,
}

/// A record as a consumer read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Timestamp,
}

/// A fixed timestamp (2023-11-14T22:13:20Z) far enough in the past to tell explicit
/// timestamps from ones stamped by the producer or the broker.
pub const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

/// `count` deterministic records spread round-robin over `partitions`, each with a key, two
/// headers, an explicit increasing timestamp and a value of varying length and content.
pub fn make_records(tag: &str, count: usize, partitions: i32) -> Vec<Rec> {
    (0..count)
        .map(|i| Rec {
            partition: (i % partitions as usize) as i32,
            key: Some(format!("{tag}-key-{i}").into_bytes()),
            value: Some(value_bytes(tag, i, 20 + (i * 7919) % 300)),
            headers: vec![
                ("seq".to_string(), Some(i.to_string().into_bytes())),
                (
                    "origin".to_string(),
                    Some(format!("{tag}/{}", i % 13).into_bytes()),
                ),
            ],
            timestamp: Some(BASE_TIMESTAMP + i as i64),
        })
        .collect()
}

/// A value of `len` bytes, half text and half pseudo-random, distinct for each `(tag, i)`.
pub fn value_bytes(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut value = format!("{tag}-value-{i}-").into_bytes();
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while value.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Every other byte from a small alphabet, so the value compresses somewhat.
        value.push(if value.len() % 2 == 0 {
            b'a' + (x % 16) as u8
        } else {
            (x >> 8) as u8
        });
    }
    value
}

fn client_config(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

/// A producer without idempotence (Shoal has no producer ids), with librdkafka's default
/// of several requests in flight per connection, `extra` settings on top.
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut base = vec![
        ("enable.idempotence", "false"),
        ("message.timeout.ms", "30000"),
        ("queue.buffering.max.messages", "1000000"),
    ];
    base.extend_from_slice(extra);
    client_config(bootstrap, &base)
        .create()
        .expect("producer created")
}

/// Enqueues one record; waits for queue room when librdkafka's queue is full.
pub async fn enqueue(producer: &FutureProducer, topic: &str, rec: &Rec) -> DeliveryFuture {
    let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
    for (key, value) in &rec.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_ref(),
        });
    }
    let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic)
        .partition(rec.partition)
        .headers(headers);
    if let Some(key) = &rec.key {
        record = record.key(key);
    }
    if let Some(value) = &rec.value {
        record = record.payload(value);
    }
    if let Some(ts) = rec.timestamp {
        record = record.timestamp(ts);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => panic!("cannot enqueue a record for {topic}: {e}"),
        }
    }
}

/// Produces one record and waits for its delivery report, whatever it says.
pub async fn send_one(producer: &FutureProducer, topic: &str, rec: &Rec) -> OwnedDeliveryResult {
    let delivery = enqueue(producer, topic, rec).await;
    tokio::time::timeout(TIMEOUT, delivery)
        .await
        .expect("delivery report in time")
        .expect("delivery report not cancelled")
}

/// Produces all records (pipelined, in order) and returns their delivery reports, in the
/// same order; any failed delivery fails the test.
pub async fn send_all(producer: &FutureProducer, topic: &str, records: &[Rec]) -> Vec<Delivery> {
    let mut pending = Vec::with_capacity(records.len());
    for rec in records {
        pending.push(enqueue(producer, topic, rec).await);
    }
    let results = tokio::time::timeout(TIMEOUT * 2, join_all(pending))
        .await
        .unwrap_or_else(|_| panic!("delivery reports for {topic} not in time"));
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r.expect("delivery report not cancelled") {
            Ok(delivery) => delivery,
            Err((e, _)) => panic!("record {i} to {topic} failed: {e}"),
        })
        .collect()
}

/// A consumer for `assign()` with explicit offsets: no subscription, no commits.
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    consumer_config(bootstrap, extra)
        .create()
        .expect("consumer created")
}

/// The configuration [`consumer`] uses, for consumers with their own context.
pub fn consumer_config(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut base = vec![
        ("group.id", UNUSED_GROUP),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "error"),
        ("fetch.wait.max.ms", "200"),
    ];
    base.extend_from_slice(extra);
    client_config(bootstrap, &base)
}

/// Assigns partitions of `topic` at the given start offsets.
pub fn assign<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partitions: &[(i32, Offset)],
) {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in partitions {
        list.add_partition_offset(topic, *partition, *offset)
            .expect("valid offset");
    }
    consumer.assign(&list).expect("assign");
}

/// Converts a received message into an owned [`Consumed`].
pub fn to_consumed(m: &impl Message) -> Consumed {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp: m.timestamp(),
    }
}

/// Receives exactly `n` records (or fails after `timeout`); consumer errors fail the test.
pub async fn consume<C>(consumer: &StreamConsumer<C>, n: usize, timeout: Duration) -> Vec<Consumed>
where
    C: ConsumerContext + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => panic!(
                "consumed {} of {n} records within {timeout:?}; last: {:?}",
                out.len(),
                out.last()
                    .map(|c: &Consumed| (&c.topic, c.partition, c.offset))
            ),
            Ok(Err(e)) => panic!("consumer error after {} records: {e}", out.len()),
            Ok(Ok(m)) => out.push(to_consumed(&m)),
        }
    }
    out
}

/// Reads `n` records of `topic` from offset 0 of each of `partitions` with a fresh consumer.
pub async fn consume_from_start(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    n: usize,
) -> Vec<Consumed> {
    let consumer = consumer(bootstrap, &[]);
    let start: Vec<_> = partitions.iter().map(|p| (*p, Offset::Beginning)).collect();
    assign(&consumer, topic, &start);
    consume(&consumer, n, TIMEOUT).await
}

/// Groups records of one topic by partition, keeping their order.
pub fn by_partition(records: &[Consumed], topic: &str) -> BTreeMap<i32, Vec<Consumed>> {
    let mut map: BTreeMap<i32, Vec<Consumed>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.topic == topic) {
        map.entry(r.partition).or_default().push(r.clone());
    }
    map
}

/// Checks that `consumed` (records of `topic`, any partitions) is exactly `sent`: per
/// partition, offsets dense from 0, send order kept, keys, values, headers and CreateTime
/// timestamps identical, and (when given) delivery-report offsets equal to consumed offsets.
pub fn assert_same_records(
    topic: &str,
    sent: &[Rec],
    deliveries: Option<&[Delivery]>,
    consumed: &[Consumed],
) {
    let mut expected: BTreeMap<i32, Vec<(usize, &Rec)>> = BTreeMap::new();
    for (i, rec) in sent.iter().enumerate() {
        expected.entry(rec.partition).or_default().push((i, rec));
    }
    let actual = by_partition(consumed, topic);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "partitions of {topic} with records"
    );
    for (partition, want) in &expected {
        let got = &actual[partition];
        assert_eq!(
            got.len(),
            want.len(),
            "number of records in {topic}/{partition}"
        );
        for (pos, ((i, rec), c)) in want.iter().zip(got).enumerate() {
            let at = format!("{topic}/{partition} record #{pos} (sent as #{i})");
            assert_eq!(c.offset, pos as i64, "{at}: offset");
            assert!(
                c.key == rec.key,
                "{at}: key {:?}, expected {:?}",
                lossy(&c.key),
                lossy(&rec.key)
            );
            assert_eq!(c.value, rec.value, "{at}: value");
            assert_eq!(c.headers, rec.headers, "{at}: headers");
            if let Some(ts) = rec.timestamp {
                assert_eq!(c.timestamp, Timestamp::CreateTime(ts), "{at}: timestamp");
            }
            if let Some(deliveries) = deliveries {
                let d = &deliveries[*i];
                assert_eq!(d.partition, *partition, "{at}: delivery partition");
                assert_eq!(d.offset, c.offset, "{at}: delivery offset");
            }
        }
    }
}

fn lossy(bytes: &Option<Vec<u8>>) -> Option<String> {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// An admin client.
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    AdminClient::from_config(&client_config(bootstrap, &[])).expect("admin client created")
}

/// Admin options with a bounded wait.
pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(TIMEOUT))
        .operation_timeout(Some(TIMEOUT))
}

/// Creates a topic and fails the test unless it was created.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(bootstrap)
        .create_topics([&topic], &admin_options())
        .await
        .expect("CreateTopics answered");
    assert_eq!(results, vec![Ok(name.to_string())], "creating {name}");
}

/// Runs a blocking librdkafka call without stalling the runtime's other tasks (the agent
/// under test runs on the same runtime).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// (low, high) watermarks of a partition.
pub fn watermarks<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
) -> (i64, i64) {
    blocking(|| consumer.fetch_watermarks(topic, partition, TIMEOUT))
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
}

/// Topic names and partition counts the cluster lists, without creating anything.
pub fn list_topics(bootstrap: &str) -> BTreeMap<String, usize> {
    let consumer = consumer(bootstrap, &[]);
    let metadata = blocking(|| consumer.fetch_metadata(None, TIMEOUT)).expect("metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A plain HTTP/1.1 GET: (status, content type, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("response read");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// `/metrics` parsed as Prometheus parses it; the scrape must succeed.
pub async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_string())))
        .expect("Prometheus text format")
}

/// The sum over the series of `metric` whose labels include `labels`: counter and gauge
/// values, histogram observation counts.
pub fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}
