/* Count heap allocations (malloc family, posix_memalign, aligned_alloc) while enabled.
 *
 * Built on the fly by benchmarks/test_copies_bench.py and LD_PRELOADed into a child Python, so
 * that allocations made by native code (FFmpeg's av_malloc, numpy's data buffers) are seen too,
 * transient ones included, which tracemalloc cannot show. Counting is off until
 * comux_alloc_count(1) is called; the counters are atomic (decoder threads allocate too).
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static volatile int enabled = 0;
static size_t big_threshold = (size_t)-1;
static uint64_t n_calls = 0, n_bytes = 0, n_big = 0, n_big_bytes = 0;

static inline void count(size_t size) {
    if (!__atomic_load_n(&enabled, __ATOMIC_RELAXED)) return;
    __atomic_fetch_add(&n_calls, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&n_bytes, size, __ATOMIC_RELAXED);
    if (size >= big_threshold) {
        __atomic_fetch_add(&n_big, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&n_big_bytes, size, __ATOMIC_RELAXED);
    }
}

/* Zero the counters and set what counts as a big allocation (bytes). */
void comux_alloc_reset(size_t threshold) {
    big_threshold = threshold;
    __atomic_store_n(&n_calls, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&n_bytes, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&n_big, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&n_big_bytes, 0, __ATOMIC_SEQ_CST);
}

/* Start (1) or stop (0) counting; the counters keep their values. */
void comux_alloc_count(int on) { __atomic_store_n(&enabled, on, __ATOMIC_SEQ_CST); }

/* calls, bytes, calls >= threshold, bytes of those */
void comux_alloc_read(uint64_t out[4]) {
    out[0] = __atomic_load_n(&n_calls, __ATOMIC_SEQ_CST);
    out[1] = __atomic_load_n(&n_bytes, __ATOMIC_SEQ_CST);
    out[2] = __atomic_load_n(&n_big, __ATOMIC_SEQ_CST);
    out[3] = __atomic_load_n(&n_big_bytes, __ATOMIC_SEQ_CST);
}

void *malloc(size_t size) {
    count(size);
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
    count(n * size);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    count(size);
    return __libc_realloc(p, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) || (alignment & (alignment - 1))) return EINVAL;
    count(size);
    void *p = __libc_memalign(alignment, size);
    if (!p && size) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
    count(size);
    return __libc_memalign(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    count(size);
    return __libc_memalign(alignment, size);
}
