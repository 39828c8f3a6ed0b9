/* Two threads through comux_ring.h, built by tests/unit/test_ring_sanitizers.py under
 * AddressSanitizer+UBSan and under ThreadSanitizer: every record must arrive whole, in order,
 * once (or be reported dropped by pop_latest with its slot). Exit status 0 means clean. */
#include "ring.h"
#include <pthread.h>
#include <stdio.h>

#define N 300000
static comux_ring *r;

static void *produce(void *arg) {
    (void)arg;
    for (int64_t i = 0; i < N; i++) {
        comux_ring_rec *d;
        while (!(d = comux_ring_claim(r))) comux_ring_cpu_relax();
        d->index = i;
        d->pts = i * 7;
        d->timestamp = (double)i;
        d->slot = (int32_t)(i & 1023);
        d->flags = 1;
        comux_ring_publish(r);
    }
    return NULL;
}

int main(void) {
    pthread_t thread;
    int64_t expect = 0, bad = 0;
    comux_ring_rec rec;
    int32_t slots[16];
    r = comux_ring_new(16);
    if (!r) return 2;
    pthread_create(&thread, NULL, produce, NULL);
    while (expect < N) {
        if (expect % 3 == 0) {
            int64_t dropped = comux_ring_pop_latest(r, &rec, slots);
            if (dropped < 0) continue;
            for (int64_t j = 0; j < dropped; j++) bad += slots[j] != (int32_t)((expect + j) & 1023);
            bad += rec.index != expect + dropped || rec.pts != rec.index * 7;
            expect = rec.index + 1;
        } else if (comux_ring_pop(r, &rec)) {
            bad += rec.index != expect || rec.pts != expect * 7;
            expect++;
        }
        (void)comux_ring_size(r);
    }
    pthread_join(thread, NULL);
    comux_ring_free(r);
    printf("bad=%ld\n", (long)bad);
    return bad != 0;
}
