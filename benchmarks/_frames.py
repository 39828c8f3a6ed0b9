"""Decoded test frames for the in-process benchmarks (made once per size, cached)."""

from __future__ import annotations

import functools

import av
import numpy as np

from comux.media import synthetic_packets


@functools.lru_cache(maxsize=8)
def yuv_planes(width: int, height: int, count: int, seed: int = 7) -> tuple[np.ndarray, ...]:
    """``count`` distinct decoded frames of the synthetic pattern as yuv420p arrays (H*3/2, W).

    They went through libx264 and the h264 decoder, so they are what a camera's decoder hands
    out (not the raw pattern).
    """
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1
    out: list[np.ndarray] = []
    for packet in synthetic_packets(width, height, count, bframes=0, gop=25, seed=seed):
        for frame in ctx.decode(av.Packet(packet.data)):
            out.append(frame.to_ndarray())  # yuv420p: the frame's own format, no conversion
    for frame in ctx.decode(None):
        out.append(frame.to_ndarray())
    assert len(out) == count, (len(out), count)
    return tuple(out)


def fresh_frames(width: int, height: int, count: int) -> list[av.VideoFrame]:
    """New yuv420p ``av.VideoFrame`` objects (as a decoder returns new ones for every packet).

    A frame caches the swscale context of its first ``to_ndarray``/``reformat``: reusing frame
    objects would hide the per-frame context set-up that real, always-new decoded frames pay.
    """
    return [
        av.VideoFrame.from_ndarray(a, format="yuv420p") for a in yuv_planes(width, height, count)
    ]
