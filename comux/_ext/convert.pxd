# cython: language_level=3
"""C declarations of the frame-writing kernels (convert.h), for convert.pyx alone.

Cython reads this file as the declarations of the module of the same name; nothing else
cimports it. The kernels trust their sizes: ``convert.write_planes`` validates them first.
"""

from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int16_t, int32_t, uint8_t


cdef extern from "convert.h" nogil:
    ctypedef struct comux_p420_coeffs:
        int16_t y_coeff
        int16_t y_offset
        int16_t v2r
        int16_t u2g
        int16_t v2g
        int16_t u2b

    ctypedef struct comux_tab_coeffs:
        int32_t cy
        int32_t bias
        int32_t r_off
        int32_t g_off
        int32_t b_off
        int32_t v2r
        int32_t u2g
        int32_t v2g
        int32_t u2b

    # Call with the GIL held (module import, tests): they switch the kernels every thread uses.
    int comux_convert_best_isa()
    int comux_convert_select(int wanted)

    void comux_p420_to_rgb(const uint8_t *y, ptrdiff_t y_stride, const uint8_t *u,
                           ptrdiff_t u_stride, const uint8_t *v, ptrdiff_t v_stride,
                           uint8_t *dst, ptrdiff_t dst_stride, int width, int height,
                           const comux_p420_coeffs *c, int bgr)
    void comux_nv12_to_rgb(const uint8_t *y, ptrdiff_t y_stride, const uint8_t *uv,
                           ptrdiff_t uv_stride, uint8_t *dst, ptrdiff_t dst_stride, int width,
                           int height, int left, const comux_tab_coeffs *c,
                           const comux_p420_coeffs *pairavg, int bgr)
    void comux_copy_plane(const uint8_t *src, ptrdiff_t src_stride, uint8_t *dst,
                          ptrdiff_t dst_stride, int width, int height)
    void comux_split_uv(const uint8_t *uv, ptrdiff_t uv_stride, uint8_t *u, ptrdiff_t u_stride,
                        uint8_t *v, ptrdiff_t v_stride, int width, int height)
    void comux_gray_from_limited(const uint8_t *src, ptrdiff_t src_stride, uint8_t *dst,
                                 ptrdiff_t dst_stride, int width, int height)
