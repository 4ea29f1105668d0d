//! ListOffsets: offsets by timestamp (`offsets_for_times`), watermarks, and topics whose
//! timestamps the broker assigns (`message.timestamp.type=LogAppendTime`).

mod common;

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::message::Timestamp;
use rdkafka::{Offset, TopicPartitionList};
use shoal_tests::TestAgent;

/// The first offset of `topic`/`partition` whose timestamp is at or after `ts`
/// (`Offset::End` when there is none).
fn offset_for_time(consumer: &impl Consumer, topic: &str, partition: i32, ts: i64) -> Offset {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(ts))
        .unwrap();
    let what = format!("offsets_for_times {topic}/{partition} @ {ts}");
    let answer = blocking(|| consumer.offsets_for_times(list, TIMEOUT))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let elem = answer
        .find_partition(topic, partition)
        .unwrap_or_else(|| panic!("{what}: partition missing from the answer"));
    elem.error().unwrap_or_else(|e| panic!("{what}: {e}"));
    elem.offset()
}

/// Records for one partition with the given timestamps.
fn timed(tag: &str, partition: i32, timestamps: &[i64]) -> Vec<Rec> {
    timestamps
        .iter()
        .enumerate()
        .map(|(i, ts)| Rec {
            partition,
            key: Some(format!("{tag}-{i}").into_bytes()),
            value: Some(value_bytes(tag, i, 50)),
            headers: Vec::new(),
            timestamp: Some(*ts),
        })
        .collect()
}

/// Sends each group of records as one flush: all of a group in flight together (so they
/// share a batch), the next group only once the previous one is committed.
async fn send_in_flushes(bootstrap: &str, topic: &str, groups: &[Vec<Rec>]) {
    let producer = producer(bootstrap, &[("linger.ms", "50")]);
    for group in groups {
        send_all(&producer, topic, group).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_times_finds_first_record_at_or_after() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "timed", 2, &[]).await;
    const T: i64 = BASE_TIMESTAMP;

    // Partition 0: three flushes of ten records, 10 ms apart inside a flush, flushes 1 s
    // apart: offsets 0-9 at T+0..T+90, 10-19 at T+1000..T+1090, 20-29 at T+2000..T+2090.
    let flushes: Vec<Vec<Rec>> = (0..3)
        .map(|f| {
            let ts: Vec<i64> = (0..10).map(|i| T + f * 1000 + i * 10).collect();
            timed(&format!("flush{f}"), 0, &ts)
        })
        .collect();
    // Partition 1: older records only.
    let old = vec![timed("old", 1, &[T - 10_000, T - 9_000, T - 8_000])];
    send_in_flushes(&bootstrap, "timed", &flushes).await;
    send_in_flushes(&bootstrap, "timed", &old).await;

    let consumer = consumer(&bootstrap, &[]);
    let cases = [
        (0, T - 1, Offset::Offset(0)),
        (0, T, Offset::Offset(0)),
        (0, T + 45, Offset::Offset(5)), // inside the first batch
        (0, T + 90, Offset::Offset(9)),
        (0, T + 91, Offset::Offset(10)), // between batches
        (0, T + 500, Offset::Offset(10)),
        (0, T + 1000, Offset::Offset(10)),
        (0, T + 1055, Offset::Offset(16)),
        (0, T + 2090, Offset::Offset(29)),
        (0, T + 2091, Offset::End), // past the last record
        (1, T - 9_500, Offset::Offset(1)),
        (1, T, Offset::End),
    ];
    for (partition, ts, want) in cases {
        assert_eq!(
            offset_for_time(&consumer, "timed", partition, ts),
            want,
            "first offset of timed/{partition} at or after T{:+}",
            ts - T
        );
    }
    assert_eq!(watermarks(&consumer, "timed", 0), (0, 30));
    assert_eq!(watermarks(&consumer, "timed", 1), (0, 3));
    agent.stop().await;
}

/// Timestamps need not grow with offsets: the answer is the first offset (not the smallest
/// timestamp) at or after the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_times_with_timestamps_out_of_order() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "unordered", 1, &[]).await;
    const T: i64 = BASE_TIMESTAMP;
    // Offsets 0-2: T+5000, T+1000, T+3000; offsets 3-5: T+2000, T+6000, T+4000.
    let flushes = vec![
        timed("a", 0, &[T + 5000, T + 1000, T + 3000]),
        timed("b", 0, &[T + 2000, T + 6000, T + 4000]),
    ];
    send_in_flushes(&bootstrap, "unordered", &flushes).await;

    let consumer = consumer(&bootstrap, &[]);
    for (ts, want) in [(T, 0), (T + 5000, 0), (T + 5001, 4), (T + 6000, 4)] {
        assert_eq!(
            offset_for_time(&consumer, "unordered", 0, ts),
            Offset::Offset(want),
            "first offset at or after T{:+}",
            ts - T
        );
    }
    assert_eq!(
        offset_for_time(&consumer, "unordered", 0, T + 6001),
        Offset::End
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_follow_the_log() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "marks", 2, &[]).await;
    let consumer = consumer(&bootstrap, &[]);
    assert_eq!(watermarks(&consumer, "marks", 0), (0, 0), "empty partition");

    let producer = producer(&bootstrap, &[]);
    let mut total = 0;
    for round in 0..3 {
        let records = make_records(&format!("round{round}"), 100 + round * 50, 1);
        send_all(&producer, "marks", &records).await;
        total += records.len() as i64;
        assert_eq!(
            watermarks(&consumer, "marks", 0),
            (0, total),
            "after round {round}"
        );
    }
    assert_eq!(
        watermarks(&consumer, "marks", 1),
        (0, 0),
        "untouched partition"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_topic_uses_broker_timestamps() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(
        &bootstrap,
        "appended",
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    )
    .await;

    // The producer's timestamps are years old; the broker must replace them.
    let records = make_records("appended", 200, 1);
    let before = now_ms();
    let producer = producer(&bootstrap, &[]);
    let mut deliveries = send_all(&producer, "appended", &records[..100]).await;
    deliveries.extend(send_all(&producer, "appended", &records[100..]).await);
    let after = now_ms();

    let consumed = consume_from_start(&bootstrap, "appended", &[0], records.len()).await;
    // Everything but the timestamps is as sent.
    let without_times: Vec<Rec> = records
        .iter()
        .map(|r| Rec {
            timestamp: None,
            ..r.clone()
        })
        .collect();
    assert_same_records("appended", &without_times, Some(&deliveries), &consumed);
    for (c, d) in consumed.iter().zip(&deliveries) {
        let Timestamp::LogAppendTime(ts) = c.timestamp else {
            panic!(
                "offset {}: timestamp {:?} is not LogAppendTime",
                c.offset, c.timestamp
            );
        };
        assert!(
            (before..=after).contains(&ts),
            "offset {}: append time {ts} outside the produce window {before}..={after}",
            c.offset
        );
        assert_eq!(
            d.timestamp, c.timestamp,
            "offset {}: delivery report timestamp",
            c.offset
        );
    }
    // Timestamp lookups use the broker's times too.
    let consumer = consumer(&bootstrap, &[]);
    assert_eq!(
        offset_for_time(&consumer, "appended", 0, BASE_TIMESTAMP + 150),
        Offset::Offset(0)
    );
    assert_eq!(
        offset_for_time(&consumer, "appended", 0, after + 1),
        Offset::End
    );
    agent.stop().await;
}
