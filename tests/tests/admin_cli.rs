//! `shoal admin` as an operator runs it: the real binary against a fleet of two agent
//! processes in two zones (PostgreSQL sequencer, S3 endpoint), its effects checked through
//! librdkafka, its JSON parsed, its exit codes and messages for refusals and bad arguments.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::member::*;
use common::*;
use rdkafka::admin::{ConfigResource, ResourceSpecifier};
use rdkafka::consumer::BaseConsumer;
use serde_json::Value;
use shoal_metadata::testing::TestPostgres;
use shoal_tests::{AgentProcess, TestS3, Watchdog, shoal_binary};

/// Objects go under this prefix of the test bucket.
const PREFIX: &str = "admin-cli";

/// Two agents, in zones `zone-a` and `zone-b`, sharing a sequencer and an object store.
struct Fleet {
    _pg: TestPostgres,
    _s3: TestS3,
    metadata_url: String,
    a: AgentProcess,
    b: AgentProcess,
    _watchdog: Watchdog,
}

impl Fleet {
    /// `None` when PostgreSQL is skipped on purpose.
    async fn start() -> Option<Fleet> {
        let watchdog = Watchdog::arm("an admin CLI fleet".into());
        let pg = TestPostgres::start_unless_skipped().expect("PostgreSQL for the fleet")?;
        let metadata_url = pg.create_database().await.expect("fleet database");
        let s3 = TestS3::start().await;
        let agent = |zone: &str| {
            let mut args = vec![
                "--metadata".to_string(),
                metadata_url.clone(),
                "--zone".to_string(),
                zone.to_string(),
                "--flush-interval".to_string(),
                "25ms".to_string(),
                "--auto-create-topics".to_string(),
                "false".to_string(),
            ];
            args.extend(s3.agent_args(PREFIX));
            let env = s3.agent_env();
            blocking(|| AgentProcess::start(&args, &env))
        };
        let a = agent("zone-a");
        let b = agent("zone-b");
        let fleet = Fleet {
            _pg: pg,
            _s3: s3,
            metadata_url,
            a,
            b,
            _watchdog: watchdog,
        };
        fleet.wait_until_agents_know_each_other().await;
        Some(fleet)
    }

    fn bootstrap(&self) -> String {
        self.a.bootstrap()
    }

    /// Agents learn of each other on their next lease renewal.
    async fn wait_until_agents_know_each_other(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        for agent in [&self.a, &self.b] {
            loop {
                let listed = admin_json(&agent.bootstrap(), &["agents", "list"]);
                if listed.as_array().is_some_and(|a| a.len() == 2) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "agents never listed each other: {listed}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one `shoal admin` run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `shoal admin --bootstrap BOOTSTRAP ARGS...`.
fn admin_cli(bootstrap: &str, args: &[&str]) -> Run {
    let output = blocking(|| {
        Command::new(shoal_binary())
            .arg("admin")
            .args(["--bootstrap", bootstrap, "--timeout", "20s"])
            .args(args)
            .env_remove("SHOAL_METADATA")
            .output()
            .expect("shoal admin runs")
    });
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a command that must succeed and returns its stdout.
fn admin_ok(bootstrap: &str, args: &[&str]) -> String {
    let run = admin_cli(bootstrap, args);
    assert_eq!(
        run.code, 0,
        "shoal admin {args:?} failed: {}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// Runs a command with `--output json` that must succeed and parses what it printed.
fn admin_json(bootstrap: &str, args: &[&str]) -> Value {
    let mut with_json = vec!["--output", "json"];
    with_json.extend_from_slice(args);
    let stdout = admin_ok(bootstrap, &with_json);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

/// Runs a command that must fail with `code`; returns its stderr.
fn admin_fails(bootstrap: &str, args: &[&str], code: i32) -> String {
    let run = admin_cli(bootstrap, args);
    assert_eq!(
        run.code, code,
        "shoal admin {args:?}: stdout {}, stderr {}",
        run.stdout, run.stderr
    );
    run.stderr
}

/// Per partition: (log start offset, high watermark) from `topics describe`.
fn described_offsets(bootstrap: &str, topic: &str) -> Vec<(i64, i64)> {
    let described = admin_json(bootstrap, &["topics", "describe", topic]);
    described[0]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["log_start_offset"].as_i64().expect("log start offset"),
                p["high_watermark"].as_i64().expect("high watermark"),
            )
        })
        .collect()
}

/// Waits until `check` gives `want`: agents see changes made through another agent after
/// their catalog refresh (at most 2 s).
async fn eventually<T: PartialEq + std::fmt::Debug>(
    what: &str,
    want: T,
    mut check: impl AsyncFnMut() -> T,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = check().await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A topic config's value as librdkafka's admin client reads it.
async fn topic_config(bootstrap: &str, topic: &str, name: &str) -> Option<String> {
    let results = admin(bootstrap)
        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
        .await
        .expect("DescribeConfigs answered");
    let resource: &ConfigResource = results[0].as_ref().expect("topic configs");
    resource.get(name).and_then(|entry| entry.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_are_managed_through_either_agent() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let bootstrap = fleet.bootstrap();
    let other = fleet.b.bootstrap();

    let created = admin_ok(
        &bootstrap,
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=-1",
            "--config",
            "max.message.bytes=2000000",
        ],
    );
    assert_eq!(created, "Created topic orders with 3 partitions.\n");
    let json = admin_json(&other, &["topics", "create", "audit"]);
    assert_eq!(json["topic"], "audit");
    assert!(json["partitions"].as_i64().unwrap() >= 1, "{json}");
    assert_eq!(list_topics(&bootstrap)["orders"], 3);
    let topic_names = async |bootstrap: &str| -> Vec<String> {
        let listed = admin_json(bootstrap, &["topics", "list"]);
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["topic"].as_str().unwrap().to_string())
            .collect()
    };
    eventually(
        "topics listed",
        vec!["audit".to_string(), "orders".to_string()],
        async || topic_names(&bootstrap).await,
    )
    .await;

    // Listed by either agent, as a table and as JSON.
    let table = admin_ok(&other, &["topics", "list"]);
    assert!(table.starts_with("TOPIC "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("orders ") && l.contains(" 3 ")),
        "{table}"
    );

    // Records produced with librdkafka show in the high watermarks.
    let records = make_records("orders", 30, 3);
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, "orders", &records).await;
    eventually(
        "offsets described by the other agent",
        vec![(0, 10); 3],
        async || described_offsets(&other, "orders"),
    )
    .await;
    let consumer: BaseConsumer = consumer_config(&bootstrap, &[]).create().unwrap();
    for p in 0..3 {
        assert_eq!(watermarks(&consumer, "orders", p), (0, 10));
    }
    let described = admin_json(&bootstrap, &["topics", "describe", "orders"]);
    let orders = &described[0];
    assert_eq!(orders["topic"], "orders");
    let agent_ids = [fleet.a.node_id() as i64, fleet.b.node_id() as i64];
    for p in orders["partitions"].as_array().unwrap() {
        assert!(agent_ids.contains(&p["leader"].as_i64().unwrap()), "{p}");
    }
    let configs: BTreeMap<&str, (&str, &str)> = orders["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                (c["value"].as_str().unwrap(), c["source"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(configs["retention.ms"], ("-1", "DYNAMIC_TOPIC_CONFIG"));
    assert_eq!(configs["cleanup.policy"], ("delete", "DEFAULT_CONFIG"));
    let table = admin_ok(&bootstrap, &["topics", "describe", "orders"]);
    assert!(
        table.contains("PARTITION  LEADER  LOG-START-OFFSET  HIGH-WATERMARK"),
        "{table}"
    );
    assert!(
        table.contains("max.message.bytes  2000000  DYNAMIC_TOPIC_CONFIG"),
        "{table}"
    );

    // Configs set and deleted (IncrementalAlterConfigs), as librdkafka then reads them.
    let altered = admin_ok(
        &other,
        &[
            "topics",
            "alter-config",
            "orders",
            "--set",
            "retention.bytes=1048576",
            "--delete",
            "max.message.bytes",
        ],
    );
    assert!(altered.contains("set retention.bytes=1048576"), "{altered}");
    eventually(
        "retention.bytes seen by the other agent",
        Some("1048576".to_string()),
        async || topic_config(&bootstrap, "orders", "retention.bytes").await,
    )
    .await;
    assert_eq!(
        topic_config(&bootstrap, "orders", "max.message.bytes")
            .await
            .as_deref(),
        Some("1048588"),
        "back to its default"
    );
    assert_eq!(
        topic_config(&bootstrap, "orders", "retention.ms")
            .await
            .as_deref(),
        Some("-1"),
        "untouched"
    );

    // More partitions; the new ones are empty.
    let grown = admin_ok(
        &bootstrap,
        &["topics", "add-partitions", "orders", "--total", "5"],
    );
    assert_eq!(grown, "Topic orders now has 5 partitions.\n");
    eventually("partitions seen by the other agent", Some(5), async || {
        list_topics(&other).get("orders").copied()
    })
    .await;
    assert_eq!(
        described_offsets(&bootstrap, "orders"),
        [(0, 10), (0, 10), (0, 10), (0, 0), (0, 0)]
    );

    // Refusals: Kafka's error name, the topic, and exit code 1.
    let stderr = admin_fails(&bootstrap, &["topics", "describe", "nope"], 1);
    assert!(
        stderr.contains("topic `nope`: UNKNOWN_TOPIC_OR_PARTITION"),
        "{stderr}"
    );
    let stderr = admin_fails(&bootstrap, &["topics", "create", "orders"], 1);
    assert!(
        stderr.contains("topic `orders`: TOPIC_ALREADY_EXISTS"),
        "{stderr}"
    );
    let stderr = admin_fails(
        &bootstrap,
        &["topics", "add-partitions", "orders", "--total", "2"],
        1,
    );
    assert!(
        stderr.contains("topic `orders`: INVALID_PARTITIONS"),
        "{stderr}"
    );
    let stderr = admin_fails(
        &bootstrap,
        &[
            "topics",
            "alter-config",
            "orders",
            "--set",
            "retention.ms=soon",
        ],
        1,
    );
    assert!(
        stderr.contains("topic `orders`: INVALID_CONFIG"),
        "{stderr}"
    );
    let stderr = admin_fails(
        &bootstrap,
        &["topics", "alter-config", "nope", "--set", "a=b"],
        1,
    );
    assert!(
        stderr.contains("topic `nope`: UNKNOWN_TOPIC_OR_PARTITION"),
        "{stderr}"
    );
    // A describe naming a known and an unknown topic shows the known one and fails.
    let run = admin_cli(
        &bootstrap,
        &["--output", "json", "topics", "describe", "orders", "nope"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let shown: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert!(run.stderr.contains("topic `nope`"), "{}", run.stderr);

    // Deleting a known and an unknown topic deletes the known one and reports the other.
    let run = admin_cli(&other, &["topics", "delete", "audit", "nope"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, "Deleted topic audit.\n");
    assert!(
        run.stderr
            .contains("topic `nope`: UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        run.stderr
    );
    let deleted = admin_json(&bootstrap, &["topics", "delete", "orders"]);
    assert_eq!(deleted["deleted"], serde_json::json!(["orders"]));
    eventually("topics left", BTreeMap::new(), async || list_topics(&other)).await;
}

/// (committed offset, log end offset, lag) of one partition.
type Lag = (Option<i64>, i64, Option<i64>);

/// The group as `groups describe` shows it, and the lag of each partition.
fn described_lag(bootstrap: &str, group: &str) -> (Value, Vec<Lag>) {
    let described = admin_json(bootstrap, &["groups", "describe", group]);
    let lag = described["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|p| {
            (
                p["committed_offset"].as_i64(),
                p["log_end_offset"].as_i64().expect("log end offset"),
                p["lag"].as_i64(),
            )
        })
        .collect();
    (described, lag)
}

/// Committed offsets read by librdkafka from outside the group.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    blocking(|| committed_offsets(bootstrap, group, topic, 3)).expect("committed offsets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_show_lag_and_offsets_are_reset_only_while_empty() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let bootstrap = fleet.bootstrap();
    let other = fleet.b.bootstrap();
    let (topic, group) = ("clicks", "dashboards");
    admin_ok(
        &bootstrap,
        &[
            "topics",
            "create",
            topic,
            "--partitions",
            "3",
            "--config",
            "retention.ms=-1",
        ],
    );
    // Timestamps BASE_TIMESTAMP + i: record i is in partition i % 3 at offset i / 3.
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, topic, &make_records("clicks", 30, 3)).await;

    // A member reads everything and commits.
    let member = GroupMember::start(&bootstrap, group, topic, &[("client.id", "dash-1")]);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while committed(&bootstrap, group, topic) != [Some(10); 3] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member never committed everything: {:?}",
            member.reported()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (described, lag) = described_lag(&other, group);
    assert_eq!(lag, [(Some(10), 10, Some(0)); 3]);
    assert_eq!(described["state"], "Stable");
    assert_eq!(described["protocol_type"], "consumer");
    let members = described["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{described}");
    assert_eq!(members[0]["client_id"], "dash-1");
    assert!(!members[0]["client_host"].as_str().unwrap().is_empty());
    let assigned = &members[0]["assignment"][0];
    assert_eq!(assigned["topic"], topic);
    assert_eq!(assigned["partitions"], serde_json::json!([0, 1, 2]));
    let member_id = members[0]["member_id"].as_str().unwrap();
    for p in described["offsets"].as_array().unwrap() {
        assert_eq!(p["member_id"], member_id);
    }
    let table = admin_ok(&bootstrap, &["groups", "describe", group]);
    assert!(table.contains("State: Stable"), "{table}");
    assert!(table.contains("dash-1"), "{table}");
    let listed = admin_json(&other, &["groups", "list"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group)
        .unwrap_or_else(|| panic!("{group} not listed: {listed}"));
    assert_eq!(entry["state"], "Stable");

    // Refused while the member is active, plan or not.
    for execute in [false, true] {
        let mut args = vec![
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-earliest",
        ];
        if execute {
            args.push("--execute");
        }
        let stderr = admin_fails(&bootstrap, &args, 1);
        assert!(
            stderr.contains("group `dashboards`: NON_EMPTY_GROUP") && stderr.contains("active"),
            "{stderr}"
        );
    }
    assert_eq!(committed(&bootstrap, group, topic), [Some(10); 3]);

    // The member leaves; new records show as lag.
    member.leave();
    send_all(&producer, topic, &make_records("later", 6, 3)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (described, lag) = described_lag(&bootstrap, group);
        if described["state"] == "Empty" {
            assert_eq!(lag, [(Some(10), 12, Some(2)); 3]);
            assert!(described["members"].as_array().unwrap().is_empty());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never emptied: {described}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without --execute: the plan, and nothing changes.
    let plan = admin_ok(
        &bootstrap,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-earliest",
        ],
    );
    assert!(
        plan.contains("GROUP       TOPIC   PARTITION  CURRENT-OFFSET  NEW-OFFSET"),
        "{plan}"
    );
    assert!(
        plan.contains("dashboards  clicks  0          10              0"),
        "{plan}"
    );
    assert!(plan.contains("add --execute"), "{plan}");
    assert_eq!(committed(&bootstrap, group, topic), [Some(10); 3]);

    // Each way of naming the new offsets, executed and read back through librdkafka.
    let reset = |args: &[&str]| {
        let mut all = vec!["groups", "reset-offsets", group, "--execute"];
        all.extend_from_slice(args);
        admin_json(&other, &all)
    };
    let done = reset(&["--topic", topic, "--to-earliest"]);
    assert_eq!(done["executed"], true);
    assert_eq!(committed(&bootstrap, group, topic), [Some(0); 3]);
    let (_, lag) = described_lag(&bootstrap, group);
    assert_eq!(lag, [(Some(0), 12, Some(12)); 3]);

    // The first record at or after BASE_TIMESTAMP + 16 ms: 18 (offset 6) in partition 0,
    // 16 and 17 (offset 5) in partitions 1 and 2.
    reset(&[
        "--topic",
        topic,
        "--to-datetime",
        "2023-11-14T22:13:20.016Z",
    ]);
    assert_eq!(
        committed(&bootstrap, group, topic),
        [Some(6), Some(5), Some(5)]
    );
    // A time after every record: the end, as Kafka's tool does.
    reset(&["--topic", topic, "--to-datetime", "2023-11-15T00:00:00Z"]);
    assert_eq!(committed(&bootstrap, group, topic), [Some(12); 3]);
    reset(&["--topic", topic, "--shift-by", "-3"]);
    assert_eq!(committed(&bootstrap, group, topic), [Some(9); 3]);
    reset(&["--topic", &format!("{topic}:1,2"), "--to-offset", "4"]);
    assert_eq!(
        committed(&bootstrap, group, topic),
        [Some(9), Some(4), Some(4)]
    );
    reset(&["--topic", &format!("{topic}:0"), "--to-offset", "1000"]);
    assert_eq!(
        committed(&bootstrap, group, topic),
        [Some(12), Some(4), Some(4)],
        "kept within the log"
    );
    reset(&["--topic", topic, "--to-latest"]);
    assert_eq!(committed(&bootstrap, group, topic), [Some(12); 3]);

    // Bad partitions and topics are refused before anything is committed.
    let stderr = admin_fails(
        &bootstrap,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            "clicks:7",
            "--to-earliest",
            "--execute",
        ],
        1,
    );
    assert!(
        stderr.contains("partition clicks/7: UNKNOWN_TOPIC_OR_PARTITION"),
        "{stderr}"
    );
    let stderr = admin_fails(
        &bootstrap,
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            "nope",
            "--to-earliest",
        ],
        1,
    );
    assert!(
        stderr.contains("topic `nope`: UNKNOWN_TOPIC_OR_PARTITION"),
        "{stderr}"
    );
    assert_eq!(committed(&bootstrap, group, topic), [Some(12); 3]);
    // No target, two targets, a date that is not one: bad arguments.
    for args in [
        &["groups", "reset-offsets", group, "--topic", topic][..],
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-earliest",
            "--to-latest",
        ],
        &[
            "groups",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-datetime",
            "yesterday",
        ],
    ] {
        admin_fails(&bootstrap, args, 2);
    }

    // Deleted, then gone from the list.
    let deleted = admin_ok(&other, &["groups", "delete", group]);
    assert_eq!(deleted, format!("Deleted group {group}.\n"));
    let listed = admin_json(&bootstrap, &["groups", "list"]);
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == group),
        "{listed}"
    );
    let stderr = admin_fails(&bootstrap, &["groups", "delete", group], 1);
    assert!(
        stderr.contains("group `dashboards`: GROUP_ID_NOT_FOUND"),
        "{stderr}"
    );
    assert_eq!(committed(&bootstrap, group, topic), [None; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_with_members_are_not_deleted() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let bootstrap = fleet.bootstrap();
    admin_ok(
        &bootstrap,
        &["topics", "create", "jobs", "--partitions", "2"],
    );
    let member = GroupMember::start(&bootstrap, "workers", "jobs", &[]);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while member.assignment().len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "never assigned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stderr = admin_fails(&bootstrap, &["groups", "delete", "workers"], 1);
    assert!(
        stderr.contains("group `workers`: NON_EMPTY_GROUP"),
        "{stderr}"
    );
    member.leave();
}

/// Node id -> (address, zone) from `agents list`.
fn listed_agents(agents: &Value) -> BTreeMap<i64, (String, String)> {
    agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let text = |field: &str| a[field].as_str().unwrap().to_string();
            (
                a["node_id"].as_i64().unwrap(),
                (text("address"), text("zone")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_are_listed_with_zones_and_heartbeats_from_the_sequencer() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let expected = BTreeMap::from([
        (
            fleet.a.node_id() as i64,
            (fleet.a.bootstrap(), "zone-a".to_string()),
        ),
        (
            fleet.b.node_id() as i64,
            (fleet.b.bootstrap(), "zone-b".to_string()),
        ),
    ]);

    // Without the sequencer: every agent and zone, no heartbeats.
    let agents = admin_json(&fleet.b.bootstrap(), &["agents", "list"]);
    assert_eq!(listed_agents(&agents), expected);
    for agent in agents.as_array().unwrap() {
        assert!(agent["last_heartbeat_ms"].is_null(), "{agent}");
    }
    let table = admin_ok(&fleet.bootstrap(), &["agents", "list"]);
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>),
        Some(vec!["NODE-ID", "ADDRESS", "ZONE", "LAST-HEARTBEAT"])
    );
    for line in lines {
        assert!(line.ends_with(" -"), "{line}");
    }

    // With it: heartbeats within the last lease renewals (every 2 s).
    let agents = admin_json(
        &fleet.bootstrap(),
        &["agents", "list", "--metadata", &fleet.metadata_url],
    );
    assert_eq!(listed_agents(&agents), expected);
    let now = now_ms();
    for agent in agents.as_array().unwrap() {
        let heartbeat = agent["last_heartbeat_ms"].as_i64().expect("a heartbeat");
        assert!(
            (now - 10_000..=now + 1_000).contains(&heartbeat),
            "heartbeat {heartbeat} not recent (now {now}): {agent}"
        );
    }
    let table = admin_ok(
        &fleet.bootstrap(),
        &["agents", "list", "--metadata", &fleet.metadata_url],
    );
    assert!(
        table.lines().skip(1).all(|l| l.ends_with(" ago)")),
        "{table}"
    );

    let stderr = admin_fails(
        &fleet.bootstrap(),
        &[
            "agents",
            "list",
            "--metadata",
            "sqlite:///nonexistent/metadata.db",
        ],
        2,
    );
    assert!(stderr.contains("no sequencer database"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agents_and_bad_arguments_exit_2() {
    // Nothing listens on port 1 of loopback.
    let stderr = admin_fails("127.0.0.1:1", &["topics", "list"], 2);
    assert!(
        stderr.starts_with("shoal admin: cannot connect to 127.0.0.1:1: "),
        "{stderr}"
    );
    let stderr = admin_fails("no-such-host.invalid:9092", &["agents", "list"], 2);
    assert!(
        stderr.contains("cannot connect to no-such-host.invalid:9092"),
        "{stderr}"
    );
    admin_fails("127.0.0.1:1", &["topics", "create"], 2);
    admin_fails(
        "127.0.0.1:1",
        &["topics", "create", "t", "--config", "novalue"],
        2,
    );
    admin_fails("127.0.0.1:1", &["topics", "alter-config", "t"], 2);
    admin_fails("127.0.0.1:1", &["--output", "yaml", "topics", "list"], 2);
}

/// A listener on loopback that answers every connection with `answer` (after reading the
/// request's size prefix), or closes it at once when `answer` is `None`.
async fn fake_agent(answer: Option<&'static [u8]>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(answer) = answer else {
                    return;
                };
                let mut size = [0u8; 4];
                if stream.read_exact(&mut size).await.is_ok() {
                    let _ = stream.write_all(answer).await;
                }
                // Holds the connection open so a silent server stays silent.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_are_errors_not_panics() {
    // A frame of 6 bytes: correlation id 1, then a body too short to be ApiVersions.
    let garbage = fake_agent(Some(&[0, 0, 0, 6, 0, 0, 0, 1, 0xff, 0xff])).await;
    let stderr = admin_fails(&garbage, &["topics", "list"], 1);
    assert!(
        stderr.starts_with(&format!(
            "shoal admin: {garbage} sent an unreadable ApiVersions"
        )),
        "{stderr}"
    );
    // A size prefix claiming 2 GiB.
    let huge = fake_agent(Some(&[0x7f, 0xff, 0xff, 0xff])).await;
    let stderr = admin_fails(&huge, &["topics", "list"], 1);
    assert!(
        stderr.contains("answer frame of 2147483647 bytes"),
        "{stderr}"
    );
    let closing = fake_agent(None).await;
    let stderr = admin_fails(&closing, &["groups", "list"], 2);
    assert!(
        stderr.contains(&format!(
            "connection to {closing} failed during ApiVersions"
        )),
        "{stderr}"
    );
    let silent = fake_agent(Some(b"")).await;
    let run = blocking(|| {
        Command::new(shoal_binary())
            .args(["admin", "--bootstrap", &silent, "--timeout", "500ms"])
            .args(["agents", "list"])
            .output()
            .expect("shoal admin runs")
    });
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("{silent} did not answer ApiVersions within 500ms")),
        "{stderr}"
    );
}
