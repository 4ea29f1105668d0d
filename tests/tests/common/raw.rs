//! Raw Kafka protocol frames over TCP, for tests that need exact requests and error codes
//! (built and decoded with the `kafka-protocol` crate).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// How long an answer may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One client connection speaking raw frames.
pub struct Conn {
    stream: TcpStream,
}

impl Conn {
    /// Connects to a Kafka listener at `addr` (`HOST:PORT`).
    pub async fn connect(addr: impl ToSocketAddrs) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.expect("connects"),
        }
    }

    pub async fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).await.unwrap();
    }

    pub async fn send<R: Encodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        correlation_id: i32,
        request: &R,
    ) {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("protocol-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = BytesMut::new();
        frame.put_u32(body.len() as u32);
        frame.extend_from_slice(&body);
        self.send_raw(&frame).await;
    }

    /// Reads one response frame: (correlation id, rest of the frame after it).
    pub async fn recv(&mut self) -> Option<(i32, Bytes)> {
        let read = async {
            let len = self.stream.read_u32().await.ok()?;
            let mut buf = vec![0u8; len as usize];
            self.stream.read_exact(&mut buf).await.ok()?;
            let correlation = i32::from_be_bytes(buf[0..4].try_into().unwrap());
            Some((correlation, Bytes::from(buf).slice(4..)))
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("no answer in time")
    }

    pub async fn call<Req, Resp>(&mut self, key: ApiKey, version: i16, request: &Req) -> Resp
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        self.send(key, version, 7, request).await;
        self.answer(version, 7).await
    }

    /// Reads and decodes the answer to a request sent with [`Conn::send`].
    pub async fn answer<Resp: Decodable + HeaderVersion>(
        &mut self,
        version: i16,
        expected_correlation: i32,
    ) -> Resp {
        let (correlation, mut body) = self.recv().await.expect("a response");
        assert_eq!(correlation, expected_correlation);
        if Resp::header_version(version) >= 1 {
            // Flexible response headers end with an (empty) tagged-field section.
            assert_eq!(body[0], 0);
            body = body.slice(1..);
        }
        Resp::decode(&mut body, version).unwrap()
    }

    /// True once the agent has closed this connection.
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(TIMEOUT, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
