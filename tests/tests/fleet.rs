//! A fleet of real `shoal agent` processes in two zones sharing one PostgreSQL sequencer and
//! one S3 endpoint: zone-aware Metadata, records produced in one zone and read in the other,
//! what an agent killed with SIGKILL, a rolling restart or a PostgreSQL restart leave, and a
//! consumer group whose members come and go and whose coordinator is killed, and an agent
//! draining on SIGTERM while a producer writes through it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::member::*;
use common::raw::Conn;
use common::*;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use shoal_metadata::MetadataStore;
use shoal_metadata::testing::TestPostgres;
use shoal_tests::{AgentProcess, TestS3, Watchdog};

/// Objects go under this prefix of the test bucket.
const PREFIX: &str = "fleet";

struct Fleet {
    pg: TestPostgres,
    s3: TestS3,
    metadata_url: String,
    _watchdog: Watchdog,
}

impl Fleet {
    /// PostgreSQL and S3 for a fleet; `None` when PostgreSQL is skipped on purpose.
    async fn start() -> Option<Fleet> {
        let watchdog = Watchdog::arm("a fleet".into());
        let pg = TestPostgres::start_unless_skipped().expect("PostgreSQL for the fleet")?;
        let metadata_url = pg.create_database().await.expect("fleet database");
        let s3 = TestS3::start().await;
        Some(Fleet {
            pg,
            s3,
            metadata_url,
            _watchdog: watchdog,
        })
    }

    /// Starts an agent process in `zone`.
    fn agent(&self, zone: &str) -> AgentProcess {
        let mut args = vec![
            "--metadata".to_string(),
            self.metadata_url.clone(),
            "--zone".to_string(),
            zone.to_string(),
            "--flush-interval".to_string(),
            "25ms".to_string(),
        ];
        args.extend(self.s3.agent_args(PREFIX));
        let env = self.s3.agent_env();
        blocking(|| AgentProcess::start(&args, &env))
    }

    async fn store(&self) -> Arc<dyn MetadataStore> {
        shoal_metadata::open(&self.metadata_url)
            .await
            .expect("sequencer")
    }
}

/// Node ids of the brokers a client with `client_id` is told about, and the leader of each
/// partition of `topic`.
fn metadata_view(bootstrap: &str, client_id: &str, topic: &str) -> (BTreeSet<i32>, Vec<i32>) {
    let consumer: BaseConsumer = consumer_config(bootstrap, &[("client.id", client_id)])
        .create()
        .expect("consumer");
    let metadata = blocking(|| consumer.fetch_metadata(Some(topic), TIMEOUT)).expect("metadata");
    let brokers = metadata.brokers().iter().map(|b| b.id()).collect();
    let leaders = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.leader())
        .collect();
    (brokers, leaders)
}

/// Waits until every agent lists all of `ids` to a client without a zone hint (agents learn
/// of each other on their next lease renewal).
async fn wait_for_fleet(agents: &[&AgentProcess], topic: &str) {
    let ids: BTreeSet<i32> = agents.iter().map(|a| a.node_id()).collect();
    for agent in agents {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let (brokers, _) = metadata_view(&agent.bootstrap(), "no-hint", topic);
            if brokers == ids {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent {} lists {brokers:?}, expected {ids:?}",
                agent.node_id()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zones_keep_clients_local_and_records_cross_zones_once_in_order() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let a1 = fleet.agent("zone-a");
    let a2 = fleet.agent("zone-a");
    let b1 = fleet.agent("zone-b");
    let topic = "zones";
    // Enough partitions that every agent leads some: with 12, one of three agents leads
    // none about 2% of the time.
    const PARTITIONS: i32 = 48;
    create_topic(&a1.bootstrap(), topic, PARTITIONS, &[]).await;
    wait_for_fleet(&[&a1, &a2, &b1], topic).await;

    let zone_a = BTreeSet::from([a1.node_id(), a2.node_id()]);
    let zone_b = BTreeSet::from([b1.node_id()]);
    let everyone: BTreeSet<i32> = zone_a.union(&zone_b).copied().collect();
    for (client_id, expected) in [
        ("shoal_az=zone-a", &zone_a),
        ("vector,ws_az=zone-b", &zone_b),
        ("warpstream_az=zone-a", &zone_a),
        ("diskless_az=zone-b", &zone_b),
        ("app=logs;zone=zone-a", &zone_a),
        ("rdkafka", &everyone),
        ("shoal_az=zone-z", &everyone),
    ] {
        for agent in [&a1, &a2, &b1] {
            let (brokers, leaders) = metadata_view(&agent.bootstrap(), client_id, topic);
            assert_eq!(&brokers, expected, "{client_id} asking {}", agent.node_id());
            let used: BTreeSet<i32> = leaders.iter().copied().collect();
            assert_eq!(
                &used, expected,
                "{client_id}: partitions led by the listed agents, spread over all of them"
            );
        }
    }
    // Every agent gives a client the same leaders while the fleet is unchanged.
    let views: Vec<_> = [&a1, &a2, &b1]
        .iter()
        .map(|agent| metadata_view(&agent.bootstrap(), "shoal_az=zone-a", topic))
        .collect();
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");

    // Produced in zone a (to both of its agents), consumed in zone b.
    let records = make_records("zones", 3000, PARTITIONS);
    let producer = producer(
        &a1.bootstrap(),
        &[("client.id", "shoal_az=zone-a"), ("linger.ms", "5")],
    );
    let deliveries = send_all(&producer, topic, &records).await;
    let consumer = consumer(&b1.bootstrap(), &[("client.id", "shoal_az=zone-b")]);
    let start: Vec<_> = (0..PARTITIONS).map(|p| (p, Offset::Beginning)).collect();
    assign(&consumer, topic, &start);
    let consumed = consume(&consumer, records.len(), TIMEOUT).await;
    assert_same_records(topic, &records, Some(&deliveries), &consumed);
}

/// Produces records round-robin over `partitions` until `stop` turns true; returns each
/// record sent with its delivery report.
async fn produce_until(
    producer: FutureProducer,
    topic: &'static str,
    partitions: i32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(Rec, OwnedDeliveryResult)> {
    let mut pending = Vec::new();
    let mut i = 0usize;
    while !*stop.borrow() {
        for rec in make_records(&format!("{topic}-{i}"), 50, partitions) {
            let delivery = enqueue(&producer, topic, &rec).await;
            pending.push((rec, delivery));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reports = Vec::with_capacity(pending.len());
    for (rec, delivery) in pending {
        let report = tokio::time::timeout(Duration::from_secs(120), delivery)
            .await
            .expect("delivery report in time")
            .expect("delivery report not cancelled");
        reports.push((rec, report));
    }
    reports
}

/// Reads every partition of `topic` from offset 0 to its high watermark through `bootstrap`
/// and checks what the fleet holds: offsets dense from 0, every acknowledged record at the
/// offset it was acknowledged with, and nothing that was not sent. Returns the records read.
async fn check_acknowledged(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    reports: &[(Rec, OwnedDeliveryResult)],
) -> Vec<Consumed> {
    let consumer = consumer(bootstrap, &[]);
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = watermarks(&consumer, topic, p);
        assert_eq!(low, 0);
        total += high as usize;
    }
    let start: Vec<_> = (0..partitions).map(|p| (p, Offset::Beginning)).collect();
    assign(&consumer, topic, &start);
    let consumed = consume(&consumer, total, TIMEOUT * 2).await;
    let stored: BTreeMap<(i32, i64), &Consumed> = consumed
        .iter()
        .map(|c| ((c.partition, c.offset), c))
        .collect();
    for (partition, records) in by_partition(&consumed, topic) {
        let offsets: Vec<i64> = records.iter().map(|c| c.offset).collect();
        let dense: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(offsets, dense, "offsets of {topic}/{partition}");
    }
    let sent: BTreeMap<&[u8], &Rec> = reports
        .iter()
        .map(|(rec, _)| (rec.key.as_deref().unwrap_or_default(), rec))
        .collect();
    for c in &consumed {
        let rec = sent
            .get(c.key.as_deref().unwrap_or_default())
            .unwrap_or_else(|| panic!("{topic}/{} offset {}: never sent", c.partition, c.offset));
        assert_eq!((c.partition, &c.value), (rec.partition, &rec.value));
    }
    let mut acknowledged = 0;
    for (rec, report) in reports {
        if let Ok(delivery) = report {
            acknowledged += 1;
            let at = (delivery.partition, delivery.offset);
            let found = stored
                .get(&at)
                .unwrap_or_else(|| panic!("acknowledged {at:?} is missing"));
            assert_eq!(found.key, rec.key, "record acknowledged at {at:?}");
        }
    }
    assert!(acknowledged > 0, "nothing was acknowledged");
    consumed
}

/// Whether a file in the bucket is an object (a ULID key), not one of the endpoint's files.
fn is_object_key(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.len() == 26 && n.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Every object in the bucket is either referenced by the batch index or on record as an
/// upload that was never committed (for the garbage collector): none is unaccounted for.
async fn check_objects_accounted(fleet: &Fleet) -> (usize, usize) {
    let store = fleet.store().await;
    let mut referenced = BTreeSet::new();
    for topic in store.list_topics().await.expect("topics") {
        for p in 0..topic.partitions {
            for row in store.batches(topic.id, p, 0, u64::MAX).await.expect("rows") {
                referenced.insert(row.object_id);
            }
        }
    }
    let reserved: BTreeSet<String> = store
        .stale_uploads(Duration::ZERO)
        .await
        .expect("uploads")
        .into_iter()
        .map(|u| u.object_id)
        .collect();
    let mut orphans = 0;
    let mut objects = 0;
    for entry in std::fs::read_dir(fleet.s3.dir(PREFIX)).expect("bucket listing") {
        let name = entry.expect("entry").file_name();
        if !is_object_key(&name) {
            continue; // the endpoint's own files
        }
        let name = name.into_string().expect("utf-8");
        objects += 1;
        if !referenced.contains(&name) {
            assert!(
                reserved.contains(&name),
                "object {name} is neither committed nor on record as an upload"
            );
            orphans += 1;
        }
    }
    (objects, orphans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_while_producing_loses_nothing_acknowledged() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    // Realistic object-store latency, so flushes are in flight when the agent dies.
    fleet.s3.set_latency(Duration::from_millis(30));
    let mut a1 = fleet.agent("zone-a");
    let a2 = fleet.agent("zone-a");
    let b1 = fleet.agent("zone-b");
    const TOPIC: &str = "killed";
    create_topic(&a1.bootstrap(), TOPIC, 6, &[]).await;
    wait_for_fleet(&[&a1, &a2, &b1], TOPIC).await;

    let producer = producer(
        &format!("{},{}", a1.bootstrap(), a2.bootstrap()),
        &[
            ("client.id", "shoal_az=zone-a"),
            ("message.timeout.ms", "90000"),
            ("linger.ms", "5"),
        ],
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(produce_until(producer, TOPIC, 6, stopped));
    tokio::time::sleep(Duration::from_secs(2)).await;
    a1.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    let reports = load.await.expect("producer task");

    // Once the dead agent's lease lapses, clients are sent to the live ones and every
    // record is delivered (librdkafka retries until message.timeout.ms).
    let failed = reports.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(failed, 0, "records never delivered after the kill");
    check_acknowledged(&b1.bootstrap(), TOPIC, 6, &reports).await;
    let (objects, orphans) = check_objects_accounted(&fleet).await;
    assert!(objects > 0);
    eprintln!("{objects} objects, {orphans} uploaded but never committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_uploaded_but_never_committed_are_on_record() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let mut a1 = fleet.agent("zone-a");
    const TOPIC: &str = "orphans";
    create_topic(&a1.bootstrap(), TOPIC, 1, &[]).await;
    let producer = producer(&a1.bootstrap(), &[("message.timeout.ms", "5000")]);
    send_all(&producer, TOPIC, &make_records("committed", 10, 1)).await;

    // The next object lands in the bucket, but its writer dies before it hears so.
    fleet.s3.delay_put_answers(Duration::from_secs(60));
    let doomed = enqueue(&producer, TOPIC, &make_records("doomed", 1, 1)[0]).await;
    let bucket = fleet.s3.dir(PREFIX);
    let count = || {
        std::fs::read_dir(&bucket)
            .expect("bucket")
            .filter(|e| e.as_ref().is_ok_and(|e| is_object_key(&e.file_name())))
            .count()
    };
    let before = count();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while count() == before {
        assert!(tokio::time::Instant::now() < deadline, "no PUT arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a1.kill();
    assert!(doomed.await.expect("report").is_err(), "never acknowledged");

    let (objects, orphans) = check_objects_accounted(&fleet).await;
    assert_eq!(
        orphans, 1,
        "of {objects} objects, the one never committed is on record"
    );
    let uploads = fleet
        .store()
        .await
        .stale_uploads(Duration::ZERO)
        .await
        .expect("uploads");
    assert!(
        uploads.iter().all(|u| u.agent_id == a1.node_id()),
        "{uploads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_nothing() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let mut a1 = fleet.agent("zone-a");
    let mut a2 = fleet.agent("zone-a");
    const TOPIC: &str = "rolling";
    create_topic(&a1.bootstrap(), TOPIC, 4, &[]).await;
    wait_for_fleet(&[&a1, &a2], TOPIC).await;

    // The bootstrap agents are both replaced, so the producer must learn of their successors
    // from Metadata before the second one goes (clients of a real fleet bootstrap through a
    // stable Service address instead).
    let producer = producer(
        &format!("{},{}", a1.bootstrap(), a2.bootstrap()),
        &[
            ("message.timeout.ms", "90000"),
            ("linger.ms", "5"),
            ("topic.metadata.refresh.interval.ms", "1000"),
        ],
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(produce_until(producer, TOPIC, 4, stopped));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Replace each agent in turn, as a Deployment's rolling update does.
    assert_eq!(blocking(|| a1.terminate()), Some(0), "a clean stop");
    let a3 = fleet.agent("zone-a");
    wait_for_fleet(&[&a2, &a3], TOPIC).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(blocking(|| a2.terminate()), Some(0), "a clean stop");
    let a4 = fleet.agent("zone-a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    let reports = load.await.expect("producer task");

    let failed = reports.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(
        failed, 0,
        "records never delivered across the rolling restart"
    );
    check_acknowledged(&a4.bootstrap(), TOPIC, 4, &reports).await;
    // Clean stops deregister and release their unused upload keys: nothing is left over.
    let store = fleet.store().await;
    let live: BTreeSet<i32> = store
        .live_agents()
        .await
        .expect("agents")
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(live, BTreeSet::from([a3.node_id(), a4.node_id()]));
    let (_, orphans) = check_objects_accounted(&fleet).await;
    assert_eq!(orphans, 0, "a clean stop commits every object it uploaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_run_loses_nothing() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let a1 = fleet.agent("zone-a");
    let b1 = fleet.agent("zone-b");
    const TOPIC: &str = "pg-restart";
    create_topic(&a1.bootstrap(), TOPIC, 3, &[]).await;
    wait_for_fleet(&[&a1, &b1], TOPIC).await;

    let producer = producer(
        &a1.bootstrap(),
        &[("message.timeout.ms", "90000"), ("linger.ms", "5")],
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(produce_until(producer, TOPIC, 3, stopped));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = blocking(|| fleet.pg.restart(Duration::from_secs(2))).expect("restart");
    if !restarted {
        eprintln!("SHOAL_TEST_DATABASE_URL names a server we cannot restart: skipping");
        stop.send_replace(true);
        return;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    let reports = load.await.expect("producer task");

    let failed = reports.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(
        failed, 0,
        "records never delivered after PostgreSQL came back"
    );
    check_acknowledged(&b1.bootstrap(), TOPIC, 3, &reports).await;
    // The agents carry on: fresh records go through both of them.
    let after = make_records("after-restart", 300, 3);
    let fresh = common::producer(&b1.bootstrap(), &[]);
    send_all(&fresh, TOPIC, &after).await;
}

/// Reads the group's committed offsets through any live agent, retrying while the group
/// moves to another coordinator.
async fn committed_through(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        match blocking(|| committed_offsets(bootstrap, group, topic, partitions)) {
            Ok(offsets) => return offsets.into_iter().map(|o| o.unwrap_or(0)).collect(),
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "committed offsets unreadable: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Every agent names the same coordinator for `group` in FindCoordinator (batched, v4), and
/// the others answer its members with NOT_COORDINATOR.
async fn check_coordinator_answers(agents: &[AgentProcess], coordinator: usize, group: &str) {
    let group_key = StrBytes::from_string(group.to_string());
    for (i, agent) in agents.iter().enumerate() {
        let mut conn = Conn::connect(agent.bootstrap()).await;
        let found: FindCoordinatorResponse = conn
            .call(
                ApiKey::FindCoordinator,
                4,
                &FindCoordinatorRequest::default()
                    .with_key_type(0)
                    .with_coordinator_keys(vec![group_key.clone()]),
            )
            .await;
        assert_eq!(
            found.coordinators[0].node_id.0,
            agents[coordinator].node_id(),
            "agent {i} names another coordinator"
        );
        if i != coordinator {
            let beat: HeartbeatResponse = conn
                .call(
                    ApiKey::Heartbeat,
                    4,
                    &HeartbeatRequest::default()
                        .with_group_id(GroupId(group_key.clone()))
                        .with_member_id(StrBytes::from_static_str("someone"))
                        .with_generation_id(1),
                )
                .await;
            assert_eq!(beat.error_code, 16, "NOT_COORDINATOR from agent {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_group_outlives_its_members_and_its_coordinator() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let mut agents = vec![
        fleet.agent("zone-a"),
        fleet.agent("zone-a"),
        fleet.agent("zone-a"),
    ];
    const TOPIC: &str = "grouped";
    const GROUP: &str = "fleet-readers";
    const PARTITIONS: i32 = 6;
    create_topic(&agents[0].bootstrap(), TOPIC, PARTITIONS, &[]).await;
    wait_for_fleet(&agents.iter().collect::<Vec<_>>(), TOPIC).await;
    let bootstrap = agents
        .iter()
        .map(AgentProcess::bootstrap)
        .collect::<Vec<_>>()
        .join(",");

    let producer = producer(&bootstrap, &[("message.timeout.ms", "90000")]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(produce_until(producer, TOPIC, PARTITIONS, stopped));

    // Three members share the six partitions; a fourth joins and they spread again.
    let join = || GroupMember::start(&bootstrap, GROUP, TOPIC, &[]);
    let (m1, m2, m3) = (join(), join(), join());
    wait_for_spread(&[&m1, &m2, &m3], 6, 2, 2).await;
    let m4 = join();
    wait_for_spread(&[&m1, &m2, &m3, &m4], 6, 1, 2).await;
    // One leaves, one crashes: after its session times out, the other two hold everything.
    let mut gone = vec![m4.leave()];
    gone.push(m3.kill());
    wait_for_spread(&[&m1, &m2], 6, 3, 3).await;

    // The coordinator dies. Another agent takes the group over from the sequencer once the
    // dead agent's leases lapse, and the members carry on.
    let coordinator = agents
        .iter()
        .position(|a| a.logged(&["coordinating consumer group", GROUP]))
        .expect("one agent coordinates the group");
    let survivor = agents[(coordinator + 1) % 3].bootstrap();
    check_coordinator_answers(&agents, coordinator, GROUP).await;
    let before = committed_through(&survivor, GROUP, TOPIC, PARTITIONS).await;
    let read_before = m1.reported().records.len() + m2.reported().records.len();
    agents[coordinator].kill();
    let dead = agents.remove(coordinator);
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    while !agents
        .iter()
        .any(|a| a.logged(&["coordinating consumer group", GROUP]))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agent took the group over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    let reports = load.await.expect("producer task");
    drop(dead);

    // Every acknowledged record is read by some member at least once, and the group's
    // committed offsets reach the end of every partition without ever going back.
    let acknowledged: BTreeSet<(i32, i64)> = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|d| (d.partition, d.offset)))
        .collect();
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| {
            acknowledged
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| o + 1)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let survivor = agents[0].bootstrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        let read: BTreeSet<(i32, i64)> = gone
            .iter()
            .cloned()
            .chain([m1.reported(), m2.reported()])
            .flat_map(|r| r.records)
            .map(|(p, o, _)| (p, o))
            .collect();
        let committed = committed_through(&survivor, GROUP, TOPIC, PARTITIONS).await;
        let missing = acknowledged.difference(&read).count();
        if missing == 0 && committed.iter().zip(&ends).all(|(c, e)| c >= e) {
            assert!(
                committed.iter().zip(&before).all(|(now, then)| now >= then),
                "committed offsets went back: {before:?} -> {committed:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} acknowledged records never read; committed {committed:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let read_after = m1.reported().records.len() + m2.reported().records.len();
    assert!(read_after > read_before, "the members stopped reading");
}

/// `/readyz` of an agent: `None` once nothing listens there any more.
async fn readiness(addr: std::net::SocketAddr) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_readiness_off_clients_moved_nothing_lost() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let mut a1 = fleet.agent("zone-a");
    let a2 = fleet.agent("zone-a");
    const TOPIC: &str = "draining";
    create_topic(&a1.bootstrap(), TOPIC, 8, &[]).await;
    wait_for_fleet(&[&a1, &a2], TOPIC).await;
    let http = a1.http_addr();
    assert_eq!(readiness(http).await, Some((200, "ready\n".to_string())));

    // The producer knows only the agent that is about to stop: it must be moved by what that
    // agent answers, not by a second bootstrap address.
    let producer = producer(
        &a1.bootstrap(),
        &[("message.timeout.ms", "60000"), ("linger.ms", "5")],
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(produce_until(producer, TOPIC, 8, stopped));
    // So is a consumer tailing every partition: fetches must move too.
    let tailer = consumer(&a1.bootstrap(), &[]);
    let start: Vec<_> = (0..8).map(|p| (p, Offset::Beginning)).collect();
    assign(&tailer, TOPIC, &start);
    let tailed = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
    let tail = tokio::spawn({
        let tailed = tailed.clone();
        async move {
            loop {
                match tailer.recv().await {
                    Ok(m) => {
                        let c = to_consumed(&m);
                        tailed.lock().insert((c.partition, c.offset));
                    }
                    Err(e) => panic!("the tailing consumer failed: {e}"),
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = std::time::Instant::now();
    a1.sigterm();
    let mut draining = None;
    while let Some((status, body)) = readiness(http).await {
        if status == 503 {
            draining = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let draining = draining.expect("readiness turned off before the agent exited");
    assert!(draining.contains("draining"), "{draining}");
    assert_eq!(blocking(|| a1.wait()), Some(0), "a clean stop");
    eprintln!("SIGTERM to exit: {:?}", signalled.elapsed());
    assert!(a1.logged(&["draining"]), "the drain is logged");
    // The producer goes on through the other agent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    let reports = load.await.expect("producer task");
    let failed: Vec<_> = reports.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} records not delivered: {:?}",
        failed.len(),
        failed.first()
    );
    // The tailing consumer reads every record, those written after its agent left included.
    let acknowledged: BTreeSet<(i32, i64)> = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|d| (d.partition, d.offset)))
        .collect();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let missing = acknowledged.difference(&tailed.lock()).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tailing consumer misses {missing} of {} records",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tail.abort();
    check_acknowledged(&a2.bootstrap(), TOPIC, 8, &reports).await;
}
