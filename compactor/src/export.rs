//! Parquet export: topics with `shoal.parquet.export=true` have each partition's records
//! written as Parquet files (partition, offset, timestamp, key, value, headers), for
//! warehouses and backfills (DuckDB, Spark, Trino read them).
//!
//! Files are named `<prefix>/<topic>/<partition>/<first offset>-<end offset>.parquet` (offsets
//! zero-padded to 20 digits, the end exclusive) under the object storage's prefix, so a
//! listing sorts by offset. A partition's progress is recorded after its file is stored: a
//! compactor that dies in between writes the same file again under the same name.

use std::time::Duration;

use shoal_metadata::Topic;
use shoal_storage::parquet::ParquetExport;

use crate::{Compactor, CompactorError, PassReport, now_ms, source, topic_setting};

/// Progress job name: the first offset not yet exported.
const JOB: &str = "export";
/// Largest input read into one file.
const MAX_FILE_INPUT_BYTES: u64 = 512 << 20;

/// The key of the export file of `topic`'s `partition` holding offsets `from..to`.
pub fn file_key(prefix: &str, topic: &str, partition: i32, from: i64, to: i64) -> String {
    format!("{prefix}/{topic}/{partition}/{from:020}-{to:020}.parquet")
}

/// Exports what is pending in each partition of `topic`, if it opted in.
pub async fn export_topic(
    compactor: &Compactor,
    topic: &Topic,
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    if topic_setting(topic, "shoal.parquet.export") != Some("true") {
        return Ok(());
    }
    for partition in 0..topic.partitions {
        export_partition(compactor, topic, partition, report).await?;
    }
    Ok(())
}

async fn export_partition(
    compactor: &Compactor,
    topic: &Topic,
    partition: i32,
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    let (store, config) = (&compactor.store, compactor.config());
    let offsets = store.partition_offsets(topic.id, partition).await?;
    let from = store
        .partition_progress(JOB, topic.id, partition)
        .await?
        .unwrap_or(0)
        .max(offsets.log_start_offset);
    if from >= offsets.high_watermark {
        return Ok(());
    }
    let rows = store
        .batches(topic.id, partition, from, MAX_FILE_INPUT_BYTES)
        .await?;
    let pending: u64 = rows.iter().map(|r| r.size).sum();
    let waited = rows.first().is_some_and(|r| {
        r.max_timestamp <= now_ms().saturating_sub(duration_ms(config.export_max_wait))
    });
    if rows.is_empty() || (pending < config.export_min_bytes && !waited) {
        return Ok(());
    }
    let to = rows.last().map_or(from, |r| r.last_offset + 1);
    let mut file = ParquetExport::new(partition)?;
    for row in &rows {
        let data = source::read_row(&compactor.storage, row).await?;
        file.add_chunk(&data, from, to)?;
    }
    let records = file.records();
    let key = file_key(&config.export_prefix, &topic.name, partition, from, to);
    compactor.storage.put_file(&key, file.finish()?).await?;
    store
        .set_partition_progress(JOB, topic.id, partition, to)
        .await?;
    tracing::debug!(topic = %topic.name, partition, from, to, records, key, "exported");
    report.files_exported += 1;
    report.records_exported += records;
    Ok(())
}

fn duration_ms(d: Duration) -> i64 {
    d.as_millis().try_into().unwrap_or(i64::MAX)
}
