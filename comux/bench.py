"""``comux bench``: run the benchmark suite and put its JSON and plots in one folder.

The benchmarks are not part of the installed package: they live in the source tree
(``benchmarks/`` of a clone of the repository, next to ``comux/``) and need that tree's
``tests/`` (the local broker fixture) and the ``bench`` extra (pytest-benchmark, matplotlib).
``comux bench`` finds that folder next to the imported package (an editable install or a run
from the clone), or takes it from ``--benchmarks PATH``; otherwise it says where to get it.

It runs ``python -m pytest <benchmarks> --benchmark-enable [--long]`` from the folder above it
(so the repository's pytest settings apply) with ``COMUX_BENCH_OUT=<out>``, which
``benchmarks/_common.py`` writes its per-module JSON to, then ``benchmarks/plot.py`` for the
PNGs. Exit status: pytest's (0 when every benchmark passed), 1 when the suite could not be
found or run, or when only the plots failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["OUT_ENV", "add_bench_parser", "find_benchmarks", "run_bench"]

OUT_ENV = "COMUX_BENCH_OUT"  # read by benchmarks/_common.py
DEFAULT_OUT = "comux-bench"
_MARKERS = ("conftest.py", "_common.py", "plot.py")


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` verb to the ``comux`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="run the benchmark suite (from a source checkout) and plot it",
        description=(
            "Run the benchmarks (benchmarks/ of a source checkout: next to the imported "
            "package, or --benchmarks PATH) with pytest-benchmark, writing their JSON and PNG "
            "plots into --out. Short mode takes about 2 minutes on 2 cores, --long 10-15."
        ),
    )
    p.add_argument("--long", action="store_true", help="the long mode: more cases and rounds")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=f"folder for the JSON and PNG files (default: ./{DEFAULT_OUT})",
    )
    p.add_argument(
        "--benchmarks",
        metavar="PATH",
        default=None,
        help="the benchmarks/ folder of a comux source checkout (default: next to the package)",
    )
    p.add_argument("-k", metavar="EXPR", default=None, help="only benchmarks matching (pytest -k)")
    p.add_argument("--no-plot", action="store_true", help="write the JSON only")
    return p


def find_benchmarks(given: str | os.PathLike[str] | None = None) -> Path | None:
    """The benchmarks folder: ``given``, else ``benchmarks/`` next to the comux package."""
    if given is not None:
        folder = Path(given).expanduser().resolve()
        if folder.is_dir() and folder.name != "benchmarks" and (folder / "benchmarks").is_dir():
            folder = folder / "benchmarks"  # the checkout's root was given
        return folder if _is_suite(folder) else None
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    return folder if _is_suite(folder) else None


def _is_suite(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in _MARKERS)


def _missing(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _say(text: str) -> None:
    print(f"comux bench: {text}", file=sys.stderr, flush=True)


def run_bench(args: argparse.Namespace) -> int:
    """Run the suite into ``args.out``; see the module's docstring for the exit status."""
    folder = find_benchmarks(args.benchmarks)
    if folder is None:
        if args.benchmarks is not None:
            _say(
                f"{args.benchmarks} is not comux's benchmarks folder (it needs "
                f"{', '.join(_MARKERS)})"
            )
        else:
            _say(
                "the benchmarks are not installed with the package: they ship with comux's "
                "source (the benchmarks/ folder of a clone of the repository). Run this from an "
                "editable install of a clone (pip install -e '.[bench]'), or give the folder "
                "with --benchmarks PATH."
            )
        return 1
    missing = _missing(["pytest", "pytest_benchmark"] + ([] if args.no_plot else ["matplotlib"]))
    if missing:
        _say(f"{', '.join(missing)} not installed: pip install 'comux[bench]'")
        return 1
    out = Path(args.out or DEFAULT_OUT).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, OUT_ENV: str(out)}
    command = [sys.executable, "-m", "pytest", str(folder), "--benchmark-enable"]
    command += ["-p", "no:cacheprovider", "--benchmark-json", str(out / "pytest-benchmark.json")]
    if args.long:
        command.append("--long")
    if args.k:
        command += ["-k", args.k]
    _say(f"{'long' if args.long else 'short'} mode, results in {out}")
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    code = subprocess.call(command, cwd=folder.parent, env=env)
    if args.no_plot:
        return code
    plotted = _plot(folder, out, args.long)
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".png"))
    _say(f"wrote {', '.join(written) or 'nothing'} in {out}")
    return code if code else (0 if plotted else 1)


def _plot(folder: Path, out: Path, long: bool) -> bool:
    """Run plot.py for each plot there are results for; False when one failed."""
    suffix = "-long" if long else ""
    jobs = [
        (out / f"end_to_end{suffix}.json", out / "fps_vs_cameras.png", []),
        (out / f"live{suffix}.json", out / "cpu_vs_rate.png", ["--live"]),
    ]
    ok = True
    for source, target, extra in jobs:
        if not source.is_file():
            continue
        command = [sys.executable, str(folder / "plot.py"), *extra]
        command += ["--input", str(source), "--output", str(target)]
        if subprocess.call(command, cwd=folder.parent) != 0:
            _say(f"plotting {source.name} failed")
            ok = False
    return ok
