"""Per-frame cost breakdown of comux's own work, fifo backlog, two fleet shapes.

Usage (from the repository root, with the bootstrapped .venv and ``pip install py-spy``):

    .venv/bin/python benchmarks/profile_fleet.py [--configs a,b] [--rounds 2] [--out DIR]

For each configuration it:
  1. starts ONE local Kafka 4.3.1 broker (comux.broker.LocalKafka, as tests/fixtures_kafka.py),
  2. publishes the synthetic cameras (comux.media.synthetic_packets, bframes=0, gop=25, seed
     100+i, as benchmarks/test_end_to_end_bench.py's ``sources`` fixture) and fetches the backlog
     back into memory for the ceiling,
  3. times ``rounds`` interleaved rounds of run_ceiling / run_comux WITHOUT a profiler
     (fps and process-CPU per frame, first frame .. last frame as the benchmarks count them),
  4. runs run_comux twice more with py-spy attached to this process:
       * ``active``: ``py-spy record --native --threads -r 500 -f raw`` (no --idle: py-spy drops
         samples of threads the OS reports as sleeping, so samples ~ CPU time), used for the
         CPU buckets;
       * ``idle``:  the same with ``--idle`` (wall-clock view of every thread: where they wait);
     and once with run_ceiling (active) as a check of the classifier.
     During every profiled call a sampler thread reads /proc/self/task/*/stat every 50 ms, so
     each OS thread's CPU (librdkafka's own rdk:* threads included, which py-spy cannot see)
     is known; a bucket's CPU = sum over threads of thread CPU x the bucket's share of that
     thread's samples; rdk:* threads go to the librdkafka bucket whole.
  5. writes prof_out/<config>/{active,idle,ceiling}.raw, threads_*.json and summary.json;
     ``--analyze-only`` re-reads them.

Falls back to recording without --native when py-spy fails with it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "a": dict(name="8x640x360", width=640, height=360, cameras=8, frames=400),
    "b": dict(name="32x176x144", width=176, height=144, cameras=32, frames=300),
}
DECODE_THREADS = 2
PYSPY = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
TICK = os.sysconf("SC_CLK_TCK")


# -- per-thread CPU from /proc ------------------------------------------------------------------


class ThreadCPU:
    """Every 50 ms: utime+stime of each task of this process; the last value seen per tid."""

    def __init__(self) -> None:
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.comm: dict[int, str] = {}
        self.pyname: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prof-threadcpu", daemon=True)
        self.own_tid: int | None = None

    def _read(self) -> None:
        for t in threading.enumerate():
            if t.native_id is not None:
                self.pyname[t.native_id] = t.name
        for entry in os.scandir("/proc/self/task"):
            tid = int(entry.name)
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/self/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            self.first.setdefault(tid, ticks)
            self.last[tid] = ticks
            self.comm[tid] = comm

    def _loop(self) -> None:
        self.own_tid = threading.get_native_id()
        while not self._stop.is_set():
            self._read()
            self._stop.wait(0.05)

    def __enter__(self) -> ThreadCPU:
        self._read()
        self.first = dict(self.last)  # tids alive now start from here
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._read()
        self._stop.set()
        self._thread.join()

    def result(self) -> list[dict]:
        out = []
        for tid, ticks in self.last.items():
            cpu = (ticks - self.first.get(tid, 0)) / TICK
            name = self.pyname.get(tid) or self.comm.get(tid, "?")
            if tid == self.own_tid:
                name = "prof-threadcpu"
            out.append({"tid": tid, "name": name, "comm": self.comm.get(tid), "cpu_s": cpu})
        return sorted(out, key=lambda d: -d["cpu_s"])


# -- py-spy around a call -----------------------------------------------------------------------


def spy(out: Path, idle: bool, native: bool, nonblocking: bool = False) -> subprocess.Popen:
    cmd = [
        PYSPY,
        "record",
        "--pid",
        str(os.getpid()),
        "--threads",
        "-r",
        "500",
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    if native:
        cmd.append("--native")
    if idle:
        cmd.append("--idle")
    if nonblocking:
        cmd.append("--nonblocking")
    log = open(str(out) + ".log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attach
    return proc


def stop_spy(proc: subprocess.Popen, out: Path) -> bool:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out.exists() and out.stat().st_size > 0


def profiled(fn, out: Path, idle: bool, native: list[bool], nonblocking: bool = False):
    """Run fn() under py-spy; native[0] says whether --native worked so far (flipped on failure)."""
    for _attempt in range(2):
        use_native = native[0] and not nonblocking
        proc = spy(out, idle, use_native, nonblocking)
        if proc.poll() is not None:  # py-spy died at once
            if native[0]:
                native[0] = False
                continue
            raise RuntimeError(Path(str(out) + ".log").read_text())
        with ThreadCPU() as tc:
            c0, w0 = time.process_time(), time.perf_counter()
            result = fn()
            c1, w1 = time.process_time(), time.perf_counter()
        ok = stop_spy(proc, out)
        if ok:
            return result, tc.result(), c1 - c0, w1 - w0, use_native
        if native[0]:
            native[0] = False
            continue
        raise RuntimeError(Path(str(out) + ".log").read_text())
    raise RuntimeError("py-spy failed")


# -- the runs -------------------------------------------------------------------------------------


def publish_config(bootstrap: str, cfg: dict) -> dict:
    from benchmarks._pipelines import fetch_backlog
    from comux.media import synthetic_packets
    from comux.publish import publish

    w, h, n, frames = cfg["width"], cfg["height"], cfg["cameras"], cfg["frames"]
    template = f"prof-{uuid.uuid4().hex[:8]}-{w}x{h}.:cam_id"
    cams = [f"cam{i}" for i in range(n)]
    last = {}
    t0 = time.perf_counter()
    for i, cam in enumerate(cams):
        packets = list(synthetic_packets(w, h, frames, bframes=0, gop=25, seed=100 + i))
        stats = publish(
            functools.partial(iter, packets),
            cam,
            bootstrap_servers=bootstrap,
            topic_template=template,
            rate="max",
        )
        assert stats.packets == frames
        last[cam] = stats.packets - 1
    print(f"  published {n}x{frames} in {time.perf_counter() - t0:.1f} s", flush=True)
    backlog = fetch_backlog(bootstrap, template, cams, {c: frames for c in cams})
    return dict(template=template, cams=cams, last=last, packets=backlog)


def sample_dict(s) -> dict:
    return {
        "wall_s": s.wall,
        "cpu_s": s.cpu,
        "frames": s.units + 1,
        "fps": s.rate,
        "cpu_ms_per_frame": 1e3 * s.cpu_per_unit,
        "extra": {k: v for k, v in s.extra.items() if k != "offsets"}
        | (
            {"every_offset_once": s.extra["offsets"]["every_offset_once"]}
            if "offsets" in s.extra
            else {}
        ),
    }


def run_config(key: str, bootstrap: str, out: Path, rounds: int, native: list[bool]) -> dict:
    from benchmarks._pipelines import run_ceiling, run_comux

    cfg = CONFIGS[key]
    print(f"[{cfg['name']}] publishing", flush=True)
    pub = publish_config(bootstrap, cfg)
    w, h, cams, last = cfg["width"], cfg["height"], pub["cams"], pub["last"]

    def comux():
        return run_comux(bootstrap, pub["template"], cams, last, w, h, DECODE_THREADS)

    def ceiling():
        return run_ceiling(pub["packets"], cams, w, h, DECODE_THREADS)

    timing = {"comux": [], "ceiling": []}
    comux()  # warm-up (imports, first group join)
    for r in range(rounds):
        for name, fn in (("ceiling", ceiling), ("comux", comux)):
            s = fn()
            timing[name].append(sample_dict(s))
            print(
                f"  round {r} {name}: {s.rate:.0f} fps, {1e3 * s.cpu_per_unit:.3f} CPU ms/frame",
                flush=True,
            )
    d = out / cfg["name"]
    d.mkdir(parents=True, exist_ok=True)
    prof = {}
    for label, fn, idle, nb in (
        ("nb", comux, False, True),
        ("active", comux, False, False),
        ("idle", comux, True, False),
        ("ceiling", ceiling, False, False),
    ):
        s, threads, cpu, wall, used = profiled(fn, d / f"{label}.raw", idle, native, nb)
        prof[label] = {
            "sample": sample_dict(s),
            "threads": threads,
            "call_cpu_s": cpu,
            "call_wall_s": wall,
            "native": used,
            "nonblocking": nb,
            "idle": idle,
        }
        print(
            f"  profiled {label}: {s.rate:.0f} fps, {1e3 * s.cpu_per_unit:.3f} CPU ms/frame "
            f"(call: {cpu:.2f} CPU s, {wall:.2f} s, native={native[0]})",
            flush=True,
        )
    summary = {"config": cfg, "decode_threads": DECODE_THREADS, "timing": timing, "profiled": prof}
    (d / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


# -- classification -------------------------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")

BUCKETS = [
    "librdkafka poll + routing",
    "librdkafka internal threads (rdk:*, /proc)",
    "queues/wake-ups",
    "GIL hand-off (take_gil/drop_gil)",
    "header & bitstream parsing",
    "rate/skip decisions + decode prep (decoding.py)",
    "PyAV decode call",
    "colour conversion",
    "slot hand-off",
    "sealing",
    "offset ledger",
    "counters/metrics",
    "other: Camera.run turn loop",
    "other: PacketCache",
    "other: GC",
    "other",
    "benchmark harness (caller loop, not comux)",
    "idle: blocked in a wait (no CPU)",
]
IDLE = "idle: blocked in a wait (no CPU)"
OWN_EXCLUDED = {
    "PyAV decode call",
    "colour conversion",
    "benchmark harness (caller loop, not comux)",
    "idle: blocked in a wait (no CPU)",
}
# A native stack ending in one of these is a thread asleep in the kernel (blocking py-spy stops
# the process with ptrace, so its OS-state idle test cannot tell; the stack can).
WAIT_SYMS = re.compile(
    r"^(pthread_cond_timedwait|pthread_cond_wait|pthread_cond_clockwait|__pthread_cond_wait|"
    r"cnd_wait|cnd_timedwait|sem_wait|sem_timedwait|sem_clockwait|__lll_lock_wait|"
    r"__lll_lock_wait_private|futex_wait|__futex_abstimed_wait|do_futex_wait|poll|__poll|ppoll|"
    r"epoll_wait|select|nanosleep|clock_nanosleep|__clock_nanosleep|pthread_join|"
    r"rd_kafka_q_serve|take_gil|PyThread_acquire_lock_timed)"
)


def parse_frame(tok: str) -> tuple[str, str, int | None]:
    m = FRAME.match(tok)
    if not m:
        return tok, "", None
    func, where = m.group("func"), m.group("where")
    line = None
    if ":" in where:
        f, _, ln = where.rpartition(":")
        if ln.isdigit():
            where, line = f, int(ln)
    return func, where, line


def parse_raw(path: Path):
    """Yield (tid, thread name, [(func, file, line), ...] root->leaf, count)."""
    for raw in path.read_text().splitlines():
        raw = raw.rstrip()
        if not raw:
            continue
        stack, _, count = raw.rpartition(" ")
        parts = stack.split(";")
        head = parts[0]
        m = re.match(r"thread \((\d+|0x[0-9a-fA-F]+)\)(?::\s*(.*))?", head)
        tid = int(m.group(1), 0) if m else -1
        name = (m.group(2) or "").strip() if m else head
        yield tid, name, [parse_frame(p) for p in parts[1:]], int(count)


def is_py(file: str) -> bool:
    return file.endswith(".py") or file.endswith(".pyx") or file.startswith("<")


def decoding_line_is_decode(line: int | None, src_lines: dict) -> bool:
    text = src_lines.get(("comux/decoding.py", line), "")
    return "self._ctx.decode(" in text


_SRC: dict = {}


def src_line(file: str, line: int | None) -> str:
    if line is None:
        return ""
    for rel in (
        "comux/decoding.py",
        "comux/camera.py",
        "comux/batching.py",
        "comux/consuming.py",
        "benchmarks/_pipelines.py",
    ):
        if file.endswith(rel):
            if rel not in _SRC:
                _SRC[rel] = (ROOT / rel).read_text().splitlines()
            lines = _SRC[rel]
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


LOCK_NATIVE = re.compile(
    r"PyThread_acquire_lock|lock_PyThread|pthread_cond|pthread_mutex|__lll_lock|futex|sem_(timed)?wait|"
    r"_queue_SimpleQueue|simplequeue"
)
GIL_NATIVE = re.compile(
    r"take_gil|drop_gil|PyEval_RestoreThread|PyEval_SaveThread|PyEval_AcquireThread"
)
AV_DECODE_NATIVE = re.compile(
    r"avcodec_|ff_h264|h264_|ff_|libavcodec|CodecContext|_send_packet|_recv_frame|receive_frame|"
    r"decode_simple|decode_receive|av_frame|av_buffer|libavutil"
)
CONVERT_NATIVE = re.compile(r"convert|write_frame|sws_|libswscale|yuv2rgb|I420ToRGB|comux_")


def classify(name: str, frames: list[tuple[str, str, int | None]]) -> str:
    # asleep: the innermost named native symbol (skipping raw libc addresses) is a wait
    for fn, _f, _ in reversed(frames[-4:]):
        if fn.startswith("0x"):
            continue
        if WAIT_SYMS.match(fn):
            return "idle: blocked in a wait (no CPU)"
        break
    if any(fn.endswith("work") and f.endswith("benchmarks/_pipelines.py") for fn, f, _ in frames):
        # the ceiling's worker: decode line vs reformat line
        for fn, f, ln in frames:
            if fn.endswith("work") and f.endswith("benchmarks/_pipelines.py"):
                text = src_line(f, ln)
                if ".decode(" in text:
                    return "PyAV decode call"
                if "reformat(" in text:
                    return "colour conversion"
        return "benchmark harness (caller loop, not comux)"
    files = [f for _, f, _ in frames]
    [fn for fn, _, _ in frames]
    joined = ";".join(f"{fn}@{f}" for fn, f, _ in frames)
    if any("benchmarks/" in f for f in files) and not any("comux/" in f for f in files):
        return "benchmark harness (caller loop, not comux)"
    # Innermost comux frame and the natives below it.
    inner = None
    for i in range(len(frames) - 1, -1, -1):
        if "comux/" in frames[i][1] or "/_ext/convert" in frames[i][1]:
            inner = i
            break
    below = frames[inner + 1 :] if inner is not None else frames
    below_txt = ";".join(f"{fn} ({f})" for fn, f, _ in below)
    # Colour conversion: the compiled kernel (or swscale) below the writer.
    if "write_frame" in joined or "_ext/convert" in joined or "convert.cpython" in joined:
        return "colour conversion"
    if inner is not None and "write_frame(" in src_line(frames[inner][1], frames[inner][2]):
        return "colour conversion"
    if any(fn == "write" and "batching.py" in f for fn, f, _ in frames) and re.search(
        r"sws_|swscale|to_ndarray|reformat", below_txt
    ):
        return "colour conversion"
    # The PyAV decode call: the line `frames = self._ctx.decode(packet)` and all below it, or
    # the flush (decode(None)) in _empty.
    for i, (fn, f, ln) in enumerate(frames):
        if f.endswith("comux/decoding.py") and fn in (
            "CameraDecoder.decode",
            "CameraDecoder._empty",
        ):
            if "self._ctx.decode(" in src_line(f, ln) and i == inner:
                return "PyAV decode call"
    if inner is None:
        if GIL_NATIVE.search(below_txt):
            return "GIL hand-off (take_gil/drop_gil)"
        if any(
            fn in ("Thread.run", "Thread._bootstrap_inner") or "threading.py" in f
            for fn, f, _ in frames
        ):
            return "queues/wake-ups"
        if re.search(r"gc_collect|collect_main|_PyObject_GC", below_txt):
            return "other: GC"
        return "other"
    fn, f, ln = frames[inner]
    # Natives under the innermost comux frame that are GIL / lock waits.
    if GIL_NATIVE.search(below_txt) and not AV_DECODE_NATIVE.search(below_txt):
        return "GIL hand-off (take_gil/drop_gil)"
    if re.search(r"gc_collect|collect_main", below_txt):
        return "other: GC"
    if any("threading.py" in bf for _, bf, _ in below) or (
        LOCK_NATIVE.search(below_txt) and "rd_kafka" not in below_txt
    ):
        # a Condition/Event/Lock wait or acquire (active: not sleeping) under comux code
        return "queues/wake-ups"
    rel = f[f.find("comux/") :] if "comux/" in f else f
    if rel.endswith("annexb.py"):
        return "header & bitstream parsing"
    if rel.endswith("offsets.py"):
        return "offset ledger"
    if rel.endswith("metrics.py"):
        return "counters/metrics"
    if rel.endswith("consuming.py"):
        if fn.startswith("DecodePool") or fn.startswith("DecodeWorker"):
            return "queues/wake-ups"
        return "librdkafka poll + routing"
    if rel.endswith("camera.py"):
        if fn == "Camera.offer":
            return "librdkafka poll + routing"
        if fn == "Camera.wake":
            return "queues/wake-ups"
        # note: Camera._publish_held self-samples sit on `self._held.popleft()` (camera.py:250),
        # which drops the last reference to the published av.VideoFrame (PyAV dealloc/free).
        if fn in ("Camera._deliver", "Camera._publish", "Camera._publish_held"):
            return "slot hand-off"
        if fn in ("Camera.stats", "Camera.lag"):
            return "counters/metrics"
        if fn == "Camera.run":
            text = src_line(f, ln)
            if "perf_counter" in text or "decode_seconds" in text:
                return "counters/metrics"
            if "ledger" in text:
                return "offset ledger"
            if "inbox" in text or "wake" in text:
                return "queues/wake-ups"
            return "other: Camera.run turn loop"
        return "other"
    if rel.endswith("decoding.py"):
        if fn.startswith("PacketCache"):
            return "other: PacketCache"
        if fn == "CameraDecoder._read_headers":
            return "header & bitstream parsing"
        if fn in ("CameraStats.as_dict",):
            return "counters/metrics"
        text = src_line(f, ln)
        if "self.stats." in text:
            return "counters/metrics"
        if "is_keyframe" in text or "is_disposable" in text:
            return "header & bitstream parsing"
        return "rate/skip decisions + decode prep (decoding.py)"
    if rel.endswith("batching.py"):
        if fn in (
            "BatchPool.seal",
            "BatchPool._ready",
            "BatchPool._finish",
            "BatchPool._learn_take",
            "BatchPool.silence_limit",
            "BatchPool.stall_limit",
            "BatchPool._give_back",
            "Batch.__init__",
            "Batch.release",
            "Batch.__exit__",
            "Batch._live",
            "Batch.indices",
            "Batch.valid",
            "Batch.timestamps",
            "Batch.frames",
            "BatchPool.seal.<locals>.<lambda>",
        ):
            return "sealing"
        if fn in ("CameraRows.counters", "BatchPool.counters"):
            return "counters/metrics"
        if fn == "_spin_until":
            # its caller decides: seal waits for writers, publish for a frozen row
            callers = [cf for cf, cfile, _ in frames[:inner] if "batching.py" in cfile]
            return (
                "sealing"
                if callers and callers[-1].startswith("BatchPool.seal")
                else "slot hand-off"
            )
        return "slot hand-off"  # publish, _tick, compiled_writer.write's own Python
    if rel.endswith("app.py"):
        if fn in ("Comux.stats", "Comux.process_stats"):
            return "counters/metrics"
        if fn in ("Comux._ack", "Comux._move_on") or "lambda" in fn:
            return "offset ledger"
        return "sealing"  # get_batch
    return "other"


def analyze(out: Path) -> dict:
    res = {}
    for key in ("a", "b"):
        d = out / CONFIGS[key]["name"]
        if not (d / "summary.json").exists():
            continue
        summary = json.loads((d / "summary.json").read_text())
        r = {"summary": summary}
        for label in ("nb", "active", "ceiling", "idle"):
            if label not in summary["profiled"]:
                continue
            prof = summary["profiled"][label]
            thread_cpu = {t["tid"]: t for t in prof["threads"]}
            per_thread: dict[int, Counter] = defaultdict(Counter)
            names: dict[int, str] = {}
            selfpy: Counter = Counter()
            selfpy_own: Counter = Counter()
            leaf: Counter = Counter()
            total = 0
            for tid, name, frames, n in parse_raw(d / f"{label}.raw"):
                b = classify(name, frames)
                per_thread[tid][b] += n
                names[tid] = name or thread_cpu.get(tid, {}).get("name", "?")
                total += n
                py = [fr for fr in frames if is_py(fr[1])]
                if py:
                    fn, f, _ = py[-1]
                    short = f[f.find("comux/") :] if "comux/" in f else Path(f).name
                    selfpy[f"{fn} ({short})"] += n
                    if b not in OWN_EXCLUDED:
                        selfpy_own[f"{fn} ({short})"] += n
                if frames:
                    lf = frames[-1]
                    leaf[f"{lf[0]} ({Path(lf[1]).name})"] += n
            # CPU per bucket: thread CPU x its bucket shares; rdk threads (no samples) whole.
            cpu_bucket: Counter = Counter()
            samples_bucket: Counter = Counter()
            thread_rows = []
            for t in prof["threads"]:
                tid, cpu = t["tid"], t["cpu_s"]
                if t["name"] == "prof-threadcpu":
                    continue
                c = per_thread.get(tid)
                busy = {b: n for b, n in (c or {}).items() if b != IDLE}
                if busy:
                    tot = sum(busy.values())
                    for b, n in busy.items():
                        cpu_bucket[b] += cpu * n / tot
                elif (t.get("comm") or "").startswith("rdk:"):
                    cpu_bucket["librdkafka internal threads (rdk:*, /proc)"] += cpu
                elif cpu > 0:
                    cpu_bucket["other"] += cpu
                thread_rows.append(
                    {
                        "tid": tid,
                        "name": names.get(tid, t["name"]),
                        "comm": t.get("comm"),
                        "cpu_s": cpu,
                        "samples": sum(c.values()) if c else 0,
                    }
                )
            for c in per_thread.values():
                samples_bucket.update(c)
            frames_rx = prof["sample"]["frames"]
            r[label] = {
                "total_samples": total,
                "samples_bucket": dict(samples_bucket),
                "cpu_bucket_s": dict(cpu_bucket),
                "frames": frames_rx,
                "call_cpu_s": prof["call_cpu_s"],
                "threads": thread_rows,
                "self_py": selfpy.most_common(25),
                "self_py_own": selfpy_own.most_common(25),
                "leaf": leaf.most_common(25),
                "per_thread_buckets": {str(t): dict(c) for t, c in per_thread.items()},
                "names": {str(t): n for t, n in names.items()},
            }
        res[key] = r
    (out / "analysis.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def report(res: dict) -> str:
    lines = []
    for r in res.values():
        name = r["summary"]["config"]["name"]
        a = r["active"]
        frames = a["frames"]
        tot_cpu = sum(a["cpu_bucket_s"].values())
        lines.append(
            f"\n## {name}: profiled comux call, {frames} frames, thread CPU sum {tot_cpu:.2f} s "
            f"(process_time {a['call_cpu_s']:.2f} s), {a['total_samples']} samples"
        )
        for b in BUCKETS:
            cpu = a["cpu_bucket_s"].get(b, 0.0)
            s = a["samples_bucket"].get(b, 0)
            lines.append(
                f"  {b:50s} {1e6 * cpu / frames:8.1f} us/frame {100 * cpu / tot_cpu:5.1f}% cpu "
                f"{100 * s / max(1, a['total_samples']):5.1f}% samples"
            )
        lines.append(
            "  threads: "
            + ", ".join(
                f"{t['name']}({t['comm']}) {t['cpu_s']:.2f}s/{t['samples']}"
                for t in a["threads"]
                if t["cpu_s"] > 0
            )
        )
        lines.append("  top self (own work):")
        for f, n in a["self_py_own"][:20]:
            lines.append(f"    {n:6d} {100 * n / a['total_samples']:5.1f}% {f}")
        c = r["ceiling"]
        lines.append(f"  ceiling buckets (samples): {c['samples_bucket']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="a,b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "prof_out"))
    ap.add_argument("--analyze-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.analyze_only:
        from comux.broker import LocalKafka
        from tests.fixtures_kafka import free_port, shared_lib_dir

        work = Path(tempfile.mkdtemp(prefix="prof-kafka-"))
        broker = LocalKafka(work, port=free_port(), lib_dir=shared_lib_dir())
        t0 = time.perf_counter()
        broker.up(timeout=180.0)
        print(f"broker up at {broker.bootstrap} in {time.perf_counter() - t0:.1f} s", flush=True)
        native = [True]
        try:
            for key in args.configs.split(","):
                run_config(key, broker.bootstrap, out, args.rounds, native)
        finally:
            broker.down()
            shutil.rmtree(work, ignore_errors=True)
    res = analyze(out)
    print(report(res))


if __name__ == "__main__":
    main()
