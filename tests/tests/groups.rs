//! Consumer groups with librdkafka's own group consumer, on both metadata backends: members
//! share a topic's partitions with the eager and the cooperative-sticky assignors and
//! rebalance when members join and leave, committed offsets survive the consumer and the
//! agent, static members come back without a rebalance, a group is rewound to a point in
//! time, and groups show in the admin APIs.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::member::*;
use common::*;
use parking_lot::Mutex;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use shoal_metadata::testing::TestPostgres;
use shoal_tests::TestAgent;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// An agent on `backend`, and the PostgreSQL it uses; `None` when PostgreSQL is skipped on
/// purpose.
async fn agent(backend: Backend) -> Option<(TestAgent, Option<TestPostgres>)> {
    let postgres = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestPostgres::start_unless_skipped().expect("test PostgreSQL")?),
    };
    let url = match &postgres {
        Some(pg) => Some(pg.create_database().await.expect("test database")),
        None => None,
    };
    let agent = TestAgent::start_with(|cfg| {
        cfg.group_initial_rebalance_delay = Duration::from_millis(300);
        if let Some(url) = url {
            cfg.metadata_url = url;
        }
    })
    .await;
    Some((agent, postgres))
}

/// Every group test runs once per metadata backend.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await
                }
            )*
        }
    };
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

    /// Leaves the group (LeaveGroup) and stops polling.
    fn close(self) {
        self.task.abort();
        self.consumer.unsubscribe();
        drop(self.consumer);
    }
}

impl Assigned for Member {
    fn assigned(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
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

async fn members_share_partitions_and_rebalance_on_join_and_leave(
    backend: Backend,
    assignor: &str,
) {
    let Some((agent, _pg)) = agent(backend).await else {
        return;
    };
    let bootstrap = agent.bootstrap();
    let topic = "shared";
    create_topic(&bootstrap, topic, 6, &[]).await;
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, topic, &make_records("first", 600, 6)).await;

    let strategy = [("partition.assignment.strategy", assignor)];
    let a = Member::join(&bootstrap, "sharing", topic, &strategy);
    let b = Member::join(&bootstrap, "sharing", topic, &strategy);
    let c = Member::join(&bootstrap, "sharing", topic, &strategy);
    wait_for_spread(&[&a, &b, &c], 6, 2, 2).await;
    let seen = wait_for_all(&[&a, &b, &c], 600).await;
    assert_eq!(seen.len(), 600, "every record read, at least once");

    // A fourth member joins: the partitions are spread over four.
    let d = Member::join(&bootstrap, "sharing", topic, &strategy);
    wait_for_spread(&[&a, &b, &c, &d], 6, 1, 2).await;

    // One leaves: the other three take its partitions.
    d.close();
    wait_for_spread(&[&a, &b, &c], 6, 2, 2).await;
    send_all(&producer, topic, &make_records("second", 600, 6)).await;
    wait_for_all(&[&a, &b, &c], 1200).await;
    // Records re-read after a rebalance are expected (nothing was committed); records sent
    // after the last one are read exactly once.
    let mut second: Vec<(i32, i64)> = [&a, &b, &c]
        .iter()
        .flat_map(|m| m.records.lock().clone())
        .filter(|c| c.offset >= 100)
        .map(|c| (c.partition, c.offset))
        .collect();
    second.sort();
    let expected: Vec<(i32, i64)> = (0..6)
        .flat_map(|p| (100..200).map(move |o| (p, o)))
        .collect();
    assert_eq!(
        second, expected,
        "the second batch is read once, by one member"
    );
    for member in [a, b, c] {
        member.close();
    }
    agent.stop().await;
}

/// The group's committed offset of `topic` partition 0.
fn committed_offset(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    committed_offsets(bootstrap, group, topic, 1).expect("committed offsets")[0]
}

async fn committed_offsets_resume_where_the_group_stopped(backend: Backend) {
    let Some((agent, _pg)) = agent(backend).await else {
        return;
    };
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
        Some(120)
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
        Some(120)
    );
    agent.stop().await;
}

async fn groups_show_in_admin_apis_and_can_be_deleted(backend: Backend) {
    let Some((agent, _pg)) = agent(backend).await else {
        return;
    };
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

async fn static_members_rejoin_without_a_rebalance(backend: Backend) {
    let Some((agent, _pg)) = agent(backend).await else {
        return;
    };
    let bootstrap = agent.bootstrap();
    let topic = "static";
    create_topic(&bootstrap, topic, 4, &[]).await;
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, topic, &make_records("static", 400, 4)).await;

    let one = GroupMember::start(
        &bootstrap,
        "statics",
        topic,
        &[("group.instance.id", "one")],
    );
    let two = GroupMember::start(
        &bootstrap,
        "statics",
        topic,
        &[("group.instance.id", "two")],
    );
    wait_for_spread(&[&one, &two], 4, 2, 2).await;
    // Let the group settle: the second member's join may have rebalanced the first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = one.assignment();
    let before = two.reported();

    // The first member crashes and comes back under the same instance id within its session:
    // it gets its partitions back and the other member never rebalances.
    one.kill();
    let again = GroupMember::start(
        &bootstrap,
        "statics",
        topic,
        &[("group.instance.id", "one")],
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while again.assignment() != held {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted static member holds {:?}, not {held:?}",
            again.assignment()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = two.reported();
    assert_eq!(
        after.rebalances, before.rebalances,
        "the other member rebalanced"
    );
    assert_eq!(after.assignment, before.assignment);

    // Describe shows both instances, still two members.
    let groups = blocking(|| admin_consumer(&bootstrap).fetch_group_list(Some("statics"), TIMEOUT))
        .expect("group list");
    let members = groups.groups()[0].members();
    assert_eq!(members.len(), 2, "one member per instance id");
    drop((again, two));
    agent.stop().await;
}

/// A consumer that only reads group lists and offsets.
fn admin_consumer(bootstrap: &str) -> StreamConsumer {
    consumer(bootstrap, &[])
}

async fn rewind_by_timestamp_replays_from_the_right_offset(backend: Backend) {
    let Some((agent, _pg)) = agent(backend).await else {
        return;
    };
    let bootstrap = agent.bootstrap();
    let topic = "rewound";
    create_topic(&bootstrap, topic, 2, &[]).await;
    let producer = producer(&bootstrap, &[]);
    // Record i goes to partition i % 2 at offset i / 2 with timestamp BASE_TIMESTAMP + i.
    send_all(&producer, topic, &make_records("rewind", 200, 2)).await;

    let reader = Member::join(&bootstrap, "replayers", topic, &[]);
    wait_for_all(&[&reader], 200).await;
    let mut done = TopicPartitionList::new();
    for p in 0..2 {
        done.add_partition_offset(topic, p, Offset::Offset(100))
            .unwrap();
    }
    blocking(|| reader.consumer.commit(&done, CommitMode::Sync)).expect("commit");
    // A group with members refuses offsets from outside it.
    let mut outside = TopicPartitionList::new();
    outside
        .add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    let tool: StreamConsumer = consumer(&bootstrap, &[("group.id", "replayers")]);
    assert!(
        blocking(|| tool.commit(&outside, CommitMode::Sync)).is_err(),
        "offsets committed into a group with members"
    );
    reader.close();

    // What `kafka-consumer-groups --reset-offsets --to-datetime` does: ListOffsets by
    // timestamp, then OffsetCommit into the now empty group.
    let mut at = TopicPartitionList::new();
    at.add_partition_offset(topic, 0, Offset::Offset(BASE_TIMESTAMP + 101))
        .unwrap();
    at.add_partition_offset(topic, 1, Offset::Offset(BASE_TIMESTAMP + 101))
        .unwrap();
    let found = blocking(|| tool.offsets_for_times(at, TIMEOUT)).expect("offsets for times");
    let offset_of = |p: i32| found.find_partition(topic, p).unwrap().offset();
    assert_eq!(
        (offset_of(0), offset_of(1)),
        (Offset::Offset(51), Offset::Offset(50))
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while let Err(e) = blocking(|| tool.commit(&found, CommitMode::Sync)) {
        // The departed member's LeaveGroup may still be on its way.
        assert!(
            tokio::time::Instant::now() < deadline,
            "rewind refused: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        blocking(|| committed_offsets(&bootstrap, "replayers", topic, 2)).expect("committed"),
        vec![Some(51), Some(50)]
    );

    // The group replays history from there.
    let replay = Member::join(&bootstrap, "replayers", topic, &[]);
    wait_for_all(&[&replay], 99).await;
    let records = replay.records.lock().clone();
    for (partition, first) in [(0, 51), (1, 50)] {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|c| c.partition == partition)
            .map(|c| c.offset)
            .collect();
        assert_eq!(
            offsets,
            (first..100).collect::<Vec<i64>>(),
            "partition {partition}"
        );
    }
    replay.close();
    agent.stop().await;
}

/// The eager protocol: every member gives up everything at each rebalance.
async fn eager_members_share_partitions(backend: Backend) {
    members_share_partitions_and_rebalance_on_join_and_leave(backend, "range").await
}

/// The cooperative protocol: members keep what they hold and rebalance incrementally.
async fn cooperative_members_share_partitions(backend: Backend) {
    members_share_partitions_and_rebalance_on_join_and_leave(backend, "cooperative-sticky").await
}

on_both_backends!(
    eager_members_share_partitions,
    cooperative_members_share_partitions,
    committed_offsets_resume_where_the_group_stopped,
    groups_show_in_admin_apis_and_can_be_deleted,
    static_members_rejoin_without_a_rebalance,
    rewind_by_timestamp_replays_from_the_right_offset,
);
