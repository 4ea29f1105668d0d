//! Raw protocol behaviour: bad frames, bad batches, unknown APIs and versions, pipelining.
//! Each case checks the agent answers with the right error or closes only that connection,
//! and still serves everybody else.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::raw::Conn;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::messages::{list_offsets_request, metadata_request, produce_request};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shoal_tests::TestAgent;

fn api_versions_request(name: &'static str, version: &'static str) -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str(name))
        .with_client_software_version(StrBytes::from_static_str(version))
}

/// The agent still answers a fresh client.
async fn assert_serving(agent: &TestAgent) {
    let mut conn = Conn::connect(agent.addr()).await;
    let response: ApiVersionsResponse = conn
        .call(
            ApiKey::ApiVersions,
            3,
            &api_versions_request("protocol-test", "1.0"),
        )
        .await;
    assert_eq!(response.error_code, 0);
}

fn batch(records: usize, compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![b'x'; 100])),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

async fn create_topic(conn: &mut Conn, topic: &str) {
    let response: MetadataResponse = conn
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(topic.to_string())))),
                ]))
                .with_allow_auto_topic_creation(true),
        )
        .await;
    assert_eq!(response.topics[0].error_code, 0);
}

async fn produce_error(conn: &mut Conn, topic: &str, records: Bytes) -> i16 {
    let response: ProduceResponse = conn
        .call(ApiKey::Produce, 9, &produce(topic, 0, records))
        .await;
    response.responses[0].partition_responses[0].error_code
}

async fn high_watermark(conn: &mut Conn, topic: &str) -> i64 {
    let response: ListOffsetsResponse = conn
        .call(
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ]),
            ]),
        )
        .await;
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    partition.offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_get_errors_and_store_nothing() {
    let agent = TestAgent::start().await;
    let mut conn = Conn::connect(agent.addr()).await;
    create_topic(&mut conn, "bad-batches").await;

    let good = batch(10, Compression::None);
    let mut bad_crc = BytesMut::from(good.as_ref());
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    assert_eq!(
        produce_error(&mut conn, "bad-batches", bad_crc.freeze()).await,
        2,
        "CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce_error(&mut conn, "bad-batches", good.slice(..good.len() - 3)).await,
        2,
        "a truncated batch is CORRUPT_MESSAGE"
    );
    let mut old_magic = BytesMut::from(good.as_ref());
    old_magic[16] = 1;
    assert_eq!(
        produce_error(&mut conn, "bad-batches", old_magic.freeze()).await,
        43,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT"
    );
    assert_eq!(
        produce_error(&mut conn, "bad-batches", Bytes::new()).await,
        87,
        "INVALID_RECORD"
    );
    let big = batch(20_000, Compression::None);
    assert_eq!(
        produce_error(&mut conn, "bad-batches", big).await,
        10,
        "MESSAGE_TOO_LARGE over the default max.message.bytes"
    );
    assert_eq!(
        produce_error(&mut conn, "no-such-topic", good.clone()).await,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(high_watermark(&mut conn, "bad-batches").await, 0);

    assert_eq!(produce_error(&mut conn, "bad-batches", good).await, 0);
    assert_eq!(high_watermark(&mut conn, "bad-batches").await, 10);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let agent = TestAgent::start().await;
    let mut bystander = Conn::connect(agent.addr()).await;
    create_topic(&mut bystander, "bystander").await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized frame", (200u32 << 20).to_be_bytes().to_vec()),
        ("negative length", (-5i32).to_be_bytes().to_vec()),
        ("too short for a header", [0, 0, 0, 2, 0, 3].to_vec()),
        (
            "unknown API key",
            frame(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0, 0]),
        ),
        (
            "unsupported Produce version 2",
            frame(&[0, 0, 0, 2, 0, 0, 0, 1, 0, 0]),
        ),
        (
            "garbage Metadata body",
            frame(&[
                0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
            ]),
        ),
    ];
    for (name, bytes) in cases {
        let mut conn = Conn::connect(agent.addr()).await;
        conn.send_raw(&bytes).await;
        assert!(conn.is_closed().await, "{name}: connection closed");
        assert_serving(&agent).await;
    }
    // The connection that did nothing wrong is untouched.
    assert_eq!(high_watermark(&mut bystander, "bystander").await, 0);
    agent.stop().await;
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Request header bytes for `key`/`version` with correlation id 1 and a null client id,
/// then an empty tagged-field section when the header is flexible.
fn header(key: i16, version: i16, flexible: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    if flexible {
        out.push(0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_claiming_huge_arrays_do_not_take_the_agent_down() {
    let agent = TestAgent::start().await;
    // Each body starts with an array length of about 2^31 (or 2^32 for compact arrays) and
    // then ends: decoding must fail without reserving memory for billions of elements.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Produce v3 topics", {
            let mut b = header(0, 3, false);
            b.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
            b.extend_from_slice(&1i16.to_be_bytes()); // acks
            b.extend_from_slice(&1000i32.to_be_bytes()); // timeout
            b.extend_from_slice(&i32::MAX.to_be_bytes()); // topic count
            b
        }),
        ("Produce v9 compact topics", {
            let mut b = header(0, 9, true);
            b.push(0); // transactional id: null (compact)
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&1000i32.to_be_bytes());
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // varint 2^32 - 1
            b
        }),
        ("Metadata v4 topics", {
            let mut b = header(3, 4, false);
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            b
        }),
        ("Fetch v4 topics", {
            let mut b = header(1, 4, false);
            b.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
            b.extend_from_slice(&500i32.to_be_bytes()); // max wait
            b.extend_from_slice(&1i32.to_be_bytes()); // min bytes
            b.extend_from_slice(&(1i32 << 20).to_be_bytes()); // max bytes
            b.push(0); // isolation level
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            b
        }),
        ("CreateTopics v2 topics", {
            let mut b = header(19, 2, false);
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            b
        }),
        ("ListOffsets v1 topics", {
            let mut b = header(2, 1, false);
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            b
        }),
    ];
    for (name, body) in cases {
        let mut conn = Conn::connect(agent.addr()).await;
        conn.send_raw(&frame(&body)).await;
        assert!(conn.is_closed().await, "{name}: connection closed");
        assert_serving(&agent).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_fallback_and_unsupported_apis() {
    let agent = TestAgent::start().await;
    let mut conn = Conn::connect(agent.addr()).await;

    // KIP-511: an ApiVersions version from the future gets a v0 answer with our ranges.
    conn.send_raw(&frame(&header(18, 99, true))).await;
    let (correlation, mut body) = conn.recv().await.expect("fallback answer");
    assert_eq!(correlation, 1);
    let fallback = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(fallback.error_code, 35, "UNSUPPORTED_VERSION");
    let produce = fallback
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("Produce advertised");
    assert_eq!(produce.min_version, 0);

    let versions: ApiVersionsResponse = conn
        .call(
            ApiKey::ApiVersions,
            3,
            &api_versions_request("protocol-test", "1.0"),
        )
        .await;
    assert_eq!(versions.error_code, 0);
    let invalid: ApiVersionsResponse = conn
        .call(
            ApiKey::ApiVersions,
            3,
            &api_versions_request("bad name!", "1.0"),
        )
        .await;
    assert_eq!(
        invalid.error_code, 42,
        "INVALID_REQUEST for a bad software name"
    );
    assert!(
        versions
            .api_keys
            .iter()
            .all(|k| k.api_key != ApiKey::InitProducerId as i16),
        "unimplemented APIs are not advertised"
    );

    let init: InitProducerIdResponse = conn
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default().with_transaction_timeout_ms(10_000),
        )
        .await;
    assert_eq!(
        init.error_code, 35,
        "UNSUPPORTED_VERSION for an unimplemented API"
    );

    assert_serving(&agent).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let agent = TestAgent::start().await;
    let mut conn = Conn::connect(agent.addr()).await;
    create_topic(&mut conn, "pipelined").await;
    // Produce requests wait for a flush; metadata requests do not. Answers still come back
    // in request order.
    for i in 0..20 {
        if i % 2 == 0 {
            conn.send(
                ApiKey::Produce,
                9,
                i,
                &produce("pipelined", 0, batch(5, Compression::Lz4)),
            )
            .await;
        } else {
            conn.send(ApiKey::Metadata, 12, i, &MetadataRequest::default())
                .await;
        }
    }
    let mut offsets = Vec::new();
    for i in 0..20 {
        let (correlation, mut body) = conn.recv().await.expect("answer");
        assert_eq!(correlation, i);
        if i % 2 == 0 {
            body = body.slice(1..);
            let response = ProduceResponse::decode(&mut body, 9).unwrap();
            let partition = &response.responses[0].partition_responses[0];
            assert_eq!(partition.error_code, 0);
            offsets.push(partition.base_offset);
        }
    }
    assert_eq!(offsets, (0..10).map(|i| i * 5).collect::<Vec<_>>());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_max_timestamp() {
    let agent = TestAgent::start().await;
    let mut conn = Conn::connect(agent.addr()).await;
    create_topic(&mut conn, "max-ts").await;
    // Timestamps 1_700_000_000_000 + 0..10: the largest is at offset 9.
    assert_eq!(
        produce_error(&mut conn, "max-ts", batch(10, Compression::Lz4)).await,
        0
    );
    // Older timestamps later in the log do not move it.
    assert_eq!(
        produce_error(&mut conn, "max-ts", batch(5, Compression::None)).await,
        0
    );
    let response: ListOffsetsResponse = conn
        .call(
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("max-ts")))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-3),
                    ]),
            ]),
        )
        .await;
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(
        (partition.offset, partition.timestamp),
        (9, 1_700_000_000_009)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_alter_configs() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    };

    let agent = TestAgent::start().await;
    let mut conn = Conn::connect(agent.addr()).await;
    create_topic(&mut conn, "incremental").await;
    let op = |name: &'static str, op: i8, value: Option<&'static str>| {
        AlterableConfig::default()
            .with_name(StrBytes::from_static_str(name))
            .with_config_operation(op)
            .with_value(value.map(StrBytes::from_static_str))
    };
    let alter = |configs: Vec<AlterableConfig>| {
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("incremental"))
                .with_configs(configs),
        ])
    };
    let set_and_append = alter(vec![
        op("retention.ms", 0, Some("60000")),
        op("max.message.bytes", 0, Some("2048")),
        op("cleanup.policy", 2, Some("compact")),
    ]);
    let response: IncrementalAlterConfigsResponse = conn
        .call(ApiKey::IncrementalAlterConfigs, 1, &set_and_append)
        .await;
    assert_eq!(response.responses[0].error_code, 0);
    let delete = alter(vec![op("max.message.bytes", 1, None)]);
    let response: IncrementalAlterConfigsResponse =
        conn.call(ApiKey::IncrementalAlterConfigs, 1, &delete).await;
    assert_eq!(response.responses[0].error_code, 0);
    let bad = alter(vec![op("retention.ms", 2, Some("5"))]);
    let response: IncrementalAlterConfigsResponse =
        conn.call(ApiKey::IncrementalAlterConfigs, 1, &bad).await;
    assert_eq!(
        response.responses[0].error_code, 40,
        "APPEND to a non-list: INVALID_CONFIG"
    );

    let described: DescribeConfigsResponse = conn
        .call(
            ApiKey::DescribeConfigs,
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("incremental"))
                    .with_configuration_keys(Some(vec![
                        StrBytes::from_static_str("retention.ms"),
                        StrBytes::from_static_str("cleanup.policy"),
                        StrBytes::from_static_str("max.message.bytes"),
                    ])),
            ]),
        )
        .await;
    let values: Vec<(String, String, i8)> = described.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                c.config_source,
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![
            ("cleanup.policy".into(), "delete,compact".into(), 1),
            ("retention.ms".into(), "60000".into(), 1),
            ("max.message.bytes".into(), "1048588".into(), 5),
        ]
    );
    agent.stop().await;
}

fn group_id() -> GroupId {
    StrBytes::from_static_str("g").into()
}

fn join(member_id: &str, instance_id: Option<&'static str>) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(group_id())
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_group_instance_id(instance_id.map(StrBytes::from_static_str))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"meta")),
        ])
}

fn sync(
    member_id: &StrBytes,
    generation: i32,
    assignments: &[(&StrBytes, &'static [u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(group_id())
        .with_generation_id(generation)
        .with_member_id(member_id.clone())
        .with_assignments(
            assignments
                .iter()
                .map(|(member, bytes)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id((*member).clone())
                        .with_assignment(Bytes::from_static(bytes))
                })
                .collect(),
        )
}

fn heartbeat(
    member_id: &StrBytes,
    generation: i32,
    instance: Option<&'static str>,
) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(group_id())
        .with_member_id(member_id.clone())
        .with_generation_id(generation)
        .with_group_instance_id(instance.map(StrBytes::from_static_str))
}

fn commit(member_id: &str, generation: i32) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(group_id())
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_generation_id_or_member_epoch(generation)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("grouped")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(0),
                ]),
        ])
}

fn commit_code(response: &OffsetCommitResponse) -> i16 {
    response.topics[0].partitions[0].error_code
}

/// The classic group protocol step by step, with the error codes Kafka clients act on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_membership_follows_kafka() {
    let agent = TestAgent::start_with(|cfg| {
        cfg.group_initial_rebalance_delay = Duration::ZERO;
    })
    .await;
    let mut a = Conn::connect(agent.addr()).await;
    create_topic(&mut a, "grouped").await;

    let mut too_short = join("", None);
    too_short.session_timeout_ms = 10;
    let refused: JoinGroupResponse = a.call(ApiKey::JoinGroup, 5, &too_short).await;
    assert_eq!(refused.error_code, 26, "INVALID_SESSION_TIMEOUT");
    let first: JoinGroupResponse = a.call(ApiKey::JoinGroup, 5, &join("", None)).await;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let id_a = first.member_id;
    let joined: JoinGroupResponse = a.call(ApiKey::JoinGroup, 5, &join(&id_a, None)).await;
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    assert_eq!(joined.leader, id_a, "the only member leads");
    let synced: SyncGroupResponse = a
        .call(
            ApiKey::SyncGroup,
            3,
            &sync(&id_a, 1, &[(&id_a, b"all of it")]),
        )
        .await;
    assert_eq!(synced.error_code, 0);
    assert_eq!(&synced.assignment[..], b"all of it");
    let beat: HeartbeatResponse = a
        .call(ApiKey::Heartbeat, 3, &heartbeat(&id_a, 1, None))
        .await;
    assert_eq!(beat.error_code, 0);
    let stale: HeartbeatResponse = a
        .call(ApiKey::Heartbeat, 3, &heartbeat(&id_a, 7, None))
        .await;
    assert_eq!(stale.error_code, 22, "ILLEGAL_GENERATION");
    let committed: OffsetCommitResponse = a.call(ApiKey::OffsetCommit, 7, &commit(&id_a, 1)).await;
    assert_eq!(commit_code(&committed), 0);
    let outside: OffsetCommitResponse = a.call(ApiKey::OffsetCommit, 7, &commit("", -1)).await;
    assert_eq!(
        commit_code(&outside),
        25,
        "UNKNOWN_MEMBER_ID: no commits from outside a group with members"
    );

    // A static member joins: the group rebalances, and the member waiting in JoinGroup is
    // answered once the first member has rejoined.
    let mut s = Conn::connect(agent.addr()).await;
    s.send(ApiKey::JoinGroup, 5, 11, &join("", Some("s1")))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let beat: HeartbeatResponse = a
        .call(ApiKey::Heartbeat, 3, &heartbeat(&id_a, 1, None))
        .await;
    assert_eq!(beat.error_code, 27, "REBALANCE_IN_PROGRESS");
    let rejoined: JoinGroupResponse = a.call(ApiKey::JoinGroup, 5, &join(&id_a, None)).await;
    let static_joined: JoinGroupResponse = s.answer(5, 11).await;
    assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 2));
    assert_eq!(
        (static_joined.error_code, static_joined.generation_id),
        (0, 2)
    );
    assert_eq!(rejoined.members.len(), 2, "the leader sees every member");
    assert!(static_joined.members.is_empty(), "followers see none");
    let id_s = static_joined.member_id;
    let stale: OffsetCommitResponse = a.call(ApiKey::OffsetCommit, 7, &commit(&id_a, 1)).await;
    assert_eq!(commit_code(&stale), 22, "ILLEGAL_GENERATION");

    // The follower's SyncGroup waits for the leader's assignment.
    s.send(ApiKey::SyncGroup, 3, 12, &sync(&id_s, 2, &[])).await;
    let leader: SyncGroupResponse = a
        .call(
            ApiKey::SyncGroup,
            3,
            &sync(&id_a, 2, &[(&id_a, b"half"), (&id_s, b"other half")]),
        )
        .await;
    let follower: SyncGroupResponse = s.answer(3, 12).await;
    assert_eq!(
        (leader.error_code, &leader.assignment[..]),
        (0, &b"half"[..])
    );
    assert_eq!(
        (follower.error_code, &follower.assignment[..]),
        (0, &b"other half"[..])
    );

    // The static member restarts: it takes its old place under a new member id, with no
    // rebalance, and its old incarnation is fenced.
    let mut restarted = Conn::connect(agent.addr()).await;
    let back: JoinGroupResponse = restarted
        .call(ApiKey::JoinGroup, 5, &join("", Some("s1")))
        .await;
    assert_eq!((back.error_code, back.generation_id), (0, 2));
    assert_ne!(back.member_id, id_s);
    let again: SyncGroupResponse = restarted
        .call(ApiKey::SyncGroup, 3, &sync(&back.member_id, 2, &[]))
        .await;
    assert_eq!(&again.assignment[..], b"other half", "the same assignment");
    let fenced: HeartbeatResponse = s
        .call(ApiKey::Heartbeat, 3, &heartbeat(&id_s, 2, Some("s1")))
        .await;
    assert_eq!(fenced.error_code, 82, "FENCED_INSTANCE_ID");
    let beat: HeartbeatResponse = a
        .call(ApiKey::Heartbeat, 3, &heartbeat(&id_a, 2, None))
        .await;
    assert_eq!(beat.error_code, 0, "no rebalance for the others");

    let refused: OffsetDeleteResponse = a.call(ApiKey::OffsetDelete, 0, &offset_delete()).await;
    assert_eq!(
        refused.topics[0].partitions[0].error_code, 86,
        "GROUP_SUBSCRIBED_TO_TOPIC while the group has members"
    );

    // Both leave in one request; the group is empty and takes offsets from outside.
    let left: LeaveGroupResponse = a
        .call(
            ApiKey::LeaveGroup,
            3,
            &LeaveGroupRequest::default()
                .with_group_id(group_id())
                .with_members(vec![
                    MemberIdentity::default().with_member_id(id_a.clone()),
                    MemberIdentity::default()
                        .with_member_id(StrBytes::from_static_str(""))
                        .with_group_instance_id(Some(StrBytes::from_static_str("s1"))),
                    MemberIdentity::default().with_member_id(StrBytes::from_static_str("ghost")),
                ]),
        )
        .await;
    let codes: Vec<i16> = left.members.iter().map(|m| m.error_code).collect();
    assert_eq!(codes, vec![0, 0, 25]);
    let described: DescribeGroupsResponse = a
        .call(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default().with_groups(vec![group_id()]),
        )
        .await;
    assert_eq!(described.groups[0].group_state.as_str(), "Empty");
    let outside: OffsetCommitResponse = a.call(ApiKey::OffsetCommit, 7, &commit("", -1)).await;
    assert_eq!(
        commit_code(&outside),
        0,
        "an empty group takes offsets from outside"
    );

    // ListGroups filters by state.
    let list = |state: &'static str| {
        ListGroupsRequest::default().with_states_filter(vec![StrBytes::from_static_str(state)])
    };
    let empty: ListGroupsResponse = a.call(ApiKey::ListGroups, 4, &list("Empty")).await;
    let stable: ListGroupsResponse = a.call(ApiKey::ListGroups, 4, &list("Stable")).await;
    assert_eq!(empty.groups.len(), 1);
    assert_eq!(empty.groups[0].group_id, group_id());
    assert!(stable.groups.is_empty());

    // OffsetFetch answers for several groups at once; OffsetDelete forgets an offset.
    let fetch: OffsetFetchResponse = a.call(ApiKey::OffsetFetch, 8, &fetch_two_groups()).await;
    assert_eq!(fetch.groups.len(), 2, "{fetch:?}");
    assert!(!fetch.groups[0].topics.is_empty(), "{fetch:?}");
    assert_eq!(fetch.groups[0].topics[0].partitions[0].committed_offset, 0);
    assert!(fetch.groups[1].topics.is_empty(), "nothing committed");
    let deleted: OffsetDeleteResponse = a.call(ApiKey::OffsetDelete, 0, &offset_delete()).await;
    assert_eq!(deleted.topics[0].partitions[0].error_code, 0);
    let fetch: OffsetFetchResponse = a.call(ApiKey::OffsetFetch, 8, &fetch_two_groups()).await;
    assert!(fetch.groups[0].topics.is_empty(), "the offset is gone");
    assert_serving(&agent).await;
    agent.stop().await;
}

fn offset_delete() -> OffsetDeleteRequest {
    OffsetDeleteRequest::default()
        .with_group_id(group_id())
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("grouped")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0),
                ]),
        ])
}

/// Every committed offset of group "g" and of a group that never committed.
fn fetch_two_groups() -> OffsetFetchRequest {
    OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(group_id())
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(StrBytes::from_static_str("never-committed").into())
            .with_topics(None),
    ])
}
