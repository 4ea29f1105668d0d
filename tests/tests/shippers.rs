//! The log shipper configs of `deploy/shippers` against a real agent: rsyslog (omkafka) and
//! syslog-ng (kafka-c) run with the committed files as they are, tailing a file the test
//! writes, and the producer settings of `vector.toml` drive a librdkafka producer (Vector's
//! Kafka sink is librdkafka with those settings). Every line must arrive exactly once.
//!
//! The daemons come from Debian's packages, which `scripts/test` unpacks under
//! `target/shippers/root` (an installed rsyslog or syslog-ng works too). Without them these
//! tests fail, unless `SHOAL_SKIP_SHIPPERS=1` is set.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TIMEOUT, assign, blocking, consumer, create_topic, watermarks};
use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shoal_tests::TestAgent;

/// Lines each test ships.
const LINES: usize = 1000;
/// Partitions of the topic a shipper writes to.
const PARTITIONS: i32 = 3;
/// The zone of the agent, named in the shippers' `client.id`.
const ZONE: &str = "zone-test";
/// How long every line may take to arrive once written.
const ARRIVAL: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace directory")
        .to_path_buf()
}

fn shipper_config(name: &str) -> PathBuf {
    workspace().join("deploy/shippers").join(name)
}

/// Where installed or unpacked Debian packages are looked for: the tree `scripts/test`
/// unpacks, then the system.
fn package_roots() -> Vec<PathBuf> {
    vec![workspace().join("target/shippers/root"), PathBuf::from("/")]
}

/// A directory `pattern` names under `root`, with `*` standing for one path component.
fn find_dir(root: &Path, pattern: &str, contains: &str) -> Option<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    for part in pattern.split('/') {
        dirs = dirs
            .into_iter()
            .flat_map(|dir| match part {
                "*" => std::fs::read_dir(&dir)
                    .map(|entries| entries.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default(),
                _ => vec![dir.join(part)],
            })
            .collect();
    }
    dirs.into_iter().find(|dir| dir.join(contains).is_file())
}

/// A log shipper daemon: its program, the flags that find its modules, and its environment.
struct Shipper {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The shipper, or `None` when it is missing and `SHOAL_SKIP_SHIPPERS=1` says to skip.
fn shipper_or_skip(name: &str, found: Option<Shipper>) -> Option<Shipper> {
    if found.is_some() {
        return found;
    }
    if std::env::var("SHOAL_SKIP_SHIPPERS").as_deref() == Ok("1") {
        eprintln!("SHOAL_SKIP_SHIPPERS=1 and no {name} found: skipping");
        return None;
    }
    panic!(
        "{name} with its Kafka module not found under target/shippers/root or /: \
         scripts/test unpacks Debian's rsyslog, rsyslog-kafka, syslog-ng-core and \
         syslog-ng-mod-rdkafka there; SHOAL_SKIP_SHIPPERS=1 skips these tests"
    );
}

fn rsyslog() -> Option<Shipper> {
    let found = package_roots().into_iter().find_map(|root| {
        let program = root.join("usr/sbin/rsyslogd");
        let modules = find_dir(&root, "usr/lib/*/rsyslog", "omkafka.so")?;
        program.is_file().then(|| Shipper {
            program,
            args: vec!["-M".into(), modules.display().to_string()],
            env: vec![],
        })
    });
    shipper_or_skip("rsyslogd", found)
}

fn syslog_ng() -> Option<Shipper> {
    let found = package_roots().into_iter().find_map(|root| {
        let program = root.join("usr/sbin/syslog-ng");
        let modules = find_dir(&root, "usr/lib/syslog-ng/*", "libkafka.so")?;
        let libraries = root.join("usr/lib/syslog-ng");
        program.is_file().then(|| Shipper {
            program,
            args: vec![format!("--module-path={}", modules.display())],
            env: vec![("LD_LIBRARY_PATH".into(), libraries.display().to_string())],
        })
    });
    shipper_or_skip("syslog-ng", found)
}

/// A running daemon, killed when dropped (also when the test fails).
struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Daemon {
        let out = File::create(&log).expect("daemon log file");
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("daemon log file"))
            .stderr(out);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Fails the test if the daemon exited (a refused config, a missing module).
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.output());
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` distinct log lines of varying length, numbered from `from`.
fn log_lines(tag: &str, from: usize, count: usize) -> Vec<String> {
    (from..from + count)
        .map(|i| {
            let filler = "abcdefghijklmnopqrstuvwxyz".repeat(1 + i % 7);
            format!("{tag} request={i:05} status=200 path=/api/v1/items/{i} {filler}")
        })
        .collect()
}

fn append_lines(path: &Path, lines: &[String]) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    for line in lines {
        writeln!(file, "{line}").expect("log line written");
    }
    file.flush().expect("log file flushed");
}

/// Reads `topic` from the start until every line of `expected` arrived, then checks that
/// nothing else did: no line missing, none duplicated, none unexpected.
async fn assert_lines_arrive(
    bootstrap: &str,
    topic: &str,
    expected: &[String],
    mut daemon: Option<&mut Daemon>,
) {
    let consumer = consumer(bootstrap, &[]);
    let start: Vec<_> = (0..PARTITIONS).map(|p| (p, Offset::Beginning)).collect();
    assign(&consumer, topic, &start);
    let want: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while !want.iter().all(|line| seen.contains_key(*line)) {
        if let Some(daemon) = daemon.as_deref_mut() {
            daemon.assert_running();
        }
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(_) => {
                let missing: Vec<_> = want
                    .iter()
                    .filter(|line| !seen.contains_key(**line))
                    .collect();
                panic!(
                    "{} of {} lines missing from {topic} after {ARRIVAL:?}, first: {:?}{}",
                    missing.len(),
                    want.len(),
                    missing.first(),
                    daemon
                        .map(|d| format!("\n{} output:\n{}", d.name, d.output()))
                        .unwrap_or_default()
                );
            }
            Ok(Err(e)) => panic!("consumer error: {e}"),
            Ok(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                *seen.entry(value.trim_end().to_string()).or_default() += 1;
            }
        }
    }
    let stored: i64 = (0..PARTITIONS)
        .map(|p| {
            let (low, high) = watermarks(&consumer, topic, p);
            high - low
        })
        .sum();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<_> = seen
        .keys()
        .filter(|line| !want.contains(line.as_str()))
        .collect();
    assert!(
        duplicated.is_empty(),
        "{} lines arrived more than once, first: {:?}",
        duplicated.len(),
        duplicated.first()
    );
    assert!(
        unexpected.is_empty(),
        "{} lines nobody wrote, first: {:?}",
        unexpected.len(),
        unexpected.first()
    );
    assert_eq!(
        stored,
        expected.len() as i64,
        "records stored in {topic} (each line once)"
    );
}

/// Runs a shipper daemon with its committed config on a file, and checks that lines written
/// before it started and while it runs all arrive.
async fn ship_through(name: &str, shipper: Shipper, config: &str, args: &[String]) {
    let agent = TestAgent::start_with(|c| c.zone = Some(ZONE.into())).await;
    let bootstrap = agent.bootstrap();
    let topic = format!("logs-{name}");
    create_topic(&bootstrap, &topic, PARTITIONS, &[]).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work directory");
    let log_file = dir.path().join("app.log");

    let early = log_lines(name, 0, LINES / 2);
    append_lines(&log_file, &early);

    let mut command = Command::new(&shipper.program);
    command
        .args(&shipper.args)
        .arg("-f")
        .arg(shipper_config(config))
        .args(
            args.iter()
                .map(|a| a.replace("{dir}", &work.display().to_string())),
        )
        .env("SHOAL_BOOTSTRAP", &bootstrap)
        .env("SHOAL_TOPIC", &topic)
        .env("SHOAL_CLIENT_ID", format!("{name},shoal_az={ZONE}"))
        .env("LOG_FILE", &log_file)
        .env("RSYSLOG_WORKDIR", &work)
        // The daemon's own librdkafka (Debian's), not the one cargo builds for the tests.
        .env_remove("LD_LIBRARY_PATH")
        .envs(shipper.env.iter().map(|(k, v)| (k, v)));
    let mut daemon = Daemon::spawn(name, command, dir.path().join(format!("{name}.out")));

    // The rest while the daemon follows the file, in a few bursts.
    let late = log_lines(name, LINES / 2, LINES - LINES / 2);
    for burst in late.chunks(LINES / 8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        daemon.assert_running();
        append_lines(&log_file, burst);
    }
    let all: Vec<String> = early.into_iter().chain(late).collect();
    assert_lines_arrive(&bootstrap, &topic, &all, Some(&mut daemon)).await;
    drop(daemon);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_omkafka_ships_every_line() {
    let Some(rsyslog) = rsyslog() else { return };
    let args = ["-n".to_string(), "-i".into(), "{dir}/rsyslogd.pid".into()];
    ship_through("rsyslog", rsyslog, "rsyslog.conf", &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ng_kafka_c_ships_every_line() {
    let Some(syslog_ng) = syslog_ng() else { return };
    let args = [
        "-F".to_string(),
        "--no-caps".into(),
        "--stderr".into(),
        "--persist-file={dir}/syslog-ng.persist".into(),
        "--pidfile={dir}/syslog-ng.pid".into(),
        "--control={dir}/syslog-ng.ctl".into(),
    ];
    ship_through("syslog-ng", syslog_ng, "syslog-ng.conf", &args).await;
}

/// Vector's `${NAME}` and `${NAME:-default}` with values from `vars`.
fn interpolate(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"));
        let reference = &rest[start + 2..start + end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        let value = vars
            .iter()
            .find(|(var, _)| *var == name)
            .map(|(_, value)| *value)
            .or(default)
            .unwrap_or_else(|| panic!("vector.toml uses ${{{name}}}, which the test does not set"));
        out.push_str(value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn string<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("vector.toml: the kafka sink has no string `{key}`"))
}

/// The producer settings Vector's Kafka sink derives from `vector.toml`: bootstrap servers,
/// compression and message timeout from the sink's own fields, then `librdkafka_options`.
fn vector_producer_config(vars: &[(&str, &str)]) -> (ClientConfig, String) {
    let path = shipper_config("vector.toml");
    let text = std::fs::read_to_string(&path).expect("deploy/shippers/vector.toml");
    let config: toml::Table = text.parse().expect("vector.toml is TOML");
    let sinks = config
        .get("sinks")
        .and_then(toml::Value::as_table)
        .expect("vector.toml has sinks");
    let sink = sinks
        .values()
        .filter_map(toml::Value::as_table)
        .find(|sink| sink.get("type").and_then(toml::Value::as_str) == Some("kafka"))
        .expect("vector.toml has a kafka sink");

    let mut client = ClientConfig::new();
    client.set(
        "bootstrap.servers",
        interpolate(string(sink, "bootstrap_servers"), vars),
    );
    if let Some(codec) = sink.get("compression").and_then(toml::Value::as_str) {
        client.set("compression.codec", codec);
    }
    if let Some(timeout) = sink
        .get("message_timeout_ms")
        .and_then(toml::Value::as_integer)
    {
        client.set("message.timeout.ms", timeout.to_string());
    }
    let options = sink
        .get("librdkafka_options")
        .and_then(toml::Value::as_table)
        .expect("the kafka sink has librdkafka_options");
    for (key, value) in options {
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("librdkafka_options.{key} is not a string"));
        client.set(key, interpolate(value, vars));
    }
    (client, interpolate(string(sink, "topic"), vars))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_librdkafka_options_deliver_every_record() {
    let agent = TestAgent::start_with(|c| c.zone = Some(ZONE.into())).await;
    let bootstrap = agent.bootstrap();
    let (client, topic) = vector_producer_config(&[
        ("SHOAL_BOOTSTRAP", bootstrap.as_str()),
        ("SHOAL_ZONE", ZONE),
        ("SHOAL_TOPIC", "vector-logs"),
    ]);
    assert_eq!(topic, "vector-logs");
    let client_id = client.get("client.id").expect("vector.toml sets client.id");
    assert!(
        client_id.contains(&format!("shoal_az={ZONE}")),
        "client.id {client_id:?} names the zone"
    );
    for (key, value) in [("compression.codec", "zstd"), ("acks", "all")] {
        assert_eq!(client.get(key), Some(value), "vector.toml sets {key}");
    }
    create_topic(&bootstrap, &topic, PARTITIONS, &[]).await;
    let producer: FutureProducer = client
        .create()
        .expect("librdkafka takes vector.toml's options");

    let lines = log_lines("vector", 0, LINES);
    let hosts = ["node-1", "node-2", "node-3", "node-4"];
    let deliveries: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let record = FutureRecord::to(&topic)
                .key(hosts[i % hosts.len()])
                .payload(line.as_str());
            producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("record {i} not enqueued: {e}"))
        })
        .collect();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        match tokio::time::timeout(TIMEOUT, delivery).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err((e, _)))) => panic!("record {i} refused: {e}"),
            Ok(Err(_)) => panic!("record {i}: delivery report cancelled"),
            Err(_) => panic!("record {i}: no delivery report within {TIMEOUT:?}"),
        }
    }
    blocking(|| drop(producer));
    assert_lines_arrive(&bootstrap, &topic, &lines, None).await;
    agent.stop().await;
}
