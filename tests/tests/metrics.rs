//! The operations HTTP listener: consumer lag per group and partition in `/metrics`, computed
//! at scrape time from committed offsets and high watermarks; `/healthz`; unknown paths; and a
//! taken `--http` address failing the start.

mod common;

use std::net::SocketAddr;

use common::*;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use shoal_agent::{Agent, AgentConfig, StartError};
use shoal_tests::TestAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An agent whose HTTP listener is on a free loopback port.
async fn agent_with_http() -> (TestAgent, SocketAddr) {
    let agent = TestAgent::start_with(|cfg| {
        cfg.http = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let http = agent.http_addr().expect("the HTTP listener is on");
    (agent, http)
}

/// A plain HTTP/1.1 GET: (status, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("HTTP connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("response read");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

fn commit(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let consumer = consumer(bootstrap, &[("group.id", group)]);
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .expect("valid offset");
    }
    blocking(|| consumer.commit(&list, CommitMode::Sync)).expect("offsets committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_lag_is_exported_per_group_and_partition() {
    let (agent, http) = agent_with_http().await;
    let bootstrap = agent.bootstrap();
    let topic = "lagging";
    create_topic(&bootstrap, topic, 2, &[]).await;
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, topic, &make_records("lag", 100, 2)).await;
    commit(&bootstrap, "laggers", topic, &[(0, 10), (1, 20)]);

    let (status, content_type, body) = get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        body.contains("# TYPE shoal_consumer_group_lag gauge\n"),
        "{body}"
    );
    for line in [
        format!(
            "shoal_consumer_group_lag{{group=\"laggers\",topic=\"{topic}\",partition=\"0\"}} 40"
        ),
        format!(
            "shoal_consumer_group_lag{{group=\"laggers\",topic=\"{topic}\",partition=\"1\"}} 30"
        ),
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in:\n{body}");
    }

    // Lag is computed at each scrape: a group that caught up shows 0.
    commit(&bootstrap, "laggers", topic, &[(0, 50)]);
    let (_, _, body) = get(http, "/metrics").await;
    let caught_up = format!(
        "shoal_consumer_group_lag{{group=\"laggers\",topic=\"{topic}\",partition=\"0\"}} 0"
    );
    assert!(
        body.lines().any(|l| l == caught_up),
        "{caught_up} in:\n{body}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_and_other_paths_are_not_found() {
    let (agent, http) = agent_with_http().await;
    let (status, _, body) = get(http, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, _) = get(http, "/nope").await;
    assert_eq!(status, 404);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_address_fails_the_start() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let taken = holder.local_addr().expect("its address");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = AgentConfig::local(dir.path(), "127.0.0.1:0".parse().expect("address"));
    config.http = Some(taken);
    match Agent::start(config).await {
        Err(StartError::Config(message)) => {
            assert!(message.contains("--http"), "{message}");
        }
        Err(e) => panic!("expected a configuration error, got: {e}"),
        Ok(_) => panic!("the agent started on a taken HTTP address"),
    }
}
