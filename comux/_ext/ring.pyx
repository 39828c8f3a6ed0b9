# cython: language_level=3
"""The cameras' rings in the batch buffers, and the lock-free hand-off between writer and sealer.

The protocol is C (``ring.h``): atomics, no lock, no GIL needed. This module holds its state in
three small classes that ``comux.batching`` builds on: :class:`Rows` (one camera's side),
:class:`Buffer` (one batch buffer's rows and their metadata) and :class:`Ring` (the open
buffers). A decoder thread enters it once per frame (:meth:`Ring.publish`); the sealer once
per batch. ``comux/ring.py`` is the pure-Python reference with the same interface.
"""

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free

import numpy as np

cnp.import_array()

__all__ = ["FULL", "GONE", "REPLACED", "WRITTEN", "WRITTEN_WAKE", "Buffer", "Ring", "Rows"]

WRITTEN = COMUX_WRITTEN
WRITTEN_WAKE = COMUX_WRITTEN_WAKE
REPLACED = COMUX_REPLACED
FULL = COMUX_FULL
GONE = COMUX_GONE


cdef class Rows:
    """One camera's side of the ring: its row, its claim and where its next frame goes."""

    def __cinit__(self):
        self.c.slot = -1
        self.c.writing = -1
        self.c.replaced_index = -1

    @property
    def slot(self):
        return COMUX_LOAD(&self.c.slot)

    @slot.setter
    def slot(self, int64_t value):
        COMUX_STORE(&self.c.slot, value)

    @property
    def next_seq(self):
        return COMUX_LOAD(&self.c.next_seq)

    @next_seq.setter
    def next_seq(self, int64_t value):
        COMUX_STORE(&self.c.next_seq, value)

    @property
    def frozen(self):
        return COMUX_LOAD(&self.c.frozen) != 0

    @frozen.setter
    def frozen(self, bint value):
        comux_freeze(&self.c.frozen, value)

    @property
    def fifo(self):
        return self.c.fifo != 0

    @fifo.setter
    def fifo(self, bint value):
        COMUX_STORE(&self.c.fifo, value)

    @property
    def writing(self):
        """Id of the buffer its writer has claimed; -2 while claiming; -1 when idle."""
        return COMUX_LOAD(&self.c.writing)

    @property
    def replaced_index(self):
        """The index the last ``REPLACED`` publish wrote over (the writer's thread reads it)."""
        return self.c.replaced_index


cdef void *_data(cnp.ndarray array):
    return cnp.PyArray_DATA(array)


cdef class Buffer:
    """One preallocated batch buffer and its rows' metadata, each row written by its camera."""

    def __init__(self, int64_t ident, object owner, cnp.ndarray frames):
        capacity = frames.shape[0]
        self.owner = owner  # what the allocator returned, kept alive with the view
        self.frames = frames
        self.indices = np.full(capacity, -1, np.int64)
        self.pts = np.full(capacity, -1, np.int64)
        self.timestamps = np.zeros(capacity, np.float64)
        self.valid = np.zeros(capacity, bool)
        self.written = np.zeros(capacity, bool)  # a frame (or a failure) landed in the row
        self.corrupt = np.zeros(capacity, bool)
        self.held = False
        self.c.id = ident
        self.c.seq = -1
        self.c.owner = <void *>self
        self.c.written = <uint8_t *>_data(self.written)
        self.c.corrupt = <uint8_t *>_data(self.corrupt)
        self.c.indices = <int64_t *>_data(self.indices)
        self.c.pts = <int64_t *>_data(self.pts)
        self.c.timestamps = <double *>_data(self.timestamps)

    @property
    def id(self):
        return self.c.id

    @property
    def seq(self):
        """The batch it becomes while open; -1 once sealed."""
        return COMUX_LOAD(&self.c.seq)

    @seq.setter
    def seq(self, int64_t value):
        COMUX_STORE(&self.c.seq, value)

    @property
    def filled(self):
        """Rows written since it opened (a row moved in or out while frozen counts too)."""
        return COMUX_LOAD_SC(&self.c.filled)

    @filled.setter
    def filled(self, int64_t value):
        COMUX_STORE_SC(&self.c.filled, value)

    def unfill(self):
        """One written row fewer: its frame was taken or its camera removed."""
        comux_unfill(&self.c)


cdef class Ring:
    """The open buffers, numbered by the batch each becomes, and the hand-off over them."""

    def __cinit__(self, int count):
        if count < 1:
            raise ValueError(f"a ring needs at least one buffer, got {count}")
        self.c.table = <comux_buf **>calloc(count, sizeof(comux_buf *))
        if self.c.table == NULL:
            raise MemoryError()
        self.c.count = count
        self._table = [None] * count
        self._retired = []

    def __init__(self, int count):
        pass  # __cinit__ made it; declared for introspection (stubtest)

    def __dealloc__(self):
        free(self.c.table)

    @property
    def filling_seq(self):
        return COMUX_LOAD(&self.c.filling_seq)

    @property
    def next_seq(self):
        return COMUX_LOAD(&self.c.next_seq)

    @property
    def frozen(self):
        return COMUX_LOAD(&self.c.frozen) != 0

    @frozen.setter
    def frozen(self, bint value):
        comux_freeze(&self.c.frozen, value)

    @property
    def model_waiting(self):
        return COMUX_LOAD(&self.c.model_waiting) != 0

    @model_waiting.setter
    def model_waiting(self, bint value):
        COMUX_STORE(&self.c.model_waiting, value)

    @property
    def wake_at(self):
        """The filling buffer's written rows at which a writer wakes the sealer (and its first)."""
        return COMUX_LOAD_SC(&self.c.wake_at)

    @wake_at.setter
    def wake_at(self, int64_t value):
        COMUX_STORE_SC(&self.c.wake_at, value)

    cdef void _keep(self, int64_t seq, Buffer buf):
        position = seq % self.c.count
        old = self._table[position]
        if old is not None and old is not buf:
            self._retired.append(old)  # a writer may still read it: see collect()
        self._table[position] = buf

    def open(self, Buffer buf):
        """Number ``buf`` as the next batch and let writers in; returns its number."""
        self._keep(COMUX_LOAD_OWN(&self.c.next_seq), buf)
        return comux_open(&self.c, &buf.c)

    def replace(self, Buffer old, Buffer fresh):
        """Put ``fresh`` in the place of open ``old``; only while frozen with every row idle."""
        self._keep(old.seq, fresh)
        comux_replace(&self.c, &old.c, &fresh.c)

    def seal(self):
        """Close the filling buffer to writers and return it; :meth:`wait_writers` next."""
        cdef comux_buf *b = comux_seal(&self.c)
        if b == NULL:
            return None
        return <Buffer>b.owner

    def wait_writers(self, rows_list, Buffer buf):
        """Wait until no camera of ``rows_list`` is still writing ``buf``."""
        cdef Rows rows
        cdef int64_t delay
        for rows in rows_list:
            delay = 0
            while comux_writing_in(&rows.c, &buf.c):
                with nogil:
                    delay = comux_backoff(delay)

    def wait_idle(self, Rows rows):
        """Wait until ``rows`` has no claim (freeze it, or the ring, first)."""
        cdef int64_t delay = 0
        while not comux_idle(&rows.c):
            with nogil:
                delay = comux_backoff(delay)

    def collect(self, rows_list):
        """Let go of buffers taken out of the table once every writer was seen idle since."""
        cdef Rows rows
        if not self._retired:
            return
        for rows in rows_list:
            if not comux_idle(&rows.c):
                return
        self._retired.clear()

    def publish(self, Rows rows, object frame, int64_t index, int64_t pts, bint burst, write):
        """Write one frame into the row its camera's policy picks: claim, write, publish.

        ``write(frame, out)`` fills the row's pixels (not called for ``frame=None``, a failed
        packet). Returns ``WRITTEN``, ``WRITTEN_WAKE``, ``REPLACED``, ``FULL`` or ``GONE``.
        """
        cdef comux_claim_t claim
        cdef int status
        cdef int64_t delay = 0
        while True:
            status = comux_claim(&self.c, &rows.c, burst, &claim)
            if status != COMUX_FROZEN:
                break
            with nogil:
                delay = comux_backoff(delay)
        if status != COMUX_WRITTEN:
            return status
        if frame is not None:
            try:
                write(frame, (<Buffer>claim.buf.owner).frames[claim.slot])
            except BaseException:
                comux_abandon(&rows.c)
                raise
        return comux_publish(
            &self.c, &rows.c, &claim, index, pts, comux_wall_time(), frame is None
        )
