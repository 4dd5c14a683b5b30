# cython: freethreading_compatible=True
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython twin of ``ftsip.location.table``: same API, behaviour and single-threaded statistics.

See ``ftsip/location/table.py`` for the design and the concurrency argument; this file implements it in C:

* a bucket is one 64-byte cache line: a one-byte ``PyMutex`` (3.13+; on older GIL builds a byte flag that is only
  taken and released while holding the GIL), its depth + 1 (0 = not live), its entry count, two inline ``(hash, key, value)`` entries and a pointer to a ``PyMem``-allocated
  overflow array for the third entry on (uncommon: the load stays at or below 2 entries per bucket), all holding
  strong references.  A lookup touches one bucket line, and threads on neighbouring buckets never share a line;
* segments of 1,024 buckets (64 KiB, cache-line aligned; each bucket is zeroed when a split first reaches it, so
  the fresh pages fault in one at a time) are never freed or moved while the table lives; the directory of segment pointers doubles when full and the old directory is kept until
  the table is deallocated, so a thread that read a stale directory pointer still reads valid segment pointers
  (this is what makes the unlocked address computation safe without any reclamation scheme);
* ``n`` and the directory pointer are published with release stores and read with acquire loads; every bucket
  access, reads included, holds the bucket's mutex, and ownership is validated under it;
* no Python object is allocated, freed or called while a bucket mutex is held, except ``compute``'s ``fn`` (by
  contract short and table-free); old values and removed keys are released after the unlock;
* the table is not tracked by the cycle collector: a value that refers back to its own table is never collected.
"""

from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free, PyMem_Calloc
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from cpython.unicode cimport PyUnicode_CheckExact

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #if PY_VERSION_HEX >= 0x030D0000
    typedef PyMutex lh_mutex;
    static inline void lh_lock(lh_mutex *m) { PyMutex_Lock(m); }
    static inline void lh_unlock(lh_mutex *m) { PyMutex_Unlock(m); }
    #else
    /* GIL builds before 3.13: the GIL makes test-and-set atomic; wait with the GIL released. */
    #include <sched.h>
    typedef struct { unsigned char v; } lh_mutex;
    static void lh_lock(lh_mutex *m) {
        while (m->v) { Py_BEGIN_ALLOW_THREADS sched_yield(); Py_END_ALLOW_THREADS }
        m->v = 1;
    }
    static inline void lh_unlock(lh_mutex *m) { m->v = 0; }
    #endif

    typedef struct { uint64_t hash; PyObject *key; PyObject *value; } lh_entry;
    #define LH_INLINE 2
    typedef struct {
        lh_mutex lock;
        uint8_t live;       /* depth + 1; 0: not live */
        uint8_t caplog;     /* overflow capacity is 1 << caplog when more != NULL */
        uint8_t pad;
        uint32_t count;     /* entries: e[0..1] then more[0..count-3] */
        lh_entry *more;
        lh_entry e[LH_INLINE];
    } lh_bucket;
    static inline lh_entry *lh_at(lh_bucket *b, uint32_t i) {
        return i < LH_INLINE ? &b->e[i] : &b->more[i - LH_INLINE];
    }
    static inline lh_bucket *lh_align64(void *p) { return (lh_bucket *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

    static inline uint64_t lh_load_n(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void lh_store_n(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline lh_bucket **lh_load_dir(lh_bucket ***p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void lh_store_dir(lh_bucket ***p, lh_bucket **v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void lh_store_seg(lh_bucket **p, lh_bucket *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int64_t lh_add(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
    static inline int64_t lh_get(int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline int lh_tryflag(int *f) {
        int zero = 0;
        return __atomic_compare_exchange_n(f, &zero, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }
    static inline void lh_clearflag(int *f) { __atomic_store_n(f, 0, __ATOMIC_RELEASE); }
    static inline unsigned lh_log2(uint64_t n) { return 63u - (unsigned)__builtin_clzll(n); }
    static inline uint64_t lh_rev64(uint64_t x) {
        x = ((x >> 1) & 0x5555555555555555ULL) | ((x & 0x5555555555555555ULL) << 1);
        x = ((x >> 2) & 0x3333333333333333ULL) | ((x & 0x3333333333333333ULL) << 2);
        x = ((x >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((x & 0x0F0F0F0F0F0F0F0FULL) << 4);
        return __builtin_bswap64(x);
    }
    static inline int lh_str_eq(PyObject *a, PyObject *b) {
        if (a == b) return 1;
    #if PY_VERSION_HEX >= 0x030C0000
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        if (n != PyUnicode_GET_LENGTH(b)) return 0;
        int k = (int)PyUnicode_KIND(a);
        if (k != (int)PyUnicode_KIND(b)) return 0;
        return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)k) == 0;
    #else
        return PyUnicode_Compare(a, b) == 0;
    #endif
    }
    #define lh_incref(o) Py_INCREF(o)
    #define lh_decref(o) Py_DECREF(o)
    #define lh_own(o) (o)
    """
    ctypedef struct lh_mutex:
        pass
    ctypedef struct lh_entry:
        uint64_t hash
        PyObject* key
        PyObject* value
    ctypedef struct lh_bucket:
        lh_mutex lock
        uint8_t live
        uint8_t caplog
        uint32_t count
        lh_entry* more
        lh_entry* e
    lh_entry* lh_at(lh_bucket*, uint32_t) noexcept
    lh_bucket* lh_align64(void*) noexcept
    void lh_lock(lh_mutex*) noexcept
    void lh_unlock(lh_mutex*) noexcept
    uint64_t lh_load_n(uint64_t*) noexcept
    void lh_store_n(uint64_t*, uint64_t) noexcept
    lh_bucket** lh_load_dir(lh_bucket***) noexcept
    void lh_store_dir(lh_bucket***, lh_bucket**) noexcept
    void lh_store_seg(lh_bucket**, lh_bucket*) noexcept
    int64_t lh_add(int64_t*, int64_t) noexcept
    int64_t lh_get(int64_t*) noexcept
    bint lh_tryflag(int*) noexcept
    void lh_clearflag(int*) noexcept
    unsigned lh_log2(uint64_t) noexcept
    uint64_t lh_rev64(uint64_t) noexcept
    bint lh_str_eq(PyObject*, PyObject*) noexcept
    void lh_incref(PyObject*) noexcept
    void lh_decref(PyObject*)
    object lh_own(PyObject*)        # steals the reference the table handed over
    Py_hash_t PyObject_Hash(object) except? -1

cdef enum:
    SEG_SHIFT = 10
    SEG_SIZE = 1 << SEG_SHIFT
    SEG_MASK = SEG_SIZE - 1
    NSTRIPES = 32              # entry-counter stripes (power of two)
    STRIPE_STRIDE = 8          # int64 per stripe: one 64-byte cache line each
    STEPS = 4                  # splits or merges per rebalance attempt
    NINLINE = 2
    MAX_RETIRED = 64

MAX_STEPS = STEPS
STRIPES = NSTRIPES
SEGMENT_SIZE = SEG_SIZE
MAX_WIDTH = 1 << 24
KINDS = ("linear", "fixed")


cdef inline uint64_t _khash(object key) except? 0:
    if not PyUnicode_CheckExact(key):
        raise TypeError(f"location table keys must be str, not {type(key).__name__}")
    return <uint64_t>PyObject_Hash(key)


cdef inline Py_ssize_t _find(lh_bucket* b, uint64_t h, PyObject* key) noexcept:
    cdef uint32_t n = b.count
    cdef uint32_t i
    cdef lh_entry* m
    if n == 0:
        return -1
    if b.e[0].hash == h and lh_str_eq(b.e[0].key, key):
        return 0
    if n == 1:
        return -1
    if b.e[1].hash == h and lh_str_eq(b.e[1].key, key):
        return 1
    m = b.more
    for i in range(n - NINLINE):
        if m[i].hash == h and lh_str_eq(m[i].key, key):
            return i + NINLINE
    return -1


cdef inline int _reserve(lh_bucket* b, uint32_t need) noexcept:
    """Make room for ``need`` entries in all; -1 when out of memory (nothing changed)."""
    if need <= NINLINE:
        return 0
    need -= NINLINE
    cdef uint32_t cap = (<uint32_t>1 << b.caplog) if b.more != NULL else 0
    if need <= cap:
        return 0
    cdef uint8_t lg = b.caplog if b.more != NULL else 1
    while (<uint64_t>1 << lg) < need:
        lg += 1
    cdef void* p = PyMem_Realloc(b.more, (<size_t>1 << lg) * sizeof(lh_entry))
    if p == NULL:
        return -1
    b.more = <lh_entry*>p
    b.caplog = lg
    return 0


cdef inline void _trim(lh_bucket* b) noexcept:
    """Give memory back after removals: free an unused overflow array, halve one at most a quarter full."""
    cdef void* p
    if b.more == NULL:
        return
    if b.count <= NINLINE:
        PyMem_Free(b.more)
        b.more = NULL
        b.caplog = 0
    elif b.caplog > 2 and b.count - NINLINE <= (<uint32_t>1 << (b.caplog - 2)):
        p = PyMem_Realloc(b.more, (<size_t>1 << (b.caplog - 1)) * sizeof(lh_entry))
        if p != NULL:
            b.more = <lh_entry*>p
            b.caplog -= 1


cdef inline void _append(lh_bucket* b, uint64_t h, PyObject* key, PyObject* value) noexcept:
    """Add an entry (room reserved by the caller), taking new references."""
    cdef lh_entry* e = lh_at(b, b.count)
    e.hash = h
    e.key = key
    e.value = value
    lh_incref(key)
    lh_incref(value)
    b.count += 1


cdef inline void _remove(lh_bucket* b, uint32_t i) noexcept:
    """Drop entry i (the caller releases its references after the unlock): the last entry takes its place."""
    b.count -= 1
    if i != b.count:
        lh_at(b, i)[0] = lh_at(b, b.count)[0]
    _trim(b)


cdef class _Table:
    cdef uint64_t n                 # live buckets (release-published)
    cdef lh_bucket** dir            # directory of segments (release-published)
    cdef void** segbase             # what PyMem_Malloc returned for each segment (before alignment)
    cdef uint64_t dir_cap
    cdef uint64_t nseg
    cdef uint64_t inited            # buckets [0, inited) are initialised; the rest of the last segment is not
    cdef void* retired[MAX_RETIRED]
    cdef int nretired
    cdef int64_t* stripes
    cdef int resizing               # try-lock flag of the one resizer
    cdef double max_load
    cdef double min_load
    cdef uint64_t min_buckets
    cdef uint64_t splits
    cdef uint64_t merges
    cdef bint fixed

    def __cinit__(self, *args, **kwargs):
        self.stripes = <int64_t*>PyMem_Calloc(NSTRIPES * STRIPE_STRIDE, sizeof(int64_t))
        if self.stripes == NULL:
            raise MemoryError()

    cdef int _setup(self, uint64_t n, double max_load, double min_load, uint64_t min_buckets, bint fixed) except -1:
        cdef uint64_t nseg = (n + SEG_SIZE - 1) >> SEG_SHIFT
        cdef uint64_t cap = 4
        cdef uint64_t s, i
        cdef unsigned depth = lh_log2(n)
        cdef lh_bucket* seg
        if self.dir != NULL:
            raise RuntimeError("location table already initialised")
        while cap < nseg:
            cap *= 2
        self.dir = <lh_bucket**>PyMem_Calloc(cap, sizeof(lh_bucket*))
        self.segbase = <void**>PyMem_Calloc(cap, sizeof(void*))
        if self.dir == NULL or self.segbase == NULL:
            raise MemoryError()
        self.dir_cap = cap
        for s in range(nseg):
            seg = self._new_segment(s)
            if seg == NULL:
                raise MemoryError()
            for i in range(SEG_SIZE):
                if (s << SEG_SHIFT) + i < n:
                    memset(&seg[i], 0, sizeof(lh_bucket))
                    seg[i].live = depth + 1
            self.dir[s] = seg
        self.inited = n
        self.max_load = max_load
        self.min_load = min_load
        self.min_buckets = min_buckets
        self.fixed = fixed
        lh_store_n(&self.n, n)
        return 0

    def __dealloc__(self):
        cdef uint64_t s, i
        cdef uint32_t j
        cdef lh_bucket* seg
        cdef int r
        cdef lh_entry* e
        if self.dir != NULL:
            for s in range(self.nseg):
                seg = self.dir[s]
                for i in range(SEG_SIZE):
                    if (s << SEG_SHIFT) + i >= self.inited:
                        break
                    for j in range(seg[i].count):
                        e = lh_at(&seg[i], j)
                        lh_decref(e.key)
                        lh_decref(e.value)
                    seg[i].count = 0
                    PyMem_Free(seg[i].more)
                PyMem_Free(self.segbase[s])
            PyMem_Free(self.dir)
            self.dir = NULL
        PyMem_Free(self.segbase)
        self.segbase = NULL
        for r in range(self.nretired):
            PyMem_Free(self.retired[r])
        self.nretired = 0
        PyMem_Free(self.stripes)
        self.stripes = NULL

    cdef int _not_ready(self) except -1:
        raise RuntimeError(f"{type(self).__name__} is not initialised (its __init__ was not called)")

    # -- addressing ------------------------------------------------------------------------------------------------
    cdef inline lh_bucket* _acquire(self, uint64_t h, uint64_t* pa) noexcept:
        """Lock and return the live bucket owning hash h (retrying across concurrent splits and merges)."""
        cdef uint64_t n, a
        cdef unsigned lg
        cdef lh_bucket* b
        cdef lh_bucket** d
        while True:
            n = lh_load_n(&self.n)
            lg = lh_log2(n)
            a = h & ((<uint64_t>2 << lg) - 1)
            if a >= n:
                a = h & ((<uint64_t>1 << lg) - 1)
            d = lh_load_dir(&self.dir)
            b = d[a >> SEG_SHIFT] + (a & SEG_MASK)
            lh_lock(&b.lock)
            if b.live and (h & ((<uint64_t>1 << (b.live - 1)) - 1)) == a:
                pa[0] = a
                return b
            lh_unlock(&b.lock)

    cdef inline int64_t _count(self, uint64_t h, int64_t delta) noexcept:
        return lh_add(&self.stripes[(h & (NSTRIPES - 1)) * STRIPE_STRIDE], delta)

    cdef inline void _grew(self, int64_t c) noexcept:
        if <double>(c * NSTRIPES) > self.max_load * <double>lh_load_n(&self.n):
            self._rebalance()

    cdef inline void _shrank(self, int64_t c) noexcept:
        if <double>(c * NSTRIPES) < self.min_load * <double>lh_load_n(&self.n):
            self._rebalance()

    cdef int64_t _total(self) noexcept:
        cdef int64_t t = 0
        cdef int i
        for i in range(NSTRIPES):
            t += lh_get(&self.stripes[i * STRIPE_STRIDE])
        return t

    # -- the map API -----------------------------------------------------------------------------------------------
    def get(self, key, default=None):
        cdef uint64_t h = _khash(key)
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t a
        cdef lh_bucket* b = self._acquire(h, &a)
        cdef Py_ssize_t i = _find(b, h, <PyObject*>key)
        cdef PyObject* v
        if i < 0:
            lh_unlock(&b.lock)
            return default
        v = lh_at(b, i).value
        lh_incref(v)
        lh_unlock(&b.lock)
        return lh_own(v)

    def __contains__(self, key):
        cdef uint64_t h = _khash(key)
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t a
        cdef lh_bucket* b = self._acquire(h, &a)
        cdef Py_ssize_t i = _find(b, h, <PyObject*>key)
        lh_unlock(&b.lock)
        return i >= 0

    def put(self, key, value):
        """Insert or replace."""
        cdef uint64_t h = _khash(key)
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t a
        cdef lh_bucket* b
        cdef Py_ssize_t i
        cdef PyObject* old = NULL
        cdef lh_entry* e
        cdef int64_t c
        if value is None:
            raise ValueError("location table values must not be None")
        b = self._acquire(h, &a)
        i = _find(b, h, <PyObject*>key)
        if i >= 0:
            e = lh_at(b, i)
            old = e.value
            lh_incref(<PyObject*>value)
            e.value = <PyObject*>value
            lh_unlock(&b.lock)
            lh_decref(old)
            return
        if _reserve(b, b.count + 1) < 0:
            lh_unlock(&b.lock)
            raise MemoryError()
        _append(b, h, <PyObject*>key, <PyObject*>value)
        c = self._count(h, 1)
        lh_unlock(&b.lock)
        self._grew(c)

    def setdefault(self, key, value):
        """The value stored under key; stores and returns value when there is none."""
        cdef uint64_t h = _khash(key)
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t a
        cdef lh_bucket* b
        cdef Py_ssize_t i
        cdef PyObject* v
        cdef lh_entry* e
        cdef int64_t c
        if value is None:
            raise ValueError("location table values must not be None")
        b = self._acquire(h, &a)
        i = _find(b, h, <PyObject*>key)
        if i >= 0:
            v = lh_at(b, i).value
            lh_incref(v)
            lh_unlock(&b.lock)
            return lh_own(v)
        if _reserve(b, b.count + 1) < 0:
            lh_unlock(&b.lock)
            raise MemoryError()
        _append(b, h, <PyObject*>key, <PyObject*>value)
        c = self._count(h, 1)
        lh_unlock(&b.lock)
        self._grew(c)
        return value

    def pop(self, key, default=None):
        cdef uint64_t h = _khash(key)
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t a
        cdef lh_bucket* b = self._acquire(h, &a)
        cdef Py_ssize_t i = _find(b, h, <PyObject*>key)
        cdef PyObject* k
        cdef PyObject* v
        cdef int64_t c
        if i < 0:
            lh_unlock(&b.lock)
            return default
        k = lh_at(b, i).key
        v = lh_at(b, i).value
        _remove(b, i)
        c = self._count(h, -1)
        lh_unlock(&b.lock)
        lh_decref(k)
        self._shrank(c)
        return lh_own(v)

    def compute(self, key, fn):
        """Atomically replace the value with ``fn(old_or_None)``; a None result deletes. Returns the new value."""
        cdef uint64_t h = _khash(key)
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t a
        cdef lh_bucket* b = self._acquire(h, &a)
        cdef Py_ssize_t i = _find(b, h, <PyObject*>key)
        cdef PyObject* old = NULL
        cdef PyObject* oldkey = NULL
        cdef lh_entry* e
        cdef int64_t c = 0
        cdef int delta = 0
        if i >= 0:
            old = lh_at(b, i).value
        try:
            new = fn(<object>old if old != NULL else None)
        except BaseException:
            lh_unlock(&b.lock)
            raise
        if new is None:
            if i >= 0:
                oldkey = lh_at(b, i).key
                _remove(b, i)
                c = self._count(h, -1)
                delta = -1
        elif i >= 0:
            lh_incref(<PyObject*>new)
            lh_at(b, i).value = <PyObject*>new
        else:
            if _reserve(b, b.count + 1) < 0:
                lh_unlock(&b.lock)
                raise MemoryError()
            _append(b, h, <PyObject*>key, <PyObject*>new)
            c = self._count(h, 1)
            delta = 1
        lh_unlock(&b.lock)
        if oldkey != NULL:
            lh_decref(oldkey)
        if old != NULL:
            lh_decref(old)          # the table's reference to the replaced or removed value
        if delta > 0:
            self._grew(c)
        elif delta < 0:
            self._shrank(c)
        return new

    def __len__(self):
        if self.dir == NULL:
            self._not_ready()
        cdef int64_t t = self._total()
        return t if t > 0 else 0

    def items(self):
        """Generator of (key, value); see ftsip.location.table for what it guarantees under concurrent resizing."""
        return self._scan(True)

    def keys(self):
        return self._scan(False)

    def __iter__(self):
        return self._scan(False)

    def _scan(self, bint pairs):
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t c = 0
        cdef uint64_t nxt = 0
        cdef bint done = False
        while not done:
            batch = self._scan_step(c, &nxt, &done, pairs)
            yield from batch
            c = nxt

    cdef list _scan_step(self, uint64_t c, uint64_t* nxt, bint* done, bint pairs):
        """Copy the entries of the bucket owning rev(c) whose rev(hash) >= c; set the next cursor."""
        cdef uint64_t h = lh_rev64(c)
        cdef uint64_t a, lo, span
        cdef lh_bucket* b = self._acquire(h, &a)
        cdef unsigned depth = b.live - 1
        cdef bint everything
        cdef uint32_t j, k = 0
        cdef PyObject** buf = NULL
        cdef lh_entry* e
        lo = lh_rev64(a)
        everything = lo == c
        if b.count:
            buf = <PyObject**>PyMem_Malloc(2 * b.count * sizeof(PyObject*))
            if buf == NULL:
                lh_unlock(&b.lock)
                raise MemoryError()
            for j in range(b.count):
                e = lh_at(b, j)
                if everything or lh_rev64(e.hash) >= c:
                    buf[2 * k] = e.key
                    buf[2 * k + 1] = e.value
                    lh_incref(buf[2 * k])
                    lh_incref(buf[2 * k + 1])
                    k += 1
        lh_unlock(&b.lock)
        if depth == 0:
            done[0] = True
        else:
            span = <uint64_t>1 << (64 - depth)
            nxt[0] = lo + span
            done[0] = nxt[0] == 0
        cdef list out = []
        for j in range(k):
            if pairs:
                out.append((lh_own(buf[2 * j]), lh_own(buf[2 * j + 1])))
            else:
                out.append(lh_own(buf[2 * j]))
                lh_decref(buf[2 * j + 1])
        PyMem_Free(buf)
        return out

    # -- resizing (linear hashing) ---------------------------------------------------------------------------------
    cdef void _rebalance(self) noexcept:
        cdef int64_t total
        cdef uint64_t n
        cdef int step
        if self.fixed or not lh_tryflag(&self.resizing):
            return
        total = self._total()
        for step in range(STEPS):
            n = self.n
            if <double>total > self.max_load * <double>n:
                if self._split(n) < 0:
                    break
            elif <double>total < self.min_load * <double>n and n > self.min_buckets:
                if self._merge(n) < 0:
                    break
            else:
                break
        lh_clearflag(&self.resizing)

    cdef inline lh_bucket* _bucket(self, uint64_t a) noexcept:
        return self.dir[a >> SEG_SHIFT] + (a & SEG_MASK)

    cdef int _ensure_segment(self, uint64_t a) noexcept:
        """Make bucket index a addressable (only the resizer calls this). -1 when out of memory."""
        cdef uint64_t s = a >> SEG_SHIFT
        cdef uint64_t i
        cdef lh_bucket** nd
        cdef void** nb
        cdef lh_bucket* seg
        if s < self.nseg:
            return 0
        if s >= self.dir_cap:
            if self.nretired == MAX_RETIRED:
                return -1
            nd = <lh_bucket**>PyMem_Calloc(self.dir_cap * 2, sizeof(lh_bucket*))
            if nd == NULL:
                return -1
            nb = <void**>PyMem_Realloc(self.segbase, self.dir_cap * 2 * sizeof(void*))
            if nb == NULL:
                PyMem_Free(nd)
                return -1
            self.segbase = nb
            memcpy(nd, self.dir, self.dir_cap * sizeof(lh_bucket*))
            self.retired[self.nretired] = <void*>self.dir     # stale readers may still hold it
            self.nretired += 1
            lh_store_dir(&self.dir, nd)
            self.dir_cap *= 2
        seg = self._new_segment(s)
        if seg == NULL:
            return -1
        lh_store_seg(&self.dir[s], seg)
        return 0

    cdef lh_bucket* _new_segment(self, uint64_t s) noexcept:
        """Allocate segment s, cache-line aligned, uninitialised; NULL when out of memory.

        Its buckets are zeroed one at a time as splits first reach them (``inited``), so the fresh pages are
        faulted in one per 64 splits instead of 16 at once (a fresh page costs tens of microseconds on a VM).
        """
        cdef size_t size = SEG_SIZE * sizeof(lh_bucket)
        cdef void* raw = PyMem_Malloc(size + 64)        # not touched: buckets are zeroed on first use
        cdef lh_bucket* seg
        if raw == NULL:
            return NULL
        seg = lh_align64(raw)
        self.segbase[s] = raw
        self.nseg += 1
        return seg

    cdef int _split(self, uint64_t n) noexcept:
        cdef unsigned lg = lh_log2(n)
        cdef uint64_t top = <uint64_t>1 << lg
        cdef lh_bucket* b
        cdef lh_bucket* b2
        cdef uint32_t i, k = 0, j = 0, m = 0
        cdef lh_entry e
        if self._ensure_segment(n) < 0:
            return -1
        b = self._bucket(n - top)
        b2 = self._bucket(n)
        if n >= self.inited:        # first use: no reader can reach an index >= every n ever published
            memset(b2, 0, sizeof(lh_bucket))
            self.inited = n + 1
        lh_lock(&b.lock)
        lh_lock(&b2.lock)
        for i in range(b.count):
            if lh_at(b, i).hash & top:
                k += 1
        if _reserve(b2, k) < 0:
            lh_unlock(&b2.lock)
            lh_unlock(&b.lock)
            return -1
        for i in range(b.count):
            e = lh_at(b, i)[0]
            if e.hash & top:
                lh_at(b2, m)[0] = e
                m += 1
            else:
                lh_at(b, j)[0] = e
                j += 1
        b.count = j
        b2.count = m
        _trim(b)
        b.live = lg + 2          # depth lg + 1
        b2.live = lg + 2
        lh_store_n(&self.n, n + 1)
        lh_unlock(&b2.lock)
        lh_unlock(&b.lock)
        self.splits += 1
        return 0

    cdef int _merge(self, uint64_t n) noexcept:
        cdef uint64_t last = n - 1
        cdef unsigned lg = lh_log2(last)
        cdef lh_bucket* b = self._bucket(last - (<uint64_t>1 << lg))
        cdef lh_bucket* b2 = self._bucket(last)
        lh_lock(&b.lock)
        lh_lock(&b2.lock)
        cdef uint32_t i
        if b2.count:
            if _reserve(b, b.count + b2.count) < 0:
                lh_unlock(&b2.lock)
                lh_unlock(&b.lock)
                return -1
            for i in range(b2.count):
                lh_at(b, b.count + i)[0] = lh_at(b2, i)[0]
            b.count += b2.count
            b2.count = 0
        _trim(b2)
        b.live = lg + 1          # depth lg
        b2.live = 0
        lh_store_n(&self.n, last)
        lh_unlock(&b2.lock)
        lh_unlock(&b.lock)
        self.merges += 1
        return 0

    # -- introspection ---------------------------------------------------------------------------------------------
    @property
    def kind(self):
        return "fixed" if self.fixed else "linear"

    def stats(self):
        if self.dir == NULL:
            self._not_ready()
        cdef uint64_t n = lh_load_n(&self.n)
        cdef unsigned level = lh_log2(n)
        entries = len(self)
        return {
            "kind": self.kind,
            "backend": "cython",
            "entries": entries,
            "buckets": n,
            "level": level,
            "split_pointer": n - (<uint64_t>1 << level),
            "splits": self.splits,
            "merges": self.merges,
            "load": entries / n,
            "segments": self.nseg,
            "segment_size": SEG_SIZE,
            "max_load": None if self.fixed else self.max_load,
            "min_load": None if self.fixed else self.min_load,
            "min_buckets": self.min_buckets,
        }

    def __repr__(self):
        if self.dir == NULL:
            return f"<{type(self).__name__} (not initialised)>"
        return f"<{type(self).__name__} kind={self.kind} entries={len(self)} buckets={lh_load_n(&self.n)}>"


def _check_linear_args(max_load, min_load, min_buckets):
    if not isinstance(max_load, (int, float)) or isinstance(max_load, bool) or not 0 < max_load < 1e6:
        raise ValueError(f"max_load must be a number in (0, 1e6), got {max_load!r}")
    if not isinstance(min_load, (int, float)) or isinstance(min_load, bool) or not 0 <= min_load * 2 <= max_load:
        raise ValueError(f"min_load must be between 0 and max_load/2 (hysteresis), got {min_load!r} "
                         f"with max_load={max_load!r}")
    if (not isinstance(min_buckets, int) or isinstance(min_buckets, bool) or not 1 <= min_buckets <= MAX_WIDTH
            or min_buckets & (min_buckets - 1)):
        raise ValueError(f"min_buckets must be a power of two between 1 and 2**24, got {min_buckets!r}")


def _check_width(width):
    if (not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= MAX_WIDTH
            or width & (width - 1)):
        raise ValueError(f"FixedTable width must be a power of two between 1 and 2**24 (e.g. 512), got {width!r}")


cdef class LinearHashTable(_Table):
    """Linear hashing: grows and shrinks one bucket at a time, never rehashes the whole table."""

    def __init__(self, max_load=2.0, min_load=0.5, min_buckets=16):
        _check_linear_args(max_load, min_load, min_buckets)
        self._setup(min_buckets, float(max_load), float(min_load), min_buckets, False)


cdef class FixedTable(_Table):
    """OpenSER's fixed ``hash_size``-wide table: ``width`` buckets (a power of two), a lock each, never resized."""

    def __init__(self, width):
        _check_width(width)
        self._setup(width, float("inf"), 0.0, width, True)


def make_table(kind, width=None):
    """``make_table("linear")`` or ``make_table("fixed", width=512)``."""
    if kind == "linear":
        if width is not None:
            raise ValueError("width applies to kind='fixed' only; a 'linear' table sizes itself")
        return LinearHashTable()
    if kind == "fixed":
        if width is None:
            raise ValueError("kind='fixed' needs width=<power of two>, e.g. make_table('fixed', width=512)")
        return FixedTable(width)
    raise ValueError(f"unknown location table kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")
