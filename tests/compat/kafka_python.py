"""Smoke check with kafka-python: admin, gzip produce, manual-assignment consume, offsets.

Usage: pip install kafka-python && python3 tests/compat/kafka_python.py 127.0.0.1:9092
"""
import sys
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

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
print("kafka-python: ok")
