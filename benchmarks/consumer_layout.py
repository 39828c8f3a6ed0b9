"""Measure one Kafka consumer per camera against one consumer for all cameras.

    python benchmarks/consumer_layout.py --bootstrap-servers 127.0.0.1:9092 --cameras 64

Reports OS threads, resident memory, broker connections and idle CPU for both layouts; this is
why comux runs one consumer per process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time
import uuid

from confluent_kafka import Consumer, Producer


def threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(bootstrap: str, topics: list[str], per_camera: bool, seconds: float) -> dict:
    base = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 10,
    }
    before = (threads(), rss_mb(), sockets())
    if per_camera:
        consumers = [Consumer({**base, "group.id": f"layout-{uuid.uuid4().hex}"}) for _ in topics]
        for c, t in zip(consumers, topics, strict=True):
            c.subscribe([t])
    else:
        consumers = [Consumer({**base, "group.id": f"layout-{uuid.uuid4().hex}"})]
        consumers[0].subscribe(topics)
    got = 0
    deadline = time.monotonic() + 60
    while got < len(topics) and time.monotonic() < deadline:
        for c in consumers:
            got += len([m for m in c.consume(100, 0.01 if per_camera else 0.2) if not m.error()])
    start_cpu, start = cpu(), time.monotonic()
    while time.monotonic() - start < seconds:  # idle polling, as a live camera loop does
        for c in consumers:
            c.consume(100, 0.05 / len(consumers))
    idle_cpu = (cpu() - start_cpu) / seconds
    result = {
        "layout": "consumer per camera" if per_camera else "one consumer",
        "consumers": len(consumers),
        "threads": threads() - before[0],
        "rss_mb": round(rss_mb() - before[1], 1),
        "sockets": sockets() - before[2],
        "idle_cpu_fraction": round(idle_cpu, 3),
        "messages": got,
    }
    for c in consumers:
        c.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap-servers", default=os.environ.get("COMUX_BOOTSTRAP_SERVERS"))
    parser.add_argument("--cameras", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    topics = [f"layout-{run}-{i}" for i in range(args.cameras)]
    producer = Producer({"bootstrap.servers": args.bootstrap_servers})
    for t in topics:
        producer.produce(t, b"x" * 1000)
    producer.flush(30)
    results = [measure(args.bootstrap_servers, topics, per, args.seconds) for per in (False, True)]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
