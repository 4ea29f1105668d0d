//! The Kafka APIs: request parsing, dispatch to one module per API, response encoding.

mod api_versions;
mod cluster;
mod configs;
mod delete_records;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod produce;
mod topics;
mod unsupported;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::sync::watch;

use crate::batcher::Batcher;
use crate::catalog::Catalog;
use crate::config::AgentConfig;
use crate::fleet::Fleet;
use crate::groups::Groups;
use crate::metrics::{self as m, Occupancy};
use crate::reader::Reader;

pub use produce::ProduceOrder;

/// Everything a request handler may use; one per agent, shared by all connections.
pub struct Context {
    pub config: AgentConfig,
    pub catalog: Catalog,
    pub batcher: Batcher,
    pub reader: Reader,
    /// Bumped after every commit; parked fetches wait on it.
    pub commits: watch::Receiver<u64>,
    /// Turns true when the agent stops.
    pub shutdown: watch::Receiver<bool>,
    pub fleet: std::sync::Arc<Fleet>,
    pub groups: std::sync::Arc<Groups>,
    pub cluster_id: String,
}

/// A response frame to write, `None` for requests that get no answer (acks=0 produce), or
/// the reason to close the connection.
pub type Outcome = Result<Option<Bytes>, String>;

/// A framed request whose header has been read; the body is decoded by its handler.
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
    /// The client's address as this agent sees it (DescribeGroups shows it).
    pub client_host: String,
}

impl Request {
    /// Reads the request header. Unknown API keys and versions outside what we accept
    /// (except ApiVersions, which has a fallback answer) close the connection, as in Kafka.
    pub fn parse(mut frame: Bytes) -> Result<Request, String> {
        if frame.len() < 8 {
            return Err(format!(
                "request frame of {} bytes is too short",
                frame.len()
            ));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let api_key =
            ApiKey::try_from(raw_key).map_err(|_| format!("unknown API key {raw_key}"))?;
        if api_key != ApiKey::ApiVersions && !api_versions::accepts(api_key, version) {
            return Err(format!(
                "unsupported version {version} of {api_key:?} (see ApiVersions)"
            ));
        }
        let header_version = api_key.request_header_version(version);
        let header = RequestHeader::decode(&mut frame, header_version)
            .map_err(|e| format!("malformed {api_key:?} request header: {e}"))?;
        Ok(Request {
            api_key,
            version,
            header,
            body: frame,
            client_host: String::new(),
        })
    }
}

/// Parses and decodes a request frame exactly as a connection does, without running it.
/// Fuzz targets drive this: no input may panic or abort.
pub fn decode_frame(frame: Bytes) -> Result<(), String> {
    let request = Request::parse(frame)?;
    let mut body = request.body;
    RequestKind::decode(request.api_key, &mut body, request.version)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs one request and encodes its response frame.
///
/// `order` chains the produce requests of one connection (see [`ProduceOrder`]); other
/// requests pass `None`.
pub async fn handle(ctx: &Context, request: Request, order: Option<ProduceOrder>) -> Outcome {
    let api = api_name(request.api_key);
    let _in_flight = Occupancy::enter(metrics::gauge!(m::REQUESTS_IN_FLIGHT));
    let start = std::time::Instant::now();
    let (outcome, label) = match answer(ctx, request, order).await {
        Ok((response, error)) => (Ok(response), if error { "error" } else { "ok" }),
        Err(reason) => (Err(reason), "refused"),
    };
    metrics::histogram!(m::REQUEST_DURATION, "api" => api).record(start.elapsed().as_secs_f64());
    metrics::counter!(m::REQUESTS, "api" => api, "outcome" => label).increment(1);
    outcome
}

/// Counts a request refused before it could be handled (its connection is closed).
pub fn count_refused(api_key: Option<ApiKey>) {
    let api = api_key.map_or("unknown", api_name);
    metrics::counter!(m::REQUESTS, "api" => api, "outcome" => "refused").increment(1);
}

/// The API's name as metrics label it: the protocol's own name (`Produce`, `Fetch`, ...),
/// made once per API key.
fn api_name(key: ApiKey) -> &'static str {
    static NAMES: std::sync::OnceLock<std::collections::HashMap<i16, &'static str>> =
        std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..i16::MAX)
            .filter_map(|raw| ApiKey::try_from(raw).ok().map(|key| (raw, key)))
            .map(|(raw, key)| (raw, &*String::leak(format!("{key:?}"))))
            .collect()
    });
    names.get(&(key as i16)).copied().unwrap_or("unknown")
}

/// The response frame, and whether the answer carries a Kafka error code.
type Answer = Result<(Option<Bytes>, bool), String>;

async fn answer(ctx: &Context, request: Request, order: Option<ProduceOrder>) -> Answer {
    let Request {
        api_key,
        version,
        header,
        mut body,
        client_host,
    } = request;
    if api_key == ApiKey::ApiVersions && !api_versions::accepts(api_key, version) {
        // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges, so the client can
        // pick a version it shares with us.
        let response = api_versions::fallback();
        return encode(api_key, 0, header.correlation_id, &response.into())
            .map(|frame| (Some(frame), true));
    }
    let decoded = RequestKind::decode(api_key, &mut body, version)
        .map_err(|e| format!("malformed {api_key:?} v{version} request: {e}"))?;
    let request_ctx = RequestContext {
        version,
        client_id: header.client_id.as_ref().map(|s| s.to_string()),
        client_host,
    };
    let response: ResponseKind = match decoded {
        RequestKind::ApiVersions(r) => api_versions::handle(&request_ctx, r).into(),
        RequestKind::Metadata(r) => metadata::handle(ctx, &request_ctx, r).await.into(),
        RequestKind::Produce(r) => {
            let order = order.unwrap_or_else(|| ProduceOrder {
                previous: None,
                appended: tokio::sync::oneshot::channel().0,
            });
            match produce::handle(ctx, &request_ctx, r, order).await {
                Some(response) => response.into(),
                None => return Ok((None, false)),
            }
        }
        RequestKind::Fetch(r) => fetch::handle(ctx, &request_ctx, r).await.into(),
        RequestKind::ListOffsets(r) => list_offsets::handle(ctx, r).await.into(),
        RequestKind::CreateTopics(r) => topics::create_topics(ctx, &request_ctx, r).await.into(),
        RequestKind::DeleteTopics(r) => topics::delete_topics(ctx, &request_ctx, r).await.into(),
        RequestKind::CreatePartitions(r) => topics::create_partitions(ctx, r).await.into(),
        RequestKind::DeleteRecords(r) => delete_records::handle(ctx, r).await.into(),
        RequestKind::DescribeConfigs(r) => configs::describe(ctx, r).await.into(),
        RequestKind::AlterConfigs(r) => configs::alter(ctx, r).await.into(),
        RequestKind::IncrementalAlterConfigs(r) => configs::incremental_alter(ctx, r).await.into(),
        RequestKind::DescribeCluster(r) => cluster::describe(ctx, r).into(),
        RequestKind::FindCoordinator(r) => groups::find_coordinator(ctx, &request_ctx, r).into(),
        RequestKind::JoinGroup(r) => groups::join_group(ctx, &request_ctx, r).await.into(),
        RequestKind::SyncGroup(r) => groups::sync_group(ctx, r).await.into(),
        RequestKind::Heartbeat(r) => groups::heartbeat(ctx, r).await.into(),
        RequestKind::LeaveGroup(r) => groups::leave_group(ctx, &request_ctx, r).await.into(),
        RequestKind::OffsetCommit(r) => groups::offset_commit(ctx, &request_ctx, r).await.into(),
        RequestKind::OffsetFetch(r) => groups::offset_fetch(ctx, &request_ctx, r).await.into(),
        RequestKind::ListGroups(r) => groups::list_groups(ctx, &request_ctx, r).await.into(),
        RequestKind::DescribeGroups(r) => groups::describe_groups(ctx, r).await.into(),
        RequestKind::DeleteGroups(r) => groups::delete_groups(ctx, r).await.into(),
        RequestKind::OffsetDelete(r) => groups::offset_delete(ctx, r).await.into(),
        other => match unsupported::response(other) {
            Some(response) => response,
            None => return Err(format!("{api_key:?} is not supported")),
        },
    };
    let error = carries_error(&response);
    encode(api_key, version, header.correlation_id, &response).map(|frame| (Some(frame), error))
}

/// Whether an answer carries a Kafka error code, at its top level or for any topic,
/// partition or group in it.
fn carries_error(response: &ResponseKind) -> bool {
    fn any<T>(items: &[T], code: impl Fn(&T) -> bool) -> bool {
        items.iter().any(code)
    }
    match response {
        ResponseKind::Produce(r) => any(&r.responses, |t| {
            any(&t.partition_responses, |p| p.error_code != 0)
        }),
        ResponseKind::Fetch(r) => {
            r.error_code != 0 || any(&r.responses, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::ListOffsets(r) => {
            any(&r.topics, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::Metadata(r) => any(&r.topics, |t| t.error_code != 0),
        ResponseKind::ApiVersions(r) => r.error_code != 0,
        ResponseKind::CreateTopics(r) => any(&r.topics, |t| t.error_code != 0),
        ResponseKind::DeleteTopics(r) => any(&r.responses, |t| t.error_code != 0),
        ResponseKind::CreatePartitions(r) => any(&r.results, |t| t.error_code != 0),
        ResponseKind::DeleteRecords(r) => {
            any(&r.topics, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::DescribeConfigs(r) => any(&r.results, |t| t.error_code != 0),
        ResponseKind::AlterConfigs(r) => any(&r.responses, |t| t.error_code != 0),
        ResponseKind::IncrementalAlterConfigs(r) => any(&r.responses, |t| t.error_code != 0),
        ResponseKind::DescribeCluster(r) => r.error_code != 0,
        ResponseKind::FindCoordinator(r) => {
            r.error_code != 0 || any(&r.coordinators, |c| c.error_code != 0)
        }
        ResponseKind::JoinGroup(r) => r.error_code != 0,
        ResponseKind::SyncGroup(r) => r.error_code != 0,
        ResponseKind::Heartbeat(r) => r.error_code != 0,
        ResponseKind::LeaveGroup(r) => r.error_code != 0 || any(&r.members, |m| m.error_code != 0),
        ResponseKind::OffsetCommit(r) => {
            any(&r.topics, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        ResponseKind::OffsetFetch(r) => r.error_code != 0 || any(&r.groups, |g| g.error_code != 0),
        ResponseKind::ListGroups(r) => r.error_code != 0,
        ResponseKind::DescribeGroups(r) => any(&r.groups, |g| g.error_code != 0),
        ResponseKind::DeleteGroups(r) => any(&r.results, |g| g.error_code != 0),
        ResponseKind::OffsetDelete(r) => {
            r.error_code != 0 || any(&r.topics, |t| any(&t.partitions, |p| p.error_code != 0))
        }
        // Unimplemented APIs answer with their API's error.
        _ => true,
    }
}

/// What handlers need to know about the request beyond its body.
pub struct RequestContext {
    pub version: i16,
    pub client_id: Option<String>,
    pub client_host: String,
}

fn encode(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, String> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = response.header_version(version);
    let failed = |e: anyhow::Error| format!("cannot encode {api_key:?} v{version} response: {e}");
    // Sized up front: a fetch response carries megabytes of records, and growing the buffer
    // while encoding would copy them again and again.
    let size = header.compute_size(header_version).map_err(failed)?
        + response_size(response, version).map_err(failed)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_u32(0);
    header
        .encode(&mut buf, header_version)
        .and_then(|_| response.encode(&mut buf, version))
        .map_err(failed)?;
    let len = (buf.len() - 4) as u32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Encoded size of the responses that can be large; others start small and grow.
fn response_size(response: &ResponseKind, version: i16) -> anyhow::Result<usize> {
    match response {
        ResponseKind::Fetch(r) => r.compute_size(version),
        ResponseKind::Metadata(r) => r.compute_size(version),
        _ => Ok(256),
    }
}

/// Shorthand for the protocol's string type.
pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The Kafka error code of a sequencer failure.
pub fn metadata_error_code(e: &shoal_metadata::MetadataError) -> i16 {
    use kafka_protocol::error::ResponseError as E;
    use shoal_metadata::MetadataError as M;
    match e {
        M::TopicExists(_) => E::TopicAlreadyExists.code(),
        M::UnknownTopic(_) | M::UnknownPartition { .. } => E::UnknownTopicOrPartition.code(),
        M::InvalidPartitions(_) => E::InvalidPartitions.code(),
        _ => E::KafkaStorageError.code(),
    }
}
