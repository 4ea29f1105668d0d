//! Produce: validates each partition's batches, hands them to the batcher, and answers once
//! the object holding them is durable and committed.

use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use shoal_storage::batch::{self, BatchError};

use super::{Context, RequestContext, metadata_error_code};
use tokio::sync::oneshot;

use crate::batcher::{Append, AppendError};
use crate::catalog::TopicEntry;
use crate::metrics as m;

/// Answers a produce request; `None` for acks=0, which gets no response.
///
/// `order` makes this request hand its batches to the batcher only after the connection's
/// previous produce request did, so records sent in order on one connection keep that order
/// in each partition, however many requests are in flight.
pub async fn handle(
    ctx: &Context,
    request_ctx: &RequestContext,
    request: ProduceRequest,
    order: ProduceOrder,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let by_id = request_ctx.version >= 13;
    // A draining agent sends producers elsewhere: NOT_LEADER_OR_FOLLOWER makes them refresh
    // their metadata, which no longer lists this agent, and retry there. acks=0 producers
    // read no answer, so their records are taken and flushed before the agent stops.
    let moved = acks != 0 && ctx.fleet.redirect();
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let found = if by_id {
            ctx.catalog.by_id(topic_data.topic_id).await
        } else {
            ctx.catalog.by_name(topic_data.name.as_str()).await
        };
        let entry = match found {
            _ if !(-1..=1).contains(&acks) => Err(ResponseError::InvalidRequiredAcks.code()),
            _ if moved => Err(ResponseError::NotLeaderOrFollower.code()),
            Ok(Some(entry)) => Ok(entry),
            Ok(None) if by_id => Err(ResponseError::UnknownTopicId.code()),
            Ok(None) => Err(ResponseError::UnknownTopicOrPartition.code()),
            Err(e) => Err(metadata_error_code(&e)),
        };
        let partitions: Vec<_> = topic_data
            .partition_data
            .into_iter()
            .map(|p| {
                let prepared = entry
                    .as_ref()
                    .map_err(|code| *code)
                    .and_then(|entry| prepare(entry, p.index, p.records));
                (p.index, prepared)
            })
            .collect();
        topics.push((topic_data.name, topic_data.topic_id, partitions));
    }

    if let Some(previous) = order.previous {
        // An error only means the previous request ended without appending anything.
        let _ = previous.await;
    }
    let mut queued = Vec::with_capacity(topics.len());
    for (name, topic_id, partitions) in topics {
        let mut pending = Vec::with_capacity(partitions.len());
        for (index, prepared) in partitions {
            let slot = match prepared {
                Ok(prepared) => {
                    let volume = prepared.volume;
                    let submitted = ctx.batcher.submit(prepared.append).await;
                    if acks == 0 && submitted.is_ok() {
                        volume.record();
                    }
                    submitted
                        .map(|receipt| (receipt, prepared.log_append_time, volume))
                        .map_err(append_error_code)
                }
                Err(code) => Err(code),
            };
            pending.push((index, slot));
        }
        queued.push((name, topic_id, pending));
    }
    drop(order.appended);

    if acks == 0 {
        // Nobody waits for the answer; the batcher commits the records all the same.
        return None;
    }
    let mut responses = Vec::with_capacity(queued.len());
    for (name, topic_id, pending) in queued {
        let results = join_all(pending.into_iter().map(|(index, slot)| async move {
            let result = match slot {
                Ok((receipt, log_append_time, volume)) => {
                    let committed = receipt.await;
                    if committed.is_ok() {
                        volume.record();
                    }
                    committed
                        .map(|base| (base, log_append_time))
                        .map_err(append_error_code)
                }
                Err(code) => Err(code),
            };
            partition_response(index, result)
        }))
        .await;
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_topic_id(topic_id)
                .with_partition_responses(results),
        );
    }
    Some(ProduceResponse::default().with_responses(responses))
}

/// The hand-off between consecutive produce requests of one connection.
pub struct ProduceOrder {
    /// Resolves once the previous produce request has queued its batches.
    pub previous: Option<oneshot::Receiver<()>>,
    /// Dropped once this request has queued its batches.
    pub appended: oneshot::Sender<()>,
}

struct Prepared {
    append: Append,
    /// The time stamped into LogAppendTime batches, reported back to the producer.
    log_append_time: Option<i64>,
    volume: Volume,
}

/// What one partition's append adds to the produce metrics once it is acknowledged.
struct Volume {
    topic: String,
    bytes: u64,
    records: u64,
}

impl Volume {
    fn record(&self) {
        let topic = self.topic.clone();
        metrics::counter!(m::PRODUCE_BYTES, "topic" => topic.clone()).increment(self.bytes);
        metrics::counter!(m::PRODUCE_RECORDS, "topic" => topic).increment(self.records);
    }
}

/// Validates one partition's batches and shapes them for the batcher.
fn prepare(entry: &TopicEntry, partition: i32, records: Option<Bytes>) -> Result<Prepared, i16> {
    if partition < 0 || partition >= entry.topic.partitions {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    }
    let records = records.unwrap_or_default();
    let validated = batch::validate(&records, entry.settings.max_message_bytes)
        .map_err(|e: BatchError| e.kafka_error_code())?;
    let (batches, max_timestamp, log_append_time) = if entry.settings.log_append_time {
        let now = crate::now_ms();
        (stamp(&records, now)?, now, Some(now))
    } else {
        (records, validated.max_timestamp, None)
    };
    let volume = Volume {
        topic: entry.topic.name.clone(),
        bytes: batches.len() as u64,
        records: validated.records.max(0) as u64,
    };
    Ok(Prepared {
        volume,
        append: Append {
            topic: entry.topic.id,
            partition,
            batches,
            offset_count: validated.offset_count,
            max_timestamp,
        },
        log_append_time,
    })
}

/// Copies the batches and stamps each with the broker's time (a fresh CRC included).
fn stamp(records: &Bytes, now: i64) -> Result<Bytes, i16> {
    let mut copy = BytesMut::from(records.as_ref());
    let ranges = batch::batches(records)
        .map(|item| item.map(|(_, range)| range))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.kafka_error_code())?;
    for range in ranges {
        batch::set_log_append_time(&mut copy[range], now);
    }
    Ok(copy.freeze())
}

fn append_error_code(e: AppendError) -> i16 {
    match e {
        AppendError::Storage(_) | AppendError::Commit(_) => ResponseError::KafkaStorageError.code(),
        AppendError::UnknownPartition => ResponseError::UnknownTopicOrPartition.code(),
        // The client refreshes its metadata and retries on another agent.
        AppendError::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
    }
}

fn partition_response(
    index: i32,
    result: Result<(i64, Option<i64>), i16>,
) -> PartitionProduceResponse {
    let response = PartitionProduceResponse::default()
        .with_index(index)
        .with_log_start_offset(-1)
        .with_log_append_time_ms(-1);
    match result {
        Ok((base_offset, log_append_time)) => response
            .with_base_offset(base_offset)
            .with_log_append_time_ms(log_append_time.unwrap_or(-1)),
        Err(code) => response.with_error_code(code).with_base_offset(-1),
    }
}
