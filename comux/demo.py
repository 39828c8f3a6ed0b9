"""``comux demo``: a local broker, synthetic cameras, a stand-in model and a live table."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable

import numpy as np

from .app import Comux
from .media import synthetic_packets
from .publish import publish_forever

__all__ = ["run_demo"]


def _stand_in_model(frame: np.ndarray) -> dict[str, object]:
    """Pretend to detect things: the mean brightness, and a 'motion' flag from it."""
    brightness = float(frame.mean())
    return {"brightness": round(brightness, 1), "bright": brightness > 100}


def _table(cameras: Comux, started: float, results: dict[str, int], final: bool = False) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    lines = [
        f"comux demo: {elapsed:5.1f} s" + ("" if final else "   (Ctrl-C stops)"),
        f"{'camera':<14}{'fps':>7}{'frames':>8}{'results':>9}{'errors':>8}{'skipped':>9}",
    ]
    for cam_id, s in sorted(cameras.stats().items()):
        skipped = s["skipped_before_keyframe"] + s["lag_dropped"] + s["lag_unread"]
        lines.append(
            f"{cam_id:<14}{s['delivered'] / elapsed:>7.1f}{s['delivered']:>8}"
            f"{results.get(cam_id, 0):>9}{s['decode_errors']:>8}{skipped:>9}"
        )
    return "\n".join(lines)


def run_demo(
    *,
    cameras: int = 4,
    size: tuple[int, int] = (640, 360),
    seconds: float = 20.0,
    directory: str | os.PathLike | None = None,
    port: int = 9092,
    bootstrap_servers: str | Iterable[str] | None = None,
) -> int:
    """Run the whole pipeline for ``seconds`` and print a per-camera table; 0 on success."""
    broker = None
    if bootstrap_servers is None and not os.environ.get("COMUX_BOOTSTRAP_SERVERS"):
        from .broker import LocalKafka

        broker = LocalKafka(directory, port=port)
        if broker.status():
            broker = None  # someone else's broker: leave it running afterwards
            bootstrap_servers = LocalKafka(directory, port=port).up()
        else:
            print("starting the local Kafka broker…", file=sys.stderr)
            bootstrap_servers = broker.up(log=lambda line: print(line, file=sys.stderr))
    width, height = size
    cam_ids = [f"demo-cam-{i + 1}" for i in range(cameras)]
    stop = threading.Event()
    clip = list(synthetic_packets(width, height, 100, fps=25, gop=25))
    publishers = publish_forever(clip, cam_ids, bootstrap_servers=bootstrap_servers, stop=stop)

    results: dict[str, int] = {}
    interactive = sys.stdout.isatty()
    try:
        with Comux(cam_ids, "raw.:cam_id", "out.:cam_id", "WARNING") as comux:
            comux.setup_consumers(bootstrap_servers, end=True, max_offset_diff=50)
            comux.setup_decoders(rate=10, W=width, H=height)
            comux.setup_producer(bootstrap_servers)
            comux.start()
            started = time.monotonic()
            next_draw = started
            while time.monotonic() - started < seconds:
                batch = comux.get_batch(timeout=1.0) or []
                for cam_id, index, frame in batch:
                    if frame is None:
                        continue
                    comux.send(cam_id, index, _stand_in_model(frame))
                    results[cam_id] = results.get(cam_id, 0) + 1
                if time.monotonic() >= next_draw:
                    next_draw += 1.0
                    if interactive:
                        print("\x1b[H\x1b[2J" + _table(comux, started, results), flush=True)
            print(_table(comux, started, results, final=True))
            delivered = sum(s["delivered"] for s in comux.stats().values())
    except KeyboardInterrupt:
        delivered = 1
    finally:
        stop.set()
        for thread in publishers:
            thread.join(5)
        if broker is not None:
            broker.down()
            print("local broker stopped", file=sys.stderr)
    return 0 if delivered else 1
