//! ListOffsets: earliest, latest, max timestamp, and the first offset at or after a time.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{Context, metadata_error_code};
use crate::reader::ReadError;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(ctx: &Context, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let entry = ctx.catalog.by_name(topic.name.as_str()).await;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let response = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let result = match &entry {
                Ok(Some(entry)) if (0..entry.topic.partitions).contains(&p.partition_index) => {
                    lookup(ctx, entry.topic.id, p.partition_index, p.timestamp).await
                }
                Ok(_) => Err(ResponseError::UnknownTopicOrPartition.code()),
                Err(e) => Err(metadata_error_code(e)),
            };
            partitions.push(match result {
                Ok((offset, timestamp)) => response.with_offset(offset).with_timestamp(timestamp),
                Err(code) => response.with_error_code(code),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one partition; offset -1 when no record matches a timestamp.
async fn lookup(
    ctx: &Context,
    topic: shoal_metadata::TopicId,
    partition: i32,
    timestamp: i64,
) -> Result<(i64, i64), i16> {
    let offsets = ctx
        .reader
        .offsets(topic, partition, 0)
        .await
        .map_err(|e| code(&e))?;
    let found = match timestamp {
        LATEST | LATEST_TIERED => return Ok((offsets.high_watermark, -1)),
        EARLIEST | EARLIEST_LOCAL => return Ok((offsets.log_start_offset, -1)),
        MAX_TIMESTAMP => ctx
            .reader
            .max_timestamp_offset(topic, partition, offsets.log_start_offset)
            .await
            .map_err(|e| code(&e))?,
        ts if ts >= 0 => ctx
            .reader
            .offset_for_timestamp(topic, partition, ts, offsets.log_start_offset)
            .await
            .map_err(|e| code(&e))?,
        _ => return Err(ResponseError::InvalidRequest.code()),
    };
    Ok(found.unwrap_or((-1, -1)))
}

fn code(e: &ReadError) -> i16 {
    tracing::warn!(error = %e, "list offsets: lookup failed");
    match e {
        ReadError::Metadata(e) => metadata_error_code(e),
        _ => ResponseError::KafkaStorageError.code(),
    }
}
