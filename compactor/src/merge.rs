//! Merging: small objects become large ones, sorted by partition and offset, in levels like
//! an LSM tree.
//!
//! Agents' flushes are level 0. Objects of one level, oldest first, are merged once
//! [`CompactorConfig::merge_fanout`] of them wait or they add up to the target size; the
//! result is one level up. An object of at least half the target is done. Each partition's
//! contiguous rows in the inputs become one row of the output (split at
//! [`CompactorConfig::merge_row_bytes`]), so index rows per partition fall from one per flush
//! to about one per row-size of data kept, and a catch-up read costs one GET per row.
//!
//! [`CompactorConfig::merge_fanout`]: crate::CompactorConfig::merge_fanout
//! [`CompactorConfig::merge_row_bytes`]: crate::CompactorConfig::merge_row_bytes

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use shoal_metadata::{BatchIndexEntry, IndexSwap, PartitionBatch, StoredObject};
use shoal_storage::ObjectBuilder;
use shoal_storage::store::new_object_id;

use crate::{COMPACTOR_AGENT_ID, Compactor, CompactorError, PassReport, source};

/// Most objects one merge reads.
const MAX_INPUTS: usize = 1000;
/// Most candidates looked at per pass.
const MAX_CANDIDATES: usize = 20_000;

/// Finds merge jobs and runs each under its own lease.
pub async fn merge_pass(
    compactor: &Compactor,
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    let config = compactor.config();
    let candidates = compactor
        .store
        .merge_candidates(
            config.merge_target_bytes / 2,
            config.merge_min_age,
            MAX_CANDIDATES,
        )
        .await?;
    let waiting: u64 = candidates.iter().map(|object| object.size).sum();
    metrics::gauge!(crate::metrics::BACKLOG_OBJECTS).set(candidates.len() as f64);
    metrics::gauge!(crate::metrics::BACKLOG_BYTES).set(waiting as f64);
    for job in plan(candidates, config.merge_target_bytes, config.merge_fanout) {
        let name = format!("merge:{}", job[0].id);
        compactor
            .with_lease(&name, report, async |r| merge(compactor, &job, r).await)
            .await;
    }
    Ok(())
}

/// Splits candidates (oldest first) into merge jobs: per level, consecutive objects up to
/// the target size; a job runs once it reaches the target or has `fanout` objects.
pub fn plan(candidates: Vec<StoredObject>, target: u64, fanout: usize) -> Vec<Vec<StoredObject>> {
    let mut levels: BTreeMap<i32, Vec<StoredObject>> = BTreeMap::new();
    for object in candidates {
        levels.entry(object.level).or_default().push(object);
    }
    let mut jobs = Vec::new();
    for objects in levels.into_values() {
        let mut job: Vec<StoredObject> = Vec::new();
        let mut size = 0;
        for object in objects {
            size += object.size;
            job.push(object);
            if size >= target || job.len() >= MAX_INPUTS {
                jobs.push(std::mem::take(&mut job));
                size = 0;
            }
        }
        if job.len() >= fanout.max(2) {
            jobs.push(job);
        }
    }
    jobs
}

/// One merge: read the inputs, lay their rows out by partition and offset, upload, swap.
async fn merge(
    compactor: &Compactor,
    inputs: &[StoredObject],
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    let (store, storage) = (&compactor.store, &compactor.storage);
    let ids: Vec<String> = inputs.iter().map(|o| o.id.clone()).collect();
    let rows = store.object_batches(&ids).await?;
    if rows.is_empty() {
        // Nothing refers to them any more: the garbage collector's work, not ours.
        return Ok(());
    }
    let mut objects: HashMap<&str, Bytes> = HashMap::new();
    for row in &rows {
        if !objects.contains_key(row.entry.object_id.as_str()) {
            objects.insert(
                &row.entry.object_id,
                storage.get(&row.entry.object_id).await?,
            );
        }
    }
    let level = inputs.iter().map(|o| o.level).max().unwrap_or(0) + 1;
    let object_id = new_object_id();
    let mut builder = ObjectBuilder::new();
    // (topic, partition, run base) -> (last offset, max timestamp), in the builder's order.
    let mut runs: BTreeMap<(uuid::Uuid, i32, i64), (i64, i64)> = BTreeMap::new();
    let mut current: Option<((uuid::Uuid, i32, i64), u64)> = None;
    for row in &rows {
        let entry = &row.entry;
        let object = &objects[entry.object_id.as_str()];
        let (start, end) = (
            entry.position as usize,
            (entry.position + entry.size) as usize,
        );
        let data = object
            .get(start..end)
            .map(|_| object.slice(start..end))
            .ok_or_else(|| CompactorError::OffsetMismatch {
                object_id: entry.object_id.clone(),
                base_offset: entry.base_offset,
                last_offset: entry.last_offset,
                held: 0,
            })?;
        source::check_span(entry, &data)?;
        let joins = current.is_some_and(|((t, p, base), size)| {
            (t, p) == (row.topic, row.partition)
                && runs[&(t, p, base)].0 + 1 == entry.base_offset
                && size + entry.size <= compactor.config().merge_row_bytes
        });
        if !joins {
            current = Some(((row.topic, row.partition, entry.base_offset), 0));
        }
        let Some((key, size)) = current.as_mut() else {
            continue;
        };
        *size += entry.size;
        let run = runs
            .entry(*key)
            .or_insert((entry.last_offset, entry.max_timestamp));
        run.0 = entry.last_offset;
        run.1 = run.1.max(entry.max_timestamp);
        builder.append_run(
            row.topic,
            row.partition,
            key.2,
            data,
            entry.last_offset - entry.base_offset + 1,
            entry.max_timestamp,
        );
    }
    let built = builder.finish();
    let new_rows: Vec<PartitionBatch> = runs
        .iter()
        .zip(&built.chunks)
        .map(
            |(((topic, partition, base), (last, max_ts)), chunk)| PartitionBatch {
                topic: *topic,
                partition: *partition,
                entry: BatchIndexEntry {
                    base_offset: *base,
                    last_offset: *last,
                    max_timestamp: *max_ts,
                    object_id: object_id.clone(),
                    position: chunk.position,
                    size: chunk.size,
                },
            },
        )
        .collect();
    let swap = IndexSwap {
        object_id: object_id.clone(),
        size: built.size,
        level,
        replaced: rows,
        rows: new_rows,
    };
    let size = built.size;
    if !apply(compactor, swap, built.parts).await? {
        tracing::debug!(object_id, "merge superseded: its rows moved meanwhile");
        return Ok(());
    }
    tracing::debug!(object_id, inputs = inputs.len(), size, level, "merged");
    report.merges += 1;
    report.objects_merged += inputs.len() as u64;
    report.bytes_merged += size;
    Ok(())
}

/// Uploads a rewritten object under a reserved key and swaps it in; `false` when the swap
/// was refused, and then the object is deleted again. A crash in between leaves a reserved,
/// uncommitted upload for the garbage collector.
pub(crate) async fn apply(
    compactor: &Compactor,
    swap: IndexSwap,
    parts: Vec<Bytes>,
) -> Result<bool, CompactorError> {
    let (store, storage) = (&compactor.store, &compactor.storage);
    let ids = [swap.object_id.clone()];
    store.reserve_uploads(COMPACTOR_AGENT_ID, &ids).await?;
    storage.put(&swap.object_id, parts).await?;
    if store.swap_batches(&swap).await? {
        return Ok(true);
    }
    storage.delete(&swap.object_id).await?;
    store.release_uploads(&ids).await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: &str, size: u64, level: i32) -> StoredObject {
        StoredObject {
            id: id.to_string(),
            size,
            level,
            committed_at_ms: 0,
        }
    }

    fn ids(jobs: &[Vec<StoredObject>]) -> Vec<Vec<&str>> {
        jobs.iter()
            .map(|j| j.iter().map(|o| o.id.as_str()).collect())
            .collect()
    }

    #[test]
    fn jobs_per_level_up_to_the_target_or_the_fanout() {
        let candidates = vec![
            object("a", 40, 0),
            object("b", 40, 0),
            object("c", 40, 0),
            object("x", 10, 1),
            object("d", 10, 0),
            object("y", 10, 1),
        ];
        // Target 100: a+b+c reach it; d alone waits; level 1 has two, below a fanout of 3.
        assert_eq!(
            ids(&plan(candidates.clone(), 100, 3)),
            [vec!["a", "b", "c"]]
        );
        // Fanout 2: level 0's leftover d waits alone, level 1's x+y go.
        assert_eq!(
            ids(&plan(candidates, 100, 2)),
            [vec!["a", "b", "c"], vec!["x", "y"]]
        );
        assert!(
            plan(vec![object("z", 1, 0)], 100, 1).is_empty(),
            "one object is no merge"
        );
    }
}
