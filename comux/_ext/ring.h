/* The hand-off between a camera's decoder (the writer) and the model's thread (the sealer).
 *
 * Each camera owns one row in each of the pool's K buffers; its rows across the open buffers
 * form a ring. Open buffers carry consecutive batch numbers from the filling one; the open
 * buffer of batch s sits in table[s % K]. A writer claims the row of the buffer it is about
 * to write, writes it, then publishes; the sealer closes the filling buffer and waits until no
 * writer still holds a claim on it. Freezing a camera (or the whole ring) keeps writers out
 * while another thread moves its rows.
 *
 * The claim is Dekker's pattern: the writer stores `writing` then loads `seq`, the sealer
 * stores `seq` then loads `writing` (the same with `frozen` for a freezer); a buffer's count of
 * written rows and the sealer's `wake_at` are another such pair. Acquire/release alone does not
 * order a store before a later load, so those accesses are sequentially consistent; everything
 * else is acquire/release or relaxed, as commented. Nothing here takes a lock, allocates or
 * touches Python: every function may run without the GIL.
 *
 * A row's metadata (index, pts, timestamp, corrupt) is written plainly before `written` is
 * stored with release; the sealer reads it only after the claim on that buffer ended, which
 * the release of `writing` orders.
 */
#ifndef COMUX_RING_H
#define COMUX_RING_H

#include <stdint.h>
#include <time.h>

#define COMUX_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define COMUX_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define COMUX_LOAD_SC(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define COMUX_STORE_SC(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define COMUX_LOAD_OWN(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define COMUX_STORE_OWN(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

enum {
    COMUX_WRITTEN = 0,      /* a new frame in its row */
    COMUX_WRITTEN_WAKE = 1, /* ... the filling buffer's first, or the one the sealer awaits */
    COMUX_REPLACED = 2,     /* replaced the row's older frame (rows.replaced_index) */
    COMUX_FULL = 3,         /* fifo: no open buffer for its next frame yet */
    COMUX_GONE = 4,         /* the camera has no row any more */
    COMUX_FROZEN = 5,       /* its rows are being moved: wait, then claim again */
};

typedef struct {
    int64_t seq; /* the batch it becomes while open; -1 sealed or held */
    int64_t id;  /* unique in its pool */
    void *owner; /* the object holding this struct (borrowed) */
    int64_t filled; /* rows written since it opened */
    uint8_t *written;
    uint8_t *corrupt;
    int64_t *indices;
    int64_t *pts;
    double *timestamps;
} comux_buf;

typedef struct {
    int64_t slot;     /* its row in every buffer, -1 once removed; moves only while frozen */
    int64_t writing;  /* id of the buffer its writer claimed; COMUX_LOOKING; -1: none */
    int64_t frozen;   /* set by whoever moves its rows */
    int64_t next_seq; /* fifo: the batch of its next frame; latest: one past its newest */
    int64_t fifo;
    int64_t replaced_index; /* the index a COMUX_REPLACED claim wrote over */
} comux_rows;

typedef struct {
    int64_t filling_seq;
    int64_t next_seq;      /* one past the newest open buffer */
    int64_t frozen;        /* every row: the buffers are being replaced */
    int64_t model_waiting; /* the sealer waits for frames */
    int64_t wake_at;       /* ... until the filling buffer has this many rows written */
    int64_t count;         /* K */
    comux_buf **table;     /* K entries */
} comux_ring;

#define COMUX_LOOKING ((int64_t)-2) /* claiming: reads the table, so a freezer waits */

typedef struct {
    comux_buf *buf;
    int64_t slot;
    int64_t seq;
} comux_claim_t;

static inline int64_t comux_max(int64_t a, int64_t b) { return a > b ? a : b; }

/* The open buffer of batch `seq`, or NULL. */
static inline comux_buf *comux_find(comux_ring *r, int64_t seq) {
    if (seq < 0) return NULL;
    comux_buf *b = COMUX_LOAD(&r->table[seq % r->count]);
    return (b != NULL && COMUX_LOAD(&b->seq) == seq) ? b : NULL;
}

/* Claim the row the next frame goes to: COMUX_WRITTEN (claimed: write, then publish),
 * COMUX_FULL, COMUX_GONE or COMUX_FROZEN. `burst`: the frame left the decoder together with
 * the previous one; while the sealer waits, a latest camera then keeps the filling buffer's
 * frame and writes the next buffer (one ahead at most). */
static inline int comux_claim(comux_ring *r, comux_rows *w, int burst, comux_claim_t *out) {
    /* Announced before the table is read: a freezer that replaces buffers waits for it, and a
     * buffer taken out of the table is freed only once every row was seen idle since. */
    COMUX_STORE_SC(&w->writing, COMUX_LOOKING);
    for (;;) {
        if (COMUX_LOAD_SC(&r->frozen) || COMUX_LOAD_SC(&w->frozen)) {
            COMUX_STORE(&w->writing, (int64_t)-1);
            return COMUX_FROZEN;
        }
        int64_t slot = COMUX_LOAD(&w->slot);
        if (slot < 0) {
            COMUX_STORE(&w->writing, (int64_t)-1);
            return COMUX_GONE;
        }
        int64_t filling = COMUX_LOAD(&r->filling_seq);
        int64_t mine = COMUX_LOAD_OWN(&w->next_seq);
        int64_t seq;
        if (COMUX_LOAD_OWN(&w->fifo)) {
            seq = comux_max(filling, mine);
        } else {
            seq = comux_max(filling, mine - 1);
            if (burst && seq == filling && COMUX_LOAD(&r->model_waiting)) {
                comux_buf *newest = comux_find(r, seq);
                if (newest != NULL && COMUX_LOAD(&newest->written[slot]) &&
                    comux_find(r, seq + 1) != NULL)
                    seq += 1;
            }
        }
        comux_buf *b = comux_find(r, seq);
        if (b == NULL) {
            if (seq >= COMUX_LOAD(&r->next_seq)) {
                COMUX_STORE(&w->writing, (int64_t)-1);
                return COMUX_FULL;
            }
            continue; /* sealed meanwhile: look again */
        }
        COMUX_STORE_SC(&w->writing, b->id);
        if (COMUX_LOAD_SC(&b->seq) == seq && COMUX_LOAD_SC(&w->slot) == slot) {
            out->buf = b;
            out->slot = slot;
            out->seq = seq;
            return COMUX_WRITTEN;
        }
        COMUX_STORE_SC(&w->writing, COMUX_LOOKING);
    }
}

/* Write the claimed row's metadata and end the claim. Returns COMUX_WRITTEN_WAKE (the sealer
 * waits for this frame: the first of its batch, or the last it awaits), COMUX_WRITTEN or
 * COMUX_REPLACED. `filled` and `wake_at` are the second Dekker pair: the sealer stores
 * `wake_at` then loads `filled` before it sleeps, so one side always sees the other. */
static inline int comux_publish(comux_ring *r, comux_rows *w, const comux_claim_t *c,
                                int64_t index, int64_t pts, double timestamp, int corrupt) {
    comux_buf *b = c->buf;
    int64_t slot = c->slot;
    int first = !COMUX_LOAD_OWN(&b->written[slot]);
    int result = COMUX_REPLACED;
    if (!first) w->replaced_index = b->indices[slot];
    b->indices[slot] = index;
    b->pts[slot] = pts;
    b->timestamps[slot] = timestamp;
    b->corrupt[slot] = (uint8_t)(corrupt != 0);
    COMUX_STORE(&b->written[slot], (uint8_t)1);
    if (first) { /* counted before the claim ends: the sealer reads it once writers are out */
        int64_t n = __atomic_add_fetch(&b->filled, 1, __ATOMIC_SEQ_CST);
        int wake = c->seq == COMUX_LOAD(&r->filling_seq) &&
                   (n == 1 || n >= COMUX_LOAD_SC(&r->wake_at));
        result = wake ? COMUX_WRITTEN_WAKE : COMUX_WRITTEN;
    }
    COMUX_STORE_OWN(&w->next_seq, c->seq + 1);
    COMUX_STORE(&w->writing, (int64_t)-1);
    return result;
}

/* One written row fewer in `b` (taken, or its camera removed, while frozen). */
static inline void comux_unfill(comux_buf *b) {
    __atomic_sub_fetch(&b->filled, 1, __ATOMIC_SEQ_CST);
}

/* End a claim without writing (the writer failed). */
static inline void comux_abandon(comux_rows *w) { COMUX_STORE(&w->writing, (int64_t)-1); }

/* Number `b` as the next batch and let writers in (its rows must be clean). */
static inline int64_t comux_open(comux_ring *r, comux_buf *b) {
    int64_t seq = COMUX_LOAD_OWN(&r->next_seq);
    COMUX_STORE(&b->filled, (int64_t)0);
    COMUX_STORE(&r->table[seq % r->count], b);
    COMUX_STORE(&b->seq, seq);
    COMUX_STORE(&r->next_seq, seq + 1);
    return seq;
}

/* Put `fresh` in the place of open buffer `old` (the ring must be frozen and idle). */
static inline void comux_replace(comux_ring *r, comux_buf *old, comux_buf *fresh) {
    int64_t seq = COMUX_LOAD_OWN(&old->seq);
    COMUX_STORE(&fresh->seq, seq);
    COMUX_STORE(&r->table[seq % r->count], fresh);
    COMUX_STORE(&old->seq, (int64_t)-1);
}

/* Close the filling buffer to writers; then wait until no row is `comux_writing_in` it. */
static inline comux_buf *comux_seal(comux_ring *r) {
    int64_t seq = COMUX_LOAD_OWN(&r->filling_seq);
    comux_buf *b = comux_find(r, seq);
    if (b == NULL) return NULL;
    COMUX_STORE_SC(&b->seq, (int64_t)-1);
    COMUX_STORE(&r->filling_seq, seq + 1);
    return b;
}

static inline int comux_writing_in(comux_rows *w, const comux_buf *b) {
    return COMUX_LOAD_SC(&w->writing) == b->id;
}

/* Keep writers out of `w`'s rows; then wait until `comux_idle`. */
static inline void comux_freeze(int64_t *frozen, int on) { COMUX_STORE_SC(frozen, (int64_t)on); }

static inline int comux_idle(comux_rows *w) { return COMUX_LOAD_SC(&w->writing) == -1; }

/* Back off while another thread finishes one frame: a few microseconds, growing to 1 ms. */
static inline int64_t comux_backoff(int64_t delay_ns) {
    struct timespec ts = {0, delay_ns};
    nanosleep(&ts, NULL);
    delay_ns = delay_ns ? delay_ns * 2 : 20000;
    return delay_ns > 1000000 ? 1000000 : delay_ns;
}

static inline double comux_wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
