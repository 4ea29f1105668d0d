//! Consumer group members as `shoal-group-member` processes: killed with SIGKILL, their
//! sessions time out; restarted under the same `group.instance.id`, they are static members.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::{TIMEOUT, consumer_config};

/// What a member process has reported so far.
#[derive(Debug, Default, Clone)]
pub struct Reported {
    /// (partition, offset, key) of every record read, in order.
    pub records: Vec<(i32, i64, String)>,
    pub assignment: Vec<i32>,
    pub rebalances: usize,
    pub commits: usize,
    pub left: bool,
}

pub struct GroupMember {
    child: Child,
    stdin: Option<ChildStdin>,
    reported: Arc<Mutex<Reported>>,
}

impl GroupMember {
    /// Starts a member of `group` reading `topic`; `settings` are extra librdkafka settings.
    pub fn start(bootstrap: &str, group: &str, topic: &str, settings: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-group-member"))
            .args([bootstrap, group, topic])
            .args(settings.iter().map(|(k, v)| format!("{k}={v}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("group member starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let reported = Arc::new(Mutex::new(Reported::default()));
        std::thread::spawn({
            let reported = reported.clone();
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut r = reported.lock().unwrap();
                    let mut words = line.splitn(4, ' ');
                    match words.next() {
                        Some("record") => {
                            let partition = words.next().and_then(|p| p.parse().ok());
                            let offset = words.next().and_then(|o| o.parse().ok());
                            let key = words.next().unwrap_or_default().to_string();
                            if let (Some(p), Some(o)) = (partition, offset) {
                                r.records.push((p, o, key));
                            }
                        }
                        Some("assignment") => {
                            r.assignment = words
                                .next()
                                .unwrap_or_default()
                                .split(',')
                                .filter_map(|p| p.parse().ok())
                                .collect();
                        }
                        Some("rebalance") => r.rebalances += 1,
                        Some("committed") => r.commits += 1,
                        Some("left") => r.left = true,
                        _ => {}
                    }
                }
            }
        });
        GroupMember {
            stdin: child.stdin.take(),
            child,
            reported,
        }
    }

    pub fn reported(&self) -> Reported {
        self.reported.lock().unwrap().clone()
    }

    pub fn assignment(&self) -> Vec<i32> {
        self.reported.lock().unwrap().assignment.clone()
    }

    /// Asks the member to commit, leave the group and exit; waits for it.
    pub fn leave(mut self) -> Reported {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "leave");
        }
        let status = self.child.wait().expect("member exit status");
        assert!(status.success(), "member exited with {status}");
        // The reader thread sees the end of stdout right after the exit.
        std::thread::sleep(Duration::from_millis(100));
        self.reported()
    }

    /// SIGKILL: no LeaveGroup, no last commit; the group notices when its session times out.
    pub fn kill(mut self) -> Reported {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        self.reported()
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A group member whose assignment can be watched.
pub trait Assigned {
    fn assigned(&self) -> Vec<i32>;
}

impl Assigned for GroupMember {
    fn assigned(&self) -> Vec<i32> {
        self.assignment()
    }
}

/// The committed offsets of `group` for partitions `0..partitions` of `topic` (`None` where
/// nothing is committed), read by a client outside the group.
///
/// A member asking for its own committed offsets while it holds the partition leaves
/// librdkafka (2.12) unable to shut that member down, so tests ask from outside.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<i64>>, KafkaError> {
    let reader: BaseConsumer = consumer_config(bootstrap, &[("group.id", group)])
        .create()
        .expect("offset reader");
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let committed = reader.committed_offsets(wanted, TIMEOUT)?;
    Ok((0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect())
}

/// Waits until the members hold every one of `partitions` partitions between them, each
/// holding `min..=max`, none held twice.
pub async fn wait_for_spread<M: Assigned>(
    members: &[&M],
    partitions: usize,
    min: usize,
    max: usize,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let held: Vec<Vec<i32>> = members.iter().map(|m| m.assigned()).collect();
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let total: usize = held.iter().map(Vec::len).sum();
        if all.len() == partitions
            && total == partitions
            && held.iter().all(|h| (min..=max).contains(&h.len()))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "assignments never settled: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
