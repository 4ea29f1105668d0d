//! Produce and consume back: many records over several partitions and topics, and the odd
//! shapes records can take (no key, empty or null value, null header values, large values).

mod common;

use common::*;
use rdkafka::Offset;
use shoal_tests::TestAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keyed_records_with_headers_round_trip() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "events", 4, &[]).await;
    create_topic(&bootstrap, "audit", 2, &[]).await;

    let events = make_records("events", 100_000, 4);
    let audit = make_records("audit", 10_000, 2);
    // Pipelined like default clients: several requests in flight per connection.
    let producer = producer(
        &bootstrap,
        &[
            ("linger.ms", "20"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    // Both topics in flight at once, so objects mix partitions of both.
    let (event_deliveries, audit_deliveries) = tokio::join!(
        send_all(&producer, "events", &events),
        send_all(&producer, "audit", &audit)
    );

    let consumer = consumer(&bootstrap, &[]);
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        list.add_partition_offset("events", p, Offset::Beginning)
            .unwrap();
    }
    for p in 0..2 {
        list.add_partition_offset("audit", p, Offset::Beginning)
            .unwrap();
    }
    rdkafka::consumer::Consumer::assign(&consumer, &list).unwrap();
    let consumed = consume(&consumer, events.len() + audit.len(), TIMEOUT).await;

    assert_same_records("events", &events, Some(&event_deliveries), &consumed);
    assert_same_records("audit", &audit, Some(&audit_deliveries), &consumed);
    for p in 0..4 {
        assert_eq!(watermarks(&consumer, "events", p), (0, 25_000));
    }
    for p in 0..2 {
        assert_eq!(watermarks(&consumer, "audit", p), (0, 5_000));
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_records_round_trip() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "odd", 1, &[]).await;

    let rec =
        |key: Option<&[u8]>, value: Option<Vec<u8>>, headers: Vec<(&str, Option<&[u8]>)>| Rec {
            partition: 0,
            key: key.map(<[u8]>::to_vec),
            value,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: Some(BASE_TIMESTAMP),
        };
    let records = vec![
        rec(None, Some(b"no key".to_vec()), vec![]),
        rec(Some(b"empty value"), Some(Vec::new()), vec![]),
        rec(Some(b"tombstone"), None, vec![]),
        rec(
            Some(b"header without value"),
            Some(b"v".to_vec()),
            vec![
                ("null", None),
                ("empty", Some(b"")),
                ("dup", Some(b"1")),
                ("dup", Some(b"2")),
            ],
        ),
        rec(
            Some("clé ünïcode".as_bytes()),
            Some("välue ✓".as_bytes().to_vec()),
            vec![("ключ", Some("значение".as_bytes()))],
        ),
        rec(
            Some(&[0, 255, 0, 1]),
            Some(value_bytes("big", 1, 900_000)),
            vec![],
        ),
        rec(Some(b""), Some(b"empty key".to_vec()), vec![]),
    ];
    let producer = producer(&bootstrap, &[]);
    let deliveries = send_all(&producer, "odd", &records).await;
    let consumed = consume_from_start(&bootstrap, "odd", &[0], records.len()).await;
    assert_same_records("odd", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

/// Many small produce requests for one partition in flight on one connection at once: Kafka
/// keeps them in the order sent (no retries happen here), so offsets follow send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_send_order() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "ordered", 1, &[]).await;

    let records = make_records("ordered", 20_000, 1);
    let producer = producer(
        &bootstrap,
        &[
            ("linger.ms", "0"),
            ("batch.num.messages", "10"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    let deliveries = send_all(&producer, "ordered", &records).await;
    let consumed = consume_from_start(&bootstrap, "ordered", &[0], records.len()).await;
    assert_same_records("ordered", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}
