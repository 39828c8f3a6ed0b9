"""Child process of test_copies_bench: allocations and copies per batch, printed as JSON.

    python -m benchmarks._alloc_probe --width 640 --height 360 --cameras 4 --cycles 20

Run with ``LD_PRELOAD=<built _alloc_shim.so>`` to count native allocations too (FFmpeg, numpy);
without it only the tracemalloc numbers are reported. A clean child keeps pytest's own
allocations out of the counts.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._common import writer_kind
from benchmarks._frames import fresh_frames
from comux.batching import BatchPool, frame_writer


class Native:
    """The LD_PRELOADed counters, or None when the shim is not loaded."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)
        try:
            self.reset = lib.comux_alloc_reset
            self.count = lib.comux_alloc_count
            self._read = lib.comux_alloc_read
        except AttributeError:
            raise LookupError("shim not preloaded") from None
        self.reset.argtypes = [ctypes.c_size_t]
        self.count.argtypes = [ctypes.c_int]

    def read(self) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint64 * 4)()
        self._read(out)
        return tuple(int(v) for v in out)  # type: ignore[return-value]


def make_paths(
    width: int, height: int, cameras: int
) -> tuple[dict[str, Callable[[list], None]], BatchPool]:
    cams = [f"cam{i}" for i in range(cameras)]
    pool = BatchPool((height, width, 3), buffers=3, capacity=cameras, writer=frame_writer("rgb24"))
    for cam in cams:
        pool.add(cam)
    out = np.empty((cameras, height, width, 3), np.uint8)
    counter = iter(range(1 << 62))

    def comux(frames: list) -> None:
        for cam, frame in zip(cams, frames, strict=True):
            pool.write(cam, frame, next(counter))
        batch = pool.seal(0)
        assert batch is not None
        batch.release()

    def naive_stack(frames: list) -> None:
        np.stack([f.to_ndarray(format="rgb24") for f in frames])

    def copyto_prealloc(frames: list) -> None:
        for i, f in enumerate(frames):
            np.copyto(out[i], f.to_ndarray(format="rgb24"))

    return {"comux": comux, "naive_stack": naive_stack, "copyto_prealloc": copyto_prealloc}, pool


def measure(
    fn: Callable[[list], None],
    width: int,
    height: int,
    cameras: int,
    cycles: int,
    native: Native | None,
    frame_bytes: int,
) -> dict[str, Any]:
    warm = [fresh_frames(width, height, cameras) for _ in range(3)]
    for frames in warm:
        fn(frames)
    del warm
    out: dict[str, Any] = {}

    if native is not None:
        batches = [fresh_frames(width, height, cameras) for _ in range(cycles)]
        gc.collect()
        native.reset(frame_bytes // 2)
        native.count(1)
        for frames in batches:
            fn(frames)
        native.count(0)
        calls, nbytes, big, big_bytes = native.read()
        del batches
        out["native"] = {
            "allocations_per_batch": calls / cycles,
            "bytes_per_batch": nbytes / cycles,
            "frame_sized_allocations_per_batch": big / cycles,
            "frame_sized_bytes_per_batch": big_bytes / cycles,
            "frame_sized_threshold_bytes": frame_bytes // 2,
        }

    batches = [fresh_frames(width, height, cameras) for _ in range(cycles)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    peaks = []
    for frames in batches:
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn(frames)
        _, peak = tracemalloc.get_traced_memory()
        peaks.append(peak - current)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = after.compare_to(before, "filename")
    out["tracemalloc"] = {
        "transient_peak_bytes_max": max(peaks),
        "transient_peak_bytes_median": statistics.median(peaks),
        "transient_peak_frames_max": max(peaks) / frame_bytes,
        "live_growth_bytes": sum(d.size_diff for d in diff),
        "live_growth_blocks": sum(d.count_diff for d in diff),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        native: Native | None = Native()
    except LookupError:
        native = None
    w, h, n = args.width, args.height, args.cameras
    frame_bytes = w * h * 3
    paths, pool = make_paths(w, h, n)
    report: dict[str, Any] = {
        "cameras": n,
        "width": w,
        "height": h,
        "cycles": args.cycles,
        "frame_bytes": frame_bytes,
        "batch_bytes": n * frame_bytes,
        "writer": writer_kind(),
        "native_counting": native is not None,
        "paths": {},
    }
    for name, fn in paths.items():
        copied0, batches0 = pool.bytes_copied, pool.batches
        report["paths"][name] = measure(fn, w, h, n, args.cycles, native, frame_bytes)
        if name == "comux":
            done = pool.batches - batches0
            report["paths"][name]["pool_bytes_copied_per_batch"] = (
                (pool.bytes_copied - copied0) / done if done else None
            )
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
