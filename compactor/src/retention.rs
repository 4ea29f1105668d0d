//! Retention: `retention.ms` and `retention.bytes`, applied as Kafka applies them to
//! segments, with index rows in the place of segments: whole rows from the start of the log
//! go once they are too old or once the rest alone still fills the size limit.

use shoal_metadata::Topic;

use crate::{Compactor, CompactorError, PassReport, now_ms, topic_setting};

/// Advances the log start offset of each partition of `topic` past what retention removes.
pub async fn apply(
    compactor: &Compactor,
    topic: &Topic,
    report: &mut PassReport,
) -> Result<(), CompactorError> {
    if !cleanup_policy(topic).contains(&"delete") {
        return Ok(());
    }
    let config = compactor.config();
    // Unset on the topic: the broker-wide defaults of this compactor.
    let retention_ms = topic
        .configs
        .get("retention.ms")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(config.default_retention_ms);
    let retention_bytes = topic
        .configs
        .get("retention.bytes")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(config.default_retention_bytes);
    if retention_ms < 0 && retention_bytes < 0 {
        return Ok(());
    }
    let store = &compactor.store;
    for partition in 0..topic.partitions {
        let offsets = store.partition_offsets(topic.id, partition).await?;
        let mut start = offsets.log_start_offset;
        if retention_ms >= 0 {
            let cutoff = now_ms().saturating_sub(retention_ms);
            // The first row holding a record newer than the cutoff stays, with all after it.
            start = match store
                .batch_for_timestamp(topic.id, partition, cutoff)
                .await?
            {
                Some(row) => start.max(row.base_offset),
                None => offsets.high_watermark,
            };
        }
        if retention_bytes >= 0 {
            let rows = store.batches(topic.id, partition, start, u64::MAX).await?;
            let mut size: i64 = rows.iter().map(|r| r.size as i64).sum();
            for row in &rows {
                if size - (row.size as i64) < retention_bytes {
                    break;
                }
                size -= row.size as i64;
                start = start.max(row.last_offset + 1);
            }
        }
        if start > offsets.log_start_offset {
            let now = store.advance_log_start(topic.id, partition, start).await?;
            tracing::debug!(topic = %topic.name, partition, log_start_offset = now, "retention");
            report.partitions_truncated += 1;
        }
    }
    Ok(())
}

/// The topic's `cleanup.policy` items (`delete`, `compact`).
pub(crate) fn cleanup_policy(topic: &Topic) -> Vec<&str> {
    topic_setting(topic, "cleanup.policy")
        .unwrap_or("delete")
        .split(',')
        .map(str::trim)
        .collect()
}
