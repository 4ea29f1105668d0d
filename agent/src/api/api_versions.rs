//! ApiVersions: which APIs and versions this agent speaks.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::RequestContext;

/// An implemented API: the versions advertised, and the lowest one actually decoded.
pub struct Supported {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
    pub min_accepted: i16,
}

const fn api(key: ApiKey, min: i16, max: i16) -> Supported {
    Supported {
        key,
        min,
        max,
        min_accepted: min,
    }
}

/// The implemented APIs. Produce is advertised from v0 as Kafka 4 does (older librdkafka
/// turns compression off when it is not), though versions below 3 are refused.
pub const SUPPORTED: &[Supported] = &[
    Supported {
        key: ApiKey::Produce,
        min: 0,
        max: 13,
        min_accepted: 3,
    },
    api(ApiKey::Fetch, 4, 18),
    api(ApiKey::ListOffsets, 1, 10),
    api(ApiKey::Metadata, 0, 13),
    api(ApiKey::ApiVersions, 0, 4),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::DeleteRecords, 0, 2),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::AlterConfigs, 0, 2),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    api(ApiKey::DescribeCluster, 0, 2),
    api(ApiKey::FindCoordinator, 0, 6),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::OffsetCommit, 2, 9),
    api(ApiKey::OffsetFetch, 1, 9),
    api(ApiKey::ListGroups, 0, 5),
    api(ApiKey::DescribeGroups, 0, 5),
    api(ApiKey::DeleteGroups, 0, 2),
    api(ApiKey::OffsetDelete, 0, 0),
];

/// Whether a request of this key and version can be decoded and answered: an implemented
/// API in its accepted range, or an unimplemented one the codec knows (it gets the API's
/// own error).
pub fn accepts(key: ApiKey, version: i16) -> bool {
    match SUPPORTED.iter().find(|s| s.key == key) {
        Some(s) => (s.min_accepted..=s.max).contains(&version),
        None => {
            let range = key.valid_versions();
            (range.min..=range.max).contains(&version)
        }
    }
}

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect()
}

pub fn handle(ctx: &RequestContext, request: ApiVersionsRequest) -> ApiVersionsResponse {
    let response = ApiVersionsResponse::default().with_api_keys(api_keys());
    if ctx.version < 3 {
        return response;
    }
    let name = request.client_software_name.as_str();
    let version = request.client_software_version.as_str();
    if !valid_software_field(name) || !valid_software_field(version) {
        // As Kafka: the client learns our versions, but is told its self-description is bad.
        tracing::warn!(name, version, "invalid client software name or version");
        return response.with_error_code(ResponseError::InvalidRequest.code());
    }
    tracing::debug!(
        client_id = ctx.client_id.as_deref().unwrap_or(""),
        software = name,
        software_version = version,
        "client connected"
    );
    response
}

/// Kafka's rule for the v3 client software fields: letters, digits, '-' and '.', starting
/// and ending with a letter or digit.
fn valid_software_field(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        }
        _ => false,
    }
}

/// The KIP-511 answer to an ApiVersions version we do not know, encoded as v0.
pub fn fallback() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys())
}

#[cfg(test)]
mod tests {
    use super::valid_software_field;

    #[test]
    fn software_fields() {
        for good in ["librdkafka", "2.12.1", "apache-kafka-java", "a"] {
            assert!(valid_software_field(good), "{good}");
        }
        for bad in ["", "-x", "x.", "has space", "ü", "a_b"] {
            assert!(!valid_software_field(bad), "{bad}");
        }
    }
}
