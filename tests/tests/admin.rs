//! Topic administration through librdkafka's admin client: CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs, AlterConfigs, topic limits, and DescribeCluster (which
//! rdkafka does not expose, so it is sent with `kafka-protocol` over a plain socket).

mod common;

use bytes::{Buf, BufMut, BytesMut};
use common::*;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::admin::{
    AlterConfig, ConfigResource, ConfigSource, NewPartitions, NewTopic, OwnedResourceSpecifier,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode as Code;
use shoal_tests::TestAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An agent that never creates topics on its own, so only the admin calls under test do.
async fn start_agent() -> TestAgent {
    TestAgent::start_with(|cfg| cfg.auto_create_topics = false).await
}

/// The outcome of creating one topic.
async fn try_create(bootstrap: &str, topic: NewTopic<'_>, validate_only: bool) -> Result<(), Code> {
    let results = admin(bootstrap)
        .create_topics([&topic], &admin_options().validate_only(validate_only))
        .await
        .expect("CreateTopics answered");
    assert_eq!(results.len(), 1);
    match &results[0] {
        Ok(name) => {
            assert_eq!(name, topic.name);
            Ok(())
        }
        Err((name, code)) => {
            assert_eq!(name, topic.name);
            Err(*code)
        }
    }
}

/// A topic's described configs.
async fn describe_topic(bootstrap: &str, topic: &str) -> ConfigResource {
    let mut results = admin(bootstrap)
        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
        .await
        .expect("DescribeConfigs answered");
    assert_eq!(results.len(), 1);
    results.remove(0).expect("topic configs")
}

/// (value, source) of one described config.
fn config<'a>(resource: &'a ConfigResource, name: &str) -> (Option<&'a str>, &'a ConfigSource) {
    let entry = resource
        .get(name)
        .unwrap_or_else(|| panic!("config {name} not described"));
    (entry.value.as_deref(), &entry.source)
}

/// Replaces a topic's configs with `configs` through rdkafka's AlterConfigs.
///
/// rdkafka 0.39 drops per-resource errors of AlterConfigs and DescribeConfigs (its futures
/// never read `rd_kafka_ConfigResource_error`), so refusals are checked with
/// [`raw_alter_error`] and [`raw_describe_error`] instead.
async fn alter_topic(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let results = admin(bootstrap)
        .alter_configs([&alter], &admin_options())
        .await
        .expect("AlterConfigs answered");
    assert_eq!(
        results,
        vec![Ok(OwnedResourceSpecifier::Topic(topic.to_string()))]
    );
}

/// Kafka's resource type code of topics.
const TOPIC_RESOURCE: i8 = 2;

/// The error code of an AlterConfigs v1 request setting `configs` on `topic`.
async fn raw_alter_error(addr: std::net::SocketAddr, topic: &str, configs: &[(&str, &str)]) -> i16 {
    let request = AlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            ),
    ]);
    let response: AlterConfigsResponse = raw_request(addr, ApiKey::AlterConfigs, 1, &request).await;
    assert_eq!(response.responses.len(), 1);
    assert_eq!(response.responses[0].resource_name.as_str(), topic);
    response.responses[0].error_code
}

/// The error code of a DescribeConfigs v1 request for `topic`.
async fn raw_describe_error(addr: std::net::SocketAddr, topic: &str) -> i16 {
    let request = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None),
    ]);
    let response: DescribeConfigsResponse =
        raw_request(addr, ApiKey::DescribeConfigs, 1, &request).await;
    assert_eq!(response.results.len(), 1);
    response.results[0].error_code
}

fn one_record(tag: &str, partition: i32, len: usize) -> Rec {
    Rec {
        partition,
        key: Some(tag.as_bytes().to_vec()),
        value: Some(value_bytes(tag, 0, len)),
        headers: vec![("tag".to_string(), Some(tag.as_bytes().to_vec()))],
        timestamp: Some(BASE_TIMESTAMP),
    }
}

/// A producer that gives up quickly, for records expected to fail.
fn impatient_producer(bootstrap: &str) -> FutureProducer {
    producer(
        bootstrap,
        &[
            ("linger.ms", "0"),
            ("compression.type", "none"),
            ("message.timeout.ms", "5000"),
            ("topic.metadata.propagation.max.ms", "1000"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_with_configs_and_any_replication_factor() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    let topic = NewTopic::new("configured", 3, TopicReplication::Fixed(3))
        .set("retention.ms", "3600000")
        .set("cleanup.policy", "compact");
    assert_eq!(try_create(&bootstrap, topic, false).await, Ok(()));
    let plain = NewTopic::new("plain", 1, TopicReplication::Fixed(1));
    assert_eq!(try_create(&bootstrap, plain, false).await, Ok(()));

    let topics = list_topics(&bootstrap);
    assert_eq!(
        topics.get("configured"),
        Some(&3),
        "listed topics: {topics:?}"
    );
    assert_eq!(topics.get("plain"), Some(&1), "listed topics: {topics:?}");
    let described = describe_topic(&bootstrap, "configured").await;
    assert_eq!(
        config(&described, "retention.ms"),
        (Some("3600000"), &ConfigSource::DynamicTopic)
    );
    assert_eq!(
        config(&described, "cleanup.policy"),
        (Some("compact"), &ConfigSource::DynamicTopic)
    );
    // Records go to every partition of the new topic.
    let records = make_records("configured", 300, 3);
    let deliveries = send_all(&producer(&bootstrap, &[]), "configured", &records).await;
    let consumed = consume_from_start(&bootstrap, "configured", &[0, 1, 2], 300).await;
    assert_same_records("configured", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_creates_nothing() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    let topic = NewTopic::new("dry-run", 2, TopicReplication::Fixed(1)).set("retention.ms", "1000");
    assert_eq!(try_create(&bootstrap, topic, true).await, Ok(()));
    let bad = NewTopic::new("dry-run", 2, TopicReplication::Fixed(1)).set("retention.ms", "soon");
    assert_eq!(
        try_create(&bootstrap, bad, true).await,
        Err(Code::InvalidConfig)
    );
    assert!(!list_topics(&bootstrap).contains_key("dry-run"));
    assert_eq!(
        raw_describe_error(agent.addr(), "dry-run").await,
        ResponseError::UnknownTopicOrPartition.code()
    );
    // The name is still free.
    let topic = NewTopic::new("dry-run", 2, TopicReplication::Fixed(1));
    assert_eq!(try_create(&bootstrap, topic, false).await, Ok(()));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_duplicate_and_misconfigured_topics_are_refused() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    let long_name = "x".repeat(250);
    for bad in ["bad name!", "a/b", "..", long_name.as_str()] {
        let topic = NewTopic::new(bad, 1, TopicReplication::Fixed(1));
        assert_eq!(
            try_create(&bootstrap, topic, false).await,
            Err(Code::InvalidTopic),
            "topic name {bad:?}"
        );
    }

    let topic = NewTopic::new("taken", 1, TopicReplication::Fixed(1));
    assert_eq!(try_create(&bootstrap, topic, false).await, Ok(()));
    let again = NewTopic::new("taken", 4, TopicReplication::Fixed(1));
    assert_eq!(
        try_create(&bootstrap, again, false).await,
        Err(Code::TopicAlreadyExists)
    );
    let again = NewTopic::new("taken", 4, TopicReplication::Fixed(1));
    assert_eq!(
        try_create(&bootstrap, again, true).await,
        Err(Code::TopicAlreadyExists),
        "validate_only sees the existing topic too"
    );

    for (key, value) in [
        ("no.such.config", "1"),
        ("retention.ms", "soon"),
        ("cleanup.policy", "shred"),
        ("message.timestamp.type", "Now"),
    ] {
        let topic = NewTopic::new("misconfigured", 1, TopicReplication::Fixed(1)).set(key, value);
        assert_eq!(
            try_create(&bootstrap, topic, false).await,
            Err(Code::InvalidConfig),
            "{key}={value}"
        );
    }

    let topics = list_topics(&bootstrap);
    assert_eq!(
        topics.keys().collect::<Vec<_>>(),
        vec!["taken"],
        "only the valid topic exists"
    );
    assert_eq!(
        topics["taken"], 1,
        "the duplicate did not change the first topic"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_topic_is_gone() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "doomed", 2, &[]).await;
    create_topic(&bootstrap, "survivor", 1, &[]).await;
    let producer = impatient_producer(&bootstrap);
    let records = make_records("doomed", 50, 2);
    send_all(&producer, "doomed", &records).await;
    let survivors = make_records("survivor", 20, 1);
    let survivor_deliveries = send_all(&producer, "survivor", &survivors).await;

    let admin = admin(&bootstrap);
    let deleted = admin
        .delete_topics(&["doomed"], &admin_options())
        .await
        .expect("DeleteTopics answered");
    assert_eq!(deleted, vec![Ok("doomed".to_string())]);
    let topics = list_topics(&bootstrap);
    assert!(!topics.contains_key("doomed"), "listed topics: {topics:?}");
    assert!(topics.contains_key("survivor"), "listed topics: {topics:?}");
    let again = admin
        .delete_topics(&["doomed"], &admin_options())
        .await
        .expect("DeleteTopics answered");
    assert_eq!(
        again,
        vec![Err(("doomed".to_string(), Code::UnknownTopicOrPartition))]
    );

    // The producer that knew the topic can no longer write to it.
    match send_one(&producer, "doomed", &one_record("late", 0, 10)).await {
        Err((KafkaError::MessageProduction(code), _)) => assert!(
            matches!(
                code,
                Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition
            ),
            "producing to a deleted topic failed with {code:?}"
        ),
        other => panic!("producing to a deleted topic: {other:?}"),
    }

    // Other topics are untouched, and the name can be reused for a fresh, empty topic.
    let consumed = consume_from_start(&bootstrap, "survivor", &[0], survivors.len()).await;
    assert_same_records(
        "survivor",
        &survivors,
        Some(&survivor_deliveries),
        &consumed,
    );
    create_topic(&bootstrap, "doomed", 1, &[]).await;
    let consumer = consumer(&bootstrap, &[]);
    assert_eq!(
        watermarks(&consumer, "doomed", 0),
        (0, 0),
        "re-created topic is empty"
    );
    let fresh = vec![one_record("fresh", 0, 10)];
    let deliveries = send_all(&impatient_producer(&bootstrap), "doomed", &fresh).await;
    let consumed = consume_from_start(&bootstrap, "doomed", &[0], 1).await;
    assert_same_records("doomed", &fresh, Some(&deliveries), &consumed);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_partitions_grows_but_never_shrinks() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "growing", 2, &[]).await;
    let before = make_records("before", 40, 2);
    send_all(&producer(&bootstrap, &[]), "growing", &before).await;

    let admin = admin(&bootstrap);
    let grown = admin
        .create_partitions([&NewPartitions::new("growing", 5)], &admin_options())
        .await
        .expect("CreatePartitions answered");
    assert_eq!(grown, vec![Ok("growing".to_string())]);
    assert_eq!(list_topics(&bootstrap).get("growing"), Some(&5));

    let records: Vec<Rec> = (0..30)
        .map(|i| Rec {
            partition: 2 + i % 3,
            ..make_records("after", 30, 1)[i as usize].clone()
        })
        .collect();
    let deliveries = send_all(&producer(&bootstrap, &[]), "growing", &records).await;
    let consumed = consume_from_start(&bootstrap, "growing", &[2, 3, 4], records.len()).await;
    assert_same_records("growing", &records, Some(&deliveries), &consumed);
    // The old partitions kept their records.
    let consumed = consume_from_start(&bootstrap, "growing", &[0, 1], before.len()).await;
    assert_same_records("growing", &before, None, &consumed);

    for count in [3, 5] {
        let refused = admin
            .create_partitions([&NewPartitions::new("growing", count)], &admin_options())
            .await
            .expect("CreatePartitions answered");
        assert_eq!(
            refused,
            vec![Err(("growing".to_string(), Code::InvalidPartitions))],
            "going from 5 to {count} partitions"
        );
    }
    let unknown = admin
        .create_partitions([&NewPartitions::new("nowhere", 3)], &admin_options())
        .await
        .expect("CreatePartitions answered");
    assert_eq!(
        unknown,
        vec![Err(("nowhere".to_string(), Code::UnknownTopicOrPartition))]
    );
    assert_eq!(list_topics(&bootstrap).get("growing"), Some(&5));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_reports_set_and_default_values() {
    let agent = TestAgent::start_with(|cfg| {
        cfg.auto_create_topics = false;
        cfg.num_partitions = 3;
    })
    .await;
    let bootstrap = agent.bootstrap();
    create_topic(
        &bootstrap,
        "described",
        1,
        &[("retention.ms", "86400000"), ("max.message.bytes", "2048")],
    )
    .await;

    let described = describe_topic(&bootstrap, "described").await;
    assert_eq!(
        described.specifier,
        OwnedResourceSpecifier::Topic("described".to_string())
    );
    assert_eq!(
        config(&described, "retention.ms"),
        (Some("86400000"), &ConfigSource::DynamicTopic)
    );
    assert_eq!(
        config(&described, "max.message.bytes"),
        (Some("2048"), &ConfigSource::DynamicTopic)
    );
    for (name, default) in [
        ("cleanup.policy", "delete"),
        ("retention.bytes", "-1"),
        ("message.timestamp.type", "CreateTime"),
        ("segment.bytes", "1073741824"),
    ] {
        assert_eq!(
            config(&described, name),
            (Some(default), &ConfigSource::Default),
            "{name}"
        );
        assert!(described.get(name).unwrap().is_default, "{name} is default");
    }
    assert!(!described.get("retention.ms").unwrap().is_default);
    assert_eq!(
        raw_describe_error(agent.addr(), "missing").await,
        ResponseError::UnknownTopicOrPartition.code()
    );

    // The broker resource shows the agent's own settings.
    let admin = admin(&bootstrap);
    let metadata = blocking(|| admin.inner().fetch_metadata(None, TIMEOUT)).unwrap();
    let broker = metadata.brokers()[0].id();
    let mut results = admin
        .describe_configs([&ResourceSpecifier::Broker(broker)], &admin_options())
        .await
        .expect("DescribeConfigs answered");
    let broker_configs = results.remove(0).expect("broker configs");
    assert_eq!(config(&broker_configs, "num.partitions").0, Some("3"));
    assert_eq!(
        config(&broker_configs, "auto.create.topics.enable").0,
        Some("false")
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_configs_replaces_topic_configs() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    create_topic(
        &bootstrap,
        "altered",
        1,
        &[("retention.ms", "1000"), ("cleanup.policy", "compact")],
    )
    .await;

    // AlterConfigs sets the whole set: configs not named return to their defaults.
    alter_topic(
        &bootstrap,
        "altered",
        &[("retention.ms", "5000"), ("retention.bytes", "1048576")],
    )
    .await;
    let described = describe_topic(&bootstrap, "altered").await;
    assert_eq!(
        config(&described, "retention.ms"),
        (Some("5000"), &ConfigSource::DynamicTopic)
    );
    assert_eq!(
        config(&described, "retention.bytes"),
        (Some("1048576"), &ConfigSource::DynamicTopic)
    );
    assert_eq!(
        config(&described, "cleanup.policy"),
        (Some("delete"), &ConfigSource::Default)
    );

    // A bad value or an unknown name changes nothing.
    for bad in [("retention.ms", "-7"), ("no.such.config", "1")] {
        assert_eq!(
            raw_alter_error(agent.addr(), "altered", &[bad]).await,
            ResponseError::InvalidConfig.code(),
            "{bad:?}"
        );
    }
    let described = describe_topic(&bootstrap, "altered").await;
    assert_eq!(config(&described, "retention.ms").0, Some("5000"));
    assert_eq!(config(&described, "retention.bytes").0, Some("1048576"));

    assert_eq!(
        raw_alter_error(agent.addr(), "missing", &[("retention.ms", "5000")]).await,
        ResponseError::UnknownTopicOrPartition.code()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes_limits_batches() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "limited", 1, &[("max.message.bytes", "1024")]).await;
    let producer = impatient_producer(&bootstrap);

    let small = one_record("small", 0, 100);
    let big = one_record("big", 0, 4000);
    let first = send_one(&producer, "limited", &small)
        .await
        .expect("small record");
    assert_eq!(first.offset, 0);
    match send_one(&producer, "limited", &big).await {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {}
        other => panic!("a 4000-byte record under max.message.bytes=1024: {other:?}"),
    }
    let second = send_one(&producer, "limited", &small)
        .await
        .expect("small record");
    assert_eq!(second.offset, 1, "the refused record took no offset");

    // Raising the limit lets the large record through.
    alter_topic(&bootstrap, "limited", &[("max.message.bytes", "100000")]).await;
    let third = send_one(&producer, "limited", &big)
        .await
        .expect("big record");
    assert_eq!(third.offset, 2);

    let sent = vec![small.clone(), small, big];
    let consumed = consume_from_start(&bootstrap, "limited", &[0], 3).await;
    assert_same_records("limited", &sent, None, &consumed);
    agent.stop().await;
}

/// Sends one request with `kafka-protocol` over a fresh connection and decodes the answer.
async fn raw_request<Req: Encodable, Resp: Decodable>(
    addr: std::net::SocketAddr,
    key: ApiKey,
    version: i16,
    request: &Req,
) -> Resp {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("shoal-tests")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(body.len() as u32);
    frame.extend_from_slice(&body);

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&frame).await.unwrap();
    let len = tokio::time::timeout(TIMEOUT, stream.read_u32())
        .await
        .expect("answer in time")
        .expect("answer, not a closed connection");
    let mut response = vec![0u8; len as usize];
    stream.read_exact(&mut response).await.unwrap();
    let mut buf = bytes::Bytes::from(response);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 42);
    let decoded = Resp::decode(&mut buf, version).unwrap();
    assert_eq!(buf.remaining(), 0, "{key:?} response fully decoded");
    decoded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_cluster_lists_this_agent() {
    let agent = start_agent().await;
    let bootstrap = agent.bootstrap();
    let response: DescribeClusterResponse = raw_request(
        agent.addr(),
        ApiKey::DescribeCluster,
        0,
        &DescribeClusterRequest::default(),
    )
    .await;
    assert_eq!(response.error_code, 0);
    assert_eq!(response.brokers.len(), 1, "{response:?}");
    let broker = &response.brokers[0];
    assert_eq!(
        (broker.host.to_string(), broker.port),
        (agent.addr().ip().to_string(), agent.addr().port() as i32)
    );
    assert_eq!(response.controller_id, broker.broker_id);

    // The same cluster and broker as Metadata reports to librdkafka.
    let admin = admin(&bootstrap);
    let cluster_id = blocking(|| admin.inner().fetch_cluster_id(TIMEOUT)).expect("cluster id");
    assert!(!cluster_id.is_empty());
    assert_eq!(response.cluster_id.to_string(), cluster_id);
    let metadata = blocking(|| admin.inner().fetch_metadata(None, TIMEOUT)).unwrap();
    assert_eq!(metadata.brokers()[0].id(), broker.broker_id.0);
    agent.stop().await;
}
