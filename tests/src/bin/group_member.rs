//! A consumer group member as its own process, so tests can kill it with SIGKILL and watch
//! its session time out, or restart it under the same `group.instance.id`.
//!
//! `shoal-group-member BOOTSTRAP GROUP TOPIC [KEY=VALUE ...]`: the pairs are librdkafka
//! settings. It prints one line per event on stdout and flushes each:
//! `record PARTITION OFFSET KEY` for every record read, `assignment P,P,...` whenever its
//! assignment changes, `rebalance` for every rebalance callback, `committed` after each
//! commit. Offsets are committed only after their records were printed, so whatever the
//! group has committed has been seen (at least once). A line `leave` on stdin, or its end,
//! makes it commit, leave the group and exit.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;

struct Context;

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        say("rebalance".into());
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, group, topic, settings @ ..] = args.as_slice() else {
        eprintln!("usage: shoal-group-member BOOTSTRAP GROUP TOPIC [KEY=VALUE ...]");
        std::process::exit(2);
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100");
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            eprintln!("not a KEY=VALUE setting: {setting}");
            std::process::exit(2);
        };
        config.set(key, value);
    }
    let consumer: BaseConsumer<Context> =
        config.create_with_context(Context).expect("group consumer");
    consumer.subscribe(&[topic]).expect("subscribe");

    let leaving = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let leaving = leaving.clone();
        move || {
            for line in std::io::stdin().lock().lines() {
                if !matches!(line.as_deref(), Ok(l) if l.trim() != "leave") {
                    break;
                }
            }
            leaving.store(true, Ordering::SeqCst);
        }
    });

    let mut assignment = String::new();
    let mut uncommitted = false;
    let mut last_commit = Instant::now();
    while !leaving.load(Ordering::SeqCst) {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            match result {
                Ok(m) => {
                    let key = m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    say(format!("record {} {} {key}", m.partition(), m.offset()));
                    uncommitted = true;
                }
                Err(e) => eprintln!("consumer error (retried): {e}"),
            }
        }
        let now: Vec<String> = consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| e.partition().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let now = now.join(",");
        if now != assignment {
            say(format!("assignment {now}"));
            assignment = now;
        }
        if uncommitted && last_commit.elapsed() >= Duration::from_millis(200) {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => say("committed".into()),
                Err(e) => eprintln!("commit failed (retried): {e}"),
            }
            uncommitted = false;
            last_commit = Instant::now();
        }
    }
    if uncommitted && consumer.commit_consumer_state(CommitMode::Sync).is_ok() {
        say("committed".into());
    }
    consumer.unsubscribe();
    drop(consumer);
    say("left".into());
}
