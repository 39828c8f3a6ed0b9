#!/usr/bin/env python3
"""Check comux's batch buffers on a real CUDA GPU: pinned memory, DLPack, host-to-device copies.

What it checks (README.md, "Batches for a GPU"):

1. ``BatchPool((H, W, 3), buffers=3, allocator=<pinned torch>, writer=frame_writer("rgb24"))``
   filled with real decoded frames (``synthetic_packets`` through the h264 decoder) seals
   Batches whose ``frames`` are the pinned tensors' own memory: ``torch.from_dlpack`` shares
   it (same data_ptr range) and ``is_pinned()``; ``np.from_dlpack(batch)`` shares it too.
2. ``x.cuda(non_blocking=True)`` + ``torch.cuda.current_stream().synchronize()`` gives a GPU
   copy equal to ``batch.frames`` bit for bit.
3. ~200 batches reuse the same 3 buffers (release, refill, seal) while the host-to-device
   throughput of the pinned batches is timed against the same copy from pageable numpy memory.
4. A released Batch raises ``BatchReleasedError`` (``frames``, ``np.from_dlpack``, iteration).

It prints one JSON summary and writes it to ``$OUT/gpu_check.json`` when ``OUT`` is set (or to
``--json PATH``). Without torch or CUDA it runs what it can on the CPU (numpy buffers), says
what it skipped and exits 0; it exits 1 when a check that ran failed.

On a fresh machine the compiled core must be built first::

    python3 setup.py build_ext --inplace -q
    python3 scripts/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H, W = 360, 640
CAMERAS = 8
BUFFERS = 3
SOURCE_FRAMES = 30
DEFAULT_BATCHES = 200
WARMUP = 10


class Report:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {"checks": {}, "skipped": [], "failures": []}

    def ok(self, name: str, value: Any = True) -> None:
        self.data["checks"][name] = value

    def fail(self, name: str, detail: str) -> None:
        self.data["checks"][name] = False
        self.data["failures"].append(f"{name}: {detail}")

    def check(self, name: str, cond: bool, detail: str = "") -> bool:
        if cond:
            self.ok(name)
        else:
            self.fail(name, detail or "assertion failed")
        return cond

    def skip(self, what: str) -> None:
        self.data["skipped"].append(what)


def decode_frames(count: int) -> list[Any]:
    import av

    from comux.media import synthetic_packets

    ctx = av.CodecContext.create("h264", "r")
    frames = []
    for packet in synthetic_packets(W, H, count, gop=10, bframes=2):
        frames.extend(ctx.decode(av.Packet(packet.data)))
    frames.extend(ctx.decode(None))
    return frames


def gbps(nbytes: int, seconds: float) -> float | None:
    return round(nbytes / seconds / 1e9, 2) if seconds > 0 else None


def run(report: Report, batches: int) -> None:
    env = report.data["env"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    import numpy as np

    env["numpy"] = np.__version__
    try:
        import av

        env["av"] = av.__version__
        from comux.batching import BatchPool, frame_writer, numpy_allocator, pyav_writer
        from comux.errors import BatchReleasedError
        from comux.media import read_frame_number
    except ImportError as exc:
        report.skip(f"everything: comux/av not importable ({exc})")
        return

    torch = None
    cuda = False
    try:
        import torch as _torch

        torch = _torch
        env["torch"] = torch.__version__
        cuda = torch.cuda.is_available()
        if cuda:
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except ImportError:
        report.skip("torch not installed: pinned memory, torch.from_dlpack, CUDA copies")
    if torch is not None and not cuda:
        report.skip("CUDA not available: pinned memory, GPU copies, H2D throughput")

    # -- real decoded frames --------------------------------------------------------------
    t0 = time.perf_counter()
    frames = decode_frames(SOURCE_FRAMES)
    report.ok("decoded_frames", len(frames))
    report.data["decode_s"] = round(time.perf_counter() - t0, 3)
    if not report.check(
        "decoded_all_frames", len(frames) == SOURCE_FRAMES, f"got {len(frames)} frames"
    ):
        return
    env["frame_format"] = frames[0].format.name

    # -- the pool -------------------------------------------------------------------------
    owners: list[Any] = []

    if cuda:

        def pinned(shape: tuple[int, ...]) -> Any:
            t = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            owners.append(t)
            return t

        allocator = pinned
        report.data["allocator"] = "torch pinned"
    else:

        def plain(shape: tuple[int, ...]) -> Any:
            a = numpy_allocator(shape)
            owners.append(a)
            return a

        allocator = plain
        report.data["allocator"] = "numpy (degraded: no CUDA)"

    def ptr(obj: Any) -> int:
        if torch is not None and isinstance(obj, torch.Tensor):
            return obj.data_ptr()
        return int(np.asarray(obj).__array_interface__["data"][0])

    def nbytes(obj: Any) -> int:
        if torch is not None and isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        return int(np.asarray(obj).nbytes)

    def owner_of(address: int, size: int) -> int | None:
        for i, o in enumerate(owners):
            start = ptr(o)
            if start <= address and address + size <= start + nbytes(o):
                return i
        return None

    pool = BatchPool(
        (H, W, 3),
        buffers=BUFFERS,
        capacity=CAMERAS,
        allocator=allocator,
        writer=frame_writer("rgb24"),
    )
    cams = [f"cam{i}" for i in range(CAMERAS)]
    for cam in cams:
        pool.add(cam)
    report.check("allocator_calls_at_start", len(owners) == BUFFERS, f"{len(owners)} calls")
    batch_bytes = CAMERAS * H * W * 3
    report.data["batch_shape"] = [CAMERAS, H, W, 3]
    report.data["batch_mb"] = round(batch_bytes / 1e6, 3)

    def fill(b: int) -> list[int]:
        """Write one frame per camera for batch ``b``; returns the source frame numbers."""
        numbers = []
        for k, cam in enumerate(cams):
            n = (b * CAMERAS + k) % len(frames)
            if not pool.write(cam, frames[n], b * CAMERAS + k, pts=n):
                raise AssertionError(f"write refused: batch {b} camera {cam}")
            numbers.append(n)
        return numbers

    # -- first batch: memory sharing, DLPack, one GPU copy ---------------------------------
    numbers = fill(0)
    batch = pool.seal(timeout=1)
    report.check("seal_returns_batch", batch is not None, "seal(timeout=1) returned None")
    if batch is None:
        return
    f = batch.frames
    report.check(
        "batch_layout",
        f.shape == (CAMERAS, H, W, 3) and f.dtype == np.uint8 and f.flags.c_contiguous,
        f"{f.shape} {f.dtype} contiguous={f.flags.c_contiguous}",
    )
    report.check("batch_valid", bool(batch.valid.all()), f"valid={batch.valid.tolist()}")
    report.check(
        "batch_indices",
        batch.indices.tolist() == list(range(CAMERAS)),
        f"indices={batch.indices.tolist()}",
    )
    read = [read_frame_number(f[k]) for k in range(CAMERAS)]
    report.check("frame_numbers_read_back", read == numbers, f"read {read}, wrote {numbers}")
    # the compiled writer against swscale through PyAV, on the same frames
    ref = np.empty((H, W, 3), np.uint8)
    worst = 0
    for k in range(CAMERAS):
        pyav_writer("rgb24")(frames[numbers[k]], ref)
        worst = max(worst, int(np.abs(f[k].astype(np.int16) - ref.astype(np.int16)).max()))
    report.check("writer_matches_swscale_within_2", worst <= 2, f"max diff {worst}")
    report.data["writer_max_diff_vs_swscale"] = worst

    host_addr = int(f.__array_interface__["data"][0])
    report.check(
        "frames_in_allocated_buffer",
        owner_of(host_addr, f.nbytes) is not None,
        "batch.frames is not inside any allocated buffer",
    )
    arr = np.from_dlpack(batch)
    report.check(
        "np_from_dlpack_batch_shares_memory",
        int(arr.__array_interface__["data"][0]) == host_addr
        and arr.shape == f.shape
        and np.array_equal(arr, f),
        "np.from_dlpack(batch) is not batch.frames' memory",
    )
    report.ok("dlpack_device", list(batch.__dlpack_device__()))

    if torch is not None:
        x = torch.from_dlpack(batch.frames)
        idx = owner_of(x.data_ptr(), x.numel())
        report.check(
            "torch_from_dlpack_shares_memory",
            x.data_ptr() == host_addr and idx is not None,
            f"data_ptr {x.data_ptr():#x} vs frames {host_addr:#x}, owner {idx}",
        )
        report.check(
            "torch_from_dlpack_layout",
            tuple(x.shape) == f.shape and x.dtype == torch.uint8 and x.is_contiguous(),
            f"{tuple(x.shape)} {x.dtype}",
        )
        xb = torch.from_dlpack(batch)
        report.check(
            "torch_from_dlpack_batch_shares_memory",
            xb.data_ptr() == host_addr,
            f"{xb.data_ptr():#x} vs {host_addr:#x}",
        )
        if cuda:
            report.check("is_pinned", bool(x.is_pinned()), "from_dlpack tensor is not pinned")
            report.check(
                "owner_is_pinned",
                idx is not None and bool(owners[idx].is_pinned()),
                "allocated tensor is not pinned",
            )
            with batch:  # the README's pattern
                g = torch.from_dlpack(batch.frames).cuda(non_blocking=True)
                torch.cuda.current_stream().synchronize()
                host = batch.frames.copy()
            report.check("gpu_copy_on_cuda", g.is_cuda, str(g.device))
            report.check(
                "gpu_copy_equals_frames",
                np.array_equal(g.cpu().numpy(), host),
                "GPU copy differs from batch.frames",
            )
    batch.release()

    # -- released batch -------------------------------------------------------------------
    def raises_released(fn: Any) -> bool:
        try:
            fn()
        except BatchReleasedError:
            return True
        except Exception:
            return False
        return False

    report.check("released_flag", batch.released)
    report.check("released_frames_raises", raises_released(lambda: batch.frames))
    report.check("released_indices_raises", raises_released(lambda: batch.indices))
    report.check("released_np_from_dlpack_raises", raises_released(lambda: np.from_dlpack(batch)))
    report.check("released_iter_raises", raises_released(lambda: list(batch)))
    if torch is not None:
        report.check(
            "released_torch_from_dlpack_raises",
            raises_released(lambda: torch.from_dlpack(batch)),
        )
    batch.release()  # twice is harmless
    report.ok("release_twice_harmless")

    # -- reuse for many batches, timing H2D -----------------------------------------------
    seen_ptrs: set[int] = set()
    pageable = np.empty((CAMERAS, H, W, 3), np.uint8)
    pageable.fill(0)  # touch every page outside the timing
    if cuda:
        stream = torch.cuda.current_stream()
        dst_pinned = torch.empty((CAMERAS, H, W, 3), dtype=torch.uint8, device="cuda")
        dst_pageable = torch.empty_like(dst_pinned)
        src_pageable = torch.from_numpy(pageable)
        report.check("pageable_not_pinned", not src_pageable.is_pinned())
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    pinned_ms: list[float] = []
    pageable_ms: list[float] = []
    pinned_wall: list[float] = []
    pageable_wall: list[float] = []
    readback_checks = 0
    mismatches = 0
    number_errors = 0
    seal_s: list[float] = []
    total = batches + WARMUP
    loop_start = time.perf_counter()
    for b in range(1, total + 1):
        numbers = fill(b)
        s0 = time.perf_counter()
        batch = pool.seal(timeout=1)
        seal_s.append(time.perf_counter() - s0)
        if batch is None:
            report.fail("reuse_loop", f"seal returned None at batch {b}")
            break
        with batch:
            f = batch.frames
            seen_ptrs.add(int(f.__array_interface__["data"][0]))
            if not batch.valid.all():
                report.fail("reuse_loop_valid", f"batch {b}: valid={batch.valid.tolist()}")
                break
            if b % 20 == 0:
                read = [read_frame_number(f[k]) for k in range(CAMERAS)]
                number_errors += read != numbers
            if not cuda:
                continue
            np.copyto(pageable, f)  # the same bytes in pageable memory (not timed)
            x = torch.from_dlpack(batch.frames)
            timed = b > WARMUP
            # pinned batch -> GPU (the README's one DMA)
            w0 = time.perf_counter()
            ev[0].record(stream)
            dst_pinned.copy_(x, non_blocking=True)
            ev[1].record(stream)
            stream.synchronize()  # before the buffer may be reused
            w1 = time.perf_counter()
            # the same copy from pageable numpy memory
            ev[2].record(stream)
            dst_pageable.copy_(src_pageable, non_blocking=True)
            ev[3].record(stream)
            stream.synchronize()
            w2 = time.perf_counter()
            if timed:
                pinned_ms.append(ev[0].elapsed_time(ev[1]))
                pageable_ms.append(ev[2].elapsed_time(ev[3]))
                pinned_wall.append(w1 - w0)
                pageable_wall.append(w2 - w1)
            if not torch.equal(dst_pinned, dst_pageable):
                mismatches += 1
            if b % 25 == 0:  # bit-for-bit against the host batch itself
                readback_checks += 1
                if not np.array_equal(dst_pinned.cpu().numpy(), f):
                    mismatches += 1
    loop_s = time.perf_counter() - loop_start
    report.ok("reuse_batches", pool.batches)
    report.check(
        "reuse_same_buffers",
        len(seen_ptrs) <= BUFFERS and len(owners) == BUFFERS,
        f"{len(seen_ptrs)} distinct buffers, {len(owners)} allocator calls",
    )
    report.data["distinct_buffers_seen"] = len(seen_ptrs)
    report.data["allocator_calls"] = len(owners)
    report.check("reuse_frame_numbers", number_errors == 0, f"{number_errors} batches wrong")
    report.data["reuse_loop_s"] = round(loop_s, 3)
    report.data["seal_ms_median"] = round(sorted(seal_s)[len(seal_s) // 2] * 1e3, 3)
    report.data["bytes_copied_by_pool"] = pool.bytes_copied

    if not cuda:
        report.skip("H2D throughput pinned vs pageable (no CUDA)")
        return
    report.check(
        "reuse_gpu_copies_exact",
        mismatches == 0,
        f"{mismatches} mismatches ({readback_checks} full read-backs)",
    )
    report.data["gpu_full_readbacks"] = readback_checks
    n = len(pinned_ms)
    tp = sum(pinned_ms) / 1e3
    tq = sum(pageable_ms) / 1e3
    h2d: dict[str, Any] = {
        "batches_timed": n,
        "bytes_per_batch": batch_bytes,
        "method": "dst.copy_(src, non_blocking=True) into a preallocated CUDA tensor; "
        "events around the copy, then stream.synchronize()",
        "pinned_gbps_events": gbps(batch_bytes * n, tp),
        "pageable_gbps_events": gbps(batch_bytes * n, tq),
        "pinned_gbps_wall": gbps(batch_bytes * n, sum(pinned_wall)),
        "pageable_gbps_wall": gbps(batch_bytes * n, sum(pageable_wall)),
        "pinned_ms_median": round(sorted(pinned_ms)[n // 2], 4),
        "pageable_ms_median": round(sorted(pageable_ms)[n // 2], 4),
    }
    if tp > 0:
        h2d["ratio_pinned_over_pageable_events"] = round(tq / tp, 2)
    if sum(pinned_wall) > 0:
        h2d["ratio_pinned_over_pageable_wall"] = round(sum(pageable_wall) / sum(pinned_wall), 2)
    report.data["h2d"] = h2d

    # the README's allocating form, for reference: x.cuda(non_blocking=True) per batch
    t_alloc = []
    for b in range(total + 1, total + 51):
        fill(b)
        with pool.seal(timeout=1) as batch:
            w0 = time.perf_counter()
            g = torch.from_dlpack(batch.frames).cuda(non_blocking=True)
            torch.cuda.current_stream().synchronize()
            t_alloc.append(time.perf_counter() - w0)
    report.data["h2d"]["pinned_gbps_wall_x_cuda"] = gbps(batch_bytes * len(t_alloc), sum(t_alloc))
    del g


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=DEFAULT_BATCHES)
    parser.add_argument("--json", help="also write the summary here (default: $OUT/gpu_check.json)")
    args = parser.parse_args()
    report = Report()
    t0 = time.perf_counter()
    try:
        run(report, args.batches)
    except Exception as exc:
        report.data["failures"].append(f"exception: {exc!r}")
        report.data["traceback"] = traceback.format_exc()
    report.data["elapsed_s"] = round(time.perf_counter() - t0, 2)
    data = report.data
    data["passed"] = not data["failures"]
    data["degraded"] = bool(data["skipped"])
    text = json.dumps(data, separators=(",", ":"), default=str)
    print(text)
    paths = [args.json] if args.json else []
    if os.environ.get("OUT"):
        paths.append(os.path.join(os.environ["OUT"], "gpu_check.json"))
    for p in paths:
        Path(p).write_text(text + "\n")
    for what in data["skipped"]:
        print(f"skipped: {what}", file=sys.stderr)
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
