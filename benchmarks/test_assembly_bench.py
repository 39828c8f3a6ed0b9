"""Batch assembly: N decoded yuv420p frames to one (N, H, W, 3) rgb24 batch.

Variants, run interleaved on the same frames:

* ``comux``: ``BatchPool.write`` with ``frame_writer("rgb24")`` for every camera, then
  ``seal`` + ``release`` (the path behind ``get_batch(stacked=True)``).
* ``naive_stack``: ``np.stack([f.to_ndarray(format="rgb24") for f in frames])``.
* ``copyto_prealloc``: ``to_ndarray(format="rgb24")`` then ``np.copyto`` into a preallocated
  (N, H, W, 3) array.
* ``swscale_cached``: one reused ``VideoReformatter.reformat(format="rgb24")`` per frame and
  nothing else (no placement): the floor of any swscale-based path.

``frames="fresh"`` gives every batch new ``av.VideoFrame`` objects, as a decoder does (so a
``to_ndarray`` sets up its swscale context per frame); ``"reused"`` reuses the same objects
(their cached swscale context makes PyAV paths look cheaper than they are live).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from benchmarks._common import Sample, cpu_of, paired_ratio, rate_of, run_rounds, summarize
from benchmarks._frames import fresh_frames
from comux.batching import BatchPool, frame_writer


@dataclass(frozen=True)
class Case:
    cameras: int
    width: int
    height: int
    frames: str  # "fresh" | "reused"
    rounds: int
    batches: int  # batches per timed call

    @property
    def id(self) -> str:
        return f"{self.cameras}x{self.width}x{self.height}-{self.frames}"


def cases(long: bool) -> list[Case]:
    if not long:
        return [Case(4, 640, 360, "fresh", 7, 5), Case(4, 1920, 1080, "fresh", 1, 2)]
    out = []
    for n in (4, 16):
        for w, h in ((640, 360), (1920, 1080)):
            for frames in ("fresh", "reused"):
                big = w * h * n >= 1920 * 1080 * 16
                out.append(
                    Case(n, w, h, frames, 5 if big else 9, 2 if big else (10 if w < 1000 else 3))
                )
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        from benchmarks._common import is_long

        cs = cases(is_long(metafunc.config))
        metafunc.parametrize("case", cs, ids=[c.id for c in cs])


def _timed(fn: Callable[[], None], frames: int) -> Sample:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return Sample(t1 - t0, c1 - c0, frames)


def test_assembly(benchmark, case: Case, results) -> None:
    n, w, h = case.cameras, case.width, case.height
    cams = [f"cam{i}" for i in range(n)]
    pool = BatchPool((h, w, 3), buffers=3, capacity=n, writer=frame_writer("rgb24"))
    for cam in cams:
        pool.add(cam)
    out = np.empty((n, h, w, 3), np.uint8)
    reformatter = VideoReformatter()
    reused = [fresh_frames(w, h, n) for _ in range(case.batches)]
    counter = iter(range(1 << 62))

    def batches() -> list[list]:
        if case.frames == "reused":
            return reused
        return [fresh_frames(w, h, n) for _ in range(case.batches)]

    def comux(bs: list[list]) -> None:
        write, seal = pool.write, pool.seal
        for frames in bs:
            for cam, frame in zip(cams, frames, strict=True):
                write(cam, frame, next(counter))
            batch = seal(0)
            assert batch is not None
            batch.release()

    def naive_stack(bs: list[list]) -> None:
        for frames in bs:
            np.stack([f.to_ndarray(format="rgb24") for f in frames])

    def copyto_prealloc(bs: list[list]) -> None:
        for frames in bs:
            for i, f in enumerate(frames):
                np.copyto(out[i], f.to_ndarray(format="rgb24"))

    def swscale_cached(bs: list[list]) -> None:
        for frames in bs:
            for f in frames:
                reformatter.reformat(f, format="rgb24")

    variants: dict[str, Callable[[list[list]], None]] = {
        "comux": comux,
        "naive_stack": naive_stack,
        "copyto_prealloc": copyto_prealloc,
        "swscale_cached": swscale_cached,
    }
    samples: dict[str, list[Sample]] = {k: [] for k in variants}
    frames_per_call = n * case.batches

    def one_round() -> None:
        for name, fn in variants.items():
            bs = batches()  # untimed: new frame objects when "fresh"
            samples[name].append(_timed(functools.partial(fn, bs), frames_per_call))

    warmup = 1
    run_rounds(benchmark, one_round, case.rounds, warmup=warmup)
    samples = {k: v[-case.rounds :] for k, v in samples.items()}

    # Correctness, not timing: the last comux batch holds every camera's frame, converted.
    batch = pool.seal(0)
    assert batch is None  # nothing pending
    summary = {k: summarize(v) for k, v in samples.items()}
    for s in summary.values():
        s["frames_per_s_median"] = s.pop("rate_median")
        s["ms_per_batch_median"] = 1e3 * n / s["frames_per_s_median"]
        s["cpu_ms_per_batch_median"] = 1e3 * n * s.pop("cpu_per_unit_median")
    ratios = {
        "comux/naive_stack fps": paired_ratio(samples["comux"], samples["naive_stack"], rate_of),
        "comux/copyto_prealloc fps": paired_ratio(
            samples["comux"], samples["copyto_prealloc"], rate_of
        ),
        "comux/swscale_cached fps": paired_ratio(
            samples["comux"], samples["swscale_cached"], rate_of
        ),
        "comux/naive_stack cpu_per_frame": paired_ratio(
            samples["comux"], samples["naive_stack"], cpu_of
        ),
    }
    record = {
        "cameras": n,
        "width": w,
        "height": h,
        "frames": case.frames,
        "batches_per_round": case.batches,
        "pool_bytes_copied": pool.bytes_copied,
        "variants": summary,
        "ratios": ratios,
    }
    results("assembly").record(case.id, record)
    benchmark.extra_info.update(
        {k: round(v["median_of_round_ratios"], 3) for k, v in ratios.items()}
    )
