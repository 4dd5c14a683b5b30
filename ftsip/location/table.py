"""The location table: a concurrent str -> object map for free-threaded CPython (pure-Python twin).

Two classes with one API: ``LinearHashTable`` (linear hashing, Litwin 1980 / Larson CACM 1988) and ``FixedTable``
(the baseline: OpenSER/Kamailio usrloc's fixed ``hash_size``-wide chained table with a lock per bucket).
``get, put, pop, compute, setdefault, __len__, __contains__, items, keys, stats``; keys are exact ``str`` (hashed
with ``hash()``), values any object but None (None means "absent" in ``compute``).  ``ftsip/_fast/lhash.pyx`` is the
Cython twin with the same API, behaviour and (single-threaded) statistics; the end of this module picks one.

Layout
    Buckets live in a *directory of segments*: ``dir[a >> 10][a & 1023]``.  Growing appends a segment (1,024 buckets)
    and never moves a bucket; no operation ever rehashes the table.  With ``n`` live buckets, level ``L =
    floor(log2 n)`` and split pointer ``p = n - 2**L``, a key with hash ``h`` lives in bucket ``a = h mod 2**(L+1)``,
    or ``h mod 2**L`` when that is ``>= n``.  Each bucket also records its own *depth* ``d`` (``L`` or ``L+1``; -1
    when not live): bucket ``a`` owns exactly the hashes with ``h mod 2**d == a``.  Here a bucket keeps its entries
    in a small dict; the twin keeps them in C (two inline entries and an overflow array).  ``hash()`` of a str is
    randomized per process, so the layout is too; nothing is persisted.

Concurrency (no GIL)
    Every bucket has its own lock (here ``threading.Lock``; a one-byte ``PyMutex`` in the twin) and every operation,
    reads included, runs under the lock of the one bucket that owns its key.  ``n`` is only a hint: an operation
    reads ``n``, computes ``a``, locks bucket ``a`` and then *validates ownership under the lock* (``d >= 0`` and
    ``h mod 2**d == a``); if that fails (a split or merge ran in between) it unlocks and retries with a fresh ``n``.
    Resizing is serialized by a try-lock (``_resize``) that no lookup or insert ever waits on: after an insert or
    delete, when a per-stripe entry counter suggests the load left its bounds, the thread *tries* the flag; if
    another thread holds it, it simply goes on.  The holder sums the exact counters and does at most
    ``MAX_STEPS`` splits or merges, each of which locks just the two buckets involved, in index order (every other
    operation holds one bucket lock at most, so there is no deadlock):

    * split of bucket ``p`` (depth ``L``) into ``p`` and ``p + 2**L``: lock both, move the entries whose hash has bit
      ``L`` set, set both depths to ``L+1``, publish ``n+1``, unlock;
    * merge of the last bucket ``n-1`` into its buddy ``n-1-2**L'``: lock both, move every entry down, buddy depth
      ``L'``, last bucket dead, publish ``n-1``, unlock.

    Why a reader never misses a key during a split or merge: at every moment the live buckets' (index, depth)
    pairs partition the hash space, and a key is stored in the one bucket that owns its hash.  Ownership (depth,
    liveness) and contents change together, only while the lock of every bucket involved is held.  A reader
    decides "present or absent" only while holding the lock of a bucket it has verified to own the hash, so it sees
    either the whole state before a split/merge or the whole state after it, never an intermediate one.  Retries
    make progress because ``n`` is published before the buckets' locks are released: a reader that fails
    validation after acquiring a lock the resizer released then reads the new ``n``.

    Counting: 32 counter stripes chosen by the hash's low bits, each updated while the bucket lock is held (so a
    stripe never goes negative); ``len()`` sums them.  Only the resizer ever needs the exact total.

Load bounds and hysteresis
    Split while ``entries > max_load * n`` (default 2.0), merge while ``entries < min_load * n`` (default 0.5) and
    ``n > min_buckets`` (default 16); ``min_load <= max_load / 2`` is enforced, so after a split the table is far
    from the merge bound and it never flaps.  An insert or delete triggers at most ``MAX_STEPS`` splits or merges,
    each moving the few entries of one bucket; the only other costs of growth are a new segment (a 1,024-slot list
    here, a 64 KiB block in the twin, its buckets initialised one split at a time) every 1,024 splits and, rarely, doubling the directory of segment
    pointers (a few KiB copied).  Segments are kept when the table shrinks and dead buckets are reused when it grows
    again: in the twin that retains 64 bytes per dead bucket, never the entries.  (Kamailio's usrloc never
    shrinks at all.)

Iteration that tolerates concurrent splits and merges
    ``items()``/``keys()`` walk the hash space in *reverse-bit order*, as Redis SCAN does.  Let ``rev(x)`` reverse
    the 64 bits of ``x``.  A live bucket ``a`` of depth ``d`` owns exactly the hashes whose ``rev`` lies in the
    interval ``[rev(a), rev(a) + 2**(64-d))``; the live buckets' intervals tile ``[0, 2**64)``, and splits and merges
    only cut or join intervals.  The cursor ``c`` starts at 0; each step locks the bucket owning hash ``rev(c)``
    (interval ``[lo, hi)`` with ``lo <= c < hi``), copies the entries whose ``rev(hash) >= c``, unlocks, yields them,
    and sets ``c = hi``; it stops when ``hi == 2**64``.  The cursor strictly increases, so each key's ``rev(hash)``
    falls in exactly one step's ``[c, hi)``: it can be yielded only at that step (never twice, even if deleted and
    re-added), and if it is present throughout it *is* yielded there, because the bucket locked at that step owns
    its hash at that moment.  Entries are copied under the lock and yielded outside it.  Keys added or removed
    during the iteration may or may not appear.

Values are stored as given (records are immutable; an update replaces the value through ``compute``).  ``compute``
calls ``fn`` under the bucket's lock: ``fn`` must be short and must not touch the table (the locks are not
re-entrant).
"""
import threading

__all__ = ["LinearHashTable", "FixedTable", "make_table", "BACKEND", "PyLinearHashTable", "PyFixedTable",
           "py_make_table", "KINDS"]

SEG_SHIFT = 10
SEG_SIZE = 1 << SEG_SHIFT
SEG_MASK = SEG_SIZE - 1
STRIPES = 32          # entry-counter stripes (power of two)
MAX_STEPS = 4         # splits or merges per rebalance attempt (catches up with concurrent inserts)
MAX_WIDTH = 1 << 24   # largest FixedTable
KINDS = ("linear", "fixed")

_M64 = (1 << 64) - 1
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _rev64(x):
    """The 64 low bits of x in reverse order."""
    return int.from_bytes((x & _M64).to_bytes(8, "little").translate(_REV8), "big")


def _key_error(key):
    return TypeError(f"location table keys must be str, not {type(key).__name__}")


class _Bucket:
    __slots__ = ("lock", "depth", "mask", "d")

    def __init__(self, depth):
        self.lock = threading.Lock()
        self.d = {} if depth >= 0 else None     # key -> value
        self._set_depth(depth)

    def _set_depth(self, depth):
        """-1: not live.  mask is 2**depth - 1 (None when not live): the bucket owns h when h & mask == index."""
        self.depth = depth
        self.mask = (1 << depth) - 1 if depth >= 0 else None


class _PyTable:
    __slots__ = ("_n", "_addr", "_dir", "_counts", "_clocks", "_resize", "_max_load", "_min_load", "_min_buckets",
                 "_splits", "_merges", "__weakref__")
    kind = None

    def _setup(self, n, max_load, min_load, min_buckets):
        depth = n.bit_length() - 1
        self._dir = []
        for start in range(0, n, SEG_SIZE):
            seg = [None] * SEG_SIZE
            for i in range(start, min(n, start + SEG_SIZE)):
                seg[i - start] = _Bucket(depth)
            self._dir.append(seg)
        self._publish(n)
        self._counts = [0] * STRIPES
        self._clocks = [threading.Lock() for _ in range(STRIPES)]
        self._resize = threading.Lock()
        self._max_load = max_load
        self._min_load = min_load
        self._min_buckets = min_buckets
        self._splits = 0
        self._merges = 0

    # -- addressing ------------------------------------------------------------------------------------------------
    def _publish(self, n):
        """Set the bucket count; readers use the (n, 2**L - 1, 2**(L+1) - 1) tuple, one attribute read."""
        top = 1 << (n.bit_length() - 1)
        self._addr = (n, top - 1, 2 * top - 1)
        self._n = n

    def _acquire(self, h):
        """Lock and return the live bucket that owns hash h (retrying across concurrent splits and merges)."""
        while True:
            n, low, high = self._addr
            a = h & high
            if a >= n:
                a = h & low
            b = self._dir[a >> SEG_SHIFT][a & SEG_MASK]
            if b is None:       # a segment slot published after n was read: look again
                continue
            b.lock.acquire()
            m = b.mask
            if m is not None and h & m == a:
                return b
            b.lock.release()

    def _count(self, h, delta):
        """Add delta to h's counter stripe (called with the bucket lock held); returns the stripe's new count."""
        s = h & (STRIPES - 1)
        with self._clocks[s]:
            c = self._counts[s] + delta
            self._counts[s] = c
        return c

    # -- the map API -----------------------------------------------------------------------------------------------
    def get(self, key, default=None):
        if type(key) is not str:
            raise _key_error(key)
        b = self._acquire(hash(key))
        try:
            return b.d.get(key, default)
        finally:
            b.lock.release()

    def __contains__(self, key):
        if type(key) is not str:
            raise _key_error(key)
        b = self._acquire(hash(key))
        try:
            return key in b.d
        finally:
            b.lock.release()

    def put(self, key, value):
        """Insert or replace."""
        if type(key) is not str:
            raise _key_error(key)
        if value is None:
            raise ValueError("location table values must not be None")
        h = hash(key)
        c = 0
        b = self._acquire(h)
        try:
            d = b.d
            old = d.get(key)        # kept alive until after the unlock
            d[key] = value
            if old is None:
                c = self._count(h, 1)
        finally:
            b.lock.release()
        if c * STRIPES > self._max_load * self._n:
            self._rebalance()

    def setdefault(self, key, value):
        """The value stored under key; stores and returns value when there is none."""
        if type(key) is not str:
            raise _key_error(key)
        if value is None:
            raise ValueError("location table values must not be None")
        h = hash(key)
        c = 0
        b = self._acquire(h)
        try:
            d = b.d
            old = d.get(key)
            if old is None:
                d[key] = value
                c = self._count(h, 1)
        finally:
            b.lock.release()
        if old is not None:
            return old
        if c * STRIPES > self._max_load * self._n:
            self._rebalance()
        return value

    def pop(self, key, default=None):
        if type(key) is not str:
            raise _key_error(key)
        h = hash(key)
        b = self._acquire(h)
        try:
            v = b.d.pop(key, None)
            if v is not None:
                c = self._count(h, -1)
        finally:
            b.lock.release()
        if v is None:
            return default
        if c * STRIPES < self._min_load * self._n:
            self._rebalance()
        return v

    def compute(self, key, fn):
        """Atomically replace the value with ``fn(old_or_None)``; a None result deletes. Returns the new value."""
        if type(key) is not str:
            raise _key_error(key)
        h = hash(key)
        delta = 0
        b = self._acquire(h)
        try:
            d = b.d
            old = d.get(key)
            new = fn(old)
            if new is None:
                if old is not None:
                    del d[key]
                    delta = -1
                    c = self._count(h, -1)
            else:
                d[key] = new
                if old is None:
                    delta = 1
                    c = self._count(h, 1)
        finally:
            b.lock.release()
        if delta > 0:
            if c * STRIPES > self._max_load * self._n:
                self._rebalance()
        elif delta < 0:
            if c * STRIPES < self._min_load * self._n:
                self._rebalance()
        return new

    def __len__(self):
        t = sum(self._counts)
        return t if t > 0 else 0

    def items(self):
        """Generator of (key, value); see the module docstring for what it guarantees under concurrent resizing."""
        return self._scan(True)

    def keys(self):
        return self._scan(False)

    __iter__ = keys

    def _scan(self, pairs):
        c = 0
        while True:
            h = _rev64(c)
            b = self._acquire(h)
            try:
                depth = b.depth
                lo = _rev64(h & ((1 << depth) - 1))
                src = b.d.items() if pairs else b.d.keys()
                if lo == c:
                    batch = list(src)
                elif pairs:
                    batch = [kv for kv in src if _rev64(hash(kv[0])) >= c]
                else:
                    batch = [k for k in src if _rev64(hash(k)) >= c]
            finally:
                b.lock.release()
            yield from batch
            c = lo + (1 << (64 - depth))
            if c > _M64:
                return

    # -- resizing (linear hashing) ---------------------------------------------------------------------------------
    def _rebalance(self):
        if not self._resize.acquire(False):
            return          # another thread is resizing; it will see our entries in the exact total
        try:
            total = sum(self._counts)
            for _ in range(MAX_STEPS):
                n = self._n
                if total > self._max_load * n:
                    self._split(n)
                elif total < self._min_load * n and n > self._min_buckets:
                    self._merge(n)
                else:
                    break
        finally:
            self._resize.release()

    def _bucket(self, a):
        return self._dir[a >> SEG_SHIFT][a & SEG_MASK]

    def _split(self, n):
        top = 1 << (n.bit_length() - 1)
        depth = top.bit_length()          # L + 1
        s = n >> SEG_SHIFT
        if s == len(self._dir):
            self._dir.append([None] * SEG_SIZE)
        seg = self._dir[s]
        b2 = seg[n & SEG_MASK]
        if b2 is None:
            b2 = seg[n & SEG_MASK] = _Bucket(-1)
        b = self._bucket(n - top)
        with b.lock, b2.lock:
            d = b.d
            moved = {k: v for k, v in d.items() if hash(k) & top}
            for k in moved:
                del d[k]
            b2.d = moved
            b._set_depth(depth)
            b2._set_depth(depth)
            self._publish(n + 1)
        self._splits += 1

    def _merge(self, n):
        last = n - 1
        top = 1 << (last.bit_length() - 1)
        b = self._bucket(last - top)
        b2 = self._bucket(last)
        with b.lock, b2.lock:
            b.d.update(b2.d)
            b2.d = None
            b2._set_depth(-1)
            b._set_depth(top.bit_length() - 1)
            self._publish(last)
        self._merges += 1

    # -- introspection ---------------------------------------------------------------------------------------------
    def stats(self):
        n = self._n
        level = n.bit_length() - 1
        entries = len(self)
        fixed = self.kind == "fixed"
        return {
            "kind": self.kind,
            "backend": "python",
            "entries": entries,
            "buckets": n,
            "level": level,
            "split_pointer": n - (1 << level),
            "splits": self._splits,
            "merges": self._merges,
            "load": entries / n,
            "segments": len(self._dir),
            "segment_size": SEG_SIZE,
            "max_load": None if fixed else self._max_load,
            "min_load": None if fixed else self._min_load,
            "min_buckets": n if fixed else self._min_buckets,
        }

    def __repr__(self):
        return f"<{type(self).__name__} kind={self.kind} entries={len(self)} buckets={self._n}>"


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


class PyLinearHashTable(_PyTable):
    """Linear hashing: grows and shrinks one bucket at a time, never rehashes the whole table."""
    __slots__ = ()
    kind = "linear"

    def __init__(self, max_load=2.0, min_load=0.5, min_buckets=16):
        _check_linear_args(max_load, min_load, min_buckets)
        self._setup(min_buckets, float(max_load), float(min_load), min_buckets)


class PyFixedTable(_PyTable):
    """OpenSER's fixed ``hash_size``-wide table: ``width`` buckets (a power of two), a lock each, never resized."""
    __slots__ = ()
    kind = "fixed"

    def __init__(self, width):
        _check_width(width)
        self._setup(width, float("inf"), 0.0, width)


def py_make_table(kind, width=None):
    """``make_table("linear")`` or ``make_table("fixed", width=512)``."""
    if kind == "linear":
        if width is not None:
            raise ValueError("width applies to kind='fixed' only; a 'linear' table sizes itself")
        return PyLinearHashTable()
    if kind == "fixed":
        if width is None:
            raise ValueError("kind='fixed' needs width=<power of two>, e.g. make_table('fixed', width=512)")
        return PyFixedTable(width)
    raise ValueError(f"unknown location table kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")


from ftsip import _fast  # noqa: E402  (the twin is chosen once the pure classes exist)

_impl = _fast.load("lhash")
if _impl is not None:
    LinearHashTable = _impl.LinearHashTable
    FixedTable = _impl.FixedTable
    make_table = _impl.make_table
    BACKEND = "cython"
else:
    LinearHashTable = PyLinearHashTable
    FixedTable = PyFixedTable
    make_table = py_make_table
    BACKEND = "python"
