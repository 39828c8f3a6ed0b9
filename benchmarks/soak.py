"""Plots of a soak run (tests/integration/test_soak.py): RSS, delivered fps and lag over time.

The long soak (``COMUX_LONG=1``) writes its per-second samples to
``benchmarks/results/latest/soak-long.json`` and calls :func:`plot` for ``soak-long.png``
(the tracked run README.md quotes is in ``benchmarks/results/reference/``). To draw a
JSON again::

    .venv/bin/python -m benchmarks.soak benchmarks/results/latest/soak-long.json [out.png]

Needs matplotlib (the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot", "write_samples"]

RESULTS = Path(__file__).resolve().parent / "results" / "latest"  # untracked


def write_samples(path: str | Path, samples: Sequence[Mapping[str, Any]], meta: Mapping) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": dict(meta), "samples": list(samples)}, indent=1) + "\n")
    return path


def plot(
    samples: Sequence[Mapping[str, Any]], path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Three panels over the run's seconds: RSS (MB), delivered frames/s, lag (max and mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = dict(meta or {})
    t = [s["t"] for s in samples]
    rss = [s["rss"] / 2**20 for s in samples]
    fps = [s["fps"] for s in samples]
    fps_per_s = meta.get("fps")
    lags = [list(s["lag"].values()) if isinstance(s["lag"], dict) else s["lag"] for s in samples]
    lag_max = [max(lag, default=0) for lag in lags]
    lag_mean = [sum(lag) / max(1, len(lag)) for lag in lags]
    unit = "frames"
    if fps_per_s:  # lag in seconds of video
        lag_max = [v / fps_per_s for v in lag_max]
        lag_mean = [v / fps_per_s for v in lag_mean]
        unit = "s of video"
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(t, rss, color="tab:blue")
    axes[0].set_ylabel("RSS (MB)")
    axes[1].plot(t, fps, color="tab:green", linewidth=0.8)
    if meta.get("nominal_fps"):
        axes[1].axhline(meta["nominal_fps"], color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_ylabel("delivered frames/s")
    axes[2].plot(t, lag_max, color="tab:red", label="max over cameras")
    axes[2].plot(t, lag_mean, color="tab:orange", label="mean")
    axes[2].set_ylabel(f"lag ({unit})")
    axes[2].set_xlabel("seconds")
    axes[2].legend(loc="upper right")
    warmup = meta.get("warmup_s")
    for ax in axes:
        ax.grid(alpha=0.3)
        if warmup:
            ax.axvline(warmup, color="grey", linestyle=":", linewidth=0.8)
    title = meta.get("title") or "comux soak"
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1]) if len(argv) > 1 else Path(argv[0]).with_suffix(".png")
    print(plot(data["samples"], out, data.get("meta")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
