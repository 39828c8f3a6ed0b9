# cython: language_level=3
"""The lock-free single-producer single-consumer ring that carries decoded-frame records.

A camera's decoder thread pushes one record per decoded frame (Kafka offset, pts, timestamp,
the number of the frame buffer it wrote, flags); the batching side pops them.  The ring itself
is C (``ring.h``); this module owns its memory and gives Python a small API plus the
``nogil`` helpers the benchmark and the stress test use.  ``comux._ext.reference.PyRing`` is
the pure-Python oracle with the same Python API.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from operator import index as _as_index

from comux.errors import ConfigError

__all__ = [
    "FLAG_CORRUPT",
    "FLAG_EOS",
    "FLAG_KEYFRAME",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "SpscRing",
    "bench_push_pop",
    "stress_spsc",
]

Record = tuple[int, int, float, int, int]  # (index, pts, timestamp, slot, flags)

MIN_CAPACITY = COMUX_RING_MIN_CAPACITY
MAX_CAPACITY = COMUX_RING_MAX_CAPACITY
FLAG_KEYFRAME = COMUX_FLAG_KEYFRAME
FLAG_CORRUPT = COMUX_FLAG_CORRUPT
FLAG_EOS = COMUX_FLAG_EOS


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    ctypedef void *(*_thread_start)(void *) noexcept nogil
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr, _thread_start start,
                       void *arg)
    int pthread_join(pthread_t thread, void **retval)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from *:
    """
    /* A flag the producer thread raises once, after its last publish. */
    static inline void comux__flag_raise(int *flag) { __atomic_store_n(flag, 1, __ATOMIC_RELEASE); }
    static inline int comux__flag_up(int *flag) { return __atomic_load_n(flag, __ATOMIC_ACQUIRE); }
    """
    void comux__flag_raise(int *flag) nogil
    int comux__flag_up(int *flag) nogil


def _check_capacity(capacity):
    """Return capacity as an int, or raise the error a bad one deserves."""
    n = _as_index(capacity)  # TypeError for floats, strings, None
    if n < COMUX_RING_MIN_CAPACITY:
        raise ConfigError(f"ring capacity must be at least {MIN_CAPACITY}, got {n}")
    if n > COMUX_RING_MAX_CAPACITY:
        raise ConfigError(
            f"ring capacity must be at most {MAX_CAPACITY} records, got {n}: "
            "a ring holds the frames in flight, not a backlog"
        )
    return n


# Cython's own int conversion would truncate floats (1.5 -> 1); a Kafka offset or a slot number
# given as a float is a bug, so integers go through __index__ like in PyRing.
cdef inline int64_t _int64(object x) except? -1:
    return x if isinstance(x, int) else _as_index(x)


cdef inline int32_t _int32(object x) except? -1:
    return x if isinstance(x, int) else _as_index(x)


cdef class SpscRing:
    """A lock-free ring of frame records for one producer thread and one consumer thread.

    The capacity is rounded up to a power of two.  ``push`` must only ever be called from one
    thread at a time and ``pop``/``pop_latest`` from one (other) thread at a time; ``len`` is
    safe anywhere.  Nothing here takes a lock or the GIL, so the cdef methods run in ``nogil``
    code.

    :param capacity: the least number of records the ring must hold, 2 to ``MAX_CAPACITY``.

    Example::

        ring = SpscRing(8)
        ring.push(index=41, pts=3000, timestamp=1.7e9, slot=2, flags=FLAG_KEYFRAME)
        ring.pop()  # (41, 3000, 1700000000.0, 2, 1)
    """

    def __cinit__(self, capacity):
        self._ring = NULL
        cdef uint64_t requested = _check_capacity(capacity)
        self._ring = comux_ring_new(requested)
        if self._ring == NULL:
            raise MemoryError(f"cannot allocate a ring of {requested} records")

    def __dealloc__(self):
        # Safe only because both threads are gone once Python lets the object die.
        if self._ring != NULL:
            comux_ring_free(self._ring)
            self._ring = NULL

    @property
    def capacity(self):
        """How many records the ring holds when full (a power of two)."""
        return self._ring.capacity

    def __len__(self):
        return comux_ring_size(self._ring)

    def __repr__(self):
        return f"<SpscRing {comux_ring_size(self._ring)}/{self._ring.capacity}>"

    def push(self, index, pts, double timestamp, slot, flags=0):
        """Append one record; return False, storing nothing, when the ring is full.

        :param index: the Kafka offset the frame was decoded from.
        :param pts: the frame's presentation timestamp in stream time-base units.
        :param timestamp: the frame's capture/message time in seconds.
        :param slot: the number of the frame buffer the decoder wrote, -1 for none.
        :param flags: ``FLAG_*`` bits.
        """
        cdef comux_ring_rec rec
        rec.index = _int64(index)
        rec.pts = _int64(pts)
        rec.timestamp = timestamp
        rec.slot = _int32(slot)
        rec.flags = _int32(flags)
        return comux_ring_push(self._ring, &rec)

    def pop(self):
        """Remove and return the oldest record ``(index, pts, timestamp, slot, flags)``, or None."""
        cdef comux_ring_rec rec
        if not comux_ring_pop(self._ring, &rec):
            return None
        return (rec.index, rec.pts, rec.timestamp, rec.slot, rec.flags)

    def pop_latest(self, list dropped_slots=None):
        """Remove every record; return ``(newest record, number dropped)``, or None when empty.

        This is policy="latest": only the newest frame matters, and the older ones are dropped.
        Their frame buffers still need recycling, so when ``dropped_slots`` is a list their
        slots are appended to it, oldest first.
        """
        cdef comux_ring_rec rec
        cdef int64_t dropped
        cdef int32_t *slots = NULL
        if dropped_slots is not None:
            slots = <int32_t *>malloc(self._ring.capacity * sizeof(int32_t))
            if slots == NULL:
                raise MemoryError()
        try:
            dropped = comux_ring_pop_latest(self._ring, &rec, slots)
            if dropped < 0:
                return None
            if slots != NULL:
                dropped_slots.extend([slots[i] for i in range(dropped)])
        finally:
            free(slots)
        return (rec.index, rec.pts, rec.timestamp, rec.slot, rec.flags), dropped

    # ---- nogil API for other Cython modules ------------------------------------------------

    cdef bint push_rec(self, const comux_ring_rec *rec) noexcept nogil:
        """Copy *rec in; return False when full."""
        return comux_ring_push(self._ring, rec)

    cdef comux_ring_rec *claim(self) noexcept nogil:
        """Return the record to fill in place, or NULL when full; publish() hands it over."""
        return comux_ring_claim(self._ring)

    cdef void publish(self) noexcept nogil:
        """Hand the record from the last successful claim() to the consumer."""
        comux_ring_publish(self._ring)

    cdef bint pop_rec(self, comux_ring_rec *out) noexcept nogil:
        """Move the oldest record into *out; return False when empty."""
        return comux_ring_pop(self._ring, out)

    cdef int64_t pop_latest_rec(self, comux_ring_rec *out, int32_t *dropped_slots) noexcept nogil:
        """Keep only the newest record in *out; return the number dropped, -1 when empty."""
        return comux_ring_pop_latest(self._ring, out, dropped_slots)

    cdef const comux_ring_rec *front(self) noexcept nogil:
        """Return the oldest record in place, or NULL when empty; advance() removes it."""
        return comux_ring_front(self._ring)

    cdef void advance(self) noexcept nogil:
        """Remove the record from the last successful front()."""
        comux_ring_advance(self._ring)

    cdef uint64_t size(self) noexcept nogil:
        """Return the number of records held (a snapshot when the other side is busy)."""
        return comux_ring_size(self._ring)


# ---- two-thread harness: benchmark and stress test --------------------------------------------

cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline void _backoff(uint64_t *spins) noexcept nogil:
    # Spin briefly, then give the core away: with fewer cores than spinning threads, the
    # other side may not be running at all.
    spins[0] += 1
    if spins[0] & 63:
        comux_ring_cpu_relax()
    else:
        sched_yield()


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # splitmix64's finaliser: every field of a stamped record depends on all bits of index.
    x += 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline int32_t _slot_of(uint64_t i) noexcept nogil:
    return <int32_t>((_mix(i) >> 32) & 0x7FFFFFFF)


cdef inline void _stamp(comux_ring_rec *rec, uint64_t i) noexcept nogil:
    cdef uint64_t m = _mix(i)
    rec.index = <int64_t>i
    rec.pts = <int64_t>m
    rec.timestamp = <double>i * 0.5
    rec.slot = <int32_t>((m >> 32) & 0x7FFFFFFF)
    rec.flags = <int32_t>(m & 0x7FFFFFFF)


cdef inline bint _intact(const comux_ring_rec *rec) noexcept nogil:
    """Return whether every field agrees with index: False means a torn or garbage record."""
    cdef uint64_t i = <uint64_t>rec.index
    cdef uint64_t m = _mix(i)
    return (rec.pts == <int64_t>m
            and rec.timestamp == <double>i * 0.5
            and rec.slot == <int32_t>((m >> 32) & 0x7FFFFFFF)
            and rec.flags == <int32_t>(m & 0x7FFFFFFF))


cdef struct _Producer:
    comux_ring *ring
    uint64_t n
    bint stamp      # fill every field (stress) or only index (benchmark)
    uint64_t spins  # times it found the ring full
    int done


cdef void *_produce(void *arg) noexcept nogil:
    """Push records 0..n-1, filling them in place between claim and publish."""
    cdef _Producer *p = <_Producer *>arg
    cdef comux_ring_rec *dst
    cdef uint64_t i
    for i in range(p.n):
        while True:
            dst = comux_ring_claim(p.ring)
            if dst != NULL:
                break
            _backoff(&p.spins)
        if p.stamp:
            _stamp(dst, i)
        else:
            dst.index = <int64_t>i
        comux_ring_publish(p.ring)
    comux__flag_raise(&p.done)
    return NULL


cdef int _start(pthread_t *thread, _Producer *p) noexcept nogil:
    return pthread_create(thread, NULL, _produce, p)


def _check_count(n):
    n = _as_index(n)
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    return n


def bench_push_pop(n, *, threaded=True, capacity=1024):
    """Move n records through a ring in nogil code; return the seconds it took.

    With ``threaded`` a C producer thread pushes while the calling thread pops, so the number
    includes the cache-line traffic between cores; without it one thread pushes and pops
    alternately, which measures the bare instruction cost.  Rate = n / seconds.
    """
    cdef uint64_t count = _check_count(n)
    cdef SpscRing ring = SpscRing(capacity)
    cdef comux_ring *r = ring._ring
    cdef comux_ring_rec rec
    cdef _Producer prod
    cdef pthread_t thread
    cdef uint64_t i, spins = 0, got = 0, total = 0
    cdef double t0, t1
    cdef int rc = 0
    cdef bint two_threads = threaded
    prod.ring = r
    prod.n = count
    prod.stamp = False
    prod.spins = 0
    prod.done = 0
    rec.pts = rec.slot = rec.flags = 0
    rec.timestamp = 0.0
    with nogil:
        t0 = _now()
        if two_threads:
            rc = _start(&thread, &prod)
            if rc == 0:
                while got < count:
                    if comux_ring_pop(r, &rec):
                        total += <uint64_t>rec.index
                        got += 1
                    else:
                        _backoff(&spins)
                pthread_join(thread, NULL)
        else:
            for i in range(count):
                rec.index = <int64_t>i
                comux_ring_push(r, &rec)
                comux_ring_pop(r, &rec)
                total += <uint64_t>rec.index
        t1 = _now()
    if rc != 0:
        raise OSError(rc, f"cannot start the producer thread: {strerror(rc).decode()}")
    # The sum keeps the loop from being optimised away and catches a broken ring.
    if count and total != count * (count - 1) // 2:
        raise AssertionError("bench_push_pop: records were lost or reordered")
    return t1 - t0


def stress_spsc(n, *, capacity=64, latest=False):
    """Run a C producer thread against a nogil consumer over n stamped records.

    The producer fills record i field by field (index = i, every other field a checksum of
    i) between claim and publish.  The consumer checks each record in place before releasing
    it: intact (not torn), in order, none duplicated, none lost.  With ``latest`` the consumer
    uses pop_latest and checks the drop count and the dropped slots instead, pausing now and
    then so that drops happen.

    Return ``(ok, errors, dropped, full_waits)``: records verified; torn, out-of-order,
    duplicated or missing ones; records pop_latest dropped; and how often the producer spun on
    a full ring (so a test can tell that the drop and full paths ran).  A correct ring gives
    ``ok == n`` and ``errors == 0``.
    """
    cdef uint64_t count = _check_count(n)
    cdef SpscRing ring = SpscRing(capacity)
    cdef comux_ring *r = ring._ring
    cdef const comux_ring_rec *p
    cdef comux_ring_rec rec
    cdef _Producer prod
    cdef pthread_t thread
    cdef uint64_t spins = 0, ok = 0, errors = 0, received = 0, expected = 0, rounds = 0, j, k
    cdef uint64_t dropped_total = 0
    cdef int64_t last = -1, dropped
    cdef bint good
    cdef bint use_latest = latest
    cdef int rc
    cdef int32_t *slots = <int32_t *>malloc(r.capacity * sizeof(int32_t))
    if slots == NULL:
        raise MemoryError()
    prod.ring = r
    prod.n = count
    prod.stamp = True
    prod.spins = 0
    prod.done = 0
    try:
        with nogil:
            rc = _start(&thread, &prod)
            while rc == 0:
                if use_latest:
                    dropped = comux_ring_pop_latest(r, &rec, slots)
                    if dropped < 0:
                        if comux__flag_up(&prod.done):
                            dropped = comux_ring_pop_latest(r, &rec, slots)
                            if dropped < 0:
                                break
                        else:
                            _backoff(&spins)
                            continue
                    received += <uint64_t>dropped + 1
                    dropped_total += <uint64_t>dropped
                    good = _intact(&rec) and rec.index == last + 1 + dropped
                    if good:
                        for j in range(<uint64_t>dropped):
                            if slots[j] != _slot_of(<uint64_t>(last + 1) + j):
                                good = False
                    if good:
                        ok += <uint64_t>dropped + 1
                        last = rec.index
                    else:
                        errors += 1
                        if _intact(&rec) and rec.index > last:
                            last = rec.index
                    rounds += 1
                    if rounds % 16 == 0:
                        # Let the producer get ahead so that there is something to drop.
                        for k in range(rounds % 512):
                            comux_ring_cpu_relax()
                else:
                    p = comux_ring_front(r)
                    if p == NULL:
                        if comux__flag_up(&prod.done):
                            p = comux_ring_front(r)
                            if p == NULL:
                                break
                        else:
                            _backoff(&spins)
                            continue
                    received += 1
                    if not _intact(p):
                        errors += 1  # torn
                    elif <uint64_t>p.index != expected:
                        errors += 1  # duplicated, reordered or skipped
                        expected = <uint64_t>p.index + 1
                    else:
                        ok += 1
                        expected += 1
                    comux_ring_advance(r)
            if rc == 0:
                pthread_join(thread, NULL)
    finally:
        free(slots)
    if rc != 0:
        raise OSError(rc, f"cannot start the producer thread: {strerror(rc).decode()}")
    if received < count:
        errors += count - received  # lost
    elif received > count:
        errors += received - count  # duplicated
    return ok, errors, dropped_total, prod.spins
