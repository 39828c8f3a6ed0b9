"""The frame-writing kernels against their oracle, PyAV's own ``to_ndarray`` (swscale).

Frames are made here: random noise (the worst case for chroma handling) and smooth gradients,
turned into yuv420p / yuvj420p / nv12 by swscale.  RGB results must stay within 2 of swscale's
for every matrix and range; plane copies and gray must be exact.  Every kernel build the CPU
can run (AVX-512 VBMI, AVX2, SSE4.1, baseline) is checked, since each is a separate compile of
the same C.  Bad destinations must raise ``ConfigError`` (a ``ValueError``) before a byte is
written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comux._ext import convert
from comux._ext.convert import frame_color, out_shape, write_frame, write_planes
from comux.errors import ConfigError
from comux.media import synthetic_packets

TOLERANCE = 2
SENTINEL = 77
SWS_COLORSPACE = {"bt601": "ITU601", "bt709": "ITU709"}
# AVColorSpace values
SPC_RGB, SPC_BT709, SPC_UNSPECIFIED, SPC_BT470BG, SPC_SMPTE170M, SPC_BT2020NC = 0, 1, 2, 5, 6, 9
RANGE_UNSPECIFIED, RANGE_MPEG, RANGE_JPEG = 0, 1, 2

# 640x360 is a real camera size wider than one 512-pixel kernel chunk; 100 and 330 have line
# sizes with padding (112 and 336 for luma); 66x50 makes odd chroma widths.
SIZES = [(640, 360), (100, 60), (330, 200), (66, 50)]


def make_frame(
    width: int, height: int, fmt: str, *, seed: int = 0, pattern: str = "noise"
) -> av.VideoFrame:
    """Return a frame in ``fmt`` converted by swscale from a random or gradient RGB image."""
    rng = np.random.default_rng(seed)
    if pattern == "noise":
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        yy, xx = np.mgrid[0:height, 0:width]
        rgb = np.stack(
            [xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1
        ).astype(np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)


def oracle(
    frame: av.VideoFrame, pix_fmt: str, matrix: str | None = None, full: bool | None = None
) -> np.ndarray:
    """What swscale makes of the frame: plain to_ndarray, or with the colour set explicitly."""
    if matrix is None and full is None:
        return frame.to_ndarray(format=pix_fmt)
    assert matrix is not None and full is not None
    return frame.reformat(
        format=pix_fmt,
        src_colorspace=SWS_COLORSPACE[matrix],
        src_color_range="JPEG" if full else "MPEG",
    ).to_ndarray()


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def written(
    frame: av.VideoFrame, pix_fmt: str = "rgb24", chroma_loc: str = "center", **kw: object
) -> np.ndarray:
    """Return what write_frame makes of the frame (untagged chroma location by default)."""
    out = np.full(out_shape(frame.width, frame.height, pix_fmt), SENTINEL, np.uint8)
    write_frame(frame, out, pix_fmt, chroma_loc=chroma_loc, **kw)  # type: ignore[arg-type]
    return out


@pytest.fixture(params=convert.available_isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per kernel build this CPU supports."""
    convert.use_isa(request.param)
    try:
        yield request.param
    finally:
        convert.use_isa()


# ---- RGB / BGR ---------------------------------------------------------------------------------


# yuvj420p is full range by definition: swscale ignores an MPEG tag on it.
FORMAT_RANGES = [
    ("yuv420p", False),
    ("yuv420p", True),
    ("yuvj420p", True),
    ("nv12", False),
    ("nv12", True),
]


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr24"])
@pytest.mark.parametrize(("fmt", "full"), FORMAT_RANGES, ids=[f"{f}-{r}" for f, r in FORMAT_RANGES])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_rgb_matches_swscale(
    width: int, height: int, fmt: str, full: bool, pix_fmt: str, matrix: str
) -> None:
    frame = make_frame(width, height, fmt, seed=width + height)
    frame.colorspace = SPC_BT709 if matrix == "bt709" else SPC_SMPTE170M
    frame.color_range = RANGE_JPEG if full else RANGE_MPEG
    out = written(frame, pix_fmt, matrix=matrix, full_range=full)
    assert max_diff(out, oracle(frame, pix_fmt, matrix, full)) <= TOLERANCE


@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr24"])
@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "nv12"])
def test_every_kernel_build_matches_swscale(isa: str, fmt: str, pix_fmt: str) -> None:
    for (width, height), pattern in [((330, 200), "noise"), ((640, 360), "gradient")]:
        frame = make_frame(width, height, fmt, seed=3, pattern=pattern)
        for matrix in ("bt601", "bt709"):
            for full in (False, True) if fmt != "yuvj420p" else (True,):
                out = written(frame, pix_fmt, matrix=matrix, full_range=full)
                assert max_diff(out, oracle(frame, pix_fmt, matrix, full)) <= TOLERANCE, (
                    isa,
                    width,
                    matrix,
                    full,
                )


@pytest.mark.parametrize("color_range", [RANGE_UNSPECIFIED, RANGE_MPEG, RANGE_JPEG])
@pytest.mark.parametrize(
    "colorspace", [SPC_RGB, SPC_BT709, SPC_UNSPECIFIED, SPC_BT470BG, SPC_SMPTE170M]
)
@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "nv12"])
def test_default_equals_plain_to_ndarray(fmt: str, colorspace: int, color_range: int) -> None:
    """With no matrix/range given, the frame's own tags pick them exactly as PyAV does."""
    frame = make_frame(100, 60, fmt, seed=colorspace * 3 + color_range)
    frame.colorspace = colorspace
    frame.color_range = color_range
    for pix_fmt in ("rgb24", "bgr24"):
        assert max_diff(written(frame, pix_fmt), frame.to_ndarray(format=pix_fmt)) <= TOLERANCE


def test_frame_color_reads_colorspace_and_range() -> None:
    frame = make_frame(16, 16, "yuv420p")
    assert frame_color(frame) == ("bt601", False)  # untagged, as most cameras send
    frame.colorspace, frame.color_range = SPC_BT709, RANGE_JPEG
    assert frame_color(frame) == ("bt709", True)
    frame.colorspace, frame.color_range = SPC_BT470BG, RANGE_MPEG
    assert frame_color(frame) == ("bt601", False)
    assert frame_color(make_frame(16, 16, "yuvj420p")) == ("bt601", True)


def test_unsupported_colorspace_raises_unless_matrix_is_given() -> None:
    frame = make_frame(64, 32, "yuv420p")
    frame.colorspace = SPC_BT2020NC
    out = np.full((32, 64, 3), SENTINEL, np.uint8)
    with pytest.raises(ConfigError, match="colorspace 9 .bt2020nc. is neither BT.601 nor BT.709"):
        write_frame(frame, out)
    assert (out == SENTINEL).all()
    write_frame(frame, out, matrix="bt709", full_range=False)
    assert max_diff(out, oracle(frame, "rgb24", "bt709", False)) <= TOLERANCE


def test_large_frame_matches_swscale() -> None:
    frame = make_frame(1920, 1080, "yuv420p", seed=9)
    assert max_diff(written(frame), frame.to_ndarray(format="rgb24")) <= TOLERANCE


def test_decoded_h264_frames_match_to_ndarray(small_video) -> None:  # type: ignore[no-untyped-def]
    ctx = av.CodecContext.create("h264", "r")
    checked = 0
    for packet in small_video[:20]:
        for frame in ctx.decode(av.Packet(packet.data)):
            for pix_fmt in ("rgb24", "bgr24", "gray", "yuv420p"):
                ref = frame.to_ndarray(format=pix_fmt)
                assert max_diff(written(frame, pix_fmt, "left"), ref) <= TOLERANCE
            checked += 1
    assert checked > 5


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(2, 90),
    half_height=st.integers(1, 40),
    fmt=st.sampled_from(["yuv420p", "nv12"]),
    pix_fmt=st.sampled_from(["rgb24", "bgr24"]),
    seed=st.integers(0, 2**16),
)
def test_small_sizes_match_swscale(
    width: int, half_height: int, fmt: str, pix_fmt: str, seed: int
) -> None:
    if fmt == "nv12":
        width += width % 2
        if half_height in (2, 3):
            half_height = 4
    frame = make_frame(width, 2 * half_height, fmt, seed=seed)
    assert max_diff(written(frame, pix_fmt), frame.to_ndarray(format=pix_fmt)) <= TOLERANCE


def test_odd_width_yuv420p_is_supported() -> None:
    frame = make_frame(65, 48, "yuv420p", seed=1)
    assert max_diff(written(frame), frame.to_ndarray(format="rgb24")) <= TOLERANCE


@pytest.mark.parametrize(
    ("width", "height", "fmt"),
    [(64, 49, "yuv420p"), (65, 48, "nv12"), (64, 49, "nv12"), (64, 4, "nv12"), (64, 6, "nv12")],
)
def test_sizes_where_swscale_interpolates_are_refused(width: int, height: int, fmt: str) -> None:
    frame = make_frame(width, height, fmt)
    out = np.full((height, width, 3), SENTINEL, np.uint8)
    with pytest.raises(ConfigError, match="use swscale for this size"):
        write_frame(frame, out)
    assert (out == SENTINEL).all()


# ---- gray and yuv420p copies ---------------------------------------------------------------


@pytest.mark.parametrize("color_range", [RANGE_UNSPECIFIED, RANGE_MPEG, RANGE_JPEG])
@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "nv12"])
@pytest.mark.parametrize(("width", "height"), [*SIZES, (65, 49)])
def test_gray_equals_to_ndarray(width: int, height: int, fmt: str, color_range: int) -> None:
    frame = make_frame(width, height, fmt, seed=5)
    frame.color_range = color_range
    assert max_diff(written(frame, "gray"), frame.to_ndarray(format="gray")) == 0


def test_gray_range_expansion_is_exact_for_every_luma_value(isa: str) -> None:
    frame = av.VideoFrame(256, 2, "yuv420p")
    luma = np.zeros((2, frame.planes[0].line_size), np.uint8)
    luma[:, :256] = np.arange(256)
    frame.planes[0].update(luma.tobytes())
    for plane in frame.planes[1:]:
        plane.update(bytes([128]) * plane.buffer_size)
    assert max_diff(written(frame, "gray"), frame.to_ndarray(format="gray")) == 0


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "nv12"])
def test_gray_of_full_range_is_the_luma_plane(fmt: str) -> None:
    frame = make_frame(100, 60, fmt)
    y = np.frombuffer(frame.planes[0], np.uint8).reshape(60, -1)[:, :100]
    out = np.empty((60, 100), np.uint8)
    write_frame(frame, out, "gray", full_range=True)
    assert (out == y).all()


@pytest.mark.parametrize("color_range", [RANGE_UNSPECIFIED, RANGE_JPEG])
@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_yuv420p_copy_equals_to_ndarray(
    isa: str, width: int, height: int, fmt: str, color_range: int
) -> None:
    frame = make_frame(width, height, fmt, seed=7)
    frame.color_range = color_range
    assert max_diff(written(frame, "yuv420p"), frame.to_ndarray(format="yuv420p")) == 0


def test_yuv420p_output_refuses_yuvj420p_and_odd_sizes() -> None:
    out = np.full((90, 100), SENTINEL, np.uint8)
    with pytest.raises(ConfigError, match="16-235"):
        write_frame(make_frame(100, 60, "yuvj420p"), out, "yuv420p")
    with pytest.raises(ConfigError, match="even width and height"):
        write_frame(make_frame(65, 48, "yuv420p"), np.empty((72, 65), np.uint8), "yuv420p")
    assert (out == SENTINEL).all()


# ---- explicit planes -------------------------------------------------------------------------


def test_write_planes_honours_arbitrary_line_sizes() -> None:
    frame = make_frame(90, 40, "yuv420p", seed=11)
    ref = frame.to_ndarray(format="rgb24")
    i420 = frame.to_ndarray(format="yuv420p")
    y, u, v = i420[:40], i420[40:50].reshape(20, 45), i420[50:].reshape(20, 45)
    padded = []
    for plane, pad in ((y, 37), (u, 3), (v, 64)):
        buf = np.full((plane.shape[0], plane.shape[1] + pad), 255, np.uint8)
        buf[:, : plane.shape[1]] = plane
        padded.append(buf)
    out = np.empty((40, 90, 3), np.uint8)
    write_planes("yuv420p", padded, [b.shape[1] for b in padded], 90, 40, out)
    assert max_diff(out, ref) <= TOLERANCE
    # The last row needs no padding after it.
    trimmed = [
        b.reshape(-1)[: b.shape[1] * (b.shape[0] - 1) + w]
        for b, w in zip(padded, (90, 45, 45), strict=True)
    ]
    out2 = np.empty_like(out)
    write_planes("yuv420p", trimmed, [b.shape[1] for b in padded], 90, 40, out2)
    assert (out2 == out).all()


def test_write_planes_rejects_planes_too_small_for_their_line_size() -> None:
    y = np.zeros(64 * 32, np.uint8)
    uv = np.zeros(32 * 16, np.uint8)
    out = np.full((32, 64, 3), SENTINEL, np.uint8)
    with pytest.raises(ConfigError, match="UV plane holds 512 bytes, but 16 rows of 64 bytes"):
        write_planes("nv12", [y, uv], [64, 64], 64, 32, out)
    with pytest.raises(ConfigError, match="Y plane line size 60 is smaller than its 64 bytes"):
        write_planes("nv12", [y, uv], [60, 64], 64, 32, out)
    with pytest.raises(ConfigError, match="needs 3 planes"):
        write_planes("yuv420p", [y, uv], [64, 32], 64, 32, out)
    with pytest.raises(ConfigError, match=r"Y plane holds 2048 bytes, but 32 rows .* need \d{18}"):
        write_planes("nv12", [y, uv], [2**60 // 31, 64], 64, 32, out)
    with pytest.raises(ConfigError, match="Y plane must be a contiguous buffer"):
        write_planes("nv12", [np.zeros((32, 128), np.uint8)[:, ::2], uv], [64, 64], 64, 32, out)
    assert (out == SENTINEL).all()


# ---- destinations ----------------------------------------------------------------------------


def test_writes_only_its_slot_of_a_batch() -> None:
    frame = make_frame(100, 60, "nv12", seed=2)
    batch = np.full((4, 60, 100, 3), SENTINEL, np.uint8)
    write_frame(frame, batch[2], chroma_loc="center")
    assert (batch[[0, 1, 3]] == SENTINEL).all()
    assert max_diff(batch[2], frame.to_ndarray(format="rgb24")) <= TOLERANCE
    gray = np.full((3, 60, 100), SENTINEL, np.uint8)
    write_frame(frame, gray[1], "gray")
    assert (gray[[0, 2]] == SENTINEL).all()
    i420 = np.full((3, 90, 100), SENTINEL, np.uint8)
    write_frame(frame, i420[0], "yuv420p")
    assert (i420[1:] == SENTINEL).all()


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda: np.zeros((60, 100, 3), np.float32), "dtype uint8, got float32"),
        (lambda: np.zeros((60, 100, 3), np.uint16), "dtype uint8, got uint16"),
        (lambda: np.zeros((59, 100, 3), np.uint8), r"shape \(59, 100, 3\), but .* \(60, 100, 3\)"),
        (lambda: np.zeros((30, 50, 3), np.uint8), r"needs exactly \(60, 100, 3\)"),
        (lambda: np.zeros((120, 200, 3), np.uint8), r"needs exactly \(60, 100, 3\)"),
        (lambda: np.zeros((100, 60, 3), np.uint8), r"got|shape \(100, 60, 3\)"),
        (lambda: np.zeros((60, 100), np.uint8), r"shape \(60, 100\)"),
        (lambda: np.zeros((60 * 100 * 3,), np.uint8), r"shape \(18000,\)"),
        (lambda: np.zeros((60, 200, 3), np.uint8)[:, ::2], "C-contiguous"),
        (lambda: np.asfortranarray(np.zeros((60, 100, 3), np.uint8)), "C-contiguous"),
        (lambda: np.zeros((60, 100, 3), np.uint8).view(), "read-only"),
        (lambda: bytearray(18000), "numpy.ndarray, got bytearray"),
    ],
    ids=[
        "float32",
        "uint16",
        "one-row-short",
        "too-small",
        "too-big",
        "transposed",
        "2d",
        "flat",
        "strided",
        "fortran",
        "read-only",
        "not-ndarray",
    ],
)
def test_bad_destination_raises_before_writing(make_out, message: str) -> None:  # type: ignore[no-untyped-def]
    frame = make_frame(100, 60, "yuv420p")
    out = make_out()
    if isinstance(out, np.ndarray):
        out[...] = SENTINEL
        if message == "read-only":
            out.flags.writeable = False
    with pytest.raises(ValueError, match=message) as info:
        write_frame(frame, out)
    assert isinstance(info.value, ConfigError)
    if isinstance(out, np.ndarray):
        assert (out == SENTINEL).all()


def test_frame_bigger_than_its_slot_names_both_shapes() -> None:
    frame = make_frame(640, 360, "yuv420p")
    slot = np.full((240, 320, 3), SENTINEL, np.uint8)
    with pytest.raises(
        ConfigError,
        match=r"out has shape \(240, 320, 3\), but a 640x360 yuv420p frame written as rgb24 "
        r"needs exactly \(360, 640, 3\): resize",
    ):
        write_frame(frame, slot)
    assert (slot == SENTINEL).all()


@pytest.mark.parametrize("fmt", ["rgb24", "yuv444p", "yuv422p", "gray"])
def test_other_frame_formats_are_refused_with_the_supported_list(fmt: str) -> None:
    frame = make_frame(64, 32, fmt)
    with pytest.raises(
        ConfigError, match=r"supported formats are \('yuv420p', 'yuvj420p', 'nv12'\)"
    ):
        write_frame(frame, np.empty((32, 64, 3), np.uint8))


def test_bad_options_raise() -> None:
    frame = make_frame(64, 32, "yuv420p")
    out = np.empty((32, 64, 3), np.uint8)
    with pytest.raises(ConfigError, match="pix_fmt must be one of"):
        write_frame(frame, out, "rgba")
    with pytest.raises(ConfigError, match="matrix must be one of"):
        write_frame(frame, out, matrix="bt2020")
    with pytest.raises(ConfigError, match="isa must be one of"):
        convert.use_isa("neon")


def test_kernel_builds_are_listed_best_first() -> None:
    isas = convert.available_isas()
    assert isas[-1] == "baseline"
    assert isas[0] == convert.ISA
    assert out_shape(640, 360) == (360, 640, 3)
    assert out_shape(640, 360, "gray") == (360, 640)
    assert out_shape(640, 360, "yuv420p") == (540, 640)


def test_threads_write_their_own_slots() -> None:
    frames = [make_frame(320, 240, fmt, seed=i) for i, fmt in enumerate(["yuv420p", "nv12"] * 2)]
    refs = [f.to_ndarray(format="rgb24") for f in frames]
    batch = np.zeros((len(frames), 240, 320, 3), np.uint8)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(25):
                write_frame(frames[i], batch[i], chroma_loc="center")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for out, ref in zip(batch, refs, strict=True):
        assert max_diff(out, ref) <= TOLERANCE


def test_decoded_nv12_is_left_sited_by_default() -> None:
    """Decoders tag H.264 chroma "left", which swscale interpolates; the default follows."""
    ctx = av.CodecContext.create("h264", "r")
    frames = [
        f
        for p in synthetic_packets(352, 288, 6, gop=3, bframes=1)
        for f in ctx.decode(av.Packet(p.data))
    ]
    assert frames
    for frame in frames:
        nv12 = frame.reformat(format="nv12")  # keeps the decoder's chroma location
        for pix_fmt in ("rgb24", "bgr24"):
            out = np.empty((288, 352, 3), np.uint8)
            write_frame(nv12, out, pix_fmt)
            assert max_diff(out, nv12.to_ndarray(format=pix_fmt)) <= TOLERANCE


@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr24"])
def test_left_sited_nv12_on_noise(isa: str, pix_fmt: str) -> None:
    """The horizontal chroma filter, checked where it matters most: pixel noise."""
    ctx = av.CodecContext.create("h264", "r")
    decoded = next(
        f
        for p in synthetic_packets(128, 64, 1, gop=1, bframes=0)
        for f in ctx.decode(av.Packet(p.data))
    )
    # Put noise into a decoder-made frame so that it keeps the decoder's "left" tag.
    rng = np.random.default_rng(4)
    nv12 = decoded.reformat(format="nv12")
    for plane in nv12.planes:
        plane.update(rng.integers(0, 256, plane.buffer_size, dtype=np.uint8).tobytes())
    out = np.empty((64, 128, 3), np.uint8)
    write_frame(nv12, out, pix_fmt, chroma_loc="left")
    assert max_diff(out, nv12.to_ndarray(format=pix_fmt)) <= TOLERANCE
