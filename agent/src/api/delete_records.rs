//! DeleteRecords: advances partitions' log start offsets on request (`kafka-delete-records.sh`,
//! AdminClient `deleteRecords`). The records below go at once for readers; the compactor's
//! garbage collector deletes the objects nobody refers to any more.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{Context, metadata_error_code};

/// The offset that means "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(ctx: &Context, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let entry = ctx.catalog.by_name(topic.name.as_str()).await;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result = match &entry {
                Ok(Some(entry)) if (0..entry.topic.partitions).contains(&p.partition_index) => {
                    delete(ctx, entry.topic.id, p.partition_index, p.offset).await
                }
                Ok(_) => Err(ResponseError::UnknownTopicOrPartition.code()),
                Err(e) => Err(metadata_error_code(e)),
            };
            let response =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match result {
                Ok(low_watermark) => response.with_low_watermark(low_watermark),
                Err(code) => response.with_low_watermark(-1).with_error_code(code),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Deletes a partition's records below `offset`; the new low watermark.
async fn delete(
    ctx: &Context,
    topic: shoal_metadata::TopicId,
    partition: i32,
    offset: i64,
) -> Result<i64, i16> {
    let store = ctx.catalog.store();
    let offsets = store
        .partition_offsets(topic, partition)
        .await
        .map_err(|e| metadata_error_code(&e))?;
    let target = match offset {
        HIGH_WATERMARK => offsets.high_watermark,
        o if (0..=offsets.high_watermark).contains(&o) => o,
        _ => return Err(ResponseError::OffsetOutOfRange.code()),
    };
    let low_watermark = store
        .advance_log_start(topic, partition, target)
        .await
        .map_err(|e| metadata_error_code(&e))?;
    ctx.reader.forget(topic, partition);
    Ok(low_watermark)
}
