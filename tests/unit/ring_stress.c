/* The ring's hand-off (comux/_ext/ring.h) under ThreadSanitizer, with no Python and no GIL.
 *
 * Writer threads (half fifo, half latest) publish numbered frames into their rows while one
 * control thread does what the pool's model thread does under its locks: seal the filling
 * buffer, check it, reset and reopen it; take a camera's next frame out with its rows frozen
 * and close the gap behind it; freeze the whole ring and move every open buffer into a spare
 * one (a grow). The "pixels" are one plain int64 per row holding the frame's index, so a torn
 * or late write shows as a wrong value, and as a data race to TSan.
 *
 *   cc -O1 -g -fsanitize=thread -pthread -I comux/_ext tests/unit/ring_stress.c -o ring_stress
 *   ./ring_stress [frames per writer]
 *
 * Exits 0 when every fifo frame was handed out exactly once and in order, latest frames never
 * went backwards, and nothing was read from a row while a writer held it.
 */
#include "ring.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K 3       /* buffers in the ring */
#define SPARE (2 * K)
#define ROWS 6    /* writers, one row each */

typedef struct {
    comux_buf c;
    uint8_t written[ROWS], corrupt[ROWS];
    int64_t indices[ROWS], pts[ROWS];
    double timestamps[ROWS];
    int64_t pixels[ROWS];
} buffer_t;

static buffer_t buffers[SPARE];
static comux_buf *table[K];
static comux_ring ring;
static comux_rows rows[ROWS];
static int64_t frames_per_writer = 20000;
static int writers_done;
static int64_t *seen[ROWS];   /* fifo: times each index was handed out */
static int64_t last_seen[ROWS];
static int64_t failures;

static void fail(const char *what, int row, int64_t a, int64_t b) {
    if (failures++ < 10) fprintf(stderr, "ring_stress: %s (row %d: %lld, %lld)\n", what, row,
                                 (long long)a, (long long)b);
}

static buffer_t *of(comux_buf *b) { return (buffer_t *)b->owner; }

static void reset(buffer_t *b) {
    memset(b->written, 0, sizeof b->written);
    memset(b->corrupt, 0, sizeof b->corrupt);
    for (int i = 0; i < ROWS; i++) b->indices[i] = b->pts[i] = -1;
}

static void *writer(void *arg) {
    int row = (int)(intptr_t)arg;
    comux_rows *w = &rows[row];
    for (int64_t index = 0; index < frames_per_writer;) {
        comux_claim_t claim;
        int status = comux_claim(&ring, w, index % 3 == 1, &claim);
        if (status == COMUX_FROZEN || status == COMUX_FULL) {
            sched_yield();
            continue;
        }
        if (status != COMUX_WRITTEN) {
            fail("claim refused", row, status, index);
            break;
        }
        of(claim.buf)->pixels[claim.slot] = index;
        comux_publish(&ring, w, &claim, index, index, 0.0, 0);
        index++;
    }
    __atomic_add_fetch(&writers_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* One frame of `row` reaches the caller. */
static void hand_out(int row, buffer_t *b, int slot) {
    int64_t index = b->indices[slot];
    if (b->pixels[slot] != index) fail("torn row", row, b->pixels[slot], index);
    if (rows[row].fifo) {
        if (index < 0 || index >= frames_per_writer) {
            fail("bad index", row, index, 0);
            return;
        }
        if (index != last_seen[row] + 1) fail("fifo out of order", row, last_seen[row], index);
        seen[row][index]++;
    } else if (index < last_seen[row]) {
        fail("latest went backwards", row, last_seen[row], index);
    }
    last_seen[row] = index;
}

static int row_of_slot(int slot) {
    for (int r = 0; r < ROWS; r++)
        if (COMUX_LOAD(&rows[r].slot) == slot) return r;
    return -1;
}

static void seal_one(void) {
    comux_buf *sealed = comux_seal(&ring);
    for (int r = 0; r < ROWS; r++)
        while (comux_writing_in(&rows[r], sealed)) sched_yield();
    buffer_t *b = of(sealed);
    int64_t written = 0;
    for (int slot = 0; slot < ROWS; slot++)
        if (b->written[slot]) {
            hand_out(row_of_slot(slot), b, slot);
            written++;
        }
    int64_t filled = COMUX_LOAD(&sealed->filled);
    if (filled != written) fail("filled drifted from the written rows", -1, filled, written);
    reset(b);
    comux_open(&ring, sealed);
}

static void copy_row(buffer_t *from, int src, buffer_t *to, int dst) {
    to->pixels[dst] = from->pixels[src];
    to->indices[dst] = from->indices[src];
    to->pts[dst] = from->pts[src];
    to->corrupt[dst] = from->corrupt[src];
    to->written[dst] = from->written[src];
}

/* The pool's take(): a camera's next frame out, its later frames one buffer down. */
static void take_one(int row) {
    comux_rows *w = &rows[row];
    comux_freeze(&w->frozen, 1);
    while (!comux_idle(w)) sched_yield();
    int slot = (int)w->slot;
    int64_t seq = ring.filling_seq;
    buffer_t *b = of(comux_find(&ring, seq));
    if (b->written[slot]) {
        hand_out(row, b, slot);
        comux_buf *later;
        while ((later = comux_find(&ring, seq + 1)) != NULL && of(later)->written[slot]) {
            copy_row(of(later), slot, b, slot);
            b = of(later);
            seq++;
        }
        b->written[slot] = 0;
        comux_unfill(&b->c);
        COMUX_STORE(&w->next_seq, seq);
    }
    comux_freeze(&w->frozen, 0);
}

/* The pool's _grow(): every open buffer moved into a spare one while the ring is frozen. */
static void move_all(void) {
    comux_freeze(&ring.frozen, 1);
    for (int r = 0; r < ROWS; r++)
        while (!comux_idle(&rows[r])) sched_yield();
    for (int64_t seq = ring.filling_seq; seq < ring.next_seq; seq++) {
        comux_buf *old = comux_find(&ring, seq);
        buffer_t *spare = NULL;
        for (int i = 0; i < SPARE && spare == NULL; i++) {
            int64_t s = COMUX_LOAD(&buffers[i].c.seq);
            int in_table = 0;
            for (int t = 0; t < K; t++) in_table |= table[t] == &buffers[i].c;
            if (s == -1 && !in_table) spare = &buffers[i];
        }
        if (spare == NULL) break;
        reset(spare);
        for (int slot = 0; slot < ROWS; slot++) copy_row(of(old), slot, spare, slot);
        COMUX_STORE(&spare->c.filled, COMUX_LOAD(&old->filled));
        comux_replace(&ring, old, &spare->c);
    }
    comux_freeze(&ring.frozen, 0);
}

int main(int argc, char **argv) {
    if (argc > 1) frames_per_writer = atoll(argv[1]);
    ring.count = K;
    ring.table = table;
    for (int i = 0; i < SPARE; i++) {
        buffer_t *b = &buffers[i];
        b->c = (comux_buf){.seq = -1, .id = i, .owner = b, .written = b->written,
                           .corrupt = b->corrupt, .indices = b->indices, .pts = b->pts,
                           .timestamps = b->timestamps};
        reset(b);
    }
    for (int i = 0; i < K; i++) comux_open(&ring, &buffers[i].c);
    pthread_t threads[ROWS];
    for (int r = 0; r < ROWS; r++) {
        rows[r] = (comux_rows){.slot = r, .writing = -1, .fifo = r % 2 == 0, .replaced_index = -1};
        seen[r] = calloc((size_t)frames_per_writer, sizeof(int64_t));
        last_seen[r] = -1;
    }
    for (int r = 0; r < ROWS; r++) pthread_create(&threads[r], NULL, writer, (void *)(intptr_t)r);
    unsigned step = 0;
    while (__atomic_load_n(&writers_done, __ATOMIC_ACQUIRE) < ROWS) {
        step = step * 1103515245u + 12345u;
        if (step % 16 == 0) move_all();
        else if (step % 4 == 0) take_one((int)((step >> 8) % ROWS));
        else seal_one();
        __atomic_store_n(&ring.model_waiting, (int64_t)(step % 3 == 0), __ATOMIC_RELEASE);
        __atomic_store_n(&ring.wake_at, (int64_t)((step >> 4) % (ROWS + 1)), __ATOMIC_SEQ_CST);
    }
    for (int r = 0; r < ROWS; r++) pthread_join(threads[r], NULL);
    for (int i = 0; i < K; i++) seal_one(); /* drain */
    for (int r = 0; r < ROWS; r += 2)
        for (int64_t i = 0; i < frames_per_writer; i++)
            if (seen[r][i] != 1) fail("fifo frame not handed out exactly once", r, i, seen[r][i]);
    printf("ring_stress: %d writers x %lld frames, %lld failures\n", ROWS,
           (long long)frames_per_writer, (long long)failures);
    return failures ? 1 : 0;
}
