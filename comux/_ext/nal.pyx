# cython: language_level=3
"""What an Annex-B packet holds, read once per packet in C: keyframe and reference flags.

The compiled twin of ``comux.annexb.scan`` (same flags, same answers; the tests compare them
on every stream they make): the decode thread asks it once per packet before it decodes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr

__all__ = ["DISPOSABLE", "KEYFRAME", "scan"]

cdef enum:
    _KEYFRAME = 1
    _DISPOSABLE = 2

KEYFRAME = _KEYFRAME
DISPOSABLE = _DISPOSABLE


cdef inline Py_ssize_t _next_start(const unsigned char *p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Position of the next 00 00 01 at or after ``i``; -1 when there is none."""
    cdef const unsigned char *q
    cdef Py_ssize_t j
    while i + 3 <= n:
        q = <const unsigned char *>memchr(p + i + 2, 1, <size_t>(n - i - 2))
        if q == NULL:
            return -1
        j = q - p
        if p[j - 1] == 0 and p[j - 2] == 0:
            return j - 2
        i = j - 1
    return -1


def scan(bytes data, bint hevc):
    """``KEYFRAME`` if any NAL unit is an IDR slice (H.264) or an IRAP picture (HEVC), plus
    ``DISPOSABLE`` if the first slice is never a reference (``nal_ref_idc`` 0; HEVC's
    sub-layer non-reference types)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos
    cdef int flags = 0, header, kind
    cdef bint vcl_seen = False
    pos = _next_start(p, n, 0)
    while pos >= 0 and pos + 3 < n:
        header = p[pos + 3]
        if hevc:
            kind = (header >> 1) & 0x3F
            if 16 <= kind <= 21:
                flags |= _KEYFRAME
            if kind < 32 and not vcl_seen:
                vcl_seen = True
                if kind <= 14 and kind % 2 == 0:
                    flags |= _DISPOSABLE
        else:
            kind = header & 0x1F
            if kind == 5:
                flags |= _KEYFRAME
            if 1 <= kind <= 5 and not vcl_seen:
                vcl_seen = True
                if (header >> 5) & 3 == 0:
                    flags |= _DISPOSABLE
        pos = _next_start(p, n, pos + 3)
    return flags
