//! Every producer compression codec round-trips: Shoal stores the producer's batches as they
//! came, so consumers must decompress exactly what was sent.

mod common;

use common::*;
use shoal_tests::TestAgent;

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// Produces thousands of records compressed with `codec` over two partitions and reads them
/// back.
async fn round_trip_with(codec: &str) {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    let topic = format!("compressed-{codec}");
    create_topic(&bootstrap, &topic, 2, &[]).await;

    let records = make_records(codec, 5_000, 2);
    let producer = producer(
        &bootstrap,
        &[("compression.type", codec), ("linger.ms", "20")],
    );
    let deliveries = send_all(&producer, &topic, &records).await;
    let consumed = consume_from_start(&bootstrap, &topic, &[0, 1], records.len()).await;
    assert_same_records(&topic, &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed() {
    round_trip_with("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip() {
    round_trip_with("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy() {
    round_trip_with("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4() {
    round_trip_with("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd() {
    round_trip_with("zstd").await;
}

/// Batches of every codec, one after the other in the same partition, read in one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_codecs_in_one_partition() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "mixed", 1, &[]).await;

    let mut sent = Vec::new();
    let mut deliveries = Vec::new();
    for codec in CODECS {
        let records = make_records(codec, 1_000, 1);
        let producer = producer(&bootstrap, &[("compression.type", codec)]);
        deliveries.extend(send_all(&producer, "mixed", &records).await);
        sent.extend(records);
    }
    let consumed = consume_from_start(&bootstrap, "mixed", &[0], sent.len()).await;
    assert_same_records("mixed", &sent, Some(&deliveries), &consumed);
    agent.stop().await;
}
