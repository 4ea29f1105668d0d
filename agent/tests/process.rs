//! The real `shoal` process under stop signals: SIGTERM drains and SIGKILL loses nothing
//! that was acknowledged. A client keeps several acks=all produce requests in flight while
//! the agent is stopped, then a new agent on the same data must hold every acknowledged
//! record at the offset it was acknowledged with.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, MetadataRequest, ProduceRequest, RequestHeader, TopicName,
    fetch_request, metadata_request, produce_request,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "stop-signals";

struct AgentProcess {
    child: Child,
    addr: String,
}

impl AgentProcess {
    /// Starts `shoal agent` on a free port in `dir` and waits until it is ready.
    fn start(dir: &std::path::Path) -> AgentProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["agent", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .current_dir(dir)
            .env("SHOAL_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("shoal starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("agent log").expect("readable log");
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining the log so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        AgentProcess { child, addr }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }
}

impl Drop for AgentProcess {
    /// A failing test must not leave an agent behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call<Req: Encodable + HeaderVersion>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> std::io::Result<()> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id);
    let mut body = BytesMut::new();
    header
        .encode(&mut body, Req::header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_u32(body.len() as u32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// Reads one response: (correlation id, body after the flexible header's tag section).
async fn response(stream: &mut TcpStream) -> std::io::Result<(i32, Bytes)> {
    let len = stream.read_u32().await?;
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    let correlation = i32::from_be_bytes(buf[0..4].try_into().unwrap());
    Ok((correlation, Bytes::from(buf).slice(5..)))
}

fn batch(first: i64) -> Bytes {
    let records: Vec<Record> = (0..10)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            // Now: the agent's own compactor applies the default 7-day retention on restart.
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            key: None,
            value: Some(Bytes::from(format!("record-{}", first + i))),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

async fn create_topic(addr: &str) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC)))),
        ]))
        .with_allow_auto_topic_creation(true);
    call(&mut stream, ApiKey::Metadata, 12, 1, &request)
        .await
        .unwrap();
    response(&mut stream).await.unwrap();
}

/// Produces batches of 10 records, 8 requests in flight, until the connection breaks or a
/// request is refused; returns (first record number, acknowledged base offset) pairs.
async fn produce_until_stopped(addr: &str) -> Vec<(i64, i64)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut acked = Vec::new();
    let mut sent = std::collections::VecDeque::new();
    let mut next = 0i64;
    loop {
        while sent.len() < 8 {
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![
                    produce_request::TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch(next))),
                        ]),
                ]);
            if call(&mut stream, ApiKey::Produce, 9, next as i32, &request)
                .await
                .is_err()
            {
                return acked;
            }
            sent.push_back(next);
            next += 10;
        }
        let Ok((correlation, mut body)) = response(&mut stream).await else {
            return acked;
        };
        let first = sent.pop_front().unwrap();
        assert_eq!(correlation as i64, first, "answers come in order");
        let answer = kafka_protocol::messages::ProduceResponse::decode(&mut body, 9).unwrap();
        let partition = &answer.responses[0].partition_responses[0];
        if partition.error_code != 0 {
            return acked;
        }
        acked.push((first, partition.base_offset));
    }
}

/// Every record of the partition, as (offset, value).
async fn read_all(addr: &str) -> Vec<(i64, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    loop {
        let request = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                fetch_request::FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                    .with_partitions(vec![
                        fetch_request::FetchPartition::default()
                            .with_fetch_offset(out.len() as i64)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        call(&mut stream, ApiKey::Fetch, 12, 1, &request)
            .await
            .unwrap();
        let (_, mut body) = response(&mut stream).await.unwrap();
        let fetched = FetchResponse::decode(&mut body, 12).unwrap();
        let partition = &fetched.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0);
        let mut records = partition.records.clone().unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            for record in set.records {
                if record.offset >= out.len() as i64 {
                    assert_eq!(record.offset, out.len() as i64, "offsets are dense");
                    let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                    out.push((record.offset, value));
                }
            }
        }
    }
}

async fn stop_under_load(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path());
    create_topic(&agent.addr).await;
    let producer = tokio::spawn(produce_until_stopped_owned(agent.addr.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    agent.signal(signal);
    let acked = producer.await.unwrap();
    let code = tokio::task::spawn_blocking(move || {
        let mut agent = agent;
        agent.wait()
    })
    .await
    .unwrap();
    if signal == "-TERM" {
        assert_eq!(code, Some(0), "a drained agent exits cleanly");
    }
    assert!(
        acked.len() > 10,
        "the load ran before the stop ({} acks)",
        acked.len()
    );

    let restarted = AgentProcess::start(dir.path());
    // Dropping `restarted` at the end kills it.
    let stored = read_all(&restarted.addr).await;
    for (first, base_offset) in &acked {
        for i in 0..10 {
            let offset = base_offset + i;
            let (at, value) = stored
                .get(offset as usize)
                .unwrap_or_else(|| panic!("acknowledged offset {offset} is missing"));
            assert_eq!(*at, offset);
            assert_eq!(value, &format!("record-{}", first + i));
        }
    }
}

async fn produce_until_stopped_owned(addr: String) -> Vec<(i64, i64)> {
    produce_until_stopped(&addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_loses_nothing_acknowledged() {
    stop_under_load("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged() {
    stop_under_load("-KILL").await;
}
