//! Consumer groups with librdkafka's own group consumer: members share a topic's
//! partitions, rebalance when members join and leave, committed offsets survive the consumer,
//! and the groups show in the admin APIs.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use shoal_tests::TestAgent;

async fn agent() -> TestAgent {
    TestAgent::start_with(|cfg| {
        cfg.group_initial_rebalance_delay = Duration::from_millis(300);
    })
    .await
}

/// A group consumer polled by its own task, which keeps what it reads.
struct Member {
    consumer: Arc<StreamConsumer>,
    records: Arc<Mutex<Vec<Consumed>>>,
    task: tokio::task::JoinHandle<()>,
}

fn group_config(group: &str) -> Vec<(&str, &str)> {
    vec![
        ("group.id", group),
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "300"),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "false"),
        ("fetch.wait.max.ms", "100"),
    ]
}

impl Member {
    fn join(bootstrap: &str, group: &str, topic: &str, extra: &[(&str, &str)]) -> Member {
        let mut settings = group_config(group);
        settings.extend_from_slice(extra);
        let consumer: StreamConsumer = consumer_config(bootstrap, &settings)
            .create()
            .expect("group consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let consumer = Arc::new(consumer);
        let records = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (consumer, records) = (consumer.clone(), records.clone());
            async move {
                loop {
                    match consumer.recv().await {
                        Ok(m) => records.lock().push(to_consumed(&m)),
                        Err(e) => eprintln!("consumer error (retried): {e}"),
                    }
                }
            }
        });
        Member {
            consumer,
            records,
            task,
        }
    }

    fn assigned(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Leaves the group (LeaveGroup) and stops polling.
    fn close(self) {
        self.task.abort();
        self.consumer.unsubscribe();
        drop(self.consumer);
    }
}

/// Waits until the members hold every partition of the topic between them, each holding
/// `min..=max` of them and no partition held twice.
async fn wait_for_spread(members: &[&Member], partitions: usize, min: usize, max: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let held: Vec<Vec<i32>> = members.iter().map(|m| m.assigned()).collect();
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let total: usize = held.iter().map(Vec::len).sum();
        if all.len() == partitions
            && total == partitions
            && held.iter().all(|h| (min..=max).contains(&h.len()))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "assignments never settled: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the members have read, between them, every (partition, offset) of `sent`.
async fn wait_for_all(members: &[&Member], expected: usize) -> BTreeSet<(i32, i64)> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let seen: BTreeSet<(i32, i64)> = members
            .iter()
            .flat_map(|m| {
                m.records
                    .lock()
                    .iter()
                    .map(|c| (c.partition, c.offset))
                    .collect::<Vec<_>>()
            })
            .collect();
        if seen.len() >= expected {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {expected} records",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_share_partitions_and_rebalance_on_join_and_leave() {
    let agent = agent().await;
    let bootstrap = agent.bootstrap();
    let topic = "shared";
    create_topic(&bootstrap, topic, 6, &[]).await;
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, topic, &make_records("first", 600, 6)).await;

    let a = Member::join(&bootstrap, "sharing", topic, &[]);
    let b = Member::join(&bootstrap, "sharing", topic, &[]);
    let c = Member::join(&bootstrap, "sharing", topic, &[]);
    wait_for_spread(&[&a, &b, &c], 6, 2, 2).await;
    let seen = wait_for_all(&[&a, &b, &c], 600).await;
    assert_eq!(seen.len(), 600, "every record read, at least once");

    // A fourth member joins: the partitions are spread over four.
    let d = Member::join(&bootstrap, "sharing", topic, &[]);
    wait_for_spread(&[&a, &b, &c, &d], 6, 1, 2).await;

    // One leaves: the other three take its partitions.
    d.close();
    wait_for_spread(&[&a, &b, &c], 6, 2, 2).await;
    send_all(&producer, topic, &make_records("second", 600, 6)).await;
    wait_for_all(&[&a, &b, &c], 1200).await;
    for member in [a, b, c] {
        member.close();
    }
    agent.stop().await;
}

/// The group's committed offset of `topic` partition 0, read by a client outside the group.
///
/// A group member asking for its own committed offsets while it holds the partition leaves
/// librdkafka (2.12) unable to shut that member down, so an outside client asks.
fn committed_offset(bootstrap: &str, group: &str, topic: &str) -> Offset {
    let reader: BaseConsumer = consumer_config(bootstrap, &[("group.id", group)])
        .create()
        .expect("offset reader");
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, 0);
    let committed = reader
        .committed_offsets(wanted, TIMEOUT)
        .expect("committed offsets");
    committed.find_partition(topic, 0).unwrap().offset()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_offsets_resume_where_the_group_stopped() {
    let agent = agent().await;
    let bootstrap = agent.bootstrap();
    let topic = "resume";
    create_topic(&bootstrap, topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, topic, &make_records("resume", 300, 1)).await;

    let first = Member::join(&bootstrap, "resumers", topic, &[]);
    wait_for_all(&[&first], 300).await;
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(120))
        .unwrap();
    blocking(|| first.consumer.commit(&offsets, CommitMode::Sync)).expect("commit");
    assert_eq!(
        blocking(|| committed_offset(&bootstrap, "resumers", topic)),
        Offset::Offset(120)
    );
    first.close();

    // A new consumer of the group starts at the committed offset, not at the beginning.
    let second = Member::join(&bootstrap, "resumers", topic, &[]);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while second.records.lock().len() < 180 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resumed consumer read too little"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let offsets: Vec<i64> = second.records.lock().iter().map(|c| c.offset).collect();
    assert_eq!(offsets, (120..300).collect::<Vec<i64>>());
    second.close();

    // And after the agent restarts, the offsets are still there.
    let agent = agent.restart().await;
    assert_eq!(
        blocking(|| committed_offset(&bootstrap, "resumers", topic)),
        Offset::Offset(120)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_show_in_admin_apis_and_can_be_deleted() {
    let agent = agent().await;
    let bootstrap = agent.bootstrap();
    let topic = "described";
    create_topic(&bootstrap, topic, 2, &[]).await;
    let member = Member::join(
        &bootstrap,
        "described-group",
        topic,
        &[("client.id", "watcher")],
    );
    wait_for_spread(&[&member], 2, 2, 2).await;

    let groups = blocking(|| {
        member
            .consumer
            .fetch_group_list(Some("described-group"), TIMEOUT)
    })
    .expect("group list");
    let group = &groups.groups()[0];
    assert_eq!(group.name(), "described-group");
    assert_eq!(group.state(), "Stable");
    assert_eq!(group.protocol_type(), "consumer");
    assert_eq!(group.members().len(), 1);
    assert_eq!(group.members()[0].client_id(), "watcher");
    assert!(
        group.members()[0]
            .assignment()
            .is_some_and(|a| !a.is_empty())
    );

    // A group with members cannot be deleted; once empty it can.
    let admin = admin(&bootstrap);
    let deleted = admin
        .delete_groups(&["described-group"], &admin_options())
        .await
        .expect("DeleteGroups answered");
    assert!(deleted[0].is_err(), "non-empty group deleted: {deleted:?}");
    member.close();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let deleted = admin
            .delete_groups(&["described-group"], &admin_options())
            .await
            .expect("DeleteGroups answered");
        if deleted[0].is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{deleted:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing = admin
        .delete_groups(&["described-group"], &admin_options())
        .await
        .expect("DeleteGroups answered");
    assert!(missing[0].is_err(), "deleted twice: {missing:?}");
    agent.stop().await;
}
