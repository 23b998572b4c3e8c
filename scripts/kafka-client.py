"""An independent Kafka client for Weir's tests (confluent-kafka, which bundles librdkafka).

    kafka-client.py produce BROKERS TOPIC [--partition N] [--rate R]   # one record per stdin line
    kafka-client.py committed BROKERS GROUP TOPIC N    # committed offsets of partitions 0..N-1
    kafka-client.py consume BROKERS TOPIC N --at-least M  # every value of partitions 0..N-1

Run it with the python `scripts/kafka.sh python` prints.
"""
import argparse
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(args):
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    started = time.monotonic()
    for i, line in enumerate(sys.stdin.read().splitlines()):
        if args.rate:
            wait = started + i / args.rate - time.monotonic()
            if wait > 0:
                producer.flush(30)
                time.sleep(wait)
        kwargs = {"value": line.encode()}
        if args.partition is not None:
            kwargs["partition"] = args.partition
        producer.produce(args.topic, on_delivery=delivered, **kwargs)
        producer.poll(0)
    if producer.flush(30) != 0 or failures:
        sys.exit(f"produce to {args.topic} failed: {failures or 'not all records were delivered'}")


def committed(args):
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": args.group})
    parts = consumer.committed([TopicPartition(args.topic, p) for p in range(args.n)], timeout=10)
    print(" ".join(str(p.offset) for p in parts))
    consumer.close()


def consume(args):
    """Prints the values of every record, reading until at least `at_least` arrived and then no
    record came for a second (the broker's latest offsets are not relied on)."""
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": "weir-test-consume",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(args.topic, p, 0) for p in range(args.n)])
    values, last = [], time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = consumer.poll(0.1)
        if m is not None and m.error() is None:
            values.append(m.value().decode())
            last = time.monotonic()
        elif len(values) >= args.at_least and time.monotonic() - last > 1.0:
            break
    consumer.close()
    print("\n".join(values))


parser = argparse.ArgumentParser()
commands = parser.add_subparsers(dest="command", required=True)
p = commands.add_parser("produce")
p.add_argument("brokers")
p.add_argument("topic")
p.add_argument("--partition", type=int)
p.add_argument("--rate", type=float, help="records per second")
p.set_defaults(run=produce)
c = commands.add_parser("committed")
c.add_argument("brokers")
c.add_argument("group")
c.add_argument("topic")
c.add_argument("n", type=int)
c.set_defaults(run=committed)
r = commands.add_parser("consume")
r.add_argument("brokers")
r.add_argument("topic")
r.add_argument("n", type=int)
r.add_argument("--at-least", type=int, default=0)
r.set_defaults(run=consume)
args = parser.parse_args()
args.run(args)
