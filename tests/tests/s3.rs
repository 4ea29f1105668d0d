//! `s3://` object storage against an in-process S3 endpoint (metadata stays SQLite): records
//! round-trip and survive a restart, and failing PUTs are never acknowledged.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use shoal_storage::{ObjectStorage, S3Options, StorageError};
use shoal_tests::{TestAgent, TestS3};

async fn agent_on(s3: &TestS3, prefix: &str) -> TestAgent {
    TestAgent::start_with(|cfg| {
        cfg.objects_url = s3.url(prefix);
        cfg.s3 = s3.options();
        cfg.flush_interval = Duration::from_millis(250);
    })
    .await
}

/// PUTs are create-only (`If-None-Match: *`): a retried PUT finds its own object, and a
/// different object under a used key is refused rather than overwriting it.
#[tokio::test]
async fn puts_never_overwrite() {
    let s3 = TestS3::start().await;
    let storage = ObjectStorage::open(&s3.url("p"), &s3.options()).unwrap();
    let id = "01OBJECT";
    let parts = || vec![bytes::Bytes::from_static(b"hello "), "s3".into()];
    storage.put(id, parts()).await.unwrap();
    storage.put(id, parts()).await.unwrap();
    let err = storage.put(id, vec!["other".into()]).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Conflict { existing: 8, .. }),
        "{err}"
    );
    assert_eq!(&storage.get(id).await.unwrap()[..], b"hello s3");
    assert_eq!(&storage.get_range(id, 6..8).await.unwrap()[..], b"s3");
    storage.delete(id).await.unwrap();
    storage.delete(id).await.unwrap();
    assert!(s3.dir("p").read_dir().unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_and_survive_restart() {
    let s3 = TestS3::start().await;
    s3.set_latency(Duration::from_millis(20));
    let agent = agent_on(&s3, "cluster/a").await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "s3-topic", 3, &[]).await;

    let records = make_records("s3", 3_000, 3);
    let deliveries = send_all(&producer(&bootstrap, &[]), "s3-topic", &records).await;
    let consumed = consume_from_start(&bootstrap, "s3-topic", &[0, 1, 2], records.len()).await;
    assert_same_records("s3-topic", &records, Some(&deliveries), &consumed);
    let objects = std::fs::read_dir(s3.dir("cluster/a")).expect("objects under the prefix");
    assert!(objects.count() > 0);

    // After a restart the recent-write cache is empty: every read goes to the endpoint.
    let agent = agent.restart().await;
    let consumed = consume_from_start(&bootstrap, "s3-topic", &[0, 1, 2], records.len()).await;
    assert_same_records("s3-topic", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_puts_are_never_acknowledged() {
    let s3 = TestS3::start().await;
    let agent = agent_on(&s3, "flaky").await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "flaky", 1, &[]).await;
    // No client retries: each failed flush surfaces as a delivery error, and once every
    // report is in, no PUT of those records is still being retried by the agent.
    let no_retries = producer(&bootstrap, &[("retries", "0")]);

    let before = make_records("before", 200, 1);
    let mut deliveries = send_all(&no_retries, "flaky", &before).await;

    s3.fail_puts(true);
    let refused = make_records("refused", 200, 1);
    let mut pending = Vec::new();
    for rec in &refused {
        pending.push(enqueue(&no_retries, "flaky", rec).await);
    }
    for report in join_all(pending).await {
        match report.expect("delivery report not cancelled") {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::KafkaStorageError), _)) => {}
            other => panic!("record acknowledged or wrong error while PUTs fail: {other:?}"),
        }
    }
    // The agent retried each refused PUT before giving up.
    assert!(s3.failed_puts() > 1, "{} failed PUTs", s3.failed_puts());

    // A retrying producer survives an outage that ends.
    let retrying = producer(
        &bootstrap,
        &[("max.in.flight.requests.per.connection", "1")],
    );
    let healed = make_records("healed", 200, 1);
    let mut pending = Vec::new();
    for rec in &healed {
        pending.push(enqueue(&retrying, "flaky", rec).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s3.fail_puts(false);
    for report in join_all(pending).await {
        let delivery = report.expect("delivery report not cancelled");
        deliveries.push(delivery.expect("delivered once PUTs succeed"));
    }

    let after = make_records("after", 200, 1);
    deliveries.extend(send_all(&no_retries, "flaky", &after).await);

    // Exactly the acknowledged records, at dense offsets: the refused ones took none.
    let stored: Vec<Rec> = before
        .iter()
        .chain(&healed)
        .chain(&after)
        .cloned()
        .collect();
    let consumed = consume_from_start(&bootstrap, "flaky", &[0], stored.len()).await;
    assert_same_records("flaky", &stored, Some(&deliveries), &consumed);
    agent.stop().await;
}

/// On a store with a long latency tail, PUTs slower than nearly all recent ones get a second
/// copy under the same key: every record still arrives exactly once, and the bucket holds
/// one object per key however many copies were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_puts_keep_one_object_per_key() {
    let s3 = TestS3::start().await;
    s3.set_put_latency(Duration::from_millis(2), Duration::from_millis(300));
    let agent = TestAgent::start_with(|cfg| {
        cfg.objects_url = s3.url("hedged");
        cfg.s3 = S3Options {
            put_hedging: true,
            ..s3.options()
        };
        cfg.flush_interval = Duration::from_millis(1);
    })
    .await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "hedged", 2, &[]).await;
    // One record per request and per flush: hundreds of PUTs to learn latencies from.
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    let records = make_records("hedged", 300, 2);
    let mut deliveries = Vec::new();
    for rec in &records {
        deliveries.push(send_one(&producer, "hedged", rec).await.expect("delivered"));
    }
    let objects = std::fs::read_dir(s3.dir("hedged"))
        .expect("bucket")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_str().is_some_and(|n| n.len() == 26))
        })
        .count();
    let (puts, _) = s3.puts();
    assert!(
        puts > objects as u64,
        "{puts} PUTs for {objects} objects: slow PUTs were hedged"
    );
    let consumed = consume_from_start(&bootstrap, "hedged", &[0, 1], records.len()).await;
    assert_same_records("hedged", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

/// Consumers catching up on the same data together share the object-store reads: each
/// chunk missing from the cache is fetched once however many consumers want it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_catch_up_reads_share_gets() {
    let s3 = TestS3::start().await;
    s3.set_latency(Duration::from_millis(20));
    let agent = agent_on(&s3, "shared").await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "shared", 2, &[]).await;
    let records = make_records("shared", 2_000, 2);
    let deliveries = send_all(&producer(&bootstrap, &[]), "shared", &records).await;

    // One consumer after a restart (an empty cache): the GETs one catch-up read costs.
    let agent = agent.restart().await;
    let before = s3.gets();
    consume_from_start(&bootstrap, "shared", &[0, 1], records.len()).await;
    let alone = s3.gets() - before;
    assert!(alone > 0, "a cold read goes to the object store");

    // Six at once after another restart: no more GETs than one.
    let agent = agent.restart().await;
    let before = s3.gets();
    let readers = (0..6).map(|_| consume_from_start(&bootstrap, "shared", &[0, 1], records.len()));
    for consumed in join_all(readers).await {
        assert_same_records("shared", &records, Some(&deliveries), &consumed);
    }
    let together = s3.gets() - before;
    assert!(
        together <= alone,
        "6 readers made {together} GETs, one made {alone}"
    );
    agent.stop().await;
}
