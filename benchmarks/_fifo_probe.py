"""Child process of test_fleet_bench's fifo memory case: a fifo backlog under a slow model loop.

    python -m benchmarks._fifo_probe --bootstrap HOST:PORT --template 'bench.:cam_id' \
        --cams cam0,cam1 --frames 100 --width 1280 --height 720 --model-s 0.025

Consumes every camera's backlog (offsets 0 .. frames-1) with ``policy="fifo"`` while the model
loop sleeps ``--model-s`` per batch (standing for the model's work, slower than decoding), and
prints one JSON object: the process's peak RSS growth over the run (from a baseline taken after
every import), what the caller received against what was published, and comux's counters.
A clean child keeps pytest's heap (and what earlier benchmarks freed into it) out of the peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._pipelines import Received
from comux import Comux

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kb(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status, in kB (None if unreadable)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class RssSampler(threading.Thread):
    """VmRSS every few ms; the maximum backs up VmHWM where it cannot be reset."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.peak_kb = status_kb("VmRSS") or 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak_kb = max(self.peak_kb, status_kb("VmRSS") or 0)

    def stop(self) -> int:
        self._done.set()
        self.join(1.0)
        return self.peak_kb


def run(args: argparse.Namespace) -> dict[str, Any]:
    cams = args.cams.split(",")
    last = {c: args.frames - 1 for c in cams}
    got = Received(cams)
    gc.collect()
    base_kb = status_kb("VmRSS") or 0
    hwm_reset = reset_peak()
    sampler = RssSampler()
    sampler.start()
    error: str | None = None
    batches = 0
    stats: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    cx = Comux(cams, consume_schema=args.template, log_level="ERROR")
    try:
        options: dict[str, Any] = {"group.id": f"bench-fifo-mem-{uuid.uuid4().hex}"}
        cx.setup_consumers(args.bootstrap, end=False, max_offset_diff=None, **options)
        cx.setup_decoders(rate=None, W=args.width, H=args.height, policy="fifo")
        cx.start()
        remaining = set(cams)
        progress = time.perf_counter()
        while remaining:
            now = time.perf_counter()
            if now - progress > args.stall_s or now - t0 > args.timeout:
                error = (
                    f"no frame for {now - progress:.1f} s; last offset missing for "
                    f"{sorted(remaining)}"
                )
                break
            batch = cx.get_batch(timeout=0.5, stacked=True)
            if batch is None:
                continue
            with batch:
                batches += 1
                if got.add_batch(batch):
                    progress = time.perf_counter()
                for cam, index, ok in zip(
                    batch.cam_ids, batch.indices.tolist(), batch.valid.tolist(), strict=True
                ):
                    if ok and index >= last[cam]:
                        remaining.discard(cam)
                time.sleep(args.model_s)  # the model's work, on the batch it holds
        stats = cx.stats()
    finally:
        cx.close()
    wall = time.perf_counter() - t0
    sampled_kb = sampler.stop()
    hwm_kb = status_kb("VmHWM") if hwm_reset else None
    peak_kb = max(sampled_kb, hwm_kb or 0)
    published = len(cams) * args.frames
    return {
        "complete": error is None,
        "error": error,
        "frames_published": published,
        "frames_received": got.total,
        "offsets": got.check(last),
        "batches": batches,
        "wall_s": round(wall, 3),
        "model_s_per_batch": args.model_s,
        "baseline_rss_mb": round(base_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_rss_growth_mb": round((peak_kb - base_kb) / 1024, 1),
        "end_rss_mb": round((status_kb("VmRSS") or 0) / 1024, 1),
        "peak_from": "VmHWM (reset at baseline) and VmRSS sampled every 5 ms"
        if hwm_reset
        else "VmRSS sampled every 5 ms (VmHWM could not be reset)",
        "frames_decoded": sum(s.get("delivered", 0) for s in stats.values()),
        "counters": {
            key: sum(s.get(key, 0) or 0 for s in stats.values())
            for key in ("packets", "decode_errors", "replaced", "overflow", "queued")
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--cams", required=True, help="comma-separated camera ids")
    parser.add_argument("--frames", type=int, required=True, help="backlog per camera")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--model-s", type=float, default=0.025)
    parser.add_argument("--stall-s", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    print(json.dumps(run(args)))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
