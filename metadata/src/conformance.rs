//! The behaviour every [`MetadataStore`] backend must show. Each backend's tests call
//! [`run_all`] on a fresh, empty store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    AgentRegistration, Announcement, BatchIndexEntry, ChunkCommit, CommitOutcome, CommittedOffset,
    HighWatermark, IndexSwap, MetadataError, MetadataStore, ObjectCommit, PartitionBatch, Topic,
};

/// Runs every check in order on one empty store; panics (test failure) on the first mismatch.
pub async fn run_all(store: Arc<dyn MetadataStore>) {
    cluster_id(store.as_ref()).await;
    topics(store.as_ref()).await;
    commits_assign_dense_offsets(store.as_ref()).await;
    retried_commit_returns_first_offsets(store.as_ref()).await;
    unknown_partition_in_commit(store.as_ref()).await;
    batch_lookups(store.as_ref()).await;
    concurrent_commits(store.clone()).await;
    agents(store.as_ref()).await;
    uploads(store.as_ref()).await;
    announcements(store.as_ref()).await;
    group_leases(store.as_ref()).await;
    group_offsets_and_state(store.as_ref()).await;
    log_start_offsets(store.as_ref()).await;
    index_swaps(store.as_ref()).await;
    unreferenced_objects(store.as_ref()).await;
    leases_and_progress(store.as_ref()).await;
}

fn chunk(topic: &Topic, partition: i32, offset_count: i64, max_timestamp: i64) -> ChunkCommit {
    ChunkCommit {
        topic: topic.id,
        partition,
        offset_count,
        max_timestamp,
        position: 0,
        size: 100,
    }
}

fn object(id: &str, chunks: Vec<ChunkCommit>) -> ObjectCommit {
    ObjectCommit {
        object_id: id.to_string(),
        size: chunks.iter().map(|c| c.size).sum(),
        chunks,
    }
}

async fn cluster_id(store: &dyn MetadataStore) {
    let id = store.cluster_id().await.unwrap();
    assert_eq!(id.len(), 22);
    assert_eq!(
        store.cluster_id().await.unwrap(),
        id,
        "the cluster id never changes"
    );
}

async fn topics(store: &dyn MetadataStore) {
    let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
    let created = store
        .create_topic("t-admin", 3, configs.clone())
        .await
        .unwrap();
    assert_eq!(created.partitions, 3);
    assert_eq!(store.topic("t-admin").await.unwrap(), Some(created.clone()));
    assert!(matches!(
        store.create_topic("t-admin", 1, BTreeMap::new()).await,
        Err(MetadataError::TopicExists(_))
    ));
    assert!(matches!(
        store.create_topic("t-zero", 0, BTreeMap::new()).await,
        Err(MetadataError::InvalidPartitions(_))
    ));
    let grown = store.create_partitions("t-admin", 5).await.unwrap();
    assert_eq!(grown.partitions, 5);
    assert_eq!(
        store
            .partition_offsets(grown.id, 4)
            .await
            .unwrap()
            .high_watermark,
        0
    );
    assert!(matches!(
        store.create_partitions("t-admin", 5).await,
        Err(MetadataError::InvalidPartitions(_))
    ));
    let new_configs = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    let altered = store
        .set_topic_configs("t-admin", new_configs.clone())
        .await
        .unwrap();
    assert_eq!(altered.configs, new_configs);
    assert_eq!(
        store.topic("t-admin").await.unwrap().unwrap().configs,
        new_configs
    );
    assert!(
        store
            .list_topics()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == "t-admin")
    );
    store.delete_topic("t-admin").await.unwrap();
    assert_eq!(store.topic("t-admin").await.unwrap(), None);
    assert!(matches!(
        store.delete_topic("t-admin").await,
        Err(MetadataError::UnknownTopic(_))
    ));
    let again = store
        .create_topic("t-admin", 1, BTreeMap::new())
        .await
        .unwrap();
    assert_ne!(again.id, created.id, "a recreated topic is a new topic");
    store.delete_topic("t-admin").await.unwrap();
}

async fn commits_assign_dense_offsets(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-dense", 2, BTreeMap::new())
        .await
        .unwrap();
    let first = store
        .commit_object(&object(
            "obj-dense-1",
            vec![chunk(&t, 0, 5, 10), chunk(&t, 1, 2, 10)],
        ))
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![
            CommitOutcome::Committed { base_offset: 0 },
            CommitOutcome::Committed { base_offset: 0 }
        ]
    );
    let second = store
        .commit_object(&object("obj-dense-2", vec![chunk(&t, 0, 3, 20)]))
        .await
        .unwrap();
    assert_eq!(second, vec![CommitOutcome::Committed { base_offset: 5 }]);
    let offsets = store.partition_offsets(t.id, 0).await.unwrap();
    assert_eq!((offsets.log_start_offset, offsets.high_watermark), (0, 8));
    assert_eq!(
        store
            .partition_offsets(t.id, 1)
            .await
            .unwrap()
            .high_watermark,
        2
    );
}

async fn retried_commit_returns_first_offsets(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-retry", 1, BTreeMap::new())
        .await
        .unwrap();
    let commit = object("obj-retry", vec![chunk(&t, 0, 4, 1)]);
    let first = store.commit_object(&commit).await.unwrap();
    store
        .commit_object(&object("obj-retry-other", vec![chunk(&t, 0, 1, 1)]))
        .await
        .unwrap();
    let retried = store.commit_object(&commit).await.unwrap();
    assert_eq!(first, retried);
    assert_eq!(
        store
            .partition_offsets(t.id, 0)
            .await
            .unwrap()
            .high_watermark,
        5
    );
}

async fn unknown_partition_in_commit(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-unknown", 1, BTreeMap::new())
        .await
        .unwrap();
    let outcomes = store
        .commit_object(&object(
            "obj-unknown",
            vec![chunk(&t, 7, 1, 1), chunk(&t, 0, 1, 1)],
        ))
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            CommitOutcome::UnknownPartition,
            CommitOutcome::Committed { base_offset: 0 }
        ]
    );
}

async fn batch_lookups(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-lookup", 1, BTreeMap::new())
        .await
        .unwrap();
    for (i, ts) in [100, 300, 200, 400].into_iter().enumerate() {
        store
            .commit_object(&object(
                &format!("obj-lookup-{i}"),
                vec![chunk(&t, 0, 10, ts)],
            ))
            .await
            .unwrap();
    }
    let all = store.batches(t.id, 0, 0, u64::MAX).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|b| (b.base_offset, b.last_offset))
            .collect::<Vec<_>>(),
        vec![(0, 9), (10, 19), (20, 29), (30, 39)]
    );
    let mid = store.batches(t.id, 0, 15, 150).await.unwrap();
    assert_eq!(
        mid.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
        vec![10],
        "byte budget of 150 fits one 100-byte chunk"
    );
    let tiny = store.batches(t.id, 0, 35, 1).await.unwrap();
    assert_eq!(tiny.len(), 1, "at least one row even over the budget");
    assert!(
        store
            .batches(t.id, 0, 40, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let by_ts = store
        .batch_for_timestamp(t.id, 0, 250)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_ts.base_offset, 10);
    assert!(
        store
            .batch_for_timestamp(t.id, 0, 401)
            .await
            .unwrap()
            .is_none()
    );
    let max = store
        .batch_with_max_timestamp(t.id, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((max.base_offset, max.max_timestamp), (30, 400));
}

async fn concurrent_commits(store: Arc<dyn MetadataStore>) {
    let t = store
        .create_topic("t-concurrent", 4, BTreeMap::new())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut bases = Vec::new();
            for i in 0..20 {
                // Every object touches the partitions in a writer-specific order.
                let mut chunks: Vec<_> = (0..4).map(|p| chunk(&t, p, 1 + p as i64, 1)).collect();
                chunks.rotate_left(writer % 4);
                let outcomes = store
                    .commit_object(&object(&format!("obj-c-{writer}-{i}"), chunks.clone()))
                    .await
                    .unwrap();
                for (c, o) in chunks.iter().zip(outcomes) {
                    let CommitOutcome::Committed { base_offset } = o else {
                        panic!("commit refused: {o:?}")
                    };
                    bases.push((c.partition, base_offset, c.offset_count));
                }
            }
            bases
        }));
    }
    let mut per_partition: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for task in tasks {
        for (p, base, count) in task.await.unwrap() {
            per_partition.entry(p).or_default().push((base, count));
        }
    }
    for (p, mut ranges) in per_partition {
        ranges.sort();
        let mut next = 0;
        for (base, count) in ranges {
            assert_eq!(base, next, "offsets of partition {p} are dense");
            next += count;
        }
        assert_eq!(
            store
                .partition_offsets(t.id, p)
                .await
                .unwrap()
                .high_watermark,
            next
        );
    }
}

fn registration(zone: &str, port: i32) -> AgentRegistration {
    AgentRegistration {
        zone: Some(zone.to_string()),
        host: "127.0.0.1".to_string(),
        port,
    }
}

async fn agents(store: &dyn MetadataStore) {
    let long = Duration::from_secs(60);
    let registered_after = crate::sqlite::now_ms();
    let a = store
        .register_agent(&registration("zone-a", 9001), long)
        .await
        .unwrap();
    let b = store
        .register_agent(&registration("zone-b", 9002), long)
        .await
        .unwrap();
    assert_ne!(a, b, "every agent gets its own node id");
    let live = store.live_agents().await.unwrap();
    let ids: Vec<i32> = live.iter().map(|agent| agent.id).collect();
    assert!(ids.contains(&a) && ids.contains(&b), "{live:?}");
    assert!(ids.is_sorted(), "listed by id: {ids:?}");
    let listed_b = live.iter().find(|agent| agent.id == b).unwrap();
    let first_a = live
        .iter()
        .find(|agent| agent.id == a)
        .unwrap()
        .last_heartbeat_ms;
    assert_eq!(
        (listed_b.zone.as_deref(), listed_b.port),
        (Some("zone-b"), 9002)
    );
    // The sequencer's clock may be another machine's: allow it some skew.
    let skew = 5_000;
    let registered_before = crate::sqlite::now_ms();
    for agent in &live {
        assert!(
            (registered_after - skew..=registered_before + skew).contains(&agent.last_heartbeat_ms),
            "heartbeat at registration: {agent:?}, registered within \
             {registered_after}..={registered_before}"
        );
    }

    // A lease that lapses takes the agent out of the list; renewing brings it back.
    store
        .renew_agent(b, &registration("zone-b", 9002), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ids: Vec<i32> = store
        .live_agents()
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert!(ids.contains(&a) && !ids.contains(&b), "b expired: {ids:?}");
    store
        .renew_agent(b, &registration("zone-c", 9003), long)
        .await
        .unwrap();
    let live = store.live_agents().await.unwrap();
    let renewed = live.iter().find(|agent| agent.id == b).expect("b is back");
    assert_eq!(
        (renewed.zone.as_deref(), renewed.port),
        (Some("zone-c"), 9003)
    );
    assert!(
        renewed.last_heartbeat_ms > listed_b.last_heartbeat_ms,
        "a renewal is a heartbeat: {listed_b:?} then {renewed:?}"
    );
    let not_renewed = live.iter().find(|agent| agent.id == a).unwrap();
    assert_eq!(
        not_renewed.last_heartbeat_ms, first_a,
        "no renewal, no new heartbeat"
    );

    // A renewal after the row is gone (deregistered, or cleaned up) puts it back.
    store.deregister_agent(a).await.unwrap();
    assert!(!store.live_agents().await.unwrap().iter().any(|x| x.id == a));
    store
        .renew_agent(a, &registration("zone-a", 9001), long)
        .await
        .unwrap();
    assert!(store.live_agents().await.unwrap().iter().any(|x| x.id == a));

    let c = store
        .register_agent(&registration("zone-a", 9004), long)
        .await
        .unwrap();
    store.deregister_agent(c).await.unwrap();
    let d = store
        .register_agent(&registration("zone-a", 9004), long)
        .await
        .unwrap();
    assert!(d > c, "ids are never reused: {c} then {d}");
    for id in [a, b, d] {
        store.deregister_agent(id).await.unwrap();
    }
}

async fn uploads(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-uploads", 1, BTreeMap::new())
        .await
        .unwrap();
    let ids: Vec<String> = (0..3).map(|i| format!("obj-upload-{i}")).collect();
    store.reserve_uploads(7, &ids).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let stale = store.stale_uploads(Duration::ZERO).await.unwrap();
    let stale_ids: Vec<&str> = stale.iter().map(|u| u.object_id.as_str()).collect();
    assert_eq!(stale_ids, ["obj-upload-0", "obj-upload-1", "obj-upload-2"]);
    assert!(
        stale
            .iter()
            .all(|u| u.agent_id == 7 && u.reserved_at_ms > 0)
    );
    assert!(
        store
            .stale_uploads(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty(),
        "nothing reserved an hour ago"
    );

    // Committing an object clears its reservation; so does releasing an unused key.
    store
        .commit_object(&object("obj-upload-0", vec![chunk(&t, 0, 1, 1)]))
        .await
        .unwrap();
    store
        .release_uploads(&["obj-upload-1".to_string()])
        .await
        .unwrap();
    let left: Vec<String> = store
        .stale_uploads(Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.object_id)
        .collect();
    assert_eq!(
        left,
        ["obj-upload-2"],
        "only the never-committed upload stays"
    );
    store.release_uploads(&ids).await.unwrap();
    assert!(
        store
            .stale_uploads(Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    store.delete_topic("t-uploads").await.unwrap();
}

async fn announcements(store: &dyn MetadataStore) {
    let marks: Vec<HighWatermark> = (0..500)
        .map(|p| HighWatermark {
            topic: uuid::Uuid::from_u128(0xfeed),
            partition: p,
            high_watermark: i64::from(p) + 1,
        })
        .collect();
    let Some(mut feed) = store.subscribe().await.unwrap() else {
        // No notifications in this backend: announcing is a harmless no-op.
        store.announce(1, &marks).await.unwrap();
        return;
    };
    store.announce(3, &marks).await.unwrap();
    let mut received = Vec::new();
    while received.len() < marks.len() {
        let next = tokio::time::timeout(Duration::from_secs(10), feed.recv())
            .await
            .expect("announcement delivered")
            .expect("feed open");
        match next {
            Announcement::Moved { from, marks } => {
                assert_eq!(from, 3);
                received.extend(marks);
            }
            Announcement::Gap => {}
        }
    }
    assert_eq!(received, marks, "every mark arrives, in order");
}

async fn group_leases(store: &dyn MetadataStore) {
    let long = Duration::from_secs(60);
    assert!(store.acquire_group("g-lease", 1, long).await.unwrap());
    assert!(
        store.acquire_group("g-lease", 1, long).await.unwrap(),
        "renewable"
    );
    assert!(
        !store.acquire_group("g-lease", 2, long).await.unwrap(),
        "held by another agent"
    );
    assert_eq!(
        store
            .renew_groups(2, &["g-lease".to_string()], long)
            .await
            .unwrap(),
        ["g-lease"],
        "agent 2 holds nothing"
    );
    // A lapsed lease can be taken over; the old holder then finds it lost.
    assert!(
        store
            .acquire_group("g-lease", 1, Duration::from_millis(1))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.acquire_group("g-lease", 2, long).await.unwrap());
    assert_eq!(
        store
            .renew_groups(1, &["g-lease".to_string()], long)
            .await
            .unwrap(),
        ["g-lease"]
    );
    assert!(
        store
            .renew_groups(2, &["g-lease".to_string()], long)
            .await
            .unwrap()
            .is_empty()
    );
    // A released lease is free at once.
    store.release_group("g-lease", 2).await.unwrap();
    assert!(store.acquire_group("g-lease", 3, long).await.unwrap());
    store.release_group("g-lease", 3).await.unwrap();
}

async fn group_offsets_and_state(store: &dyn MetadataStore) {
    let long = Duration::from_secs(60);
    let t = store
        .create_topic("t-groups", 3, BTreeMap::new())
        .await
        .unwrap();
    let offset = |partition, offset, metadata: Option<&str>| CommittedOffset {
        topic: t.id,
        partition,
        offset,
        leader_epoch: 4,
        metadata: metadata.map(str::to_string),
        commit_time_ms: 1_700_000_000_000,
    };
    // Writes need the lease.
    assert!(matches!(
        store
            .commit_offsets("g-offsets", 5, &[offset(0, 10, None)])
            .await,
        Err(MetadataError::NotGroupCoordinator(_))
    ));
    assert!(matches!(
        store.save_group("g-offsets", 5, b"state").await,
        Err(MetadataError::NotGroupCoordinator(_))
    ));
    assert!(
        store
            .committed_offsets("g-offsets")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.acquire_group("g-offsets", 5, long).await.unwrap());
    store
        .commit_offsets(
            "g-offsets",
            5,
            &[offset(0, 10, Some("m0")), offset(2, 30, None)],
        )
        .await
        .unwrap();
    store
        .commit_offsets("g-offsets", 5, &[offset(0, 11, None)])
        .await
        .unwrap();
    assert_eq!(
        store.committed_offsets("g-offsets").await.unwrap(),
        [offset(0, 11, None), offset(2, 30, None)]
    );
    store.save_group("g-offsets", 5, b"gen-1").await.unwrap();
    store.save_group("g-offsets", 5, b"gen-2").await.unwrap();
    assert_eq!(
        store.load_group("g-offsets").await.unwrap().as_deref(),
        Some(&b"gen-2"[..])
    );
    assert_eq!(store.load_group("g-none").await.unwrap(), None);
    assert!(
        store
            .list_groups()
            .await
            .unwrap()
            .contains(&"g-offsets".to_string())
    );

    // A coordinator that lost its lease cannot overwrite its successor's offsets.
    store.release_group("g-offsets", 5).await.unwrap();
    assert!(store.acquire_group("g-offsets", 6, long).await.unwrap());
    assert!(matches!(
        store
            .commit_offsets("g-offsets", 5, &[offset(0, 99, None)])
            .await,
        Err(MetadataError::NotGroupCoordinator(_))
    ));
    store
        .delete_offsets("g-offsets", 6, &[(t.id, 2)])
        .await
        .unwrap();
    assert_eq!(
        store.committed_offsets("g-offsets").await.unwrap(),
        [offset(0, 11, None)]
    );

    // Offsets go with their topic; a deleted group leaves nothing.
    assert!(store.acquire_group("g-other", 6, long).await.unwrap());
    store
        .commit_offsets("g-other", 6, &[offset(1, 5, None)])
        .await
        .unwrap();
    store.delete_group("g-offsets", 6).await.unwrap();
    assert_eq!(store.load_group("g-offsets").await.unwrap(), None);
    assert!(
        store
            .committed_offsets("g-offsets")
            .await
            .unwrap()
            .is_empty()
    );
    store.delete_topic("t-groups").await.unwrap();
    assert!(store.committed_offsets("g-other").await.unwrap().is_empty());
    assert!(
        !store
            .list_groups()
            .await
            .unwrap()
            .contains(&"g-offsets".to_string())
    );
    store.release_group("g-offsets", 6).await.unwrap();
    store.release_group("g-other", 6).await.unwrap();
}

async fn log_start_offsets(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-log-start", 1, BTreeMap::new())
        .await
        .unwrap();
    for i in 0..3 {
        store
            .commit_object(&object(&format!("obj-lso-{i}"), vec![chunk(&t, 0, 10, i)]))
            .await
            .unwrap();
    }
    // Inside the second row: the first row goes, the second stays (it holds offset 15).
    assert_eq!(store.advance_log_start(t.id, 0, 15).await.unwrap(), 15);
    let rows = store.batches(t.id, 0, 0, u64::MAX).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.base_offset).collect::<Vec<_>>(),
        [10, 20]
    );
    assert_eq!(
        store.advance_log_start(t.id, 0, 5).await.unwrap(),
        15,
        "the log start offset never goes back"
    );
    assert_eq!(
        store.advance_log_start(t.id, 0, 1000).await.unwrap(),
        30,
        "nor past the high watermark"
    );
    assert!(
        store
            .batches(t.id, 0, 0, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let offsets = store.partition_offsets(t.id, 0).await.unwrap();
    assert_eq!((offsets.log_start_offset, offsets.high_watermark), (30, 30));
    let next = store
        .commit_object(&object("obj-lso-3", vec![chunk(&t, 0, 1, 1)]))
        .await
        .unwrap();
    assert_eq!(next, vec![CommitOutcome::Committed { base_offset: 30 }]);
    assert!(matches!(
        store.advance_log_start(t.id, 7, 1).await,
        Err(MetadataError::UnknownPartition { .. })
    ));
}

async fn index_swaps(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-swap", 2, BTreeMap::new())
        .await
        .unwrap();
    for i in 0..3 {
        store
            .commit_object(&object(
                &format!("obj-swap-{i}"),
                vec![chunk(&t, 0, 10, 100 + i), chunk(&t, 1, 5, 200 + i)],
            ))
            .await
            .unwrap();
    }
    let ids: Vec<String> = (0..3).map(|i| format!("obj-swap-{i}")).collect();
    let candidates = store
        .merge_candidates(1_000_000, Duration::ZERO, 100_000)
        .await
        .unwrap();
    for id in &ids {
        let found = candidates.iter().find(|o| &o.id == id).expect("candidate");
        assert_eq!((found.size, found.level), (200, 0));
    }
    assert!(
        store
            .merge_candidates(150, Duration::ZERO, 100_000)
            .await
            .unwrap()
            .iter()
            .all(|o| !ids.contains(&o.id)),
        "objects of 200 bytes are not below 150"
    );
    let old = store.object_batches(&ids).await.unwrap();
    assert_eq!(old.len(), 6);
    assert!(
        old.windows(2)
            .all(|w| (w[0].topic, w[0].partition, w[0].entry.base_offset)
                < (w[1].topic, w[1].partition, w[1].entry.base_offset))
    );
    let merged_row = |partition: i32, base: i64, last: i64, position: u64| PartitionBatch {
        topic: t.id,
        partition,
        entry: BatchIndexEntry {
            base_offset: base,
            last_offset: last,
            max_timestamp: 999,
            object_id: "obj-merged".to_string(),
            position,
            size: 300,
        },
    };
    store
        .reserve_uploads(0, &["obj-merged".to_string()])
        .await
        .unwrap();
    let swap = IndexSwap {
        object_id: "obj-merged".to_string(),
        size: 600,
        level: 1,
        replaced: old.clone(),
        rows: vec![merged_row(0, 0, 29, 0), merged_row(1, 0, 14, 300)],
    };
    assert!(store.swap_batches(&swap).await.unwrap());
    let rows = store.batches(t.id, 0, 0, u64::MAX).await.unwrap();
    assert_eq!(rows, vec![merged_row(0, 0, 29, 0).entry]);
    assert!(store.object_batches(&ids).await.unwrap().is_empty());
    assert!(
        store
            .stale_uploads(Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .all(|u| u.object_id != "obj-merged"),
        "the swap clears the new object's upload reservation"
    );
    let merged = store
        .merge_candidates(1_000_000, Duration::ZERO, 100_000)
        .await
        .unwrap();
    let merged = merged.iter().find(|o| o.id == "obj-merged").unwrap();
    assert_eq!((merged.size, merged.level), (600, 1));

    // The same swap again finds its rows gone and changes nothing; so does a swap of rows
    // that retention removed meanwhile.
    let again = IndexSwap {
        object_id: "obj-merged-again".to_string(),
        ..swap
    };
    assert!(!store.swap_batches(&again).await.unwrap());
    assert_eq!(store.batches(t.id, 1, 0, u64::MAX).await.unwrap().len(), 1);
    let replaced = store
        .object_batches(&["obj-merged".to_string()])
        .await
        .unwrap();
    store.advance_log_start(t.id, 1, 15).await.unwrap();
    let late = IndexSwap {
        object_id: "obj-merged-late".to_string(),
        size: 300,
        level: 2,
        replaced,
        rows: vec![PartitionBatch {
            entry: BatchIndexEntry {
                object_id: "obj-merged-late".to_string(),
                ..merged_row(0, 0, 29, 0).entry
            },
            ..merged_row(0, 0, 29, 0)
        }],
    };
    assert!(!store.swap_batches(&late).await.unwrap());
    assert_eq!(
        store.batches(t.id, 0, 0, u64::MAX).await.unwrap(),
        vec![merged_row(0, 0, 29, 0).entry],
        "a refused swap leaves every row in place"
    );
}

async fn unreferenced_objects(store: &dyn MetadataStore) {
    let t = store
        .create_topic("t-unreferenced", 1, BTreeMap::new())
        .await
        .unwrap();
    for i in 0..2 {
        store
            .commit_object(&object(&format!("obj-gc-{i}"), vec![chunk(&t, 0, 10, 1)]))
            .await
            .unwrap();
    }
    let listed = |ids: Vec<String>| {
        ids.into_iter()
            .filter(|id| id.starts_with("obj-gc-"))
            .collect::<Vec<_>>()
    };
    assert!(
        listed(
            store
                .unreferenced_objects(Duration::ZERO, 1000)
                .await
                .unwrap()
        )
        .is_empty(),
        "both objects are referenced"
    );
    store.advance_log_start(t.id, 0, 10).await.unwrap();
    // Found unreferenced now: not yet past an hour's grace, past a zero one.
    assert!(
        listed(
            store
                .unreferenced_objects(Duration::from_secs(3600), 1000)
                .await
                .unwrap()
        )
        .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        listed(
            store
                .unreferenced_objects(Duration::ZERO, 1000)
                .await
                .unwrap()
        ),
        ["obj-gc-0"]
    );
    store
        .forget_objects(&["obj-gc-0".to_string()])
        .await
        .unwrap();
    assert!(
        listed(
            store
                .unreferenced_objects(Duration::ZERO, 1000)
                .await
                .unwrap()
        )
        .is_empty()
    );
    // A late retry of the deleted object's commit is answered as a retry: no new offsets.
    let retry = store
        .commit_object(&object("obj-gc-0", vec![chunk(&t, 0, 10, 1)]))
        .await
        .unwrap();
    assert_eq!(retry, vec![CommitOutcome::UnknownPartition]);
    assert_eq!(
        store
            .partition_offsets(t.id, 0)
            .await
            .unwrap()
            .high_watermark,
        20
    );
    // Deleting the topic unreferences the rest.
    store.delete_topic("t-unreferenced").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .unreferenced_objects(Duration::ZERO, 1000)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        listed(
            store
                .unreferenced_objects(Duration::ZERO, 1000)
                .await
                .unwrap()
        ),
        ["obj-gc-1"]
    );
}

async fn leases_and_progress(store: &dyn MetadataStore) {
    let ttl = Duration::from_secs(60);
    assert!(store.acquire_lease("job-a", "c1", ttl).await.unwrap());
    assert!(
        store.acquire_lease("job-a", "c1", ttl).await.unwrap(),
        "renewal"
    );
    assert!(!store.acquire_lease("job-a", "c2", ttl).await.unwrap());
    assert!(store.acquire_lease("job-b", "c2", ttl).await.unwrap());
    store.release_lease("job-a", "c2").await.unwrap();
    assert!(
        !store.acquire_lease("job-a", "c2", ttl).await.unwrap(),
        "not c2's to release"
    );
    store.release_lease("job-a", "c1").await.unwrap();
    assert!(store.acquire_lease("job-a", "c2", ttl).await.unwrap());
    assert!(
        store
            .acquire_lease("job-c", "c1", Duration::ZERO)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        store.acquire_lease("job-c", "c2", ttl).await.unwrap(),
        "an expired lease"
    );

    let t = store
        .create_topic("t-progress", 2, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        store.partition_progress("clean", t.id, 0).await.unwrap(),
        None
    );
    store
        .set_partition_progress("clean", t.id, 0, 42)
        .await
        .unwrap();
    store
        .set_partition_progress("clean", t.id, 0, 50)
        .await
        .unwrap();
    store
        .set_partition_progress("export", t.id, 0, 7)
        .await
        .unwrap();
    assert_eq!(
        store.partition_progress("clean", t.id, 0).await.unwrap(),
        Some(50)
    );
    assert_eq!(
        store.partition_progress("export", t.id, 0).await.unwrap(),
        Some(7)
    );
    assert_eq!(
        store.partition_progress("clean", t.id, 1).await.unwrap(),
        None
    );
    store.delete_topic("t-progress").await.unwrap();
    assert_eq!(
        store.partition_progress("clean", t.id, 0).await.unwrap(),
        None
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_file_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/meta/metadata.db", dir.path().display());
        let store = crate::open(&url).await.unwrap();
        super::run_all(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_backend_conforms() {
        let Some(pg) = crate::testing::TestPostgres::start_unless_skipped().unwrap() else {
            return;
        };
        let url = pg.create_database().await.unwrap();
        let store = crate::open(&url).await.unwrap();
        super::run_all(store).await;
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        assert!(crate::open("mysql://x").await.is_err());
        assert!(crate::open("not a url").await.is_err());
    }
}
