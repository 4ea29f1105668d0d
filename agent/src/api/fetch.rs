//! Fetch: reads partitions from the batch index and objects, honours the byte limits, and
//! parks until new data is committed or `max_wait_ms` passes.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use tokio::time::Instant;

use shoal_storage::batch::batches;

use super::{Context, RequestContext, metadata_error_code};
use crate::metrics::{self as m, Occupancy};
use crate::reader::ReadError;

/// Longest a fetch may park, whatever the client asks, so a stopping agent is not held up.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);
/// How often a parked fetch looks again without a local commit, so data committed by other
/// writers of the same sequencer is seen.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub async fn handle(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: FetchRequest,
) -> FetchResponse {
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as u64;
    let max_bytes = if request.max_bytes <= 0 {
        u64::MAX
    } else {
        request.max_bytes as u64
    };
    if ctx.fleet.redirect() {
        // Draining: consumers refresh their metadata, which no longer lists this agent, and
        // fetch from another.
        return FetchResponse::default()
            .with_session_id(0)
            .with_responses(moved(&request.topics));
    }
    let mut commits = ctx.commits.clone();
    let mut shutdown = ctx.shutdown.clone();
    let mut parked = None;
    loop {
        commits.mark_unchanged();
        let (responses, read) =
            read_all(ctx, request_ctx.version, &request.topics, max_bytes).await;
        let now = Instant::now();
        // Errors answer at once, as data does: the client has something to act on.
        if read.bytes >= min_bytes || read.errors || now >= deadline || *shutdown.borrow() {
            for (topic, bytes, records) in read.sent {
                metrics::counter!(m::FETCH_BYTES, "topic" => topic.clone()).increment(bytes);
                metrics::counter!(m::FETCH_RECORDS, "topic" => topic).increment(records);
            }
            return FetchResponse::default()
                .with_session_id(0)
                .with_responses(responses);
        }
        parked.get_or_insert_with(|| Occupancy::enter(metrics::gauge!(m::FETCH_WAITING)));
        let poll = (now + POLL_INTERVAL).min(deadline);
        tokio::select! {
            _ = commits.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(poll) => {}
        }
    }
}

/// Every requested partition answered with NOT_LEADER_OR_FOLLOWER.
fn moved(topics: &[FetchTopic]) -> Vec<FetchableTopicResponse> {
    topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(ResponseError::NotLeaderOrFollower.code())
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_preferred_read_replica(BrokerId(-1))
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect()
}

/// What one pass over the requested partitions found.
struct ReadSummary {
    bytes: u64,
    errors: bool,
    /// Bytes and records read, by topic name.
    sent: Vec<(String, u64, u64)>,
}

async fn read_all(
    ctx: &Context,
    version: i16,
    topics: &[FetchTopic],
    max_bytes: u64,
) -> (Vec<FetchableTopicResponse>, ReadSummary) {
    let by_id = version >= 13;
    let mut total = 0u64;
    let mut errors = false;
    let mut sent = Vec::new();
    let mut responses = Vec::with_capacity(topics.len());
    for topic in topics {
        let entry = if by_id {
            ctx.catalog.by_id(topic.topic_id).await
        } else {
            ctx.catalog.by_name(topic.topic.as_str()).await
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        let (mut topic_bytes, mut topic_records) = (0u64, 0u64);
        for p in &topic.partitions {
            let response = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let entry = match &entry {
                Ok(Some(entry)) if (0..entry.topic.partitions).contains(&p.partition) => entry,
                Ok(Some(_)) => {
                    partitions.push(
                        response.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                    );
                    continue;
                }
                Ok(None) => {
                    let code = if by_id {
                        ResponseError::UnknownTopicId.code()
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    };
                    partitions.push(response.with_error_code(code));
                    continue;
                }
                Err(e) => {
                    partitions.push(response.with_error_code(metadata_error_code(e)));
                    continue;
                }
            };
            let budget = (p.partition_max_bytes.max(0) as u64).min(max_bytes.saturating_sub(total));
            match read_partition(
                ctx,
                entry.topic.id,
                p.partition,
                p.fetch_offset,
                budget,
                total == 0,
            )
            .await
            {
                Ok((offsets, records)) => {
                    total += records.len() as u64;
                    topic_bytes += records.len() as u64;
                    topic_records += record_count(&records);
                    partitions.push(
                        response
                            .with_high_watermark(offsets.high_watermark)
                            .with_last_stable_offset(offsets.high_watermark)
                            .with_log_start_offset(offsets.log_start_offset)
                            .with_aborted_transactions(Some(Vec::new()))
                            .with_records(Some(records)),
                    );
                }
                Err(code) => partitions.push(response.with_error_code(code)),
            }
        }
        errors |= partitions.iter().any(|p| p.error_code != 0);
        if topic_bytes > 0
            && let Ok(Some(entry)) = &entry
        {
            sent.push((entry.topic.name.clone(), topic_bytes, topic_records));
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    (
        responses,
        ReadSummary {
            bytes: total,
            errors,
            sent,
        },
    )
}

/// Records in the batches read (their headers' counts).
fn record_count(records: &[u8]) -> u64 {
    batches(records)
        .map_while(Result::ok)
        .map(|(header, _)| header.records_count.max(0) as u64)
        .sum()
}

async fn read_partition(
    ctx: &Context,
    topic: shoal_metadata::TopicId,
    partition: i32,
    fetch_offset: i64,
    budget: u64,
    first: bool,
) -> Result<(shoal_metadata::PartitionOffsets, Bytes), i16> {
    let offsets = ctx
        .reader
        .offsets(topic, partition, fetch_offset)
        .await
        .map_err(|e| read_error_code(&e))?;
    if fetch_offset < offsets.log_start_offset || fetch_offset > offsets.high_watermark {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    if fetch_offset == offsets.high_watermark || (budget == 0 && !first) {
        return Ok((offsets, Bytes::new()));
    }
    let records = ctx
        .reader
        .read(topic, partition, fetch_offset, budget, first)
        .await
        .map_err(|e| read_error_code(&e))?;
    Ok((offsets, records))
}

fn read_error_code(e: &ReadError) -> i16 {
    tracing::warn!(error = %e, "fetch: partition read failed");
    match e {
        ReadError::Metadata(e) => metadata_error_code(e),
        ReadError::Storage(_) | ReadError::Corrupt { .. } => {
            ResponseError::KafkaStorageError.code()
        }
    }
}
