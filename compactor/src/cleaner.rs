//! Log cleaning of `cleanup.policy=compact` topics: the latest record of every key stays,
//! older ones go, and tombstones go once `delete.retention.ms` has passed.
//!
//! Offsets never move: kept records keep theirs, and removed ones simply no longer exist, as
//! in a cleaned Kafka log. The newest index row of a partition (its active tail), and rows
//! younger than `min.compaction.lag.ms`, are never touched, so a changelog consumer reading
//! the tail sees every update. A partition is cleaned again once its dirty part (written
//! since the last cleaning) is at least `min.cleanable.dirty.ratio` of the cleanable log.

use bytes::{Bytes, BytesMut};
use shoal_metadata::{BatchIndexEntry, IndexSwap, PartitionBatch, Topic};
use shoal_storage::ObjectBuilder;
use shoal_storage::compact::{CompactOptions, KeyIndex, compact_chunk};
use shoal_storage::store::new_object_id;

use crate::retention::cleanup_policy;
use crate::{Compactor, CompactorError, PassReport, merge, now_ms, source, topic_setting};

/// Progress job name: the first offset not yet cleaned.
const JOB: &str = "clean";

/// Cleans every partition of `topic` that needs it.
pub async fn clean_topic(
    compactor: &Compactor,
    topic: &Topic,
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    if !cleanup_policy(topic).contains(&"compact") {
        return Ok(());
    }
    let setting = |name: &str, default: i64| {
        topic_setting(topic, name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(default)
    };
    let now = now_ms();
    let options = CompactOptions {
        tombstone_cutoff_ms: now.saturating_sub(setting("delete.retention.ms", 86_400_000)),
    };
    let lag_cutoff = now.saturating_sub(setting("min.compaction.lag.ms", 0));
    let ratio = topic_setting(topic, "min.cleanable.dirty.ratio")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.5);
    for partition in 0..topic.partitions {
        clean_partition(
            compactor, topic, partition, &options, lag_cutoff, ratio, report,
        )
        .await?;
    }
    Ok(())
}

async fn clean_partition(
    compactor: &Compactor,
    topic: &Topic,
    partition: i32,
    options: &CompactOptions,
    lag_cutoff: i64,
    ratio: f64,
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    let store = &compactor.store;
    let offsets = store.partition_offsets(topic.id, partition).await?;
    let mut rows = store
        .batches(topic.id, partition, offsets.log_start_offset, u64::MAX)
        .await?;
    // The active tail stays as it is; so does everything from the first row too young.
    rows.pop();
    if let Some(young) = rows.iter().position(|r| r.max_timestamp > lag_cutoff) {
        rows.truncate(young);
    }
    let Some(end) = rows.last().map(|r| r.last_offset + 1) else {
        return Ok(());
    };
    let clean_to = store
        .partition_progress(JOB, topic.id, partition)
        .await?
        .unwrap_or(0);
    let total: u64 = rows.iter().map(|r| r.size).sum();
    let dirty: u64 = rows
        .iter()
        .filter(|r| r.last_offset >= clean_to)
        .map(|r| r.size)
        .sum();
    if dirty == 0 || (dirty as f64) < ratio * total as f64 {
        return Ok(());
    }

    // Pass one: the latest offset of every key in the cleanable log.
    let mut index = KeyIndex::new();
    for row in &rows {
        index.add_chunk(&source::read_row(&compactor.storage, row).await?)?;
    }
    // Pass two: rewrite groups of rows up to a row's size, each group one new row.
    let row_bytes = compactor.config().merge_row_bytes;
    let object_id = new_object_id();
    let mut builder = ObjectBuilder::new();
    let mut kept: Vec<(i64, i64, i64)> = Vec::new();
    let (mut removed, mut group, mut group_size) = (0u64, Vec::new(), 0u64);
    for (i, row) in rows.iter().enumerate() {
        group.push(row);
        group_size += row.size;
        // Groups hold contiguous rows only (an earlier cleaning may have left gaps between
        // rows), up to a row's size.
        let joins_next = rows.get(i + 1).is_some_and(|next| {
            next.base_offset == row.last_offset + 1 && group_size + next.size <= row_bytes
        });
        if joins_next {
            continue;
        }
        let mut data = BytesMut::with_capacity(group_size as usize);
        for member in group.drain(..) {
            data.extend_from_slice(&source::read_row(&compactor.storage, member).await?);
        }
        group_size = 0;
        let Some(out) = compact_chunk(&data, &index, options)? else {
            continue;
        };
        removed += out.records_dropped;
        builder.append_run(
            topic.id,
            partition,
            out.base_offset,
            out.data,
            out.last_offset - out.base_offset + 1,
            out.max_timestamp,
        );
        kept.push((out.base_offset, out.last_offset, out.max_timestamp));
    }
    if removed == 0 {
        store
            .set_partition_progress(JOB, topic.id, partition, end)
            .await?;
        return Ok(());
    }
    let built = builder.finish();
    let new_rows = kept
        .iter()
        .zip(&built.chunks)
        .map(
            |(&(base_offset, last_offset, max_timestamp), chunk)| PartitionBatch {
                topic: topic.id,
                partition,
                entry: BatchIndexEntry {
                    base_offset,
                    last_offset,
                    max_timestamp,
                    object_id: object_id.clone(),
                    position: chunk.position,
                    size: chunk.size,
                },
            },
        )
        .collect();
    let swap = IndexSwap {
        object_id,
        size: built.size,
        level: 1,
        replaced: rows
            .into_iter()
            .map(|entry| PartitionBatch {
                topic: topic.id,
                partition,
                entry,
            })
            .collect(),
        rows: new_rows,
    };
    let parts: Vec<Bytes> = built.parts;
    if merge::apply(compactor, swap, parts).await? {
        store
            .set_partition_progress(JOB, topic.id, partition, end)
            .await?;
        report.partitions_cleaned += 1;
        report.records_removed += removed;
        tracing::debug!(topic = %topic.name, partition, removed, "cleaned");
    }
    Ok(())
}
