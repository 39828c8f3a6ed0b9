"""``comux top``: a live per-camera table read from a running comux's ``/metrics``."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["Snapshot", "camera_rows", "fetch", "metrics_url", "parse", "render", "run_top"]

BEHIND_S = 2.0  # a camera more seconds than this behind the end of its topic is "behind"
BEHIND_MESSAGES = 50  # the same in messages, while its frame interval is unknown
STATE_STYLES = {
    "live": "green",
    "silent": "yellow",
    "paused": "blue",
    "behind": "red",
    "unassigned": "dim",
}


@dataclass
class Snapshot:
    """One scrape: per-camera samples (by sample name) and the process-wide ones."""

    at: float
    cameras: dict[str, dict[str, float]] = field(default_factory=dict)
    process: dict[str, float] = field(default_factory=dict)


def parse(text: str, at: float | None = None) -> Snapshot:
    """Read the Prometheus text of ``/metrics``; skip reasons are summed into ``skipped``."""
    snap = Snapshot(time.monotonic() if at is None else at)
    cameras: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") or "quantile" in sample.labels:
                continue
            cam_id = sample.labels.get("cam_id")
            if cam_id is None:
                if len(sample.labels) == 0:
                    snap.process[sample.name] = sample.value
                continue
            row = cameras[cam_id]
            if sample.name == "comux_skipped_total":
                row["skipped"] = row.get("skipped", 0.0) + sample.value
                row[f"skipped:{sample.labels.get('reason', '')}"] = sample.value
            else:
                row[sample.name] = sample.value
    snap.cameras = dict(cameras)
    return snap


def metrics_url(url: str) -> str:
    """``host:port`` or ``http://host:port`` become ``http://host:port/metrics``."""
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    if "/" not in rest or rest.endswith("/"):
        url = f"{scheme}://{rest.rstrip('/')}/metrics"
    return url


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def _state(row: dict[str, float]) -> str:
    if row.get("comux_camera_paused"):
        return "paused"
    if row.get("comux_camera_assigned", 1.0) == 0:
        return "unassigned"
    lag_s = row.get("comux_consumer_lag_seconds")
    lag_m = row.get("comux_consumer_lag_messages")
    if (lag_s is not None and lag_s > BEHIND_S) or (
        lag_s is None and lag_m is not None and lag_m > BEHIND_MESSAGES
    ):
        return "behind"
    if row.get("comux_camera_silent") or not row.get("comux_frames_decoded_total"):
        return "silent"
    return "live"


def camera_rows(now: Snapshot, before: Snapshot | None = None) -> list[dict[str, Any]]:
    """Per camera: state, fps and mean frame age since ``before`` (None without it), lag,
    drops (every skip reason) and decode errors."""
    rows = []
    elapsed = now.at - before.at if before is not None else 0.0
    for cam_id in sorted(now.cameras):
        row = now.cameras[cam_id]
        old = before.cameras.get(cam_id) if before is not None else None
        fps = age = None
        count = row.get("comux_frame_age_seconds_count", 0.0)
        total = row.get("comux_frame_age_seconds_sum", 0.0)
        if old is not None and elapsed > 0:
            fps = (
                row.get("comux_frames_delivered_total", 0.0)
                - old.get("comux_frames_delivered_total", 0.0)
            ) / elapsed
            count -= old.get("comux_frame_age_seconds_count", 0.0)
            total -= old.get("comux_frame_age_seconds_sum", 0.0)
        if count > 0:
            age = total / count
        rows.append(
            {
                "cam_id": cam_id,
                "state": _state(row),
                "fps": fps,
                "delivered": row.get("comux_frames_delivered_total", 0.0),
                "lag_messages": row.get("comux_consumer_lag_messages"),
                "lag_seconds": row.get("comux_consumer_lag_seconds"),
                "age": age,
                "drops": row.get("skipped", 0.0),
                "errors": row.get("comux_decode_errors_total", 0.0),
            }
        )
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(
    now: Snapshot | None, before: Snapshot | None = None, *, source: str = "", error: str = ""
) -> Table:
    """The table ``comux top`` shows for one scrape (and the one before, for rates)."""
    table = Table(title=f"comux top  {source}".rstrip(), title_justify="left", expand=False)
    for name, justify in (
        ("camera", "left"),
        ("state", "left"),
        ("fps", "right"),
        ("frames", "right"),
        ("lag", "right"),
        ("lag s", "right"),
        ("age ms", "right"),
        ("drops", "right"),
        ("errors", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if now is None:
        table.caption = error or "waiting for the first scrape"
        return table
    for row in camera_rows(now, before):
        table.add_row(
            row["cam_id"],
            Text(row["state"], style=STATE_STYLES.get(row["state"], "")),
            _num(row["fps"], ".1f"),
            _num(row["delivered"], ".0f"),
            _num(row["lag_messages"], ".0f"),
            _num(row["lag_seconds"], ".2f"),
            _num(None if row["age"] is None else row["age"] * 1000, ".1f"),
            _num(row["drops"], ".0f"),
            Text(_num(row["errors"], ".0f"), style="red" if row["errors"] else ""),
        )
    p = now.process
    parts = [f"{len(now.cameras)} cameras"]
    if "comux_ready" in p:
        parts.append("ready" if p["comux_ready"] else "NOT READY")
    if before is not None and now.at > before.at and "comux_batches_total" in p:
        rate = (p["comux_batches_total"] - before.process.get("comux_batches_total", 0.0)) / (
            now.at - before.at
        )
        parts.append(f"{rate:.1f} batches/s")
    fill_n = p.get("comux_batch_fill_ratio_count", 0.0)
    if fill_n:
        parts.append(f"fill {p.get('comux_batch_fill_ratio_sum', 0.0) / fill_n:.0%}")
    parts.append(
        "results {:.0f} delivered, {:.0f} failed, {:.0f} queued".format(
            p.get("comux_producer_delivered_total", 0.0),
            p.get("comux_producer_failed_total", 0.0),
            p.get("comux_producer_queued_messages", 0.0),
        )
    )
    if error:
        parts.append(f"[red]{error}[/red]")
    table.caption = "  ·  ".join(parts)
    return table


def run_top(
    url: str,
    *,
    interval: float = 1.0,
    once: bool = False,
    console: Console | None = None,
    iterations: int | None = None,
) -> int:
    """Scrape ``url`` every ``interval`` seconds and redraw the table until Ctrl-C.

    ``once`` prints one table (cumulative numbers only) and returns; 1 if the scrape failed.
    """
    url = metrics_url(url)
    console = console or Console()
    if once:
        try:
            console.print(render(parse(fetch(url)), source=url))
        except OSError as exc:
            console.print(f"comux top: {url}: {exc}", style="red")
            return 1
        return 0
    before: Snapshot | None = None
    now: Snapshot | None = None
    done = 0
    with Live(render(None, source=url), console=console, auto_refresh=False) as live:
        while iterations is None or done < iterations:
            error = ""
            try:
                snap = parse(fetch(url, timeout=max(1.0, interval)))
                before, now = now, snap
            except (OSError, ValueError) as exc:
                error = f"scrape failed: {exc}"
            live.update(render(now, before, source=url, error=error), refresh=True)
            done += 1
            if iterations is None or done < iterations:
                time.sleep(interval)
    return 0
