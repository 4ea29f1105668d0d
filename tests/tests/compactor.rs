//! The compactor against a running agent and real clients, on SQLite with a local directory
//! and on PostgreSQL with the S3 endpoint: merging keeps every record and shrinks the index,
//! retention by time and size, DeleteRecords, compacted topics, garbage collection during
//! reads and of orphans, Parquet export, and passes cut short at any point.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::BaseConsumer;
use shoal_compactor::{Compactor, CompactorConfig, PassReport};
use shoal_metadata::testing::TestPostgres;
use shoal_metadata::{MetadataStore, Topic};
use shoal_storage::ObjectStorage;
use shoal_tests::{TestAgent, TestS3};

#[derive(Debug, Clone, Copy)]
enum Setup {
    /// The embedded default: SQLite and a local directory.
    Local,
    /// PostgreSQL and the S3 endpoint.
    Fleet,
}

/// An agent, and a view of its sequencer and object store for compactors and checks.
struct Env {
    agent: TestAgent,
    store: Arc<dyn MetadataStore>,
    storage: Arc<ObjectStorage>,
    objects_dir: PathBuf,
    _postgres: Option<TestPostgres>,
    _s3: Option<TestS3>,
}

impl Env {
    async fn start(setup: Setup) -> Option<Env> {
        let (postgres, s3) = match setup {
            Setup::Local => (None, None),
            Setup::Fleet => (
                Some(TestPostgres::start_unless_skipped().expect("test PostgreSQL")?),
                Some(TestS3::start().await),
            ),
        };
        let url = match &postgres {
            Some(pg) => Some(pg.create_database().await.expect("test database")),
            None => None,
        };
        let agent = TestAgent::start_with(|cfg| {
            if let Some(url) = url {
                cfg.metadata_url = url;
            }
            if let Some(s3) = &s3 {
                cfg.objects_url = s3.url("compacted");
                cfg.s3 = s3.options();
            }
            cfg.flush_interval = Duration::from_millis(5);
        })
        .await;
        let config = agent.config();
        let store = shoal_metadata::open(&config.metadata_url)
            .await
            .expect("sequencer");
        let storage =
            Arc::new(ObjectStorage::open(&config.objects_url, &config.s3).expect("object store"));
        let objects_dir = match &s3 {
            Some(s3) => s3.dir("compacted"),
            None => agent.data_dir().join("objects"),
        };
        Some(Env {
            agent,
            store,
            storage,
            objects_dir,
            _postgres: postgres,
            _s3: s3,
        })
    }

    /// A compactor that merges at once, in jobs of any two objects, and deletes unreferenced
    /// objects without waiting.
    fn compactor(&self, tweak: impl FnOnce(&mut CompactorConfig)) -> Compactor {
        let mut config = CompactorConfig {
            merge_min_age: Duration::ZERO,
            merge_fanout: 2,
            merge_target_bytes: 8 << 20,
            merge_row_bytes: 1 << 20,
            gc_grace: Duration::ZERO,
            lease_ttl: Duration::from_secs(1),
            ..CompactorConfig::default()
        };
        tweak(&mut config);
        Compactor::new(self.store.clone(), self.storage.clone(), config)
    }

    async fn topic(&self, name: &str) -> Topic {
        self.store.topic(name).await.unwrap().expect("topic exists")
    }

    /// Index rows per partition, and the objects they refer to.
    async fn index(&self, name: &str) -> (Vec<usize>, usize) {
        let topic = self.topic(name).await;
        let mut rows = Vec::new();
        let mut objects = std::collections::BTreeSet::new();
        for p in 0..topic.partitions {
            let entries = self.store.batches(topic.id, p, 0, u64::MAX).await.unwrap();
            rows.push(entries.len());
            objects.extend(entries.into_iter().map(|e| e.object_id));
        }
        (rows, objects.len())
    }

    /// Export files, sorted (the S3 endpoint stores keys as files too).
    fn exports(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.objects_dir.join("exports"), &mut files);
        files.sort();
        files
    }

    /// Objects in the store (files with object keys, exports not counted).
    fn stored_objects(&self) -> usize {
        std::fs::read_dir(&self.objects_dir)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().is_file())
                    .filter(|e| e.file_name().len() == 26)
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Every compactor test runs on both setups.
macro_rules! on_both_setups {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::Setup::Local).await
                }
            )*
        }
        mod fleet {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::Setup::Fleet).await
                }
            )*
        }
    };
}

on_both_setups!(
    merging_keeps_every_record_and_shrinks_the_index,
    retention_by_time_and_by_size,
    delete_records_advances_the_log_start,
    compacted_topics_keep_the_latest_value_per_key,
    gc_spares_what_readers_use_and_deletes_orphans,
    parquet_export_reads_back_the_records,
    passes_cut_short_leave_everything_consistent,
);

/// Produces `records` in `rounds` separate sends, so they land in many small objects.
async fn produce_in_rounds(bootstrap: &str, topic: &str, records: &[Rec], rounds: usize) {
    let producer = producer(bootstrap, &[("linger.ms", "0")]);
    for chunk in records.chunks(records.len().div_ceil(rounds)) {
        send_all(&producer, topic, chunk).await;
    }
}

/// Everything in the topic, sorted by partition and offset.
async fn read_all(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> Vec<Consumed> {
    let parts: Vec<i32> = (0..partitions).collect();
    let mut records = consume_from_start(bootstrap, topic, &parts, n).await;
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

async fn pass(compactor: &Compactor) -> PassReport {
    let report = compactor.run_once().await.expect("compactor pass");
    assert_eq!(report.failures, 0, "{report:?}");
    report
}

async fn merging_keeps_every_record_and_shrinks_the_index(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(&bootstrap, "merged", 4, &[("retention.ms", "-1")]).await;
    let records = make_records("merge", 2_000, 4);
    produce_in_rounds(&bootstrap, "merged", &records, 40).await;
    let before = read_all(&bootstrap, "merged", 4, records.len()).await;
    assert_same_records("merged", &records, None, &before);
    let (rows_before, objects_before) = env.index("merged").await;
    assert!(objects_before >= 40, "{objects_before} objects");

    let report = pass(&env.compactor(|_| {})).await;
    assert!(report.merges > 0, "{report:?}");
    let (rows_after, objects_after) = env.index("merged").await;
    // 2,000 records of at most ~400 bytes: one 1 MiB row per partition, one object.
    assert_eq!(rows_after, vec![1; 4], "rows before: {rows_before:?}");
    assert_eq!(objects_after, 1);
    assert_eq!(report.objects_deleted as usize, objects_before);
    assert_eq!(env.stored_objects(), 1, "only the merged object is left");

    // The agent still holds rows of the deleted objects: it falls back to the sequencer.
    let after = read_all(&bootstrap, "merged", 4, records.len()).await;
    assert_eq!(
        after, before,
        "the same records, offsets, timestamps and headers"
    );
    // New records after a merge go on at the next offsets.
    let more = make_records("merge-more", 100, 4);
    let deliveries = send_all(&producer(&bootstrap, &[]), "merged", &more).await;
    assert!(
        deliveries.iter().all(|d| (500..525).contains(&d.offset)),
        "offsets go on densely after the merged ones"
    );
    let all = read_all(&bootstrap, "merged", 4, records.len() + more.len()).await;
    assert_eq!(&all[..500], &before[..500]);
}

fn fresh_records(tag: &str, count: usize, partitions: i32) -> Vec<Rec> {
    let now = now_ms();
    make_records(tag, count, partitions)
        .into_iter()
        .map(|r| Rec {
            timestamp: Some(now),
            ..r
        })
        .collect()
}

async fn retention_by_time_and_by_size(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    // By time: records of 2023 are past a day's retention; fresh ones are not.
    create_topic(&bootstrap, "aged", 1, &[("retention.ms", "86400000")]).await;
    let old = make_records("old", 300, 1);
    produce_in_rounds(&bootstrap, "aged", &old, 3).await;
    let fresh = fresh_records("fresh", 50, 1);
    produce_in_rounds(&bootstrap, "aged", &fresh, 1).await;
    // By size: keep about 20 KB of a partition's ~60 KB.
    create_topic(&bootstrap, "sized", 1, &[("retention.bytes", "20000")]).await;
    let sized = fresh_records("sized", 300, 1);
    produce_in_rounds(&bootstrap, "sized", &sized, 30).await;

    let compactor = env.compactor(|c| c.merge_target_bytes = 1);
    let report = pass(&compactor).await;
    assert_eq!(report.partitions_truncated, 2, "{report:?}");

    let consumer: BaseConsumer = consumer_config(&bootstrap, &[]).create().unwrap();
    assert_eq!(watermarks(&consumer, "aged", 0), (300, 350));
    let consumed = consume_from_start(&bootstrap, "aged", &[0], 50).await;
    assert_eq!(consumed.first().map(|r| r.offset), Some(300));
    let values: Vec<_> = consumed.iter().map(|c| c.value.clone()).collect();
    let sent: Vec<_> = fresh.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, sent, "the fresh records stay");

    let topic = env.topic("sized").await;
    let rows = env.store.batches(topic.id, 0, 0, u64::MAX).await.unwrap();
    let kept: u64 = rows.iter().map(|r| r.size).sum();
    assert!(
        kept >= 20_000,
        "kept {kept} bytes, fewer than retention.bytes"
    );
    assert!(
        kept - rows[0].size < 20_000,
        "kept {kept} bytes: the oldest row could have gone"
    );
    let (low, high) = watermarks(&consumer, "sized", 0);
    assert_eq!((low, high), (rows[0].base_offset, 300));
    assert!(low > 0);
    // A fetch below the log start offset is out of range: the consumer resets to it.
    let reset = common::consumer(&bootstrap, &[("auto.offset.reset", "earliest")]);
    assign(&reset, "sized", &[(0, rdkafka::Offset::Offset(0))]);
    let read = consume(&reset, (high - low) as usize, TIMEOUT).await;
    assert_eq!(read.first().map(|r| r.offset), Some(low));
    assert_eq!(read.last().map(|r| r.offset), Some(high - 1));
}

async fn delete_records_advances_the_log_start(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(&bootstrap, "trimmed", 2, &[]).await;
    let records = make_records("trim", 400, 2);
    produce_in_rounds(&bootstrap, "trimmed", &records, 10).await;
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("trimmed", 0, rdkafka::Offset::Offset(150))
        .unwrap();
    offsets
        .add_partition_offset("trimmed", 1, rdkafka::Offset::End)
        .unwrap();
    let admin = admin(&bootstrap);
    let result = admin
        .delete_records(&offsets, &admin_options())
        .await
        .expect("DeleteRecords");
    let low: BTreeMap<i32, i64> = result
        .elements()
        .iter()
        .map(|e| {
            assert!(e.error().is_ok(), "{e:?}");
            (e.partition(), e.offset().to_raw().unwrap_or(-1))
        })
        .collect();
    assert_eq!(low, BTreeMap::from([(0, 150), (1, 200)]));
    let consumer: BaseConsumer = consumer_config(&bootstrap, &[]).create().unwrap();
    assert_eq!(watermarks(&consumer, "trimmed", 0), (150, 200));
    assert_eq!(watermarks(&consumer, "trimmed", 1), (200, 200));
    let read = consume_from_start(&bootstrap, "trimmed", &[0], 50).await;
    assert_eq!(read.first().map(|r| r.offset), Some(150));

    // Past the high watermark: refused, nothing moves.
    let mut beyond = TopicPartitionList::new();
    beyond
        .add_partition_offset("trimmed", 0, rdkafka::Offset::Offset(201))
        .unwrap();
    let refused = admin.delete_records(&beyond, &admin_options()).await;
    let refused_ok = refused
        .map(|r| r.elements().iter().all(|e| e.error().is_ok()))
        .unwrap_or(false);
    assert!(!refused_ok, "an offset past the high watermark is refused");
    assert_eq!(watermarks(&consumer, "trimmed", 0), (150, 200));

    // The rows below go at once; the objects once the collector finds them unreferenced.
    let (rows, _) = env.index("trimmed").await;
    assert_eq!(rows[1], 0);
    let report = pass(&env.compactor(|c| c.merge_target_bytes = 1)).await;
    assert!(report.objects_deleted > 0, "{report:?}");
}

async fn compacted_topics_keep_the_latest_value_per_key(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(
        &bootstrap,
        "changelog",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "3600000"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    )
    .await;
    let now = now_ms();
    // 20 keys, 10 versions each; keys 0-4 end with a tombstone: 0-2 old ones (dropped after
    // delete.retention.ms), 3-4 fresh ones (kept).
    let mut records = Vec::new();
    for version in 0..10 {
        for key in 0..20 {
            records.push(Rec {
                partition: 0,
                key: Some(format!("key-{key}").into_bytes()),
                value: Some(format!("key-{key}-v{version}").into_bytes()),
                headers: vec![("version".into(), Some(version.to_string().into_bytes()))],
                timestamp: Some(now),
            });
        }
    }
    for key in 0..5 {
        records.push(Rec {
            partition: 0,
            key: Some(format!("key-{key}").into_bytes()),
            value: None,
            headers: Vec::new(),
            timestamp: Some(if key < 3 { BASE_TIMESTAMP } else { now }),
        });
    }
    produce_in_rounds(&bootstrap, "changelog", &records, 21).await;
    // The active tail: the newest row stays untouched.
    let tail = vec![Rec {
        partition: 0,
        key: Some(b"key-0".to_vec()),
        value: Some(b"tail".to_vec()),
        headers: Vec::new(),
        timestamp: Some(now),
    }];
    produce_in_rounds(&bootstrap, "changelog", &tail, 1).await;
    let before = read_all(&bootstrap, "changelog", 1, records.len() + 1).await;

    let compactor = env.compactor(|c| c.merge_target_bytes = 1);
    let report = pass(&compactor).await;
    assert_eq!(report.partitions_cleaned, 1, "{report:?}");

    // Expected: per key, the record at its latest offset, except old tombstones, plus the tail.
    let mut latest: BTreeMap<Vec<u8>, &Consumed> = BTreeMap::new();
    for r in &before[..before.len() - 1] {
        latest.insert(r.key.clone().unwrap(), r);
    }
    let mut expected: Vec<Consumed> = latest
        .into_values()
        .filter(|r| {
            r.value.is_some()
                || !matches!(r.timestamp, rdkafka::Timestamp::CreateTime(t) if t == BASE_TIMESTAMP)
        })
        .cloned()
        .collect();
    expected.push(before.last().unwrap().clone());
    expected.sort_by_key(|r| r.offset);
    assert_eq!(expected.len(), 15 + 2 + 1);
    let after = read_all(&bootstrap, "changelog", 1, expected.len()).await;
    assert_eq!(
        after, expected,
        "the latest value per key at its own offset"
    );
    let consumer: BaseConsumer = consumer_config(&bootstrap, &[]).create().unwrap();
    assert_eq!(
        watermarks(&consumer, "changelog", 0),
        (0, records.len() as i64 + 1),
        "offsets never move"
    );
    // Nothing new: the next pass leaves the topic alone.
    let again = pass(&compactor).await;
    assert_eq!(again.partitions_cleaned, 0, "{again:?}");
}

async fn gc_spares_what_readers_use_and_deletes_orphans(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(&bootstrap, "busy", 2, &[("retention.ms", "-1")]).await;
    let records = make_records("busy", 1_000, 2);
    produce_in_rounds(&bootstrap, "busy", &records, 50).await;
    let expected = read_all(&bootstrap, "busy", 2, records.len()).await;

    // Readers replay old data over and over while merges and collections run.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (bootstrap, expected, stopped) =
                (bootstrap.clone(), expected.clone(), stopped.clone());
            tokio::spawn(async move {
                let mut rounds = 0;
                while !*stopped.borrow() {
                    let read = read_all(&bootstrap, "busy", 2, expected.len()).await;
                    assert_eq!(read, expected, "a read during compaction");
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let compactor = env.compactor(|c| {
        c.merge_target_bytes = 64 << 10;
        c.merge_row_bytes = 16 << 10;
    });
    let mut merges = 0;
    for _ in 0..6 {
        merges += pass(&compactor).await.merges;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(merges >= 2, "{merges} merges");
    stop.send_replace(true);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    // Every stored object that the index refers to is still there.
    let topic = env.topic("busy").await;
    for p in 0..2 {
        for row in env.store.batches(topic.id, p, 0, u64::MAX).await.unwrap() {
            env.storage
                .get(&row.object_id)
                .await
                .expect("referenced object");
        }
    }

    // An upload reserved by an agent that is gone and never committed: deleted after the
    // grace period; one of a live agent, or younger than the grace period, stays.
    let orphan = shoal_storage::store::new_object_id();
    env.store
        .reserve_uploads(9_999, std::slice::from_ref(&orphan))
        .await
        .unwrap();
    env.storage
        .put(&orphan, vec!["orphan".into()])
        .await
        .unwrap();
    let patient = env.compactor(|c| c.gc_grace = Duration::from_secs(3600));
    assert_eq!(pass(&patient).await.uploads_deleted, 0);
    assert!(env.storage.get(&orphan).await.is_ok());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pass(&compactor).await.uploads_deleted, 1);
    assert!(
        env.storage.get(&orphan).await.is_err(),
        "the orphan is gone"
    );
    assert_eq!(
        read_all(&bootstrap, "busy", 2, records.len()).await,
        expected
    );
}

async fn parquet_export_reads_back_the_records(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(
        &bootstrap,
        "warehouse",
        2,
        &[("shoal.parquet.export", "true"), ("retention.ms", "-1")],
    )
    .await;
    create_topic(&bootstrap, "private", 1, &[]).await;
    let records = make_records("export", 600, 2);
    produce_in_rounds(&bootstrap, "warehouse", &records, 6).await;
    produce_in_rounds(&bootstrap, "private", &make_records("p", 10, 1), 1).await;

    let compactor = env.compactor(|c| c.export_min_bytes = 0);
    let report = pass(&compactor).await;
    assert_eq!((report.files_exported, report.records_exported), (2, 600));
    let more = make_records("export-more", 100, 2);
    produce_in_rounds(&bootstrap, "warehouse", &more, 1).await;
    assert_eq!(pass(&compactor).await.records_exported, 100);

    let files = env.exports();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&env.objects_dir)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "exports/warehouse/0/00000000000000000000-00000000000000000300.parquet",
            "exports/warehouse/0/00000000000000000300-00000000000000000350.parquet",
            "exports/warehouse/1/00000000000000000000-00000000000000000300.parquet",
            "exports/warehouse/1/00000000000000000300-00000000000000000350.parquet",
        ]
    );
    let mut exported = Vec::new();
    for file in &files {
        let data = bytes::Bytes::from(std::fs::read(file).unwrap());
        exported.extend(shoal_storage::parquet::read_export(data).expect("a Parquet file"));
    }
    exported.sort_by_key(|r| (r.partition, r.offset));
    let all = read_all(&bootstrap, "warehouse", 2, records.len() + more.len()).await;
    assert_eq!(exported.len(), all.len());
    for (e, c) in exported.iter().zip(&all) {
        assert_eq!((e.partition, e.offset), (c.partition, c.offset));
        assert_eq!(rdkafka::Timestamp::CreateTime(e.timestamp), c.timestamp);
        assert_eq!(e.key.as_deref(), c.key.as_deref());
        assert_eq!(e.value.as_deref(), c.value.as_deref());
        let headers: Vec<(String, Option<Vec<u8>>)> = e
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
            .collect();
        assert_eq!(headers, c.headers);
    }
}

async fn passes_cut_short_leave_everything_consistent(setup: Setup) {
    let Some(env) = Env::start(setup).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(
        &bootstrap,
        "interrupted",
        3,
        &[("retention.ms", "-1"), ("shoal.parquet.export", "true")],
    )
    .await;
    let records = make_records("cut", 1_500, 3);
    produce_in_rounds(&bootstrap, "interrupted", &records, 30).await;
    let expected = read_all(&bootstrap, "interrupted", 3, records.len()).await;
    // Passes dropped after 0, 5, 10, ... ms: a compactor killed at that point. Each leaves
    // whatever it did (uploads, swaps, deletions, leases) as a crash would.
    for cut in (0..20).map(|i| Duration::from_millis(i * 5)) {
        let compactor = env.compactor(|c| {
            c.export_min_bytes = 0;
            c.merge_target_bytes = 64 << 10;
            c.merge_row_bytes = 16 << 10;
            c.gc_grace = Duration::from_millis(50);
            c.lease_ttl = Duration::from_millis(100);
        });
        let _ = tokio::time::timeout(cut, compactor.run_once()).await;
        let read = read_all(&bootstrap, "interrupted", 3, records.len()).await;
        assert_eq!(read, expected, "after a pass cut at {cut:?}");
    }
    // The leases of the cut passes lapse; the next passes finish the work.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let compactor = env.compactor(|c| {
        c.export_min_bytes = 0;
        c.merge_target_bytes = 64 << 10;
        c.merge_row_bytes = 16 << 10;
    });
    for _ in 0..4 {
        pass(&compactor).await;
    }
    assert_eq!(
        read_all(&bootstrap, "interrupted", 3, records.len()).await,
        expected
    );
    // Nothing is stored that the index does not refer to, once uploads are collected.
    let (_, referenced) = env.index("interrupted").await;
    assert_eq!(env.stored_objects(), referenced);
    // A range exported again after a cut lands in a file of the same name: every record is
    // in exactly one file.
    let mut exported = Vec::new();
    for file in env.exports() {
        let data = bytes::Bytes::from(std::fs::read(file).unwrap());
        let records = shoal_storage::parquet::read_export(data).unwrap();
        exported.extend(records.into_iter().map(|r| (r.partition, r.offset)));
    }
    exported.sort();
    let offsets: Vec<_> = expected.iter().map(|c| (c.partition, c.offset)).collect();
    assert_eq!(exported, offsets);
}

/// `shoal compactor --once` runs one pass against an agent's data and exits; bad settings
/// exit with code 2 and a line naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compactor_command_runs_one_pass() {
    let Some(env) = Env::start(Setup::Local).await else {
        return;
    };
    let bootstrap = env.agent.bootstrap();
    create_topic(&bootstrap, "cli", 2, &[("retention.ms", "-1")]).await;
    let records = make_records("cli", 400, 2);
    produce_in_rounds(&bootstrap, "cli", &records, 20).await;
    let before = read_all(&bootstrap, "cli", 2, records.len()).await;
    let (_, objects_before) = env.index("cli").await;
    let config = env.agent.config().clone();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(shoal_tests::shoal_binary())
                .arg("compactor")
                .args(args)
                .output()
                .expect("shoal runs")
        })
    };
    let storage_flags = vec![
        "--metadata".to_string(),
        config.metadata_url.clone(),
        "--objects".to_string(),
        config.objects_url.clone(),
    ];
    let mut flags = storage_flags.clone();
    flags.extend(["--once", "--merge-min-age", "0s"].map(String::from));
    let output = run(flags).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, objects_after) = env.index("cli").await;
    assert!(
        objects_after < objects_before,
        "{objects_before} -> {objects_after}"
    );
    assert_eq!(read_all(&bootstrap, "cli", 2, records.len()).await, before);

    let bad = run(vec![
        "--once".into(),
        "--objects".into(),
        "ftp://nowhere".into(),
    ])
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--objects"));
}
