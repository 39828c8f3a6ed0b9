/*
 * comux/_ext/ring.h - a lock-free single-producer single-consumer ring of frame records.
 *
 * One camera's decoder thread (the producer) hands the batching side (the consumer) the
 * metadata of each decoded frame plus the number of the frame buffer it wrote, without a lock
 * and without the GIL.  The design follows rigtorp/SPSCQueue:
 *
 *   - `head` (next record to read, written only by the consumer) and `tail` (next record to
 *     write, written only by the producer) live on separate cache lines, so the two sides do
 *     not invalidate each other's line on every operation;
 *   - each side loads its own index relaxed (nobody else writes it) and the other side's with
 *     acquire, and publishes its own with release: the release store of `tail` makes the record
 *     written before it visible to the consumer, the release store of `head` tells the producer
 *     that the consumer has finished reading a record;
 *   - each side caches the other side's index on its own line and reloads it only when the
 *     cached value says full (producer) or empty (consumer), so the steady state touches the
 *     other line rarely.
 *
 * `head` and `tail` are free-running 64-bit counters (they never wrap in practice), so all
 * `capacity` records are usable and the number of records held is `tail - head`.  Capacity is
 * a power of two: the record of counter `i` is `buf[i & mask]`.
 *
 * Exactly one thread may call the producer functions (claim, publish, push) and exactly one
 * thread the consumer functions (front, advance, pop, pop_latest) at any time; `size` may be
 * called from any thread.  No function blocks, allocates (except new) or can fail other than
 * by returning "full", "empty" or NULL, so all of them are safe to call without the GIL.
 */
#ifndef COMUX_RING_H
#define COMUX_RING_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__GNUC__) && !defined(__clang__)
#error "comux/_ext/ring.h needs GCC or Clang: it uses the __atomic builtins"
#endif

/* 64 bytes is the line size of current x86-64 and most arm64 cores. */
#ifndef COMUX_RING_CACHE_LINE
#define COMUX_RING_CACHE_LINE 64
#endif

#define COMUX_RING_MIN_CAPACITY ((uint64_t)2)
/* 2**20 records of 32 bytes = 32 MiB: far more frames than any camera keeps in flight. */
#define COMUX_RING_MAX_CAPACITY ((uint64_t)1 << 20)

/* Bits of comux_ring_rec.flags; the upper bits are free for the caller. */
#define COMUX_FLAG_KEYFRAME 0x1 /* the frame is a key frame */
#define COMUX_FLAG_CORRUPT 0x2  /* the decoder flagged the frame as corrupt */
#define COMUX_FLAG_EOS 0x4      /* the stream ended; slot is -1 and the record carries no frame */

/* What a decoder thread hands over per decoded frame: 32 bytes, two records per cache line. */
typedef struct comux_ring_rec {
    int64_t index;    /* Kafka offset of the message the frame was decoded from */
    int64_t pts;      /* presentation timestamp, in the stream's time base */
    double timestamp; /* capture/message time in seconds since the epoch */
    int32_t slot;     /* number of the frame buffer the decoder wrote; -1 for none */
    int32_t flags;    /* COMUX_FLAG_* bits */
} comux_ring_rec;

_Static_assert(sizeof(comux_ring_rec) == 32, "comux_ring_rec must stay 32 bytes");

typedef struct comux_ring {
    /* Read-only after comux_ring_new: shared by both sides without contention. */
    uint64_t capacity;
    uint64_t mask;

    /* The consumer's line. */
    uint64_t head __attribute__((aligned(COMUX_RING_CACHE_LINE)));
    uint64_t tail_cache; /* the consumer's last view of tail */

    /* The producer's line. */
    uint64_t tail __attribute__((aligned(COMUX_RING_CACHE_LINE)));
    uint64_t head_cache; /* the producer's last view of head */

    /* The records start on a line of their own, so writing one never touches head or tail. */
    comux_ring_rec buf[] __attribute__((aligned(COMUX_RING_CACHE_LINE)));
} comux_ring;

/* Return the capacity a ring asked for `requested` records gets (the next power of two), or 0
 * when `requested` is below COMUX_RING_MIN_CAPACITY or above COMUX_RING_MAX_CAPACITY. */
static inline uint64_t comux_ring_capacity_for(uint64_t requested) {
    uint64_t cap = COMUX_RING_MIN_CAPACITY;
    if (requested < COMUX_RING_MIN_CAPACITY || requested > COMUX_RING_MAX_CAPACITY) {
        return 0;
    }
    while (cap < requested) {
        cap <<= 1;
    }
    return cap;
}

/* Allocate an empty ring of comux_ring_capacity_for(requested) records; free it with
 * comux_ring_free.  Return NULL when the capacity is out of range or memory ran out. */
static inline comux_ring *comux_ring_new(uint64_t requested) {
    uint64_t cap = comux_ring_capacity_for(requested);
    size_t size;
    comux_ring *r;
    if (cap == 0) {
        return NULL;
    }
    /* sizeof(comux_ring) and cap * 32 (cap >= 2) are multiples of the line size, as
     * aligned_alloc requires; the block also ends on a line boundary, so no neighbouring
     * allocation shares the last line. */
    size = sizeof(comux_ring) + (size_t)cap * sizeof(comux_ring_rec);
    r = (comux_ring *)aligned_alloc(COMUX_RING_CACHE_LINE, size);
    if (r == NULL) {
        return NULL;
    }
    memset(r, 0, size);
    r->capacity = cap;
    r->mask = cap - 1;
    return r;
}

static inline void comux_ring_free(comux_ring *r) {
    free(r);
}

/* Tell the core that this thread is spinning (pause/yield hint); does nothing elsewhere. */
static inline void comux_ring_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- producer side ---------------------------------------------------------------------- */

/* Return the record to fill next, or NULL when the ring is full.  Nothing is visible to the
 * consumer until comux_ring_publish; claiming twice without publishing returns the same record. */
static inline comux_ring_rec *comux_ring_claim(comux_ring *r) {
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    if (tail - r->head_cache == r->capacity) {
        r->head_cache = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        if (tail - r->head_cache == r->capacity) {
            return NULL;
        }
    }
    return &r->buf[tail & r->mask];
}

/* Hand the record returned by the last successful comux_ring_claim to the consumer. */
static inline void comux_ring_publish(comux_ring *r) {
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    __atomic_store_n(&r->tail, tail + 1, __ATOMIC_RELEASE);
}

/* Copy *rec into the ring; return 1, or 0 (and copy nothing) when the ring is full. */
static inline int comux_ring_push(comux_ring *r, const comux_ring_rec *rec) {
    comux_ring_rec *dst = comux_ring_claim(r);
    if (dst == NULL) {
        return 0;
    }
    *dst = *rec;
    comux_ring_publish(r);
    return 1;
}

/* ---- consumer side ---------------------------------------------------------------------- */

/* Return the oldest record without removing it, or NULL when the ring is empty.  The record
 * stays valid (the producer cannot reuse it) until comux_ring_advance. */
static inline const comux_ring_rec *comux_ring_front(comux_ring *r) {
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    if (head == r->tail_cache) {
        r->tail_cache = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        if (head == r->tail_cache) {
            return NULL;
        }
    }
    return &r->buf[head & r->mask];
}

/* Remove the record returned by the last successful comux_ring_front. */
static inline void comux_ring_advance(comux_ring *r) {
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
}

/* Move the oldest record into *out; return 1, or 0 (and leave *out alone) when empty. */
static inline int comux_ring_pop(comux_ring *r, comux_ring_rec *out) {
    const comux_ring_rec *src = comux_ring_front(r);
    if (src == NULL) {
        return 0;
    }
    *out = *src;
    comux_ring_advance(r);
    return 1;
}

/* Remove every record, move the newest into *out and return how many older ones were dropped,
 * or -1 (leaving *out alone) when the ring is empty.  When dropped_slots is not NULL it
 * receives the slot of each dropped record, oldest first, so their frame buffers can be
 * recycled; it needs room for capacity - 1 entries.
 *
 * Always reloads tail: the point is the newest record published so far, not the cached view. */
static inline int64_t comux_ring_pop_latest(comux_ring *r, comux_ring_rec *out,
                                            int32_t *dropped_slots) {
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    uint64_t i;
    r->tail_cache = tail;
    if (head == tail) {
        return -1;
    }
    if (dropped_slots != NULL) {
        for (i = head; i != tail - 1; i++) {
            *dropped_slots++ = r->buf[i & r->mask].slot;
        }
    }
    *out = r->buf[(tail - 1) & r->mask];
    /* Only now may the producer reuse the records just read. */
    __atomic_store_n(&r->head, tail, __ATOMIC_RELEASE);
    return (int64_t)(tail - 1 - head);
}

/* ---- either side ------------------------------------------------------------------------ */

/* Return how many records the ring holds, between 0 and capacity: exact while the other side
 * is idle, otherwise a snapshot that may already be stale when it returns. */
static inline uint64_t comux_ring_size(const comux_ring *r) {
    /* head first: tail only grows, so tail >= this head and the difference cannot underflow;
     * both sides may move between the loads, hence the clamp. */
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    uint64_t n = tail - head;
    return n > r->capacity ? r->capacity : n;
}

#endif /* COMUX_RING_H */
