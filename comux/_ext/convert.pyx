# cython: language_level=3
"""Write a decoded frame's pixels straight into a batch slot: YUV -> RGB/BGR, gray or I420.

This is where a frame lands in a batch.  The decoder thread hands over a PyAV ``VideoFrame``
and ``batch[i]``; everything is validated with the GIL held, then the C kernels of
``convert.h`` run with the GIL released and write the slot in place, with no intermediate
frame or array.  What cannot be done here (another pixel format, a frame whose size differs
from the slot, a colorspace other than BT.601/BT.709) raises ``ConfigError`` (a
``ValueError``) before anything is written, and the caller falls back to swscale.

The output equals PyAV's ``frame.to_ndarray(format=...)`` bit for bit on x86-64 FFmpeg 8
builds (elsewhere within a level or two): the kernels reproduce swscale's arithmetic (see
``convert.h``), and the default colour matrix and range are chosen from the frame exactly as
PyAV and swscale choose them.  The one tag PyAV hides is nv12's chroma location, hence
``chroma_loc``.
"""

import platform
from operator import index as _as_index
from typing import Literal

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport uint8_t

cimport numpy as cnp

import numpy as np

from comux.errors import ConfigError

cnp.import_array()

__all__ = [
    "CHROMA_LOCATIONS",
    "ISA",
    "MATRICES",
    "SUPPORTED_INPUTS",
    "SUPPORTED_OUTPUTS",
    "available_isas",
    "frame_color",
    "out_shape",
    "use_isa",
    "write_frame",
    "write_planes",
]

InputFormat = Literal["yuv420p", "yuvj420p", "nv12"]
OutputFormat = Literal["rgb24", "bgr24", "gray", "yuv420p"]
Matrix = Literal["bt601", "bt709"]
ChromaLocation = Literal["left", "center"]
Isa = Literal["baseline", "sse4.1", "avx2", "avx512vbmi"]

SUPPORTED_INPUTS = ("yuv420p", "yuvj420p", "nv12")
SUPPORTED_OUTPUTS = ("rgb24", "bgr24", "gray", "yuv420p")
MATRICES = ("bt601", "bt709")
CHROMA_LOCATIONS = ("left", "center")

# ---- colour matrices -------------------------------------------------------------------------

# libswscale's ff_yuv2rgb_coeffs rows (crv, cbu, cgu, cgv in 16.16) for the two matrices.
_SWS_COEFFS = {
    "bt601": (104597, 132201, 25675, 53279),
    "bt709": (117489, 138438, 13975, 34925),
}

# AVColorSpace values and the matrix swscale uses for them; PyAV passes the frame's value on.
# 0 (RGB/GBR) and 2 (unspecified) fall back to BT.601 in swscale, so they do here.
_AVCOL_SPC_MATRIX = {0: "bt601", 1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}
_AVCOL_SPC_NAMES = {
    0: "rgb", 1: "bt709", 2: "unspecified", 4: "fcc", 5: "bt470bg", 6: "smpte170m",
    7: "smpte240m", 8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 11: "smpte2085",
}
_AVCOL_RANGE_JPEG = 2

# x86 swscale writes NV12 -> BGR24 with MMX code whose chroma differs from its C path.
cdef bint _NV12_BGR_PAIRAVG = platform.machine().lower() in ("x86_64", "amd64")


def _c_div(a, b):
    """Divide like C's integer division (towards zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _round16(x):
    """swscale's roundToInt16 of a 16.16 product."""
    return (x + (1 << 15)) >> 16


def _sws_params(matrix, full_range):
    """Return (cy, oy, crv, cbu, cgu, cgv) as swscale's ff_yuv2rgb_c_init_tables derives them."""
    crv, cbu, cgu, cgv = _SWS_COEFFS[matrix]
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if full_range:
        crv, cbu, cgu, cgv = (_c_div(c * 224, 255) for c in (crv, cbu, cgu, cgv))
    else:
        cy, oy = _c_div(cy * 255, 219), 16 << 16
    return cy, oy, crv, cbu, cgu, cgv


cdef comux_p420_coeffs _p420_coeffs(str matrix, bint full_range):
    cdef comux_p420_coeffs c
    cy, oy, crv, cbu, cgu, cgv = _sws_params(matrix, full_range)
    c.y_coeff = _round16(cy * 8192)
    c.y_offset = _round16(oy * 8)
    c.v2r = _round16(crv * 8192)
    c.u2g = _round16(cgu * 8192)
    c.v2g = _round16(cgv * 8192)
    c.u2b = _round16(cbu * 8192)
    return c


cdef comux_tab_coeffs _tab_coeffs(str matrix, bint full_range):
    cdef comux_tab_coeffs c
    cy, oy, crv, cbu, cgu, cgv = _sws_params(matrix, full_range)
    # swscale's tables index a luma ramp; the chroma steps are in units of that ramp.
    crv, cbu, cgu, cgv = (_c_div((x << 16) + 0x8000, cy) for x in (crv, cbu, cgu, cgv))
    yoffs = 384 if full_range else 326
    c.cy = cy
    c.bias = -(384 << 16) - oy + 0x8000
    c.r_off = yoffs - (crv >> 9)
    c.g_off = yoffs - (cgu >> 9) - (cgv >> 9)
    c.b_off = yoffs - (cbu >> 9)
    c.v2r = crv
    c.u2g = cgu
    c.v2g = cgv
    c.u2b = cbu
    return c


# Indexed [matrix is bt709][full_range]; read-only after import, shared by every thread.
cdef comux_p420_coeffs _P420[2][2]
cdef comux_tab_coeffs _TAB[2][2]
for _m, _name in enumerate(MATRICES):
    for _full in range(2):
        _P420[_m][_full] = _p420_coeffs(_name, _full)
        _TAB[_m][_full] = _tab_coeffs(_name, _full)
del _m, _name, _full

# ---- instruction set -------------------------------------------------------------------------

_ISA_NAMES = ("baseline", "sse4.1", "avx2", "avx512vbmi")


def available_isas():
    """Return the kernel builds this CPU can run, best first."""
    return _ISA_NAMES[: comux_convert_best_isa() + 1][::-1]


def use_isa(name=None):
    """Switch every thread to the kernels built for ``name`` (None: the best); return it.

    For tests and benchmarks; call it while no frame is being written.
    """
    global ISA
    if name is None:
        wanted = comux_convert_best_isa()
    elif name in _ISA_NAMES:
        wanted = _ISA_NAMES.index(name)
        if wanted > comux_convert_best_isa():
            raise ConfigError(f"this CPU cannot run the {name} kernels; it has {available_isas()}")
    else:
        raise ConfigError(f"isa must be one of {_ISA_NAMES} or None, got {name!r}")
    ISA = _ISA_NAMES[comux_convert_select(wanted)]
    return ISA


ISA = use_isa()

# ---- validation ------------------------------------------------------------------------------

cdef int _OUT_RGB24 = 0, _OUT_BGR24 = 1, _OUT_GRAY = 2, _OUT_YUV420P = 3
cdef int _IN_YUV420P = 0, _IN_YUVJ420P = 1, _IN_NV12 = 2


cdef int _out_code(pix_fmt) except -1:
    if pix_fmt == "rgb24":
        return _OUT_RGB24
    if pix_fmt == "bgr24":
        return _OUT_BGR24
    if pix_fmt == "gray":
        return _OUT_GRAY
    if pix_fmt == "yuv420p":
        return _OUT_YUV420P
    raise ConfigError(f"pix_fmt must be one of {SUPPORTED_OUTPUTS}, got {pix_fmt!r}")


cdef int _in_code(src_fmt) except -1:
    if src_fmt == "yuv420p":
        return _IN_YUV420P
    if src_fmt == "yuvj420p":
        return _IN_YUVJ420P
    if src_fmt == "nv12":
        return _IN_NV12
    raise ConfigError(
        f"cannot write {src_fmt!r} frames directly: supported formats are {SUPPORTED_INPUTS} "
        "(convert others with swscale, e.g. frame.to_ndarray(format=...))"
    )


def out_shape(width, height, pix_fmt="rgb24"):
    """Return the shape of one slot that holds a ``width`` x ``height`` frame as ``pix_fmt``."""
    code = _out_code(pix_fmt)
    if code == _OUT_GRAY:
        return (height, width)
    if code == _OUT_YUV420P:
        return (height * 3 // 2, width)
    return (height, width, 3)


def frame_color(frame):
    """Return ``(matrix, full_range)``: what swscale uses for ``frame`` when told nothing.

    That is what ``frame.to_ndarray(format="rgb24")`` applies: the frame's colorspace
    (unspecified means BT.601) and its range (yuvj420p is always full range).  Raise
    ``ConfigError`` for colorspaces other than BT.601/BT.709.
    """
    cs = frame.colorspace
    matrix = _AVCOL_SPC_MATRIX.get(int(cs))
    if matrix is None:
        name = _AVCOL_SPC_NAMES.get(int(cs), "unknown")
        raise ConfigError(
            f"frame colorspace {int(cs)} ({name}) is neither BT.601 nor BT.709; "
            "pass matrix= to override, or convert with swscale"
        )
    full = frame.format.name == "yuvj420p" or int(frame.color_range) == _AVCOL_RANGE_JPEG
    return matrix, full


cdef int _matrix_index(matrix) except -1:
    if matrix == "bt601":
        return 0
    if matrix == "bt709":
        return 1
    raise ConfigError(f"matrix must be one of {MATRICES}, got {matrix!r}")


cdef int _chroma_left(chroma_loc) except -1:
    if chroma_loc == "left":
        return 1
    if chroma_loc == "center":
        return 0
    raise ConfigError(f"chroma_loc must be one of {CHROMA_LOCATIONS}, got {chroma_loc!r}")


cdef uint8_t *_check_out(object out, tuple expected, str what) except NULL:
    """Return out's data pointer once it is a writable C-contiguous uint8 array of that shape."""
    cdef cnp.ndarray arr
    if not isinstance(out, np.ndarray):
        raise ConfigError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    arr = <cnp.ndarray>out
    if cnp.PyArray_TYPE(arr) != cnp.NPY_UINT8:
        raise ConfigError(f"out must have dtype uint8, got {arr.dtype}")
    if out.shape != expected:
        raise ConfigError(
            f"out has shape {out.shape}, but {what} needs exactly {expected}: "
            "resize the frame to the slot first (e.g. with swscale)"
        )
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ConfigError("out must be C-contiguous (a batch slot such as batch[i])")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ConfigError("out is read-only")
    return <uint8_t *>cnp.PyArray_DATA(arr)


cdef class _Planes:
    """Holds the buffers of up to three planes for the duration of one write."""

    cdef Py_buffer views[3]
    cdef int count
    cdef const uint8_t *data[3]
    cdef ptrdiff_t stride[3]

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        while self.count > 0:
            self.count -= 1
            PyBuffer_Release(&self.views[self.count])

    cdef int add(self, object plane, object line_size, Py_ssize_t rows, Py_ssize_t row_bytes,
                 str name) except -1:
        """Acquire plane's buffer and check that rows of row_bytes at line_size fit in it."""
        cdef int k = self.count
        line_size = _as_index(line_size)
        if line_size < row_bytes:
            raise ConfigError(
                f"{name} plane line size {line_size} is smaller than its {row_bytes} bytes "
                "of pixels"
            )
        try:
            PyObject_GetBuffer(plane, &self.views[k], PyBUF_SIMPLE)
        except (BufferError, TypeError, ValueError) as exc:
            raise ConfigError(f"{name} plane must be a contiguous buffer ({exc})") from None
        self.count += 1
        # Python ints: an absurd line size must fail here, not wrap around in C.
        need = line_size * (rows - 1) + row_bytes
        if self.views[k].len < need:
            raise ConfigError(
                f"{name} plane holds {self.views[k].len} bytes, but {rows} rows of "
                f"{row_bytes} bytes at line size {line_size} need {need}"
            )
        self.data[k] = <const uint8_t *>self.views[k].buf
        self.stride[k] = line_size
        return 0


# ---- writing ---------------------------------------------------------------------------------

def write_planes(src_fmt, planes, line_sizes, int width, int height, out, pix_fmt="rgb24", *,
                 matrix="bt601", full_range=False, chroma_loc="left"):
    """Write raw YUV planes into ``out`` in place, with the GIL released.

    The explicit form of ``write_frame`` for tests, benchmarks and frames not held by PyAV.

    :param src_fmt: "yuv420p", "yuvj420p" or "nv12"; yuvj420p is full range whatever
        ``full_range`` says, as in swscale.
    :param planes: Y, U, V (or Y, UV for nv12) as buffers: bytes, numpy arrays, PyAV planes.
    :param line_sizes: bytes from one row of each plane to the next (padding included).
    :param width: frame width in pixels.
    :param height: frame height in pixels.
    :param out: the destination, exactly ``out_shape(width, height, pix_fmt)``, uint8,
        C-contiguous.
    :param pix_fmt: "rgb24", "bgr24", "gray" or "yuv420p" (I420: Y, then U, then V rows).
    :param matrix: "bt601" or "bt709" (RGB outputs only).
    :param full_range: whether the source uses 0-255 (JPEG) rather than 16-235 levels.
    :param chroma_loc: where nv12 chroma samples sit ("left": MPEG-2/H.264/HEVC, what decoders
        tag; "center": untagged or JPEG frames).  swscale interpolates left-sited chroma
        horizontally when converting nv12 to RGB; yuv420p conversion ignores this.

    Example::

        out = np.empty((360, 640, 3), np.uint8)
        write_planes("yuv420p", [y, u, v], [640, 320, 320], 640, 360, out)
    """
    cdef int fmt = _in_code(src_fmt)
    cdef int ofmt = _out_code(pix_fmt)
    cdef int mi = _matrix_index(matrix)
    cdef bint full = fmt == _IN_YUVJ420P or bool(full_range)
    cdef Py_ssize_t cw = (width + 1) // 2, ch = (height + 1) // 2
    cdef int nplanes = 2 if fmt == _IN_NV12 else 3
    cdef _Planes p
    cdef uint8_t *dst
    cdef const comux_p420_coeffs *pc
    cdef const comux_tab_coeffs *tc
    cdef const comux_p420_coeffs *pairavg = NULL
    cdef int bgr = ofmt == _OUT_BGR24
    cdef int left = _chroma_left(chroma_loc)

    what = f"a {width}x{height} {src_fmt} frame written as {pix_fmt}"
    if width <= 0 or height <= 0:
        raise ConfigError(f"frame size must be positive, got {width}x{height}")
    if ofmt in (_OUT_RGB24, _OUT_BGR24):
        # swscale filters differently for odd heights, odd NV12 widths and NV12 heights of 4
        # and 6; these kernels would not match it there.
        if height % 2 or (fmt == _IN_NV12 and (width % 2 or 2 < height < 8)):
            raise ConfigError(
                f"{what}: only even heights (and for nv12 even widths and heights of 2 or "
                "at least 8) are converted here; use swscale for this size"
            )
    elif ofmt == _OUT_YUV420P:
        if width % 2 or height % 2:
            raise ConfigError(f"{what}: yuv420p output needs an even width and height")
        if fmt == _IN_YUVJ420P:
            raise ConfigError(
                f"{what}: swscale would also squeeze the full-range levels to 16-235; "
                "use swscale for this conversion"
            )
    planes = tuple(planes)
    line_sizes = tuple(line_sizes)
    if len(planes) < nplanes or len(line_sizes) < nplanes:
        raise ConfigError(
            f"{src_fmt} needs {nplanes} planes and line sizes, got {len(planes)} and "
            f"{len(line_sizes)}"
        )
    expected = out_shape(width, height, pix_fmt)
    dst = _check_out(out, expected, what)

    p = _Planes()
    p.add(planes[0], line_sizes[0], height, width, "Y")
    if ofmt != _OUT_GRAY:
        if fmt == _IN_NV12:
            p.add(planes[1], line_sizes[1], ch, 2 * cw, "UV")
        else:
            p.add(planes[1], line_sizes[1], ch, cw, "U")
            p.add(planes[2], line_sizes[2], ch, cw, "V")
    pc = &_P420[mi][full]
    tc = &_TAB[mi][full]
    if bgr and _NV12_BGR_PAIRAVG:
        pairavg = pc
    try:
        with nogil:
            if ofmt == _OUT_RGB24 or ofmt == _OUT_BGR24:
                if fmt == _IN_NV12:
                    comux_nv12_to_rgb(p.data[0], p.stride[0], p.data[1], p.stride[1], dst,
                                      3 * width, width, height, left, tc, pairavg, bgr)
                else:
                    comux_p420_to_rgb(p.data[0], p.stride[0], p.data[1], p.stride[1],
                                      p.data[2], p.stride[2], dst, 3 * width, width, height,
                                      pc, bgr)
            elif ofmt == _OUT_GRAY:
                if full:
                    comux_copy_plane(p.data[0], p.stride[0], dst, width, width, height)
                else:
                    comux_gray_from_limited(p.data[0], p.stride[0], dst, width, width, height)
            else:
                comux_copy_plane(p.data[0], p.stride[0], dst, width, width, height)
                dst += <ptrdiff_t>width * height
                if fmt == _IN_NV12:
                    comux_split_uv(p.data[1], p.stride[1], dst, cw, dst + cw * ch, cw, cw, ch)
                else:
                    comux_copy_plane(p.data[1], p.stride[1], dst, cw, cw, ch)
                    comux_copy_plane(p.data[2], p.stride[2], dst + cw * ch, cw, cw, ch)
    finally:
        p.release()


def write_frame(
    frame, out, pix_fmt="rgb24", *, matrix=None, full_range=None, chroma_loc="left"
):
    """Write a decoded frame into ``out`` (a batch slot) in place, with the GIL released.

    The result equals ``frame.to_ndarray(format=pix_fmt)``: by default the colour matrix and
    range come from the frame as swscale reads them (see ``frame_color``).  Everything is
    checked before a byte is written; on ``ConfigError`` (a ``ValueError``) ``out`` is
    untouched and the caller should convert with swscale instead.

    :param frame: an ``av.VideoFrame`` in yuv420p, yuvj420p or nv12.
    :param out: ``out_shape(frame.width, frame.height, pix_fmt)``, uint8, C-contiguous,
        e.g. ``batch[i]``.
    :param pix_fmt: "rgb24", "bgr24", "gray" or "yuv420p".
    :param matrix: "bt601" or "bt709"; None reads the frame's colorspace.
    :param full_range: True for 0-255 levels, False for 16-235; None reads the frame.
    :param chroma_loc: "left" or "center", where nv12 chroma sits.  PyAV does not expose the
        frame's tag, so this cannot be read from it: decoders tag MPEG-2/H.264/HEVC video
        "left" (the default); frames built with ``VideoFrame.from_ndarray`` are untagged,
        which swscale treats as "center".  Ignored for yuv420p/yuvj420p frames.

    Example::

        batch = np.empty((8, 1080, 1920, 3), np.uint8)
        for frame in codec.decode(packet):
            write_frame(frame, batch[slot])
    """
    src_fmt = frame.format.name
    _in_code(src_fmt)
    if matrix is None or full_range is None:
        if _out_code(pix_fmt) in (_OUT_RGB24, _OUT_BGR24) and matrix is None:
            matrix, frame_full = frame_color(frame)
        else:
            frame_full = src_fmt == "yuvj420p" or int(frame.color_range) == _AVCOL_RANGE_JPEG
            if matrix is None:
                matrix = "bt601"  # unused by gray and yuv420p output
        if full_range is None:
            full_range = frame_full
    planes = frame.planes
    write_planes(
        src_fmt,
        planes,
        [plane.line_size for plane in planes],
        frame.width,
        frame.height,
        out,
        pix_fmt,
        matrix=matrix,
        full_range=full_range,
        chroma_loc=chroma_loc,
    )
