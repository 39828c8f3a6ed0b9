/* Frame-writing kernels: decoded YUV planes -> packed RGB/BGR, gray or I420, written in place.
 *
 * Plain C that gcc -O3 auto-vectorizes: fixed-point integer math, no per-pixel branches
 * (clamping is min/max), fixed-size scratch rows on the stack so nothing allocates and any
 * thread may call in without the GIL.  Callers validate sizes; these functions trust them.
 *
 * Two arithmetic models, each chosen because it reproduces what libswscale (FFmpeg 8, x86-64)
 * gives PyAV's VideoFrame.to_ndarray() bit for bit:
 *   - 4:2:0 planar (yuv420p / yuvj420p): swscale's unscaled yuv2rgb SIMD path.  Each chroma
 *     sample covers a 2x2 block; the math is pmulhw on 16-bit values promoted by 3 bits.
 *   - NV12: swscale's general scaler.  Chroma is interpolated vertically (3/4 nearest row +
 *     1/4 the other neighbour, rounded), and horizontally too when it is left-sited; RGB comes
 *     from its lookup-table construction, which is re-expressed here as arithmetic.  For
 *     BGR24, x86 builds of swscale use MMX output code instead, with cruder chroma and the
 *     planar arithmetic; that is reproduced on request.
 *
 * On x86-64 with gcc every kernel is compiled four times (AVX-512 VBMI, AVX2, SSE4.1, baseline)
 * from the same source and comux_convert_select() picks the best the CPU runs, so one build is
 * portable and fast: the packed 3-byte store is shuffle-bound, and VBMI's byte permute roughly
 * halves it.  Elsewhere there is one plain build, vectorized for whatever -O3 targets.
 */
#ifndef COMUX_CONVERT_H
#define COMUX_CONVERT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Pixels handled per inner pass: the scratch rows on the stack (3-8 KiB) stay in L1. */
#define COMUX_CVT_CHUNK 512

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define COMUX_CVT_X86 1
#endif

#define COMUX_CVT_INLINE static inline __attribute__((always_inline))

/* Coefficients of the planar model, as swscale derives them (see convert.pyx). */
typedef struct {
    int16_t y_coeff;  /* round(cy * 2^13) */
    int16_t y_offset; /* black level << 3 (128 limited, 0 full) */
    int16_t v2r;
    int16_t u2g;
    int16_t v2g;
    int16_t u2b;
} comux_p420_coeffs;

/* Coefficients of the NV12 model; one channel is
 *   clamp((Y * cy + (off + ((C * c) >> 16)) * cy + bias) >> 16)
 * with the U and V terms summed for green. */
typedef struct {
    int32_t cy;
    int32_t bias;
    int32_t r_off;
    int32_t g_off;
    int32_t b_off;
    int32_t v2r;
    int32_t u2g;
    int32_t v2g;
    int32_t u2b;
} comux_tab_coeffs;

COMUX_CVT_INLINE int16_t comux__mulhi(int16_t a, int16_t b)
{
    return (int16_t)(((int32_t)a * (int32_t)b) >> 16);
}

COMUX_CVT_INLINE uint8_t comux__clamp_u8(int32_t x)
{
    x = x < 0 ? 0 : x;
    return (uint8_t)(x > 255 ? 255 : x);
}

/* The same on 16 bits, so that the vectorizer keeps 16 lanes per AVX2 register. */
COMUX_CVT_INLINE uint8_t comux__clamp_u8_16(int16_t x)
{
    x = x < 0 ? 0 : x;
    return (uint8_t)(x > 255 ? 255 : x);
}

/* ---- 4:2:0 planar -> packed RGB / BGR --------------------------------------------------- */

/* One output row of n pixels from a luma row and per-pixel chroma terms. */
COMUX_CVT_INLINE void comux__p420_row(const uint8_t *restrict y, const int16_t *restrict cr,
                                      const int16_t *restrict cg, const int16_t *restrict cb,
                                      uint8_t *restrict d, ptrdiff_t n, int16_t yc,
                                      int16_t yo, int bgr)
{
    /* Indices are ptrdiff_t: with -fwrapv (Python's CFLAGS) an int 3 * i may wrap, which
     * stops gcc from seeing an affine access and vectorizing the interleaved store. */
    for (ptrdiff_t i = 0; i < n; i++) {
        int16_t yt = comux__mulhi((int16_t)((int16_t)(y[i] * 8) - yo), yc);
        uint8_t r = comux__clamp_u8_16((int16_t)(yt + cr[i]));
        uint8_t g = comux__clamp_u8_16((int16_t)(yt + cg[i]));
        uint8_t b = comux__clamp_u8_16((int16_t)(yt + cb[i]));
        d[3 * i + 0] = bgr ? b : r;
        d[3 * i + 1] = g;
        d[3 * i + 2] = bgr ? r : b;
    }
}

COMUX_CVT_INLINE void comux__p420_body(const uint8_t *y, ptrdiff_t y_stride, const uint8_t *u,
                                       ptrdiff_t u_stride, const uint8_t *v, ptrdiff_t v_stride,
                                       uint8_t *dst, ptrdiff_t dst_stride, int width, int height,
                                       const comux_p420_coeffs *c, int bgr)
{
    int16_t cr[COMUX_CVT_CHUNK + 2], cg[COMUX_CVT_CHUNK + 2], cb[COMUX_CVT_CHUNK + 2];
    const int16_t yc = c->y_coeff, yo = c->y_offset;
    const int16_t v2r = c->v2r, u2g = c->u2g, v2g = c->v2g, u2b = c->u2b;

    for (ptrdiff_t row = 0; row + 1 < height; row += 2) {
        const uint8_t *y0 = y + row * y_stride;
        const uint8_t *y1 = y0 + y_stride;
        const uint8_t *ur = u + (row >> 1) * u_stride;
        const uint8_t *vr = v + (row >> 1) * v_stride;
        uint8_t *d0 = dst + row * dst_stride;
        uint8_t *d1 = d0 + dst_stride;
        for (ptrdiff_t x0 = 0; x0 < width; x0 += COMUX_CVT_CHUNK) {
            ptrdiff_t n = width - x0 < COMUX_CVT_CHUNK ? width - x0 : COMUX_CVT_CHUNK;
            ptrdiff_t nc = (n + 1) >> 1;
            const uint8_t *uc = ur + (x0 >> 1), *vc = vr + (x0 >> 1);
            /* Chroma terms once per 2x2 block, widened to one entry per pixel. */
            for (ptrdiff_t j = 0; j < nc; j++) {
                int16_t uu = (int16_t)((int16_t)(uc[j] * 8) - 1024);
                int16_t vv = (int16_t)((int16_t)(vc[j] * 8) - 1024);
                int16_t tr = comux__mulhi(vv, v2r);
                int16_t tg = (int16_t)(comux__mulhi(uu, u2g) + comux__mulhi(vv, v2g));
                int16_t tb = comux__mulhi(uu, u2b);
                cr[2 * j] = tr;
                cr[2 * j + 1] = tr;
                cg[2 * j] = tg;
                cg[2 * j + 1] = tg;
                cb[2 * j] = tb;
                cb[2 * j + 1] = tb;
            }
            comux__p420_row(y0 + x0, cr, cg, cb, d0 + 3 * x0, n, yc, yo, bgr);
            comux__p420_row(y1 + x0, cr, cg, cb, d1 + 3 * x0, n, yc, yo, bgr);
        }
    }
}

COMUX_CVT_INLINE void comux__p420_any(const uint8_t *y, ptrdiff_t y_stride, const uint8_t *u,
                                      ptrdiff_t u_stride, const uint8_t *v, ptrdiff_t v_stride,
                                      uint8_t *dst, ptrdiff_t dst_stride, int width, int height,
                                      const comux_p420_coeffs *c, int bgr)
{
    /* Two instantiations so that the channel order is a compile-time constant in the loop. */
    if (bgr)
        comux__p420_body(y, y_stride, u, u_stride, v, v_stride, dst, dst_stride, width,
                         height, c, 1);
    else
        comux__p420_body(y, y_stride, u, u_stride, v, v_stride, dst, dst_stride, width,
                         height, c, 0);
}

/* ---- NV12 -> packed RGB / BGR ----------------------------------------------------------- */

COMUX_CVT_INLINE void comux__tab_row(const uint8_t *restrict y, const int32_t *restrict cr,
                                     const int32_t *restrict cg, const int32_t *restrict cb,
                                     uint8_t *restrict d, ptrdiff_t n, int32_t cy, int bgr)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t yt = y[i] * cy;
        uint8_t r = comux__clamp_u8((yt + cr[i]) >> 16);
        uint8_t g = comux__clamp_u8((yt + cg[i]) >> 16);
        uint8_t b = comux__clamp_u8((yt + cb[i]) >> 16);
        d[3 * i + 0] = bgr ? b : r;
        d[3 * i + 1] = g;
        d[3 * i + 2] = bgr ? r : b;
    }
}

/* One chroma row of an NV12 chunk, horizontally sited for the output, in quarter units (4x).
 * Centre-sited chroma (untagged, JPEG) already sits between its two pixels and is only scaled;
 * left-sited chroma (MPEG-2, H.264, HEVC) sits on the even pixel, so swscale's horizontal
 * scaler moves it a quarter sample right: 3/4 this sample + 1/4 the next (the last repeats).
 * n interleaved U,V values; the first `inner` of them have a next sample two bytes on. */
COMUX_CVT_INLINE void comux__nv12_hsite(const uint8_t *restrict s, uint16_t *restrict h,
                                        ptrdiff_t n, ptrdiff_t inner, int left)
{
    ptrdiff_t m = 0;
    if (left)
        for (; m < inner; m++)
            h[m] = (uint16_t)(3 * s[m] + s[m + 2]);
    for (; m < n; m++)
        h[m] = (uint16_t)(4 * s[m]);
}

/* Rows [row_begin, row_end) of a height-row NV12 frame, swscale's general-scaler way. */
COMUX_CVT_INLINE void comux__nv12_body(const uint8_t *y, ptrdiff_t y_stride, const uint8_t *uv,
                                       ptrdiff_t uv_stride, uint8_t *dst, ptrdiff_t dst_stride,
                                       int width, int height, int row_begin, int row_end,
                                       int left, const comux_tab_coeffs *c, int bgr)
{
    uint16_t hn[COMUX_CVT_CHUNK + 2], hf[COMUX_CVT_CHUNK + 2];
    int32_t cr[COMUX_CVT_CHUNK + 2], cg[COMUX_CVT_CHUNK + 2], cb[COMUX_CVT_CHUNK + 2];
    const int32_t cy = c->cy, bias = c->bias;
    const int32_t r_off = c->r_off, g_off = c->g_off, b_off = c->b_off;
    const int32_t v2r = c->v2r, u2g = c->u2g, v2g = c->v2g, u2b = c->u2b;
    const ptrdiff_t chroma_rows = (height + 1) >> 1, row_values = 2 * ((width + 1) >> 1);

    for (ptrdiff_t row = row_begin; row < row_end; row++) {
        /* Chroma sits between luma rows 2k and 2k+1: weight 3/4 on row k, 1/4 on the
         * neighbour on the same side as this luma row (edges repeat). */
        ptrdiff_t k = row >> 1;
        ptrdiff_t other = (row & 1) ? (k + 1 < chroma_rows ? k + 1 : k) : (k > 0 ? k - 1 : 0);
        const uint8_t *near = uv + k * uv_stride, *far = uv + other * uv_stride;
        const uint8_t *yr = y + row * y_stride;
        uint8_t *d = dst + row * dst_stride;
        for (ptrdiff_t x0 = 0; x0 < width; x0 += COMUX_CVT_CHUNK) {
            ptrdiff_t n = width - x0 < COMUX_CVT_CHUNK ? width - x0 : COMUX_CVT_CHUNK;
            ptrdiff_t nc = (n + 1) >> 1, v0 = 2 * (x0 >> 1);
            ptrdiff_t inner = row_values - 2 - v0 < 2 * nc ? row_values - 2 - v0 : 2 * nc;
            comux__nv12_hsite(near + v0, hn, 2 * nc, inner, left);
            comux__nv12_hsite(far + v0, hf, 2 * nc, inner, left);
            for (ptrdiff_t j = 0; j < nc; j++) {
                /* Both scalers keep 15-bit intermediates, so this rounds only once. */
                int32_t uu = (3 * hn[2 * j] + hf[2 * j] + 8) >> 4;
                int32_t vv = (3 * hn[2 * j + 1] + hf[2 * j + 1] + 8) >> 4;
                int32_t tr = (r_off + ((vv * v2r) >> 16)) * cy + bias;
                int32_t tg = (g_off + ((uu * u2g) >> 16) + ((vv * v2g) >> 16)) * cy + bias;
                int32_t tb = (b_off + ((uu * u2b) >> 16)) * cy + bias;
                cr[2 * j] = tr;
                cr[2 * j + 1] = tr;
                cg[2 * j] = tg;
                cg[2 * j + 1] = tg;
                cb[2 * j] = tb;
                cb[2 * j + 1] = tb;
            }
            comux__tab_row(yr + x0, cr, cg, cb, d + 3 * x0, n, cy, bgr);
        }
    }
}

/* Rows [0, row_end) of an NV12 frame the way x86 swscale writes BGR24: its MMX output takes
 * the nearer chroma row alone when that weighs 3/4 (odd rows) and the plain average of the two
 * when it weighs 1/4 (even rows), then the planar model's pmulhw arithmetic. */
COMUX_CVT_INLINE void comux__nv12_pairavg_body(const uint8_t *y, ptrdiff_t y_stride,
                                               const uint8_t *uv, ptrdiff_t uv_stride,
                                               uint8_t *dst, ptrdiff_t dst_stride, int width,
                                               int row_end, int left, const comux_p420_coeffs *c,
                                               int bgr)
{
    uint16_t hn[COMUX_CVT_CHUNK + 2], hf[COMUX_CVT_CHUNK + 2];
    int16_t cr[COMUX_CVT_CHUNK + 2], cg[COMUX_CVT_CHUNK + 2], cb[COMUX_CVT_CHUNK + 2];
    const int16_t yc = c->y_coeff, yo = c->y_offset;
    const int16_t v2r = c->v2r, u2g = c->u2g, v2g = c->v2g, u2b = c->u2b;
    const ptrdiff_t row_values = 2 * ((width + 1) >> 1);

    for (ptrdiff_t row = 0; row < row_end; row++) {
        ptrdiff_t k = row >> 1;
        const uint8_t *a = uv + k * uv_stride;
        const uint8_t *b = (row & 1) || k == 0 ? a : a - uv_stride;
        const uint8_t *yr = y + row * y_stride;
        uint8_t *d = dst + row * dst_stride;
        for (ptrdiff_t x0 = 0; x0 < width; x0 += COMUX_CVT_CHUNK) {
            ptrdiff_t n = width - x0 < COMUX_CVT_CHUNK ? width - x0 : COMUX_CVT_CHUNK;
            ptrdiff_t nc = (n + 1) >> 1, v0 = 2 * (x0 >> 1);
            ptrdiff_t inner = row_values - 2 - v0 < 2 * nc ? row_values - 2 - v0 : 2 * nc;
            comux__nv12_hsite(a + v0, hn, 2 * nc, inner, left);
            comux__nv12_hsite(b + v0, hf, 2 * nc, inner, left);
            for (ptrdiff_t j = 0; j < nc; j++) {
                /* hn + hf is the 3-bit-promoted average (or sample, when a == b), exact. */
                int16_t uu = (int16_t)((int16_t)(hn[2 * j] + hf[2 * j]) - 1024);
                int16_t vv = (int16_t)((int16_t)(hn[2 * j + 1] + hf[2 * j + 1]) - 1024);
                int16_t tr = comux__mulhi(vv, v2r);
                int16_t tg = (int16_t)(comux__mulhi(uu, u2g) + comux__mulhi(vv, v2g));
                int16_t tb = comux__mulhi(uu, u2b);
                cr[2 * j] = tr;
                cr[2 * j + 1] = tr;
                cg[2 * j] = tg;
                cg[2 * j + 1] = tg;
                cb[2 * j] = tb;
                cb[2 * j + 1] = tb;
            }
            comux__p420_row(yr + x0, cr, cg, cb, d + 3 * x0, n, yc, yo, bgr);
        }
    }
}

COMUX_CVT_INLINE void comux__nv12_any(const uint8_t *y, ptrdiff_t y_stride, const uint8_t *uv,
                                      ptrdiff_t uv_stride, uint8_t *dst, ptrdiff_t dst_stride,
                                      int width, int height, int left, const comux_tab_coeffs *c,
                                      const comux_p420_coeffs *pairavg, int bgr)
{
    /* swscale's MMX output never writes the last two rows (it would read past its buffers),
     * so those always come from the interpolating C path. */
    int split = pairavg && height > 2 ? height - 2 : 0;
    /* Two instantiations so that the channel order is a compile-time constant in the loop. */
    if (bgr) {
        if (split)
            comux__nv12_pairavg_body(y, y_stride, uv, uv_stride, dst, dst_stride, width, split,
                                     left, pairavg, 1);
        comux__nv12_body(y, y_stride, uv, uv_stride, dst, dst_stride, width, height, split,
                         height, left, c, 1);
    } else {
        if (split)
            comux__nv12_pairavg_body(y, y_stride, uv, uv_stride, dst, dst_stride, width, split,
                                     left, pairavg, 0);
        comux__nv12_body(y, y_stride, uv, uv_stride, dst, dst_stride, width, height, split,
                         height, left, c, 0);
    }
}

/* ---- plane copies ----------------------------------------------------------------------- */

/* Copy a plane of width x height bytes row by row, dropping the source's line padding. */
static void comux_copy_plane(const uint8_t *src, ptrdiff_t src_stride, uint8_t *dst,
                             ptrdiff_t dst_stride, int width, int height)
{
    if (src_stride == dst_stride && src_stride == width) {
        memcpy(dst, src, (size_t)width * (size_t)height);
        return;
    }
    for (ptrdiff_t row = 0; row < height; row++)
        memcpy(dst + row * dst_stride, src + row * src_stride, (size_t)width);
}

COMUX_CVT_INLINE void comux__split_uv_any(const uint8_t *uv, ptrdiff_t uv_stride, uint8_t *u,
                                          ptrdiff_t u_stride, uint8_t *v, ptrdiff_t v_stride,
                                          int width, int height)
{
    for (ptrdiff_t row = 0; row < height; row++) {
        const uint8_t *restrict s = uv + row * uv_stride;
        uint8_t *restrict du = u + row * u_stride;
        uint8_t *restrict dv = v + row * v_stride;
        for (ptrdiff_t j = 0; j < width; j++) {
            du[j] = s[2 * j];
            dv[j] = s[2 * j + 1];
        }
    }
}

/* Expand limited-range luma (16..235) to full-range gray as swscale does.  Its 15-bit range
 * converter, (min(Y << 7, 30189) * 19077 - 39057361) >> 14, then (+ 64) >> 7 back to 8 bits,
 * folds into one step; the equality is checked over all 256 inputs in the tests. */
COMUX_CVT_INLINE void comux__gray_any(const uint8_t *src, ptrdiff_t src_stride, uint8_t *dst,
                                      ptrdiff_t dst_stride, int width, int height)
{
    for (ptrdiff_t row = 0; row < height; row++) {
        const uint8_t *restrict s = src + row * src_stride;
        uint8_t *restrict d = dst + row * dst_stride;
        for (ptrdiff_t i = 0; i < width; i++)
            d[i] = comux__clamp_u8((s[i] * 19077 - 296944) >> 14);
    }
}

/* ---- per-ISA builds and dispatch -------------------------------------------------------- */

#define COMUX_CVT_P420_PARAMS                                                                  \
    (const uint8_t *y, ptrdiff_t y_stride, const uint8_t *u, ptrdiff_t u_stride,               \
     const uint8_t *v, ptrdiff_t v_stride, uint8_t *dst, ptrdiff_t dst_stride, int width,     \
     int height, const comux_p420_coeffs *c, int bgr)
#define COMUX_CVT_P420_ARGS                                                                    \
    (y, y_stride, u, u_stride, v, v_stride, dst, dst_stride, width, height, c, bgr)
#define COMUX_CVT_NV12_PARAMS                                                                  \
    (const uint8_t *y, ptrdiff_t y_stride, const uint8_t *uv, ptrdiff_t uv_stride,             \
     uint8_t *dst, ptrdiff_t dst_stride, int width, int height, int left,                     \
     const comux_tab_coeffs *c, const comux_p420_coeffs *pairavg, int bgr)
#define COMUX_CVT_NV12_ARGS                                                                    \
    (y, y_stride, uv, uv_stride, dst, dst_stride, width, height, left, c, pairavg, bgr)
#define COMUX_CVT_SPLIT_PARAMS                                                                 \
    (const uint8_t *uv, ptrdiff_t uv_stride, uint8_t *u, ptrdiff_t u_stride, uint8_t *v,       \
     ptrdiff_t v_stride, int width, int height)
#define COMUX_CVT_SPLIT_ARGS (uv, uv_stride, u, u_stride, v, v_stride, width, height)
#define COMUX_CVT_GRAY_PARAMS                                                                  \
    (const uint8_t *src, ptrdiff_t src_stride, uint8_t *dst, ptrdiff_t dst_stride, int width, \
     int height)
#define COMUX_CVT_GRAY_ARGS (src, src_stride, dst, dst_stride, width, height)

/* One build of every kernel for one instruction set. */
#define COMUX_CVT_BUILD(isa, attr)                                                             \
    attr static void comux__p420_##isa COMUX_CVT_P420_PARAMS                                   \
    {                                                                                          \
        comux__p420_any COMUX_CVT_P420_ARGS;                                                   \
    }                                                                                          \
    attr static void comux__nv12_##isa COMUX_CVT_NV12_PARAMS                                   \
    {                                                                                          \
        comux__nv12_any COMUX_CVT_NV12_ARGS;                                                   \
    }                                                                                          \
    attr static void comux__split_uv_##isa COMUX_CVT_SPLIT_PARAMS                              \
    {                                                                                          \
        comux__split_uv_any COMUX_CVT_SPLIT_ARGS;                                              \
    }                                                                                          \
    attr static void comux__gray_##isa COMUX_CVT_GRAY_PARAMS                                   \
    {                                                                                          \
        comux__gray_any COMUX_CVT_GRAY_ARGS;                                                   \
    }

COMUX_CVT_BUILD(base, )
#ifdef COMUX_CVT_X86
COMUX_CVT_BUILD(sse41, __attribute__((target("sse4.1"))))
COMUX_CVT_BUILD(avx2, __attribute__((target("avx2"))))
/* VBMI (vpermb) is what makes the 3-byte interleave cheap; it first shipped with Ice Lake,
 * whose 512-bit units no longer cost much clock, and 512-bit vectors measured 1.7x faster
 * than 256-bit ones here. */
COMUX_CVT_BUILD(vbmi, __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq,"
                                            "avx512vbmi,prefer-vector-width=512"))))
#endif

/* Instruction-set levels, best last; comux_convert_select() takes one of these. */
enum {
    COMUX_CVT_ISA_BASE = 0,
    COMUX_CVT_ISA_SSE41 = 1,
    COMUX_CVT_ISA_AVX2 = 2,
    COMUX_CVT_ISA_VBMI = 3,
};

typedef void(*comux__p420_fn) COMUX_CVT_P420_PARAMS;
typedef void(*comux__nv12_fn) COMUX_CVT_NV12_PARAMS;
typedef void(*comux__split_fn) COMUX_CVT_SPLIT_PARAMS;
typedef void(*comux__gray_fn) COMUX_CVT_GRAY_PARAMS;

/* Written only by comux_convert_select(), which the module calls with the GIL held. */
static comux__p420_fn comux__p420_impl = comux__p420_base;
static comux__nv12_fn comux__nv12_impl = comux__nv12_base;
static comux__split_fn comux__split_uv_impl = comux__split_uv_base;
static comux__gray_fn comux__gray_impl = comux__gray_base;

/* The best level this CPU (and OS) runs. */
static int comux_convert_best_isa(void)
{
#ifdef COMUX_CVT_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vbmi"))
        return COMUX_CVT_ISA_VBMI;
    if (__builtin_cpu_supports("avx2"))
        return COMUX_CVT_ISA_AVX2;
    if (__builtin_cpu_supports("sse4.1"))
        return COMUX_CVT_ISA_SSE41;
#endif
    return COMUX_CVT_ISA_BASE;
}

/* Use the builds of level min(wanted, best supported); return the level now in use. */
static int comux_convert_select(int wanted)
{
    int level = comux_convert_best_isa();
    if (wanted < level)
        level = wanted < 0 ? 0 : wanted;
#ifdef COMUX_CVT_X86
    if (level == COMUX_CVT_ISA_VBMI) {
        comux__p420_impl = comux__p420_vbmi;
        comux__nv12_impl = comux__nv12_vbmi;
        comux__split_uv_impl = comux__split_uv_vbmi;
        comux__gray_impl = comux__gray_vbmi;
        return level;
    }
    if (level == COMUX_CVT_ISA_AVX2) {
        comux__p420_impl = comux__p420_avx2;
        comux__nv12_impl = comux__nv12_avx2;
        comux__split_uv_impl = comux__split_uv_avx2;
        comux__gray_impl = comux__gray_avx2;
        return level;
    }
    if (level == COMUX_CVT_ISA_SSE41) {
        comux__p420_impl = comux__p420_sse41;
        comux__nv12_impl = comux__nv12_sse41;
        comux__split_uv_impl = comux__split_uv_sse41;
        comux__gray_impl = comux__gray_sse41;
        return level;
    }
#endif
    comux__p420_impl = comux__p420_base;
    comux__nv12_impl = comux__nv12_base;
    comux__split_uv_impl = comux__split_uv_base;
    comux__gray_impl = comux__gray_base;
    return COMUX_CVT_ISA_BASE;
}

/* ---- entry points ----------------------------------------------------------------------- */

/* Convert 4:2:0 planar YUV (even height, any width) to packed RGB, or BGR when bgr != 0. */
static inline void comux_p420_to_rgb COMUX_CVT_P420_PARAMS
{
    comux__p420_impl COMUX_CVT_P420_ARGS;
}

/* Convert NV12 (even width and height) to packed RGB, or BGR when bgr != 0.  left: chroma is
 * left-sited (MPEG-2/H.264) rather than centred.  pairavg NULL: swscale's interpolating C path
 * throughout; otherwise its x86 MMX BGR24 path with these coefficients (see above). */
static inline void comux_nv12_to_rgb COMUX_CVT_NV12_PARAMS
{
    comux__nv12_impl COMUX_CVT_NV12_ARGS;
}

/* Split interleaved U,V rows (NV12 chroma) into two planes of width x height. */
static inline void comux_split_uv COMUX_CVT_SPLIT_PARAMS
{
    comux__split_uv_impl COMUX_CVT_SPLIT_ARGS;
}

/* Expand limited-range luma to full-range gray, as swscale's yuv -> gray does. */
static inline void comux_gray_from_limited COMUX_CVT_GRAY_PARAMS
{
    comux__gray_impl COMUX_CVT_GRAY_ARGS;
}

#endif /* COMUX_CONVERT_H */
