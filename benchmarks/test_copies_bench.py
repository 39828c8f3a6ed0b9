"""Pixel copies and allocations per batch: comux's BatchPool path against np.stack.

Each case runs ``benchmarks/_alloc_probe.py`` in a clean child process on fresh decoded frames
(new ``av.VideoFrame`` objects per batch, as a decoder hands out) and reports per batch:

* ``tracemalloc``: Python-visible allocations (numpy's data buffers included): the transient
  peak above the level before the batch (``np.stack`` shows N frames here) and the live growth
  over all cycles (a leak would show here).
* ``native`` (when a C compiler is found): every malloc/posix_memalign call of the process,
  FFmpeg's included, counted by an LD_PRELOADed shim (``_alloc_shim.c``); transient ones are
  counted too, which tracemalloc cannot do. ``frame_sized_*`` counts calls of at least half an
  rgb24 frame.
* ``pool_bytes_copied_per_batch``: ``BatchPool.bytes_copied`` (copies the pool itself makes:
  repeat_last, take, slot moves), expected 0.

Target: no frame-sized allocation per batch on the comux path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._common import is_long

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def cases(long: bool) -> list[tuple[int, int, int, int]]:
    """(cameras, width, height, cycles)."""
    if not long:
        return [(4, 640, 360, 20)]
    return [(4, 640, 360, 50), (16, 640, 360, 30), (4, 1920, 1080, 20)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cs = cases(is_long(metafunc.config))
        metafunc.parametrize("case", cs, ids=[f"{n}x{w}x{h}" for n, w, h, _ in cs])


@pytest.fixture(scope="session")
def alloc_shim(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    out = tmp_path_factory.mktemp("shim") / "alloc_shim.so"
    done = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "_alloc_shim.c")],
        capture_output=True,
        text=True,
    )
    return out if done.returncode == 0 else None


def run_probe(case: tuple[int, int, int, int], shim: Path | None) -> dict:
    n, w, h, cycles = case
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if shim is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD")]))
    args = ["--width", str(w), "--height", str(h), "--cameras", str(n), "--cycles", str(cycles)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._alloc_probe", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_copies_per_batch(benchmark, case, alloc_shim, results) -> None:
    report = benchmark.pedantic(run_probe, args=(case, alloc_shim), rounds=1, iterations=1)
    if report is None:  # benchmarks disabled: pedantic ran it and returned its value anyway
        report = run_probe(case, alloc_shim)
    frame = report["frame_bytes"]
    comux = report["paths"]["comux"]
    naive = report["paths"]["naive_stack"]
    fallback = report["writer"].startswith("pyav")
    n = report["cameras"]
    report["derived"] = {
        "comux_tracemalloc_frame_sized": comux["tracemalloc"]["transient_peak_bytes_max"]
        >= frame // 2,
        "naive_tracemalloc_transient_frames": naive["tracemalloc"]["transient_peak_frames_max"],
        # Copies of whole frames beyond the yuv->rgb conversion itself (from the code path):
        # the fallback writer converts into a new FFmpeg frame, then np.copyto's it into the
        # slot; np.stack copies every converted frame once more.
        "comux_extra_pixel_copy_bytes_per_batch": (n * frame if fallback else 0)
        + (comux.get("pool_bytes_copied_per_batch") or 0),
        "naive_extra_pixel_copy_bytes_per_batch": n * frame,
    }
    native_ok = "native" not in comux or comux["native"]["frame_sized_allocations_per_batch"] == 0
    report["targets"] = {
        "comux: no frame-sized allocation per batch": (
            not report["derived"]["comux_tracemalloc_frame_sized"] and native_ok
        ),
    }
    n_, w, h, _ = case
    results("copies").record(f"{n_}x{w}x{h}", report)
    benchmark.extra_info.update(
        {
            "comux_tracemalloc_peak_B": comux["tracemalloc"]["transient_peak_bytes_max"],
            "naive_tracemalloc_peak_B": naive["tracemalloc"]["transient_peak_bytes_max"],
        }
        | (
            {
                "comux_native_frame_allocs": comux["native"]["frame_sized_allocations_per_batch"],
                "naive_native_frame_allocs": naive["native"]["frame_sized_allocations_per_batch"],
            }
            if "native" in comux
            else {}
        )
    )
    # Correctness, not timing: the pool itself never copies frames in the steady state.
    assert comux["pool_bytes_copied_per_batch"] == 0
