"""Smoke check with kafka-python: admin, gzip produce, manual-assignment consume, offsets,
a consumer group with committed offsets, the group admin APIs and a rewind by timestamp.

Usage: pip install kafka-python && python3 tests/compat/kafka_python.py 127.0.0.1:9092
"""
import sys
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic, OffsetTimestamp

bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
topic = "compat-py-" + uuid.uuid4().hex[:8]

admin = KafkaAdminClient(bootstrap_servers=bootstrap)
admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                              topic_configs={"retention.ms": "3600000"})])
described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["retention.ms"])])
print("describe_configs:", described)

# Shoal has no producer ids yet: idempotence off.
producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", enable_idempotence=False)
sent = [producer.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=i % 3) for i in range(300)]
producer.flush()
offsets = sorted((f.get().partition, f.get().offset) for f in sent)
assert offsets == sorted((p, o) for p in range(3) for o in range(100)), offsets

consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
partitions = [TopicPartition(topic, p) for p in range(3)]
consumer.assign(partitions)
consumer.seek_to_beginning()
values = sorted(m.value for m in consumer)
assert values == sorted(b"v%d" % i for i in range(300)), len(values)
assert all(o == 100 for o in consumer.end_offsets(partitions).values())

# A consumer group: subscribe, read everything, commit.
group = "compat-py-group-" + uuid.uuid4().hex[:8]
member = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                       auto_offset_reset="earliest", consumer_timeout_ms=8000)
read = [m for m in member]
assert len(read) == 300, len(read)
member.commit()
assert {tp.partition: member.committed(tp) for tp in partitions} == {0: 100, 1: 100, 2: 100}
listed = admin.list_groups()
print("list_groups:", listed)
assert any(group in str(g) for g in listed), listed
print("describe_groups:", admin.describe_groups([group]))
member.close()

def committed_by_partition():
    offsets = admin.list_group_offsets({group: None})[group]
    return {tp.partition: o.offset for tp, o in offsets.items()}

assert committed_by_partition() == {0: 100, 1: 100, 2: 100}, committed_by_partition()

# Rewind the now empty group to a point in time (as docs/groups.md shows), then replay.
middle = read[150].timestamp
expected = {tp.partition: o.offset for tp, o in
            consumer.offsets_for_times({tp: middle for tp in partitions}).items()}
print("reset_group_offsets:",
      admin.reset_group_offsets(group, {tp: OffsetTimestamp(middle) for tp in partitions}))
assert committed_by_partition() == expected, (committed_by_partition(), expected)
replay = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                       consumer_timeout_ms=8000)
replayed = [m for m in replay]
assert len(replayed) == sum(100 - o for o in expected.values()), (len(replayed), expected)
assert all(m.offset >= expected[m.partition] for m in replayed)
replay.close()
print("delete_groups:", admin.delete_groups([group]))
print("kafka-python: ok")
