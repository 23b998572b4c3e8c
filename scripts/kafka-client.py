"""An independent Kafka client for Weir's tests (confluent-kafka, which bundles librdkafka).

    kafka-client.py produce BROKERS TOPIC [PARTITION]      # one record per stdin line
    kafka-client.py committed BROKERS GROUP TOPIC N        # committed offsets of partitions 0..N-1
    kafka-client.py count BROKERS TOPIC N                  # records in partitions 0..N-1

Run it with the python `scripts/kafka.sh python` prints.
"""
import sys

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(brokers, topic, partition=None):
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": False})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    for line in sys.stdin.read().splitlines():
        kwargs = {"value": line.encode()}
        if partition is not None:
            kwargs["partition"] = int(partition)
        producer.produce(topic, on_delivery=delivered, **kwargs)
        # One record per request: the broker's offsets for multi-record batches are not relied on.
        producer.flush(30)
    if producer.flush(30) != 0 or failures:
        sys.exit(f"produce to {topic} failed: {failures or 'not all records were delivered'}")


def committed(brokers, group, topic, n):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group})
    parts = consumer.committed([TopicPartition(topic, p) for p in range(int(n))], timeout=10)
    print(" ".join(str(p.offset) for p in parts))
    consumer.close()


def count(brokers, topic, n):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "weir-test-count"})
    total = 0
    for p in range(int(n)):
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        total += high
    print(total)
    consumer.close()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"produce": produce, "committed": committed, "count": count}[command](*args)
