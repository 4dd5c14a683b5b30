# cython: freethreading_compatible=True
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython twin of ``ftsip.location.shm.PyShmTable``: the process mode's fixed-size shared-memory location table.

Same API, same byte layout, same write order and repair procedure as the pure twin; ``ftsip/location/shm.py``'s
docstring describes them (read it first).  What differs is the lock: every bucket record and every stripe record
starts with a ``pthread_mutex_t`` (40 bytes on x86-64 glibc, checked at compile time) initialised by ``create`` as
``PTHREAD_PROCESS_SHARED`` + ``PTHREAD_MUTEX_ROBUST`` + ``PTHREAD_MUTEX_ERRORCHECK`` (a thread re-locking a mutex it
holds, i.e. ``compute``'s ``fn`` using the table, gets ``EDEADLK``, raised as ``ShmError``, instead of hanging).

Why robust mutexes (and not an owner-pid spinlock word)
    * The kernel keeps, for every thread, the list of robust mutexes it holds; when the thread dies (SIGKILL
      included) it marks each one ``OWNER_DIED`` and wakes one waiter, whose ``pthread_mutex_lock`` returns
      ``EOWNERDEAD``.  That waiter calls ``pthread_mutex_consistent`` and owns the lock.  Recovery is immediate and
      exact: no polling of ``/proc`` or ``kill(pid, 0)``, no pid-reuse race (a pid spinlock can mistake a recycled
      pid for the dead owner and wait forever, or steal a live lock), and waiters sleep on a futex instead of
      spinning, which matters when a holder runs ``compute``'s Python ``fn`` or is descheduled on 2 cores.
    * An uncontended lock/unlock is two atomic instructions in user space (glibc's robust path also updates the
      thread's robust list: a few stores), about as cheap as a spinlock.
    * ``EOWNERDEAD`` only says the lock is usable again.  Whether the dead holder left an update half done is told
      by the record's ``dirty`` byte, exactly as in the fcntl twin, so both twins share one repair procedure; a
      holder that died while only reading leaves nothing to repair.
    A waiter blocks in ``pthread_mutex_lock`` *detached* from the interpreter (``with nogil``; a ``trylock`` first,
    so the uncontended path never detaches), so a holder that runs Python code (``fn``) and needs a stop-the-world
    pause never waits for it.

Every store that takes part in the crash-consistency argument is a release store (``__atomic_store_n``), so the
compiler cannot reorder it with the stores before it: the order in memory when a process is killed is the program
order.  Everything else is read and written under the record's mutex.  No Python object is created or called while a
stripe mutex is held; ``fn`` is called under the bucket mutex only.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memcmp

import os
import sys

cdef extern from *:
    """
    #include <pthread.h>
    #include <errno.h>
    #include <signal.h>
    #include <unistd.h>
    #include <stdint.h>
    #include <string.h>

    _Static_assert(sizeof(pthread_mutex_t) <= 40, "pthread_mutex_t does not fit the 40-byte lock area");

    #define SH_NIL 0xFFFFFFFFu

    static uint32_t sh_crc_table[8][256];
    static void sh_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            sh_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int t = 1; t < 8; t++)
                sh_crc_table[t][i] = (sh_crc_table[t - 1][i] >> 8) ^ sh_crc_table[0][sh_crc_table[t - 1][i] & 0xFF];
    }
    /* zlib's crc32(data) (reflected 0xEDB88320, init and final xor 0xFFFFFFFF), slicing by 8 */
    static inline uint32_t sh_crc32(const unsigned char *p, size_t n) {
        uint32_t c = 0xFFFFFFFFu;
        while (n >= 8) {
            uint32_t lo, hi;
            memcpy(&lo, p, 4); memcpy(&hi, p + 4, 4);
            lo ^= c;
            c = sh_crc_table[7][lo & 0xFF] ^ sh_crc_table[6][(lo >> 8) & 0xFF] ^
                sh_crc_table[5][(lo >> 16) & 0xFF] ^ sh_crc_table[4][lo >> 24] ^
                sh_crc_table[3][hi & 0xFF] ^ sh_crc_table[2][(hi >> 8) & 0xFF] ^
                sh_crc_table[1][(hi >> 16) & 0xFF] ^ sh_crc_table[0][hi >> 24];
            p += 8; n -= 8;
        }
        while (n--) c = sh_crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }

    static inline uint32_t sh_ld32(const char *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED); }
    static inline void sh_st32(char *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
    static inline uint16_t sh_ld16(const char *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED); }
    static inline void sh_st16(char *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }
    static inline uint8_t sh_ld8(const char *p) { return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED); }
    static inline void sh_st8(char *p, uint8_t v) { __atomic_store_n((uint8_t *)p, v, __ATOMIC_RELEASE); }
    static inline uint64_t sh_ld64(const char *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED); }
    static inline void sh_st64(char *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

    static int sh_crash_point = 0;
    static void sh_set_crash_point(int n) { sh_crash_point = n; }
    static inline void sh_crash(int n) { if (sh_crash_point == n) kill(getpid(), SIGKILL); }

    static int sh_mutex_init(char *rec) {
        pthread_mutexattr_t a;
        int r = pthread_mutexattr_init(&a);
        if (r) return r;
        r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        if (!r) r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        if (!r) r = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);   /* re-entry: EDEADLK, not a hang */
        if (!r) { memset(rec, 0, 40); r = pthread_mutex_init((pthread_mutex_t *)rec, &a); }
        pthread_mutexattr_destroy(&a);
        return r;
    }
    static inline int sh_trylock(char *rec) { return pthread_mutex_trylock((pthread_mutex_t *)rec); }
    static inline int sh_lock(char *rec) { return pthread_mutex_lock((pthread_mutex_t *)rec); }
    static inline int sh_consistent(char *rec) { return pthread_mutex_consistent((pthread_mutex_t *)rec); }
    static inline void sh_unlock(char *rec) { pthread_mutex_unlock((pthread_mutex_t *)rec); }
    #define SH_EBUSY EBUSY
    #define SH_EOWNERDEAD EOWNERDEAD
    #define SH_EDEADLK EDEADLK
    """
    uint32_t SH_NIL
    int SH_EBUSY
    int SH_EOWNERDEAD
    int SH_EDEADLK
    void sh_crc_init() noexcept nogil
    uint32_t sh_crc32(const unsigned char*, size_t) noexcept nogil
    uint32_t sh_ld32(const char*) noexcept nogil
    void sh_st32(char*, uint32_t) noexcept nogil
    uint16_t sh_ld16(const char*) noexcept nogil
    void sh_st16(char*, uint16_t) noexcept nogil
    uint8_t sh_ld8(const char*) noexcept nogil
    void sh_st8(char*, uint8_t) noexcept nogil
    uint64_t sh_ld64(const char*) noexcept nogil
    void sh_st64(char*, uint64_t) noexcept nogil
    int sh_crash_point
    void sh_set_crash_point(int) noexcept nogil
    void sh_crash(int) noexcept nogil
    int sh_mutex_init(char*) noexcept nogil
    int sh_trylock(char*) noexcept nogil
    int sh_lock(char*) noexcept nogil
    int sh_consistent(char*) noexcept nogil
    void sh_unlock(char*) noexcept nogil

cdef extern from "Python.h":
    unsigned int PyUnicode_KIND(object o)
    int PyUnicode_1BYTE_KIND
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_AsEncodedString(object o, const char* encoding, const char* errors)

sh_crc_init()

cdef enum:
    HEADER_SIZE = 256
    BUCKET_SIZE = 64
    STRIPE_SIZE = 128
    SLOT_HEADER = 20
    B_HEAD = 40
    B_COUNT = 44
    B_PNEW = 48
    B_POLD = 52
    B_PSTRIPE = 56
    B_DIRTY = 58
    B_RECOV = 60
    S_HEAD = 40
    S_COUNT = 44
    S_DIRTY = 48
    S_RECOV = 52
    S_FULL = 56
    S_BIG = 64
    S_STEALS = 72
    O_NEXT = 0
    O_OWNER = 4
    O_HASH = 8
    O_VLEN = 12
    O_KLEN = 16
    O_STATE = 18
    O_KFLAGS = 19
    FREE = 0x46
    USED = 0x55
    KEY_UTF8 = 1
    LOCK_PTHREAD = 2
    H_LOCK_KIND = 44
    # crash points (same numbers as ftsip.location.shm)
    CP_DIRTY = 1
    CP_PEND = 2
    CP_OWNER = 3
    CP_STATE = 4
    CP_POP_HEAD = 5
    CP_POP_COUNT = 6
    CP_WRITTEN = 7
    CP_PEND_OLD = 8
    CP_COMMIT = 9
    CP_COUNT = 10
    CP_PUSH_NEXT = 11
    CP_PUSH_HEAD = 12
    CP_PUSH_STATE = 13
    CP_PUSH_COUNT = 14
    CP_FREED = 15
    CP_CLEARED = 16

BACKEND = "cython"
MAGIC = b"FTSIPSHM"

cdef object _S = None


cdef object _shm():
    """ftsip.location.shm (imported when first needed: it imports this module to pick the twin)."""
    global _S
    if _S is None:
        import ftsip.location.shm as m
        _S = m
    return _S


def _set_crash_point(int n):
    """Tests only: SIGKILL this process right after write step ``n`` (0 disables)."""
    sh_set_crash_point(n)


def crc32(data):
    """The key hash (equal to ``zlib.crc32``)."""
    cdef const unsigned char[:] v = data
    if v.shape[0] == 0:
        return 0
    return sh_crc32(&v[0], <size_t>v.shape[0])


cdef struct KeyRef:
    const char* p
    Py_ssize_t n
    uint8_t flags
    uint32_t h


cdef inline object _keyref(object key, KeyRef* k):
    """Fill k from a str key; returns the object that owns k.p (keep it alive)."""
    cdef object holder
    if not PyUnicode_CheckExact(key):
        raise TypeError(f"location table keys must be str, not {type(key).__name__}")
    if PyUnicode_KIND(key) == PyUnicode_1BYTE_KIND:
        holder = key
        k.p = <const char*>PyUnicode_DATA(key)
        k.n = PyUnicode_GET_LENGTH(key)
        k.flags = 0
    else:
        holder = PyUnicode_AsEncodedString(key, "utf-8", "surrogatepass")
        k.p = PyBytes_AS_STRING(holder)
        k.n = PyBytes_GET_SIZE(holder)
        k.flags = KEY_UTF8
    k.h = sh_crc32(<const unsigned char*>k.p, <size_t>k.n)
    return holder


cdef inline object _value(object v):
    if type(v) is bytes:
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"shared-memory table values must be bytes, not {type(v).__name__}")


cdef inline bint _crashing() noexcept nogil:
    return sh_crash_point != 0


cdef class ShmTable:
    """A fixed-size chained hash table in a shared-memory segment: str -> bytes, shared between processes.

    ``ShmTable.create(name, width, slots, slot_size)`` / ``ShmTable.attach(name, adopt=False)``; see
    ``ftsip.location.shm`` for the layout, the write order and the repair of what a killed process left.
    """

    cdef char* base
    cdef char* buckets
    cdef char* stripes
    cdef char* slotp
    cdef uint32_t nbuckets
    cdef uint32_t mask
    cdef uint32_t nstripes
    cdef uint32_t smask
    cdef uint32_t nslots
    cdef uint32_t ss
    cdef uint32_t payload
    cdef uint32_t reserve
    cdef Py_buffer view
    cdef bint has_view
    cdef object mm
    cdef object geo
    cdef readonly object name
    cdef readonly bint closed
    cdef object __weakref__

    BACKEND = "cython"
    LOCK_KIND = LOCK_PTHREAD

    def __init__(self, *args, **kwargs):
        raise TypeError("use ShmTable.create(name, width, slots, slot_size) or ShmTable.attach(name)")

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False

    # -- life cycle ----------------------------------------------------------------------------------------------
    cdef int _map(self, object name, object mm, object geo) except -1:
        PyObject_GetBuffer(mm, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        self.mm = mm
        self.geo = geo
        self.name = name
        self.base = <char*>self.view.buf
        self.buckets = self.base + <uint64_t>geo["buckets_off"]
        self.stripes = self.base + <uint64_t>geo["stripes_off"]
        self.slotp = self.base + <uint64_t>geo["slots_off"]
        self.nbuckets = geo["width"]
        self.mask = self.nbuckets - 1
        self.nstripes = geo["stripes"]
        self.smask = self.nstripes - 1
        self.nslots = geo["slots"]
        self.ss = geo["slot_size"]
        self.payload = self.ss - SLOT_HEADER
        self.reserve = geo["reserve"]
        self.closed = False
        return 0

    cdef int _init_locks(self) except -1:
        cdef uint64_t i
        cdef int r
        for i in range(self.nbuckets):
            r = sh_mutex_init(self.buckets + i * BUCKET_SIZE)
            if r:
                raise _shm().ShmError(f"pthread_mutex_init: {os.strerror(r)}")
        for i in range(self.nstripes):
            r = sh_mutex_init(self.stripes + i * STRIPE_SIZE)
            if r:
                raise _shm().ShmError(f"pthread_mutex_init: {os.strerror(r)}")
        return 0

    cdef int _init_data(self) except -1:
        cdef uint64_t i, t, lo, hi
        cdef char* o
        cdef char* p
        with nogil:
            for i in range(self.nbuckets):
                o = self.buckets + i * BUCKET_SIZE
                sh_st32(o + B_HEAD, SH_NIL)
                sh_st32(o + B_PNEW, SH_NIL)
                sh_st32(o + B_POLD, SH_NIL)
            for t in range(self.nstripes):
                lo = t * self.nslots // self.nstripes
                hi = (t + 1) * self.nslots // self.nstripes
                o = self.stripes + t * STRIPE_SIZE
                sh_st32(o + S_HEAD, <uint32_t>lo if hi > lo else SH_NIL)
                sh_st32(o + S_COUNT, <uint32_t>(hi - lo))
                for i in range(lo, hi):
                    p = self.slotp + i * self.ss
                    sh_st32(p + O_NEXT, <uint32_t>(i + 1) if i + 1 < hi else SH_NIL)
                    sh_st32(p + O_OWNER, SH_NIL)
                    sh_st8(p + O_STATE, FREE)
        return 0

    @staticmethod
    def create(name, width, slots, slot_size):
        """Create the segment /dev/shm/<name> (it must not exist) and return it attached."""
        S = _shm()
        if sys.byteorder != "little":
            raise S.ShmError("the compiled shared-memory table is little-endian only")
        geo = S.check_geometry(width, slots, slot_size)
        fd, mm, size = S._map_file(name, geo)
        cdef ShmTable self = ShmTable.__new__(ShmTable)
        try:
            os.close(fd)
            geo = dict(geo, lock_kind=LOCK_PTHREAD, created_at=0.0, creator_pid=os.getpid())
            self._map(name, mm, geo)
            self._init_locks()
            self._init_data()
            hdr = S.pack_header(geo, LOCK_PTHREAD)
            mm[0:len(hdr)] = hdr
            mm[0:8] = MAGIC                 # last: attach refuses the segment until it is complete
            self.geo = S.read_header(mm, name, size)
        except BaseException:
            self._release()
            S.unlink_segment(name)
            raise
        return self

    @staticmethod
    def attach(name, adopt=False):
        """Open an existing segment. ``adopt=True`` takes over a segment last used by the other twin (only when no
        other process uses it)."""
        S = _shm()
        if sys.byteorder != "little":
            raise S.ShmError("the compiled shared-memory table is little-endian only")
        fd, mm, size = S._map_file(name)
        os.close(fd)
        try:
            geo = S.read_header(mm if mm is not None else b"", name, size)
        except BaseException:
            if mm is not None:
                mm.close()
            raise
        cdef ShmTable self = ShmTable.__new__(ShmTable)
        try:
            self._map(name, mm, geo)
            if geo["lock_kind"] != LOCK_PTHREAD:
                if not adopt:
                    raise S.ShmError(
                        f"shared-memory segment {name!r} is locked with "
                        f"{S.LOCK_NAMES.get(geo['lock_kind'], '?')} locks (the other ftsip twin) but this process "
                        f"uses pthread-robust locks: every process on a segment must run the same build (check "
                        f"FTSIP_PURE and that ftsip/_fast is built everywhere)")
                self._init_locks()
                sh_st32(self.base + H_LOCK_KIND, LOCK_PTHREAD)
                geo["lock_kind"] = LOCK_PTHREAD
        except BaseException:
            self._release()
            raise
        return self

    @staticmethod
    def unlink(name):
        """Remove the segment's name (mapped copies stay valid until closed). True if it existed."""
        return _shm().unlink_segment(name)

    cdef _release(self):
        self.closed = True
        self.base = NULL
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def close(self):
        """Unmap the segment (no other thread may be using this object)."""
        if not self.closed:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def width(self):
        return self.nbuckets

    @property
    def slots(self):
        return self.nslots

    @property
    def slot_size(self):
        return self.ss

    cdef inline int _check(self) except -1:
        if self.base == NULL:
            raise _shm().ShmError(f"shared-memory table {self.name!r} is closed")
        return 0

    # -- locks -----------------------------------------------------------------------------------------------------
    cdef int _lock(self, char* rec) except -1:
        cdef int r = sh_trylock(rec)
        if r == SH_EBUSY:
            with nogil:
                r = sh_lock(rec)
        if r == SH_EOWNERDEAD:
            r = sh_consistent(rec)      # the holder died: the lock is ours; ``dirty`` says if repair is needed
        if r == SH_EDEADLK:
            raise _shm().ShmError(_shm()._REENTRY)
        if r != 0:
            raise _shm().ShmError(f"pthread_mutex_lock on shared-memory segment {self.name!r}: {os.strerror(r)}")
        return 0

    cdef char* _lock_bucket(self, uint32_t b) except NULL:
        cdef char* o = self.buckets + <uint64_t>b * BUCKET_SIZE
        self._lock(o)
        if sh_ld8(o + B_DIRTY):
            try:
                self._repair_bucket(b, o)
            except BaseException:
                sh_unlock(o)
                raise
        return o

    cdef char* _lock_stripe(self, uint32_t t) except NULL:
        cdef char* o = self.stripes + <uint64_t>t * STRIPE_SIZE
        self._lock(o)
        if sh_ld32(o + S_DIRTY):
            self._repair_stripe(o)
        return o

    # -- repair after a holder died mid-update ---------------------------------------------------------------------
    cdef void _repair_stripe(self, char* o) noexcept nogil:
        cdef uint32_t h = sh_ld32(o + S_HEAD)
        cdef uint64_t n = 0
        cdef char* link
        cdef char* p
        while h != SH_NIL and h < self.nslots and n <= self.nslots:
            p = self.slotp + <uint64_t>h * self.ss
            if sh_ld8(p + O_STATE) == FREE:
                break
            h = sh_ld32(p + O_NEXT)
            n += 1
        if h >= self.nslots:
            h = SH_NIL
        sh_st32(o + S_HEAD, h)
        n = 0
        link = o + S_HEAD
        while h != SH_NIL:
            p = self.slotp + <uint64_t>h * self.ss
            if h >= self.nslots or sh_ld8(p + O_STATE) != FREE or n >= self.nslots:
                sh_st32(link, SH_NIL)
                break
            n += 1
            link = p
            h = sh_ld32(p + O_NEXT)
        sh_st32(o + S_COUNT, <uint32_t>n)
        sh_st32(o + S_RECOV, sh_ld32(o + S_RECOV) + 1)
        sh_st32(o + S_DIRTY, 0)

    cdef bint _in_chain(self, char* o, uint32_t x) noexcept nogil:
        cdef uint32_t y = sh_ld32(o + B_HEAD)
        cdef uint64_t n = 0
        while y != SH_NIL and y < self.nslots and n <= self.nslots:
            if y == x:
                return True
            y = sh_ld32(self.slotp + <uint64_t>y * self.ss + O_NEXT)
            n += 1
        return False

    cdef int _repair_bucket(self, uint32_t b, char* o) except -1:
        cdef char* link = o + B_HEAD
        cdef uint32_t x = sh_ld32(link)
        cdef uint64_t n = 0
        cdef char* p
        cdef uint32_t pnew, pold, pstripe, cand, t
        cdef int i
        while x != SH_NIL:
            p = self.slotp + <uint64_t>x * self.ss
            if (x >= self.nslots or n >= self.nslots or sh_ld8(p + O_STATE) != USED
                    or sh_ld32(p + O_OWNER) != b):
                sh_st32(link, SH_NIL)       # never happens with the write order used; defensive
                break
            n += 1
            link = p
            x = sh_ld32(p + O_NEXT)
        pnew = sh_ld32(o + B_PNEW)
        pold = sh_ld32(o + B_POLD)
        pstripe = sh_ld16(o + B_PSTRIPE)
        for i in range(2):
            if i == 0:
                cand = pnew
                t = pstripe
            else:
                cand = SH_NIL if pold == pnew else pold
                t = b & self.smask
            if cand == SH_NIL or cand >= self.nslots or t >= self.nstripes or self._in_chain(o, cand):
                continue
            p = self.slotp + <uint64_t>cand * self.ss
            if sh_ld8(p + O_STATE) == USED and sh_ld32(p + O_OWNER) == b:
                self._push(cand, p, t)
        sh_st32(o + B_COUNT, <uint32_t>n)
        sh_st32(o + B_PNEW, SH_NIL)
        sh_st32(o + B_POLD, SH_NIL)
        sh_st32(o + B_RECOV, sh_ld32(o + B_RECOV) + 1)
        sh_st8(o + B_DIRTY, 0)
        return 0

    # -- free lists ------------------------------------------------------------------------------------------------
    cdef uint64_t _free_total(self) noexcept nogil:
        cdef uint64_t n = 0
        cdef uint32_t t
        for t in range(self.nstripes):
            n += sh_ld32(self.stripes + <uint64_t>t * STRIPE_SIZE + S_COUNT)
        return n

    cdef int64_t _alloc(self, uint32_t b, char* o, bint new_key) except -1:
        """Take a free slot for bucket b (its lock held): sets pend_stripe/pend_new. Raises SegmentFull."""
        cdef uint32_t s = b & self.smask
        cdef uint32_t i, t, head, cnt
        cdef char* to
        cdef char* p
        cdef bint full = False
        for i in range(self.nstripes):
            t = (s + i) & self.smask
            to = self._lock_stripe(t)
            head = sh_ld32(to + S_HEAD)
            cnt = sh_ld32(to + S_COUNT)
            if i == 0 and new_key and cnt <= self.reserve and self._free_total() <= self.reserve:
                sh_unlock(to)
                full = True
                break
            if head == SH_NIL:
                sh_unlock(to)
                continue
            p = self.slotp + <uint64_t>head * self.ss
            sh_st32(to + S_DIRTY, 1)
            sh_st16(o + B_PSTRIPE, <uint16_t>t)
            sh_st32(o + B_PNEW, head)
            if _crashing():
                sh_crash(CP_PEND)
            sh_st32(p + O_OWNER, b)
            if _crashing():
                sh_crash(CP_OWNER)
            sh_st8(p + O_STATE, USED)
            if _crashing():
                sh_crash(CP_STATE)
            sh_st32(to + S_HEAD, sh_ld32(p + O_NEXT))
            if _crashing():
                sh_crash(CP_POP_HEAD)
            sh_st32(to + S_COUNT, cnt - 1)
            if _crashing():
                sh_crash(CP_POP_COUNT)
            if i:
                sh_st64(to + S_STEALS, sh_ld64(to + S_STEALS) + 1)
            sh_st32(to + S_DIRTY, 0)
            sh_unlock(to)
            return head
        self._count_error(s, S_FULL)
        S = _shm()
        raise S.SegmentFull(S.full_message(self.name, self.nslots, self.reserve))

    cdef int _push(self, uint32_t x, char* p, uint32_t t) except -1:
        """Give slot x (at p) back to stripe t's free list."""
        cdef char* to = self._lock_stripe(t)
        cdef uint32_t head = sh_ld32(to + S_HEAD)
        cdef uint32_t cnt = sh_ld32(to + S_COUNT)
        sh_st32(to + S_DIRTY, 1)
        sh_st32(p + O_NEXT, head)
        if _crashing():
            sh_crash(CP_PUSH_NEXT)
        sh_st32(to + S_HEAD, x)
        if _crashing():
            sh_crash(CP_PUSH_HEAD)
        sh_st8(p + O_STATE, FREE)
        if _crashing():
            sh_crash(CP_PUSH_STATE)
        sh_st32(to + S_COUNT, cnt + 1)
        if _crashing():
            sh_crash(CP_PUSH_COUNT)
        sh_st32(to + S_DIRTY, 0)
        sh_unlock(to)
        return 0

    cdef int _count_error(self, uint32_t t, int field) except -1:
        cdef char* to = self._lock_stripe(t)
        sh_st64(to + field, sh_ld64(to + field) + 1)
        sh_unlock(to)
        return 0

    # -- the three mutations (bucket lock held) --------------------------------------------------------------------
    cdef void _write_slot(self, uint32_t y, uint32_t nxt, KeyRef* k, const char* v, Py_ssize_t vlen) noexcept nogil:
        cdef char* p = self.slotp + <uint64_t>y * self.ss
        sh_st32(p + O_NEXT, nxt)
        sh_st32(p + O_HASH, k.h)
        sh_st32(p + O_VLEN, <uint32_t>vlen)
        sh_st16(p + O_KLEN, <uint16_t>k.n)
        sh_st8(p + O_KFLAGS, k.flags)
        memcpy(p + SLOT_HEADER, k.p, <size_t>k.n)
        memcpy(p + SLOT_HEADER + k.n, v, <size_t>vlen)
        if _crashing():
            sh_crash(CP_WRITTEN)

    cdef int64_t _alloc_dirty(self, uint32_t b, char* o, bint new_key) except -1:
        cdef int64_t y
        sh_st8(o + B_DIRTY, 1)
        if _crashing():
            sh_crash(CP_DIRTY)
        try:
            y = self._alloc(b, o, new_key)
        except BaseException as e:
            if isinstance(e, _shm().SegmentFull):
                sh_st8(o + B_DIRTY, 0)      # nothing was changed
            raise
        return y

    cdef int _insert(self, uint32_t b, char* o, KeyRef* k, object value) except -1:
        cdef uint32_t y = <uint32_t>self._alloc_dirty(b, o, True)
        self._write_slot(y, sh_ld32(o + B_HEAD), k, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        sh_st32(o + B_HEAD, y)                                      # commit
        if _crashing():
            sh_crash(CP_COMMIT)
        sh_st32(o + B_COUNT, sh_ld32(o + B_COUNT) + 1)
        if _crashing():
            sh_crash(CP_COUNT)
        sh_st32(o + B_PNEW, SH_NIL)
        if _crashing():
            sh_crash(CP_CLEARED)
        sh_st8(o + B_DIRTY, 0)
        return 0

    cdef int _replace(self, uint32_t b, char* o, char* link, uint32_t x, char* xp, KeyRef* k,
                      object value) except -1:
        cdef uint32_t y = <uint32_t>self._alloc_dirty(b, o, False)
        self._write_slot(y, sh_ld32(xp + O_NEXT), k, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        sh_st32(o + B_POLD, x)
        if _crashing():
            sh_crash(CP_PEND_OLD)
        sh_st32(link, y)                                            # commit
        if _crashing():
            sh_crash(CP_COMMIT)
        self._push(x, xp, b & self.smask)
        if _crashing():
            sh_crash(CP_FREED)
        sh_st32(o + B_PNEW, SH_NIL)
        sh_st32(o + B_POLD, SH_NIL)
        if _crashing():
            sh_crash(CP_CLEARED)
        sh_st8(o + B_DIRTY, 0)
        return 0

    cdef int _delete(self, uint32_t b, char* o, char* link, uint32_t x, char* xp) except -1:
        sh_st8(o + B_DIRTY, 1)
        if _crashing():
            sh_crash(CP_DIRTY)
        sh_st32(o + B_POLD, x)
        if _crashing():
            sh_crash(CP_PEND_OLD)
        sh_st32(link, sh_ld32(xp + O_NEXT))                          # commit
        if _crashing():
            sh_crash(CP_COMMIT)
        sh_st32(o + B_COUNT, sh_ld32(o + B_COUNT) - 1)
        if _crashing():
            sh_crash(CP_COUNT)
        self._push(x, xp, b & self.smask)
        if _crashing():
            sh_crash(CP_FREED)
        sh_st32(o + B_POLD, SH_NIL)
        if _crashing():
            sh_crash(CP_CLEARED)
        sh_st8(o + B_DIRTY, 0)
        return 0

    cdef inline uint32_t _find(self, char* o, KeyRef* k, char** plink, char** pp) noexcept nogil:
        """Index of the key's slot in bucket record o (SH_NIL if absent); sets *plink (the link pointing at it, or
        the chain's last link) and *pp (the slot)."""
        cdef char* link = o + B_HEAD
        cdef uint32_t x = sh_ld32(link)
        cdef char* p
        while x != SH_NIL and x < self.nslots:
            p = self.slotp + <uint64_t>x * self.ss
            if (sh_ld32(p + O_HASH) == k.h and sh_ld16(p + O_KLEN) == k.n and sh_ld8(p + O_KFLAGS) == k.flags
                    and memcmp(p + SLOT_HEADER, k.p, <size_t>k.n) == 0):
                plink[0] = link
                pp[0] = p
                return x
            link = p
            x = sh_ld32(p + O_NEXT)
        plink[0] = link
        pp[0] = NULL
        return SH_NIL

    cdef object _too_large(self, object key, KeyRef* k, Py_ssize_t vlen):
        self._count_error(k.h & self.mask & self.smask, S_BIG)
        S = _shm()
        return S.ValueTooLarge(S.too_large_message(self.name, key, k.n, vlen, self.ss))

    # -- the map API -----------------------------------------------------------------------------------------------
    def get(self, key, default=None):
        cdef KeyRef k
        cdef char* link
        cdef char* p
        holder = _keyref(key, &k)
        self._check()
        cdef uint32_t b = k.h & self.mask
        cdef char* o = self._lock_bucket(b)
        try:
            if self._find(o, &k, &link, &p) == SH_NIL:
                return default
            return PyBytes_FromStringAndSize(p + SLOT_HEADER + k.n, sh_ld32(p + O_VLEN))
        finally:
            sh_unlock(o)

    def __contains__(self, key):
        cdef KeyRef k
        cdef char* link
        cdef char* p
        cdef uint32_t x
        holder = _keyref(key, &k)
        self._check()
        cdef uint32_t b = k.h & self.mask
        cdef char* o = self._lock_bucket(b)
        x = self._find(o, &k, &link, &p)
        sh_unlock(o)
        return x != SH_NIL

    def put(self, key, value):
        """Insert or replace. Raises SegmentFull / ValueTooLarge (nothing changed)."""
        cdef KeyRef k
        cdef char* link
        cdef char* p
        cdef uint32_t x
        holder = _keyref(key, &k)
        value = _value(value)
        self._check()
        if k.n + PyBytes_GET_SIZE(value) > self.payload or k.n > 0xFFFF:
            raise self._too_large(key, &k, PyBytes_GET_SIZE(value))
        cdef uint32_t b = k.h & self.mask
        cdef char* o = self._lock_bucket(b)
        try:
            x = self._find(o, &k, &link, &p)
            if x == SH_NIL:
                self._insert(b, o, &k, value)
            else:
                self._replace(b, o, link, x, p, &k, value)
        finally:
            sh_unlock(o)

    def pop(self, key, default=None):
        cdef KeyRef k
        cdef char* link
        cdef char* p
        cdef uint32_t x
        holder = _keyref(key, &k)
        self._check()
        cdef uint32_t b = k.h & self.mask
        cdef char* o = self._lock_bucket(b)
        try:
            x = self._find(o, &k, &link, &p)
            if x == SH_NIL:
                return default
            old = PyBytes_FromStringAndSize(p + SLOT_HEADER + k.n, sh_ld32(p + O_VLEN))
            self._delete(b, o, link, x, p)
            return old
        finally:
            sh_unlock(o)

    def compute(self, key, fn):
        """Atomically replace the value with ``fn(old_bytes_or_None)`` under the bucket's cross-process lock; None
        deletes; returning ``old`` itself changes nothing. Returns the new value. An exception from ``fn`` (or
        SegmentFull / ValueTooLarge for its result) propagates and leaves the entry unchanged."""
        cdef KeyRef k
        cdef char* link
        cdef char* p
        cdef uint32_t x
        holder = _keyref(key, &k)
        self._check()
        cdef uint32_t b = k.h & self.mask
        cdef char* o = self._lock_bucket(b)
        try:
            x = self._find(o, &k, &link, &p)
            if x == SH_NIL:
                old = None
            else:
                old = PyBytes_FromStringAndSize(p + SLOT_HEADER + k.n, sh_ld32(p + O_VLEN))
            new = fn(old)
            if new is None:
                if x != SH_NIL:
                    # fn ran Python code: the chain may not have changed (we hold the lock), the link is still valid
                    self._delete(b, o, link, x, p)
                return None
            if new is old:
                return new
            new = _value(new)
            if k.n + PyBytes_GET_SIZE(new) > self.payload or k.n > 0xFFFF:
                raise self._too_large(key, &k, PyBytes_GET_SIZE(new))
            if x == SH_NIL:
                self._insert(b, o, &k, new)
            else:
                self._replace(b, o, link, x, p, &k, new)
            return new
        finally:
            sh_unlock(o)

    def __len__(self):
        self._check()
        cdef uint64_t free = self._free_total()
        return self.nslots - free if free < self.nslots else 0

    def _scan(self, bint pairs):
        cdef uint32_t b, x
        cdef char* o
        cdef char* p
        cdef uint32_t klen
        cdef list batch
        self._check()
        for b in range(self.nbuckets):
            self._check()
            o = self.buckets + <uint64_t>b * BUCKET_SIZE
            if sh_ld32(o + B_HEAD) == SH_NIL and not sh_ld8(o + B_DIRTY):
                continue        # empty: no key present throughout the scan lives here
            batch = []
            self._lock_bucket(b)
            try:
                x = sh_ld32(o + B_HEAD)
                while x != SH_NIL and x < self.nslots:
                    p = self.slotp + <uint64_t>x * self.ss
                    klen = sh_ld16(p + O_KLEN)
                    if sh_ld8(p + O_KFLAGS) & KEY_UTF8:
                        k = PyUnicode_DecodeUTF8(p + SLOT_HEADER, klen, "surrogatepass")
                    else:
                        k = PyUnicode_DecodeLatin1(p + SLOT_HEADER, klen, NULL)
                    if pairs:
                        batch.append((k, PyBytes_FromStringAndSize(p + SLOT_HEADER + klen, sh_ld32(p + O_VLEN))))
                    else:
                        batch.append(k)
                    x = sh_ld32(p + O_NEXT)
            finally:
                sh_unlock(o)
            yield from batch

    def items(self):
        """Generator of (key, value), bucket by bucket, each bucket read under its lock."""
        return self._scan(True)

    def keys(self):
        return self._scan(False)

    def __iter__(self):
        return self._scan(False)

    # -- integrity and introspection -------------------------------------------------------------------------------
    def check(self):
        """Lock every bucket and stripe in turn (repairing what a dead process left), then verify the whole segment
        (``ftsip.location.shm.verify_segment``). Run it when no worker is writing. Returns a list of problems."""
        cdef uint32_t i
        self._check()
        for i in range(self.nbuckets):
            sh_unlock(self._lock_bucket(i))
        for i in range(self.nstripes):
            sh_unlock(self._lock_stripe(i))
        return _shm().verify_segment(self.mm)

    def stats(self):
        cdef uint32_t i, c, longest = 0
        cdef uint64_t brecov = 0
        cdef char* o
        self._check()
        stripes = []
        for i in range(self.nstripes):
            o = self.stripes + <uint64_t>i * STRIPE_SIZE
            stripes.append((sh_ld32(o + S_HEAD), sh_ld32(o + S_COUNT), sh_ld32(o + S_DIRTY), sh_ld32(o + S_RECOV),
                            sh_ld64(o + S_FULL), sh_ld64(o + S_BIG), sh_ld64(o + S_STEALS)))
        for i in range(self.nbuckets):
            o = self.buckets + <uint64_t>i * BUCKET_SIZE
            c = sh_ld32(o + B_COUNT)
            if c > longest:
                longest = c
            brecov += sh_ld32(o + B_RECOV)
        return _shm()._stats_dict(self, self.geo, stripes, longest, brecov)

    def __repr__(self):
        state = "closed" if self.closed else f"entries={len(self)}"
        return f"<ShmTable {self.name!r} width={self.nbuckets} slots={self.nslots} {state}>"
