"""Plot the benchmark results. Needs matplotlib.

    python benchmarks/plot.py                 # the long run's results if there are any, else short
    python benchmarks/plot.py --input benchmarks/results/reference/end_to_end-long.json
    python benchmarks/plot.py --live          # CPU per camera-second against rate

Reads the JSON that ``test_end_to_end_bench.py`` writes and saves
``benchmarks/results/latest/fps_vs_cameras.png``: frames/s (median, min-max bars) and process
CPU milliseconds per frame, against the number of cameras. With ``--live``, reads what
``test_live_bench.py`` writes and saves ``benchmarks/results/latest/cpu_vs_rate.png``: comux's
CPU per camera-second at each rate, one line per stream. ``latest/`` is untracked; the tracked
long-run results and plots that README.md quotes are in ``benchmarks/results/reference/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest"
REFERENCE = RESULTS.parent / "reference"
STYLE = {
    "comux": {"color": "tab:blue", "marker": "o"},
    "ceiling": {"color": "tab:green", "marker": "s"},
    "ceiling_uncached": {"color": "tab:olive", "marker": "^", "linestyle": ":"},
    "ceiling_kafka": {"color": "tab:purple", "marker": "D", "linestyle": "--"},
    "naive": {"color": "tab:red", "marker": "x"},
}


def default_input() -> Path:
    long = RESULTS / "end_to_end-long.json"
    return long if long.is_file() else RESULTS / "end_to_end.json"


def curve(data: dict, resolution: str) -> dict[str, list[tuple[int, dict]]]:
    """pipeline -> [(cameras, summary)] sorted by camera count, for one output size."""
    out: dict[str, list[tuple[int, dict]]] = {}
    for case in data.get("cases", {}).values():
        if case.get("resolution") != resolution:
            continue
        for name, summary in case["pipelines"].items():
            out.setdefault(name, []).append((case["cameras"], summary))
    return {k: sorted(v, key=lambda item: item[0]) for k, v in out.items()}


def plot_live(src: Path, output: Path) -> int:
    if not src.is_file():
        print(
            f"no results at {src}: run `pytest benchmarks/test_live_bench.py` first, or plot "
            f"the reference run: --live --input {REFERENCE / 'live-long.json'}",
            file=sys.stderr,
        )
        return 1
    data = json.loads(src.read_text())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = {"rate_None": "none (25)", "rate_5": "5", "rate_1": "1"}
    for name, case in data.get("cases", {}).items():
        rates = [k for k in labels if k in case]
        cpu = [1000 * case[k]["cores_per_camera"] for k in rates]
        title = f"{name} ({case.get('size')}, {case.get('cameras')} cameras)"
        ax.plot([labels[k] for k in rates], cpu, marker="o", label=title)
    ax.set_xlabel("rate (frames/s delivered per camera)")
    ax.set_ylabel("comux CPU, ms per camera-second")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"live cameras at 25 fps, {data.get('mode', '?')} mode", fontsize=10)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    print(f"wrote {output} from {src}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--resolution", default="640x360")
    parser.add_argument("--live", action="store_true", help="CPU against rate (live benchmark)")
    args = parser.parse_args(argv)
    if args.live:
        long = RESULTS / "live-long.json"
        src = args.input or (long if long.is_file() else RESULTS / "live.json")
        return plot_live(src, args.output or RESULTS / "cpu_vs_rate.png")
    args.output = args.output or RESULTS / "fps_vs_cameras.png"
    src = args.input or default_input()
    if not src.is_file():
        print(
            f"no results at {src}: run `pytest benchmarks --benchmark-enable` first, or plot "
            f"the reference run: --input {REFERENCE / 'end_to_end-long.json'}",
            file=sys.stderr,
        )
        return 1
    data = json.loads(src.read_text())
    points = curve(data, args.resolution)
    if not points:
        print(f"{src} has no {args.resolution} end-to-end cases", file=sys.stderr)
        return 1

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fps, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, items in points.items():
        style = STYLE.get(name, {})
        cams = [c for c, _ in items]
        fps = [s["fps_median"] for _, s in items]
        low = [s["fps_median"] - s["fps_min"] for _, s in items]
        high = [s["fps_max"] - s["fps_median"] for _, s in items]
        ax_fps.errorbar(cams, fps, yerr=[low, high], label=name, capsize=3, **style)
        ax_cpu.plot(cams, [s["cpu_ms_per_frame_median"] for _, s in items], label=name, **style)
    all_cams = sorted({c for items in points.values() for c, _ in items})
    for ax in (ax_fps, ax_cpu):
        ax.set_xlabel("cameras")
        ax.set_xticks(all_cams)
        ax.grid(alpha=0.3)
    ax_fps.set_ylabel("frames/s (wall, median of rounds)")
    ax_cpu.set_ylabel("process CPU ms per frame (median)")
    ax_fps.set_ylim(bottom=0)
    ax_cpu.set_ylim(bottom=0)
    ax_fps.legend()
    machine = data.get("machine", {})
    fig.suptitle(
        f"comux end to end, {args.resolution}, {data.get('mode', '?')} mode, "
        f"{machine.get('cpu_count', '?')} CPUs, writer: {machine.get('writer', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output} from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
