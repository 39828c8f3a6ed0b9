# cython: language_level=3
"""C declarations of the ring's hand-off (ring.h) and the classes that hold it."""

from libc.stdint cimport int64_t, uint8_t


cdef extern from "ring.h" nogil:
    ctypedef struct comux_buf:
        int64_t seq
        int64_t id
        void *owner
        int64_t filled
        uint8_t *written
        uint8_t *corrupt
        int64_t *indices
        int64_t *pts
        double *timestamps

    ctypedef struct comux_rows:
        int64_t slot
        int64_t writing
        int64_t frozen
        int64_t next_seq
        int64_t fifo
        int64_t replaced_index

    ctypedef struct comux_ring:
        int64_t filling_seq
        int64_t next_seq
        int64_t frozen
        int64_t model_waiting
        int64_t wake_at
        int64_t count
        comux_buf **table

    ctypedef struct comux_claim_t:
        comux_buf *buf
        int64_t slot
        int64_t seq

    enum:
        COMUX_WRITTEN
        COMUX_WRITTEN_WAKE
        COMUX_REPLACED
        COMUX_FULL
        COMUX_GONE
        COMUX_FROZEN

    int64_t COMUX_LOAD(int64_t *p)
    int64_t COMUX_LOAD_SC(int64_t *p)
    void COMUX_STORE_SC(int64_t *p, int64_t v)
    void COMUX_STORE(int64_t *p, int64_t v)
    int64_t COMUX_LOAD_OWN(int64_t *p)
    void COMUX_STORE_OWN(int64_t *p, int64_t v)

    comux_buf *comux_find(comux_ring *r, int64_t seq)
    int comux_claim(comux_ring *r, comux_rows *w, int burst, comux_claim_t *out)
    int comux_publish(comux_ring *r, comux_rows *w, const comux_claim_t *c, int64_t index,
                      int64_t pts, double timestamp, int corrupt)
    void comux_abandon(comux_rows *w)
    void comux_unfill(comux_buf *b)
    int64_t comux_open(comux_ring *r, comux_buf *b)
    void comux_replace(comux_ring *r, comux_buf *old, comux_buf *fresh)
    comux_buf *comux_seal(comux_ring *r)
    int comux_writing_in(comux_rows *w, const comux_buf *b)
    void comux_freeze(int64_t *frozen, int on)
    int comux_idle(comux_rows *w)
    int64_t comux_backoff(int64_t delay_ns)
    double comux_wall_time()


cdef class Rows:
    cdef comux_rows c


cdef class Buffer:
    cdef comux_buf c
    cdef readonly object owner
    cdef readonly object frames
    cdef readonly object indices
    cdef readonly object pts
    cdef readonly object timestamps
    cdef readonly object valid
    cdef readonly object written
    cdef readonly object corrupt
    cdef public bint held


cdef class Ring:
    cdef comux_ring c
    cdef list _table
    cdef list _retired

    cdef void _keep(self, int64_t seq, Buffer buf)
