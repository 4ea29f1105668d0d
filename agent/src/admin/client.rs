//! A small Kafka client for the admin commands: one connection per agent, ApiVersions first,
//! and for every request the highest version both sides speak.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::RangeInclusive;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::AdminError;
use crate::api::str_bytes;

/// The client id agents see (and log) for admin requests.
const CLIENT_ID: &str = "shoal-admin";
/// Larger answers than this are refused rather than buffered: no admin answer comes close.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// The ApiVersions version sent first; brokers that do not know it answer in v0.
const API_VERSIONS_VERSION: i16 = 3;

/// Connections to the agents of one cluster, opened on first use and kept for the command.
pub struct Client {
    bootstrap: String,
    timeout: Duration,
    connections: HashMap<String, Connection>,
}

impl Client {
    /// Connects to the first reachable address of `bootstrap` (comma-separated `HOST:PORT`s).
    pub async fn connect(bootstrap: &str, timeout: Duration) -> Result<Client, AdminError> {
        let mut last = None;
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::open(addr, timeout).await {
                Ok(connection) => {
                    let mut connections = HashMap::new();
                    connections.insert(addr.to_string(), connection);
                    return Ok(Client {
                        bootstrap: addr.to_string(),
                        timeout,
                        connections,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| AdminError::Usage("--bootstrap names no address".into())))
    }

    /// The bootstrap address that answered.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Sends a request to `addr` (the bootstrap agent if `None`) in the highest version both
    /// this client (`supported`) and the agent speak; `build` fills the request for that
    /// version, since fields come and go between versions. Returns the version and answer.
    pub async fn send<R: Request>(
        &mut self,
        addr: Option<&str>,
        supported: RangeInclusive<i16>,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(i16, R::Response), AdminError> {
        let addr = addr.unwrap_or(&self.bootstrap).to_string();
        let connection = match self.connections.entry(addr.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Connection::open(&addr, self.timeout).await?),
        };
        let key = api_key::<R>();
        let version = connection.version(key, supported)?;
        let request = build(version);
        let result = connection.call(key, version, &request).await;
        if result.is_err() {
            // The stream may hold half an answer: never reuse it.
            self.connections.remove(&addr);
        }
        Ok((version, result?))
    }
}

fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).unwrap_or_else(|_| unreachable!("the codec knows its own keys"))
}

/// One TCP connection to one agent, with the versions it offered.
struct Connection {
    addr: String,
    stream: TcpStream,
    timeout: Duration,
    /// API key -> (min, max) version the agent speaks.
    versions: HashMap<i16, (i16, i16)>,
    next_correlation: i32,
}

impl Connection {
    async fn open(addr: &str, timeout: Duration) -> Result<Connection, AdminError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(AdminError::Connect {
                    addr: addr.to_string(),
                    reason: source.to_string(),
                });
            }
            Err(_) => {
                return Err(AdminError::Connect {
                    addr: addr.to_string(),
                    reason: format!(
                        "no connection within {}",
                        humantime::format_duration(timeout)
                    ),
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            addr: addr.to_string(),
            stream,
            timeout,
            versions: HashMap::new(),
            next_correlation: 1,
        };
        let response = connection.api_versions().await?;
        // UNSUPPORTED_VERSION still carries the broker's real ranges (KIP-511).
        let error = ResponseError::try_from_code(response.error_code)
            .filter(|e| *e != ResponseError::UnsupportedVersion);
        if let Some(error) = error {
            return Err(AdminError::BadAnswer {
                addr: addr.to_string(),
                api: ApiKey::ApiVersions,
                reason: format!("error {error}"),
            });
        }
        connection.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(connection)
    }

    /// ApiVersions in v3; a broker that does not know v3 answers UNSUPPORTED_VERSION in v0
    /// (KIP-511), still listing its ranges.
    async fn api_versions(&mut self) -> Result<ApiVersionsResponse, AdminError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(str_bytes(CLIENT_ID))
            .with_client_software_version(str_bytes(env!("CARGO_PKG_VERSION")));
        let key = ApiKey::ApiVersions;
        let mut body = self.round_trip(key, API_VERSIONS_VERSION, &request).await?;
        let version = if body.len() >= 2
            && i16::from_be_bytes([body[0], body[1]]) == ResponseError::UnsupportedVersion.code()
        {
            0
        } else {
            API_VERSIONS_VERSION
        };
        ApiVersionsResponse::decode(&mut body, version).map_err(|e| self.bad(key, e))
    }

    /// The version to use for `key`: the highest in both ranges.
    fn version(&self, key: ApiKey, supported: RangeInclusive<i16>) -> Result<i16, AdminError> {
        let unsupported = |offered: String| AdminError::Unsupported {
            addr: self.addr.clone(),
            api: key,
            ours: format!("{}..={}", supported.start(), supported.end()),
            offered,
        };
        let Some(&(min, max)) = self.versions.get(&(key as i16)) else {
            return Err(unsupported("none".into()));
        };
        let version = max.min(*supported.end());
        if version < min.max(*supported.start()) {
            return Err(unsupported(format!("{min}..={max}")));
        }
        Ok(version)
    }

    async fn call<R: Request>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<R::Response, AdminError> {
        let mut body = self.round_trip(key, version, request).await?;
        let response = R::Response::decode(&mut body, version).map_err(|e| self.bad(key, e))?;
        Ok(response)
    }

    /// Writes one framed request and reads its answer; returns the answer's body (after the
    /// response header).
    async fn round_trip<R: Encodable + HeaderVersion + Message>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<Bytes, AdminError> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(str_bytes(CLIENT_ID)));
        let mut frame = BytesMut::new();
        frame.put_u32(0);
        header
            .encode(&mut frame, R::header_version(version))
            .and_then(|_| request.encode(&mut frame, version))
            .map_err(|e| AdminError::Encode {
                api: key,
                version,
                reason: e.to_string(),
            })?;
        let len = (frame.len() - 4) as u32;
        frame[0..4].copy_from_slice(&len.to_be_bytes());

        let exchange = async {
            self.stream.write_all(&frame).await?;
            let len = self.stream.read_i32().await?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| (4..=MAX_RESPONSE_BYTES).contains(&l))
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("answer frame of {len} bytes"),
                    )
                })?;
            let mut buf = vec![0u8; len];
            self.stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(Bytes::from(buf))
        };
        let mut answer = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            // Only the size check above makes InvalidData: the answer, not the link, is bad.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(self.bad(key, e));
            }
            Ok(Err(e)) => {
                return Err(AdminError::Io {
                    addr: self.addr.clone(),
                    api: key,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(AdminError::Timeout {
                    addr: self.addr.clone(),
                    api: key,
                    timeout: self.timeout,
                });
            }
        };
        let header = ResponseHeader::decode(&mut answer, key.response_header_version(version))
            .map_err(|e| self.bad(key, e))?;
        if header.correlation_id != correlation_id {
            return Err(self.bad(
                key,
                format!(
                    "correlation id {}, expected {correlation_id}",
                    header.correlation_id
                ),
            ));
        }
        Ok(answer)
    }

    fn bad(&self, api: ApiKey, reason: impl std::fmt::Display) -> AdminError {
        AdminError::BadAnswer {
            addr: self.addr.clone(),
            api,
            reason: reason.to_string(),
        }
    }
}
