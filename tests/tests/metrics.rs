//! The operations HTTP listener: the metrics of a load run, parsed as Prometheus parses them
//! and moving with the load; consumer lag per group and partition, computed at scrape time;
//! `/healthz`, `/readyz` and unknown paths; a taken `--http` address failing the start; and
//! the standalone compactor's listener.

mod common;

use std::net::SocketAddr;

use common::*;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use shoal_agent::{Agent, AgentConfig, StartError};
use shoal_tests::TestAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An agent whose HTTP listener is on a free loopback port.
async fn agent_with_http() -> (TestAgent, SocketAddr) {
    let agent = TestAgent::start_with(|cfg| {
        cfg.http = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let http = agent.http_addr().expect("the HTTP listener is on");
    (agent, http)
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

    let (status, content_type, body) = http_get(http, "/metrics").await;
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
    let (_, _, body) = http_get(http, "/metrics").await;
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
    let (status, _, body) = http_get(http, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, _) = http_get(http, "/nope").await;
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

/// The metric names dashboards and scripts rely on (docs/operations.md), each with a series
/// once an agent has produced, flushed, fetched and read from its cache.
const CONTRACT: &[&str] = &[
    "shoal_requests_total",
    "shoal_request_duration_seconds",
    "shoal_requests_in_flight",
    "shoal_produce_bytes_total",
    "shoal_produce_records_total",
    "shoal_fetch_bytes_total",
    "shoal_fetch_records_total",
    "shoal_fetch_waiting",
    "shoal_flush_bytes",
    "shoal_flush_duration_seconds",
    "shoal_flushes_total",
    "shoal_flush_backlog_bytes",
    "shoal_sequencer_commit_duration_seconds",
    "shoal_sequencer_commits_total",
    "shoal_object_store_requests_total",
    "shoal_object_store_request_duration_seconds",
    "shoal_object_store_bytes_total",
    "shoal_cache_requests_total",
    "shoal_cache_bytes",
    "shoal_connections",
    "shoal_connections_accepted_total",
    "shoal_consumer_group_lag",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_a_load_run() {
    let (agent, http) = agent_with_http().await;
    let bootstrap = agent.bootstrap();
    let topic = "metered";
    create_topic(&bootstrap, topic, 3, &[]).await;
    let producer = producer(&bootstrap, &[]);
    let first = make_records("metered-a", 300, 3);
    send_all(&producer, topic, &first).await;
    consume_from_start(&bootstrap, topic, &[0, 1, 2], first.len()).await;
    commit(&bootstrap, "metered-readers", topic, &[(0, 1)]);

    let before = scrape(http).await;
    let topic_label = [("topic", topic)];
    assert_eq!(
        sample(&before, "shoal_produce_records_total", &topic_label),
        300.0
    );
    let payload: usize = first
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .sum();
    let produced_bytes = sample(&before, "shoal_produce_bytes_total", &topic_label);
    assert!(
        produced_bytes >= payload as f64,
        "{produced_bytes} < {payload}"
    );
    assert!(sample(&before, "shoal_fetch_records_total", &topic_label) >= 300.0);
    assert!(sample(&before, "shoal_fetch_bytes_total", &topic_label) >= produced_bytes);
    for api in ["Produce", "Fetch", "Metadata", "ApiVersions"] {
        let ok = sample(
            &before,
            "shoal_requests_total",
            &[("api", api), ("outcome", "ok")],
        );
        assert!(ok >= 1.0, "{api} requests: {ok}");
        let timed = sample(&before, "shoal_request_duration_seconds", &[("api", api)]);
        assert!(timed >= ok, "{api}: {timed} timed of {ok}");
    }
    let flushes = sample(&before, "shoal_flushes_total", &[("outcome", "ok")]);
    assert!(flushes >= 1.0);
    assert!(sample(&before, "shoal_flush_bytes", &[]) >= flushes);
    assert!(sample(&before, "shoal_flush_duration_seconds", &[]) >= flushes);
    assert!(sample(&before, "shoal_sequencer_commit_duration_seconds", &[]) >= flushes);
    let puts = [("operation", "put"), ("outcome", "ok")];
    assert!(sample(&before, "shoal_object_store_requests_total", &puts) >= flushes);
    assert!(
        sample(
            &before,
            "shoal_object_store_bytes_total",
            &[("operation", "put")]
        ) > 0.0
    );
    assert!(sample(&before, "shoal_cache_requests_total", &[]) >= 1.0);
    assert!(
        sample(&before, "shoal_connections", &[]) >= 1.0,
        "the producer is connected"
    );
    for name in CONTRACT {
        assert!(
            before.samples.iter().any(|s| s.metric.starts_with(name)),
            "no series of {name}"
        );
        assert!(before.docs.contains_key(*name), "no HELP for {name}");
    }
    // Prometheus conventions: one namespace, counters end in _total, units in the name.
    for s in &before.samples {
        let name = &s.metric;
        assert!(
            name.starts_with("shoal_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{name}"
        );
        if let prometheus_parse::Value::Counter(_) = s.value {
            assert!(name.ends_with("_total"), "counter {name}");
        }
    }

    // More load moves every counter by what it added.
    let second = make_records("metered-b", 200, 3);
    send_all(&producer, topic, &second).await;
    let after = scrape(http).await;
    assert_eq!(
        sample(&after, "shoal_produce_records_total", &topic_label),
        500.0
    );
    assert!(sample(&after, "shoal_produce_bytes_total", &topic_label) > produced_bytes);
    assert!(sample(&after, "shoal_flushes_total", &[("outcome", "ok")]) > flushes);
    assert!(
        sample(&after, "shoal_object_store_requests_total", &puts)
            > sample(&before, "shoal_object_store_requests_total", &puts)
    );

    // A frame no Kafka API has is refused, counted, and closes only its own connection.
    let refused = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "shoal_requests_total",
            &[("api", "unknown"), ("outcome", "refused")],
        )
    };
    let mut raw = tokio::net::TcpStream::connect(&bootstrap)
        .await
        .expect("connect");
    let frame = [0, 0, 0, 10, 0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0, 0];
    raw.write_all(&frame).await.expect("frame sent");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, raw.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the connection is closed: {closed:?}"
    );
    assert_eq!(refused(&scrape(http).await), refused(&after) + 1.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_ready_when_the_sequencer_and_objects_answer() {
    let (agent, http) = agent_with_http().await;
    let (status, _, body) = http_get(http, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    agent.stop().await;
}

/// The standalone compactor serves the same operations endpoints: probes, and metrics of
/// its passes and of its object-store requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compactor_process_serves_probes_and_metrics() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut child = std::process::Command::new(shoal_tests::shoal_binary())
        .arg("compactor")
        .args([
            "--metadata",
            &format!("sqlite://{}/metadata.db", dir.path().display()),
        ])
        .args([
            "--objects",
            &format!("file://{}/objects", dir.path().display()),
        ])
        .args(["--http", "127.0.0.1:0", "--interval", "200ms"])
        .env("SHOAL_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("shoal compactor starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let http: SocketAddr = blocking(|| {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("a log line").expect("readable log");
            if let Some(rest) = line.split(" http=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        addr.parse().expect("HTTP address")
    });
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let (status, _, body) = http_get(http, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let metrics = scrape(http).await;
        if sample(
            &metrics,
            "shoal_compactor_passes_total",
            &[("outcome", "ok")],
        ) >= 2.0
        {
            assert!(sample(&metrics, "shoal_compactor_pass_duration_seconds", &[]) >= 2.0);
            assert!(metrics.docs.contains_key("shoal_compactor_backlog_objects"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compactor passes counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = blocking(|| child.wait()).expect("exit status");
    assert_eq!(exit.code(), Some(0));
}
