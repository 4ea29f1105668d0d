//! Restarts: acknowledged records, offsets, topics and their configs survive a graceful
//! restart on the same data, and offsets continue densely afterwards.

mod common;

use common::*;
use rdkafka::admin::{NewPartitions, ResourceSpecifier};
use shoal_tests::TestAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_restart_and_offsets_continue() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "durable", 3, &[]).await;

    let first = make_records("first", 3_000, 3);
    let producer = producer(&bootstrap, &[]);
    let mut deliveries = send_all(&producer, "durable", &first).await;

    let agent = agent.restart().await;
    assert_eq!(
        agent.bootstrap(),
        bootstrap,
        "restarted on the same address"
    );
    let consumed = consume_from_start(&bootstrap, "durable", &[0, 1, 2], first.len()).await;
    assert_same_records("durable", &first, Some(&deliveries), &consumed);

    // The producer from before the restart reconnects; new offsets follow the old ones.
    let second = make_records("second", 3_000, 3);
    deliveries.extend(send_all(&producer, "durable", &second).await);
    let all: Vec<Rec> = first.iter().chain(&second).cloned().collect();
    let consumed = consume_from_start(&bootstrap, "durable", &[0, 1, 2], all.len()).await;
    assert_same_records("durable", &all, Some(&deliveries), &consumed);
    let consumer = consumer(&bootstrap, &[]);
    for p in 0..3 {
        assert_eq!(watermarks(&consumer, "durable", p), (0, 2_000));
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_configs_survive_restart() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(
        &bootstrap,
        "kept",
        2,
        &[("retention.ms", "123456"), ("cleanup.policy", "compact")],
    )
    .await;
    let grown = admin(&bootstrap)
        .create_partitions([&NewPartitions::new("kept", 4)], &admin_options())
        .await
        .expect("CreatePartitions answered");
    assert_eq!(grown, vec![Ok("kept".to_string())]);

    let agent = agent.restart().await;
    // Restart twice: a restart with nothing new must not lose or change anything either.
    let agent = agent.restart().await;
    assert_eq!(list_topics(&bootstrap).get("kept"), Some(&4));
    let mut described = admin(&bootstrap)
        .describe_configs([&ResourceSpecifier::Topic("kept")], &admin_options())
        .await
        .expect("DescribeConfigs answered");
    let described = described.remove(0).expect("topic configs");
    let value = |name: &str| described.get(name).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("123456"));
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value("retention.bytes").as_deref(), Some("-1"));

    // All four partitions take records after the restarts.
    let records = make_records("kept", 400, 4);
    let deliveries = send_all(&producer(&bootstrap, &[]), "kept", &records).await;
    let consumed = consume_from_start(&bootstrap, "kept", &[0, 1, 2, 3], records.len()).await;
    assert_same_records("kept", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}
