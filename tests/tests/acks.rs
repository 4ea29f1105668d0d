//! Every `acks` setting delivers every record: acks=1 and acks=all are answered with offsets
//! once durable; acks=0 gets no answer, so only a consumer can tell the records arrived.

mod common;

use common::*;
use shoal_tests::TestAgent;

const RECORDS: usize = 3_000;

/// Produces with `acks` over two partitions and reads everything back, comparing delivery
/// report offsets when the acks setting gets them.
async fn deliver_with(acks: &str, reports_offsets: bool) {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    let topic = format!("acks{acks}");
    create_topic(&bootstrap, &topic, 2, &[]).await;

    let records = make_records(&topic, RECORDS, 2);
    let producer = producer(&bootstrap, &[("acks", acks)]);
    let deliveries = send_all(&producer, &topic, &records).await;
    let consumed = consume_from_start(&bootstrap, &topic, &[0, 1], RECORDS).await;
    if reports_offsets {
        assert_same_records(&topic, &records, Some(&deliveries), &consumed);
    } else {
        // Nothing answers an acks=0 produce, so delivery reports carry no real offsets
        // (librdkafka fills in placeholders): only what a consumer reads counts.
        assert_same_records(&topic, &records, None, &consumed);
    }
    let consumer = consumer(&bootstrap, &[]);
    for p in 0..2 {
        assert_eq!(
            watermarks(&consumer, &topic, p),
            (0, RECORDS as i64 / 2),
            "watermarks of {topic}/{p}: no record stored twice"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none() {
    deliver_with("0", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leader() {
    deliver_with("1", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all() {
    deliver_with("all", true).await;
}
