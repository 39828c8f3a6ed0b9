"""``comux demo``: a local broker, synthetic cameras, a stand-in model and a live table."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .app import Comux
from .media import synthetic_packets
from .publish import publish_forever

__all__ = ["run_demo"]


def _stand_in_model(frame: np.ndarray) -> dict[str, object]:
    """Pretend to detect things: the mean brightness, and a 'motion' flag from it."""
    brightness = float(frame.mean())
    return {"brightness": round(brightness, 1), "bright": brightness > 100}


def _table(cameras: Comux, started: float, results: dict[str, int], final: bool = False) -> Table:
    elapsed = max(time.monotonic() - started, 1e-6)
    table = Table(
        title=f"comux demo: {elapsed:5.1f} s" + ("" if final else "   (Ctrl-C stops)"),
        title_justify="left",
    )
    table.add_column("camera")
    for name in ("fps", "frames", "results", "errors", "skipped"):
        table.add_column(name, justify="right")
    for cam_id, s in sorted(cameras.stats().items()):
        skipped = s["skipped_before_keyframe"] + s["lag_dropped"] + s["lag_unread"]
        table.add_row(
            cam_id,
            f"{s['delivered'] / elapsed:.1f}",
            str(s["delivered"]),
            str(results.get(cam_id, 0)),
            str(s["decode_errors"]),
            str(skipped),
        )
    return table


def run_demo(
    *,
    cameras: int = 4,
    size: tuple[int, int] = (640, 360),
    seconds: float = 20.0,
    directory: str | os.PathLike[str] | None = None,
    port: int | None = None,
    bootstrap_servers: str | Iterable[str] | None = None,
) -> int:
    """Run the whole pipeline for ``seconds`` and print a per-camera table; 0 on success.

    ``port``: the local broker's; None takes 9092, or a free port when another process holds it.
    """
    broker = None
    if bootstrap_servers is None and not os.environ.get("COMUX_BOOTSTRAP_SERVERS"):
        from .broker import DEFAULT_PORT, LocalKafka, pick_port

        broker = LocalKafka(directory, port=DEFAULT_PORT if port is None else port)
        if broker.status():
            bootstrap_servers = broker.up()  # already running: up() only says where
            broker = None  # someone else's broker: leave it running afterwards
        else:
            if port is None and (free := pick_port(DEFAULT_PORT)) != DEFAULT_PORT:
                broker.port = free
                print(f"port {DEFAULT_PORT} is taken: using {free}", file=sys.stderr)
            print("starting the local Kafka broker…", file=sys.stderr)
            bootstrap_servers = broker.up(log=lambda line: print(line, file=sys.stderr))
    width, height = size
    cam_ids = [f"demo-cam-{i + 1}" for i in range(cameras)]
    stop = threading.Event()
    clip = list(synthetic_packets(width, height, 100, fps=25, gop=25))
    publishers = publish_forever(clip, cam_ids, bootstrap_servers=bootstrap_servers, stop=stop)

    results: dict[str, int] = {}
    console = Console()
    interactive = sys.stdout.isatty()
    try:
        with Comux(cam_ids, "raw.:cam_id", "out.:cam_id", "WARNING") as comux:
            comux.setup_consumers(bootstrap_servers, end=True, max_offset_diff=50)
            comux.setup_decoders(rate=10, W=width, H=height)
            comux.setup_producer(bootstrap_servers)
            comux.start()
            started = time.monotonic()
            next_draw = started
            # Redrawn in place once a second on a terminal; only the final table otherwise.
            with Live(console=console, auto_refresh=False, transient=True) as live:
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
                            live.update(_table(comux, started, results), refresh=True)
            console.print(_table(comux, started, results, final=True))
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
