"""End to end from a real Kafka broker: comux against the decode+convert ceiling and naive code.

What counts is what the model gets: frames that were in a batch the caller received (valid
slots), never frames merely decoded. Cameras are published with ``rate="max"`` BEFORE anything
consumes: synthetic streams (libx264, no B-frames, a keyframe every 25) and, marked ``x264``,
streams as libx264 makes them by default (3 B-frames with b-pyramid, adaptive B placement,
keyframes at scene cuts: GOPs of 40 to 120 frames). Then, round after round (comux,
ceiling, ceiling_uncached, ceiling_kafka, naive, comux, ...), every pipeline consumes the whole
backlog of the same cameras from the earliest offset (fresh consumer group ids each run):

* ``comux``: ``Comux(decode_threads=os.cpu_count())``, ``setup_consumers(end=False,
  max_offset_diff=None)``, ``setup_decoders(rate=None, W, H, policy="fifo")``,
  ``get_batch(stacked=True)`` in a loop releasing each batch, until the caller has received
  every offset of every camera (with B-frames the last offset is not the last frame shown);
  every contender flushes the frames its decoder holds back at the end of each stream;
  fifo, so every frame must arrive: the run records whether each
  offset arrived exactly once (never asserted) and, as ``frames_decoded``, the old count
  (``stats()["delivered"]``: frames converted into a slot);
* ``ceiling``: the same packets, fetched from Kafka into memory beforehand, decoded by PyAV and
  converted by a reused swscale context (``VideoReformatter``), nothing else, on as many
  threads as comux decodes on: the decode+convert ceiling the targets refer to;
* ``ceiling_uncached``: the same with ``frame.reformat(format="rgb24")``, which sets up a new
  swscale context for every new frame (what ``to_ndarray(format=...)`` does too);
* ``ceiling_kafka``: the ceiling fed live by one plain confluent_kafka Consumer (polled by the
  caller, messages routed to per-thread queues): comux minus its batching, so comux/ceiling_kafka
  isolates comux's own overhead and ceiling_kafka/ceiling the cost of Kafka (client + broker,
  which share the machine's cores);
* ``naive``: a thread and a confluent_kafka Consumer per camera, ``to_ndarray("rgb24")``, a
  bounded ``queue.Queue`` each, and a main loop ``np.stack``-ing the next frame of every camera
  (fifo, like comux's run; frames in its stacks count).

See ``benchmarks/_pipelines.py`` for where each clock starts and stops.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from benchmarks._common import Sample, cpu_of, is_long, paired_ratio, rate_of, run_rounds, summarize
from benchmarks._pipelines import (
    BrokerCPU,
    fetch_backlog,
    run_ceiling,
    run_ceiling_kafka,
    run_comux,
    run_naive,
)
from comux.media import synthetic_packets
from comux.publish import publish


@dataclass(frozen=True)
class Source:
    width: int
    height: int
    cameras: int
    frames: int  # per camera
    x264: bool = False  # libx264's defaults (b-pyramid, scene cuts), not a fixed GOP

    @property
    def key(self) -> str:
        return f"{self.width}x{self.height}" + ("-x264" if self.x264 else "")


@dataclass(frozen=True)
class Case:
    source: Source
    cameras: int
    rounds: int
    curve: bool = False  # an extra point of the fps-vs-cameras curve

    @property
    def id(self) -> str:
        return f"{self.cameras}x{self.source.key}"


def cases(long: bool) -> list[Case]:
    if long:
        sd, hd = Source(640, 360, 8, 400), Source(1920, 1080, 4, 120)
        main = [
            Case(sd, 8, 5),
            Case(Source(640, 360, 8, 400, x264=True), 8, 5),
            Case(Source(176, 144, 32, 300), 32, 5),
            Case(Source(1280, 720, 4, 150), 4, 5),
            Case(hd, 4, 5),
        ]
        curve = [Case(sd, n, 5, curve=True) for n in (1, 2, 4)]
        return main + curve
    # CI: the whole module (broker start included) in about two minutes on two cores; a run
    # still lasts a few tenths of a second, shorter ones make wall ratios mostly noise.
    sd, hd = Source(640, 360, 4, 200), Source(1920, 1080, 2, 40)
    return [Case(sd, 4, 5), Case(Source(176, 144, 8, 150, x264=True), 8, 3), Case(hd, 2, 5)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cs = cases(is_long(metafunc.config))
        metafunc.parametrize("case", cs, ids=[c.id for c in cs])


@dataclass
class Published:
    template: str
    cams: list[str]
    last: dict[str, int]  # last offset (= last frame) of each camera
    packets: dict[str, list[bytes]]  # the same messages, fetched back into memory
    publish_s: float


@pytest.fixture(scope="module")
def sources(kafka_broker) -> Callable[[Source], Published]:
    """Publish each Source once per module (encoding and publishing are not timed)."""
    done: dict[Source, Published] = {}

    def get(src: Source) -> Published:
        if src in done:
            return done[src]
        template = f"bench-{uuid.uuid4().hex[:8]}-{src.key}.:cam_id"
        cams = [f"cam{i}" for i in range(src.cameras)]
        last = {}
        t0 = time.perf_counter()
        for i, cam in enumerate(cams):
            packets = list(
                synthetic_packets(
                    src.width,
                    src.height,
                    src.frames,
                    bframes=3 if src.x264 else 0,
                    gop=None if src.x264 else 25,
                    seed=100 + i,
                )
            )
            stats = publish(
                functools.partial(iter, packets),
                cam,
                bootstrap_servers=kafka_broker.bootstrap,
                topic_template=template,
                rate="max",
            )
            assert stats.packets == src.frames
            last[cam] = stats.packets - 1  # new topic: offsets 0 .. n-1
        publish_s = time.perf_counter() - t0
        backlog = fetch_backlog(
            kafka_broker.bootstrap, template, cams, {c: src.frames for c in cams}
        )
        done[src] = Published(template, cams, last, backlog, publish_s)
        return done[src]

    return get


TARGETS = {  # comux's frames in batches against the others (never asserted)
    "fps_vs_ceiling": 0.9,
    "fps_vs_ceiling_kafka": 0.95,
    "cpu_vs_ceiling": 1.1,
}


@pytest.mark.timeout(1800)
def test_end_to_end(benchmark, case: Case, sources, kafka_broker, results) -> None:
    src = case.source
    pub = sources(src)
    cams = pub.cams[: case.cameras]
    # COMUX_BENCH_THREADS: decode threads of comux and the ceilings (default: the core count)
    threads = int(os.environ.get("COMUX_BENCH_THREADS") or 0) or os.cpu_count() or 1
    w, h = src.width, src.height
    bootstrap = kafka_broker.bootstrap
    broker = BrokerCPU(getattr(kafka_broker, "pid_path", None))
    total = len(cams) * src.frames
    variants: dict[str, Callable[[], Sample]] = {
        "comux": lambda: run_comux(bootstrap, pub.template, cams, pub.last, w, h, threads),
        "ceiling": lambda: run_ceiling(pub.packets, cams, w, h, threads),
        "ceiling_uncached": lambda: run_ceiling(pub.packets, cams, w, h, threads, cached=False),
        "ceiling_kafka": lambda: run_ceiling_kafka(
            bootstrap, pub.template, cams, pub.last, total, w, h, threads
        ),
        "naive": lambda: run_naive(bootstrap, pub.template, cams, pub.last, w, h),
    }
    samples: dict[str, list[Sample]] = {k: [] for k in variants}

    def one_round() -> None:
        for name, run in variants.items():
            b0 = broker.seconds()
            sample = run()
            b1 = broker.seconds()
            sample.extra["broker_cpu_s"] = None if b0 is None or b1 is None else round(b1 - b0, 4)
            samples[name].append(sample)

    run_rounds(benchmark, one_round, case.rounds, warmup=1)
    samples = {k: v[-case.rounds :] for k, v in samples.items()}

    pipelines = {}
    for name, ss in samples.items():
        s = summarize(ss)
        s["fps_median"] = s.pop("rate_median")
        s["fps_min"], s["fps_max"] = s.pop("rate_min"), s.pop("rate_max")
        s["cpu_ms_per_frame_median"] = 1e3 * s.pop("cpu_per_unit_median")
        s["extra"] = [x.extra for x in ss]
        pipelines[name] = s
    ratios = {
        "comux/ceiling fps": paired_ratio(samples["comux"], samples["ceiling"], rate_of),
        "comux/ceiling cpu_per_frame": paired_ratio(samples["comux"], samples["ceiling"], cpu_of),
        "comux/ceiling_uncached fps": paired_ratio(
            samples["comux"], samples["ceiling_uncached"], rate_of
        ),
        "comux/ceiling_uncached cpu_per_frame": paired_ratio(
            samples["comux"], samples["ceiling_uncached"], cpu_of
        ),
        "comux/ceiling_kafka fps": paired_ratio(
            samples["comux"], samples["ceiling_kafka"], rate_of
        ),
        "comux/ceiling_kafka cpu_per_frame": paired_ratio(
            samples["comux"], samples["ceiling_kafka"], cpu_of
        ),
        "ceiling_kafka/ceiling fps": paired_ratio(
            samples["ceiling_kafka"], samples["ceiling"], rate_of
        ),
        "comux/naive fps": paired_ratio(samples["comux"], samples["naive"], rate_of),
        "comux/naive cpu_per_frame": paired_ratio(samples["comux"], samples["naive"], cpu_of),
    }
    t = TARGETS
    head = {k: v["median_of_round_ratios"] for k, v in ratios.items()}
    fps_c, fps_k = head["comux/ceiling fps"], head["comux/ceiling_kafka fps"]
    cpu_c = head["comux/ceiling cpu_per_frame"]
    targets = {
        f"comux >= {t['fps_vs_ceiling']} x ceiling fps": fps_c >= t["fps_vs_ceiling"],
        f"comux >= {t['fps_vs_ceiling_kafka']} x ceiling_kafka fps": fps_k
        >= t["fps_vs_ceiling_kafka"],
        f"comux <= {t['cpu_vs_ceiling']} x ceiling cpu/frame": cpu_c <= t["cpu_vs_ceiling"],
        "comux: every offset in a batch exactly once": all(
            run.extra["offsets"]["every_offset_once"] for run in samples["comux"]
        ),
    }
    record = {
        "cameras": len(cams),
        "width": w,
        "height": h,
        "resolution": src.key,
        "frames_per_camera": src.frames,
        "frames_total": total,
        "counts": "frames in batches the caller received (comux, naive); frames converted "
        "(ceilings); comux's frames converted into a slot are extra.frames_decoded",
        "comux_policy": "fifo",
        "decode_threads": threads,
        "curve_point": case.curve,
        "publish_s": round(pub.publish_s, 3),
        "comux_delivery": {  # per round: what the caller got against what was decoded
            "frames_in_batches": [run.extra["frames"] for run in samples["comux"]],
            "frames_decoded": [run.extra["frames_decoded"] for run in samples["comux"]],
            "every_offset_once": [
                run.extra["offsets"]["every_offset_once"] for run in samples["comux"]
            ],
        },
        "pipelines": pipelines,
        "ratios": ratios,
        "targets": targets,
        "loadavg_after": list(os.getloadavg()),
    }
    results("end_to_end").record(
        case.id if threads == os.cpu_count() else f"{case.id}-t{threads}", record
    )
    benchmark.extra_info.update({k: round(v, 3) for k, v in head.items()})
    benchmark.extra_info.update(
        {f"{k} fps": round(v["fps_median"], 1) for k, v in pipelines.items()}
    )

    # Benchmark sanity, never timing: the contenders' own loops got every frame of the backlog.
    # comux's delivery (fifo: every offset exactly once) is recorded above, not asserted.
    for name, runs in samples.items():
        if name == "comux":
            continue
        for run in runs:
            assert run.extra["frames"] == total, (name, run.extra, total)
