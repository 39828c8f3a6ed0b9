"""Microseconds per frame: comux's colour kernels against swscale, as PyAV drives it.

* ``write_frame``: ``comux._ext.convert.write_frame`` into a preallocated batch slot, with the
  best kernel build this CPU runs (``write_frame[<isa>]`` rows repeat it with lesser builds).
* ``reformat``: ``frame.reformat(format="rgb24")``, PyAV's default (swscale picks its thread
  count); ``reformat_t1``: the same on one thread, swscale's bare single-core conversion and
  the fair match for one decoder thread.
* ``to_ndarray``: ``frame.to_ndarray(format="rgb24")``, what users compare against (a new
  frame and a new array per call); ``to_ndarray+copyto``: that plus the copy into the slot,
  which is what the swscale fallback writer (``comux.batching.pyav_writer``) pays.

Frames are random noise made by the test (content does not change the cost of either side).
Variants run interleaved, round after round; the headline is the median of per-round ratios.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import av
import numpy as np
import pytest

from benchmarks._common import Sample, is_long, paired_ratio, run_rounds, summarize
from comux._ext import convert


def cases(long: bool) -> list[tuple[str, int, int]]:
    """(source pixel format, width, height)."""
    base = [("yuv420p", 640, 360), ("yuv420p", 1920, 1080)]
    if not long:
        return base
    return base + [("nv12", 640, 360), ("nv12", 1920, 1080), ("yuv420p", 3840, 2160)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cs = cases(is_long(metafunc.config))
        metafunc.parametrize("case", cs, ids=[f"{f}-{w}x{h}" for f, w, h in cs])


def _frame(fmt: str, width: int, height: int) -> av.VideoFrame:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)


def _timed(fn: Callable[[], object], calls: int) -> Sample:
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return Sample(t1 - t0, c1 - c0, calls)


def _us_per_frame(s: Sample) -> float:
    return s.wall / s.units * 1e6


def test_convert_rgb24(benchmark, long_mode: bool, results, case: tuple[str, int, int]) -> None:
    fmt, width, height = case
    frame = _frame(fmt, width, height)
    batch = np.zeros((2, height, width, 3), np.uint8)
    slot = batch[1]
    # About 20 ms of work per variant and round, whatever the size.
    calls = max(3, int(20e-3 / (width * height * 1.5e-9)))
    rounds = 7 if long_mode else 3
    isas = convert.available_isas()

    def kernels(isa: str) -> Callable[[], Sample]:
        def run() -> Sample:
            convert.use_isa(isa)
            try:
                return _timed(lambda: convert.write_frame(frame, slot, chroma_loc="center"), calls)
            finally:
                convert.use_isa()

        return run

    variants: dict[str, Callable[[], Sample]] = {
        "write_frame": lambda: _timed(
            lambda: convert.write_frame(frame, slot, chroma_loc="center"), calls
        ),
        "reformat": lambda: _timed(lambda: frame.reformat(format="rgb24"), calls),
        "reformat_t1": lambda: _timed(lambda: frame.reformat(format="rgb24", threads=1), calls),
        "to_ndarray": lambda: _timed(lambda: frame.to_ndarray(format="rgb24"), calls),
        "to_ndarray+copyto": lambda: _timed(
            lambda: np.copyto(slot, frame.to_ndarray(format="rgb24")), calls
        ),
    }
    for isa in isas[1:] if long_mode else isas[1:2]:
        if isa != "baseline":  # SSE2-only code is an order of magnitude slower; not worth timing
            variants[f"write_frame[{isa}]"] = kernels(isa)
    samples: dict[str, list[Sample]] = {k: [] for k in variants}

    def one_round() -> None:
        for name, run in variants.items():
            samples[name].append(run())

    run_rounds(benchmark, one_round, rounds, warmup=1)
    samples = {k: v[-rounds:] for k, v in samples.items()}

    def seconds_per_frame(s: Sample) -> float:
        return s.wall / s.units

    us = {k: round(min(_us_per_frame(s) for s in v), 1) for k, v in samples.items()}
    ratios = {
        f"{name} / write_frame (time)": paired_ratio(v, samples["write_frame"], seconds_per_frame)
        for name, v in samples.items()
        if name != "write_frame"
    }
    record = {
        "unit": "microseconds per frame (us_best: fastest round); ratios >1 = write_frame faster",
        "source": fmt,
        "size": [width, height],
        "isa": convert.ISA,
        "calls_per_sample": calls,
        "us_best": us,
        "frames_per_s": {k: summarize(v) for k, v in samples.items()},
        "ratios": ratios,
    }
    results("convert").record(f"{fmt}-{width}x{height}-rgb24", record)
    benchmark.extra_info.update({f"us_{k}": v for k, v in us.items()} | {"isa": convert.ISA})
    # Correctness only, never timing: the slot holds what swscale makes of the frame.
    ref = frame.to_ndarray(format="rgb24")
    assert int(np.abs(slot.astype(np.int16) - ref).max()) <= 2
    assert not batch[0].any()
