# cython: language_level=3
"""C declarations of the lock-free SPSC ring (ring.h) and the layout of SpscRing.

Other Cython modules ``cimport`` this to run the ring in ``nogil`` code: either through the
``SpscRing`` cdef methods or, in the hottest loops, through the inline C functions on
``ring._ring`` directly.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t


cdef extern from "ring.h" nogil:
    const uint64_t COMUX_RING_MIN_CAPACITY
    const uint64_t COMUX_RING_MAX_CAPACITY
    const int COMUX_FLAG_KEYFRAME
    const int COMUX_FLAG_CORRUPT
    const int COMUX_FLAG_EOS

    ctypedef struct comux_ring_rec:
        int64_t index
        int64_t pts
        double timestamp
        int32_t slot
        int32_t flags

    # Opaque apart from the read-only fields; head and tail are reached only through the
    # functions below, which apply the memory ordering.
    ctypedef struct comux_ring:
        uint64_t capacity
        uint64_t mask

    uint64_t comux_ring_capacity_for(uint64_t requested)
    comux_ring *comux_ring_new(uint64_t requested)
    void comux_ring_free(comux_ring *r)
    void comux_ring_cpu_relax()

    # producer thread only
    comux_ring_rec *comux_ring_claim(comux_ring *r)
    void comux_ring_publish(comux_ring *r)
    bint comux_ring_push(comux_ring *r, const comux_ring_rec *rec)

    # consumer thread only
    const comux_ring_rec *comux_ring_front(comux_ring *r)
    void comux_ring_advance(comux_ring *r)
    bint comux_ring_pop(comux_ring *r, comux_ring_rec *out)
    int64_t comux_ring_pop_latest(comux_ring *r, comux_ring_rec *out, int32_t *dropped_slots)

    # any thread
    uint64_t comux_ring_size(const comux_ring *r)


cdef class SpscRing:
    cdef comux_ring *_ring

    # producer thread only
    cdef bint push_rec(self, const comux_ring_rec *rec) noexcept nogil
    cdef comux_ring_rec *claim(self) noexcept nogil
    cdef void publish(self) noexcept nogil
    # consumer thread only
    cdef bint pop_rec(self, comux_ring_rec *out) noexcept nogil
    cdef int64_t pop_latest_rec(self, comux_ring_rec *out, int32_t *dropped_slots) noexcept nogil
    cdef const comux_ring_rec *front(self) noexcept nogil
    cdef void advance(self) noexcept nogil
    # any thread
    cdef uint64_t size(self) noexcept nogil
