"""Helpers shared by the benchmark modules: mode, interleaved rounds, statistics, JSON results.

Timings are never asserted on: the machines that run these are shared and noisy. Every
comparison is a ratio of variants measured in the same run, interleaved (A B C A B C ...), and
the headline is the median of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where runs write (untracked: .gitignore); results/reference/ holds the tracked long-run results
# that README.md quotes, updated by hand.
ENV_OUT = "COMUX_BENCH_OUT"  # another folder to write to (`comux bench --out DIR` sets it)
RESULTS_DIR = (
    Path(os.environ[ENV_OUT]).resolve()
    if os.environ.get(ENV_OUT)
    else Path(__file__).resolve().parent / "results" / "latest"
)
ENV_MODE = "COMUX_BENCH"


def is_long(config: Any) -> bool:
    """Long mode: ``--long`` on the pytest command line or ``COMUX_BENCH=long``."""
    opt = False
    with contextlib.suppress(ValueError, AttributeError):
        opt = bool(config.getoption("--long"))
    return opt or os.environ.get(ENV_MODE, "").strip().lower() == "long"


def mode_name(long: bool) -> str:
    return "long" if long else "short"


def writer_kind() -> str:
    """Which colour writer ``comux.batching.frame_writer("rgb24")`` really returns now.

    Asked of frame_writer itself, not of whether ``comux._ext.convert`` imports: frame_writer
    falls back silently when the module lacks a name it imports.
    """
    from comux.batching import frame_writer

    name = getattr(frame_writer("rgb24"), "__qualname__", "?")
    if name.startswith("pyav_writer"):
        return f"pyav-fallback (to_ndarray + np.copyto) [{name}]"
    return f"compiled (comux._ext.convert.write_frame) [{name}]"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    import av
    import numpy as np

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "av": av.__version__,
        "writer": writer_kind(),
        "commit": _git_commit(),
    }


class Results:
    """One JSON file per benchmark module, rewritten (atomically) after every recorded case.

    Short runs write ``results/latest/<name>.json``, long runs ``<name>-long.json``, so that the
    CI's short run never overwrites the numbers of the last long run.
    """

    def __init__(self, name: str, long: bool, command: str) -> None:
        self.name = name
        self.path = RESULTS_DIR / (f"{name}-long.json" if long else f"{name}.json")
        self.data: dict[str, Any] = {
            "benchmark": name,
            "mode": mode_name(long),
            "command": command,
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "cases": {},
        }

    def record(self, key: str, value: Mapping[str, Any]) -> None:
        case = dict(value)
        case.setdefault("writer", writer_kind())  # the module may be rebuilt mid-session
        self.data["cases"][key] = case
        self.write()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.write()

    def write(self) -> None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=_jsonable) + "\n")
        tmp.replace(self.path)


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One timed call: wall seconds, process CPU seconds (all threads), and what it did."""

    wall: float
    cpu: float
    units: float = 1.0  # operations, frames or batches done in the call
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.units / self.wall if self.wall > 0 else float("inf")

    @property
    def cpu_per_unit(self) -> float:
        return self.cpu / self.units if self.units else float("nan")


def timed(fn: Callable[[], Any], units: float = 1.0) -> Sample:
    """Run ``fn`` once; wall clock and process CPU time (``time.process_time``) deltas."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return Sample(t1 - t0, c1 - c0, units)


def run_rounds(benchmark: Any, one_round: Callable[[], None], rounds: int, warmup: int = 1) -> None:
    """Call ``one_round`` warmup + rounds times, through pytest-benchmark when it is enabled.

    ``one_round`` runs every variant once (A B C) and appends its samples itself; the caller
    drops the first ``warmup`` of them. pytest-benchmark then times whole rounds.
    """
    if getattr(benchmark, "disabled", True):
        for _ in range(warmup + rounds - 1):
            one_round()
        benchmark(one_round)  # disabled: one plain call (and no "fixture not used" warning)
    else:
        benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup, iterations=1)


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    rates = [s.rate for s in samples]
    cpu = [s.cpu_per_unit for s in samples]
    return {
        "rounds": len(samples),
        "rate_median": median(rates),
        "rate_min": min(rates) if rates else None,
        "rate_max": max(rates) if rates else None,
        "cpu_per_unit_median": median(cpu),
        "wall_s": [round(s.wall, 6) for s in samples],
        "cpu_s": [round(s.cpu, 6) for s in samples],
        "units": [s.units for s in samples],
    }


def paired_ratio(
    a: Sequence[Sample], b: Sequence[Sample], metric: Callable[[Sample], float]
) -> dict[str, Any]:
    """Median of the per-round ratios metric(a_r) / metric(b_r), and the ratio of the medians."""
    per_round = [metric(x) / metric(y) for x, y in zip(a, b, strict=True) if metric(y)]
    return {
        "median_of_round_ratios": median(per_round),
        "ratio_of_medians": median([metric(x) for x in a]) / median([metric(y) for y in b]),
        "per_round": [round(r, 4) for r in per_round],
    }


def rate_of(s: Sample) -> float:
    return s.rate


def cpu_of(s: Sample) -> float:
    return s.cpu_per_unit
