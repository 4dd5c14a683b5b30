"""The process mode's location table: a fixed-size chained hash table in a shared-memory segment (pure-Python twin).

OpenSER/Kamailio share usrloc between single-threaded worker processes through a shared-memory heap sized once at
start-up (``-m``) and a hash table whose width is configured (``hash_size``).  ftsip's process mode does the same, so
it can be compared with the self-sizing thread mode: the supervisor creates one segment (``ShmTable.create``) before
it starts the workers, the workers open it by name (``ShmTable.attach``), the supervisor removes it
(``ShmTable.unlink``) when it stops.  Its size is what the administrator set: ``[location] hash_width`` buckets,
``[location] shm_slots`` slots of ``[location] shm_slot_size`` bytes (rounded up to a multiple of 8).  It never grows; a full segment raises
``SegmentFull`` and a record too big for a slot raises ``ValueTooLarge``; both leave the table exactly as it was.

Two twins share this byte layout and API: ``PyShmTable`` here (``mmap`` + ``struct``, ``fcntl`` byte-range locks) and
``ftsip/_fast/shmtable.pyx`` (C, robust process-shared ``pthread`` mutexes).  A segment is used by one twin at a time
(the lock mechanisms differ; ``attach`` refuses a segment whose header names the other mechanism unless
``adopt=True`` is passed, which only a process that knows no one else uses the segment may do).  The end of this
module picks the twin (``ShmTable``, ``BACKEND``).  ``ShmLocationTable`` adapts either one to the in-process table API
with ``Record`` values, so ``LocationService`` runs unchanged on top of it.

Keys and values
    Keys are ``str``: stored as their latin-1 bytes when every code point is below 256 (always the case for ftsip's
    AORs: datagrams are decoded as latin-1), else as UTF-8 (``surrogatepass``) with a flag bit, so two keys are equal
    exactly when their (flag, bytes) are.  Values are ``bytes`` (any bytes-like object is copied).  A slot holds one
    entry: key bytes and value bytes together must fit in ``slot_size - 20``.  The hash is CRC-32 (zlib's
    polynomial) of the key bytes, identical in every process (``hash()`` is randomized per process) and computed in
    C by both twins (``zlib.crc32`` here); the bucket is ``crc & (width - 1)``.

Layout (little-endian; every offset below is from the start of the record)
    ========== ======================================================================================================
    header     256 bytes at 0: ``magic`` 8s ``FTSIPSHM`` (written last by ``create``), ``version`` u32 (1),
               ``header_size`` u32, ``width`` u32 (buckets, a power of two), ``stripes`` u32, ``slots`` u32,
               ``slot_size`` u32, ``bucket_size`` u32 (64), ``stripe_size`` u32 (128), ``lock_area`` u32 (40),
               ``lock_kind`` u32 (1 fcntl, 2 pthread), ``hash_kind`` u32 (1 CRC-32), ``reserve`` u32, then u64
               ``buckets_off``, ``stripes_off``, ``slots_off``, ``total_size``, f64 ``created_at``, u32
               ``creator_pid``, u32 ``slot_header`` (20); the rest is zero.
    bucket     ``width`` records of 64 bytes: ``[0:40]`` lock area (the pthread twin's ``pthread_mutex_t``; this twin
               locks the byte at the record's offset), ``head`` u32 @40 (first slot or NIL=0xFFFFFFFF), ``count`` u32
               @44, ``pend_new`` u32 @48, ``pend_old`` u32 @52, ``pend_stripe`` u16 @56, ``dirty`` u8 @58, pad,
               ``recoveries`` u32 @60.
    stripe     ``stripes`` records of 128 bytes (``min(width, 64)`` stripes; bucket ``b`` belongs to stripe
               ``b & (stripes - 1)``): lock area ``[0:40]``, ``free_head`` u32 @40, ``free_count`` u32 @44, ``dirty``
               u32 @48, ``recoveries`` u32 @52, counters u64 ``full_errors`` @56, ``too_large_errors`` @64,
               ``steals`` @72; the rest is zero.
    slot       ``slots`` records of ``slot_size`` bytes (a multiple of 8) at ``slots_off`` (64-aligned): ``next``
               u32 @0, ``owner`` u32 @4 (bucket), ``hash`` u32 @8, ``vlen`` u32 @12, ``klen`` u16 @16, ``state`` u8
               @18 (``F`` free, ``U`` used), ``kflags`` u8 @19 (1: key is UTF-8), key bytes then value bytes @20.
    ========== ======================================================================================================

    Counters live in the stripes (updated under the stripe lock, summed by ``stats``); ``len()`` is ``slots`` minus
    the stripes' free counts (``len()`` and ``stats()`` read without locks: exact when no one is writing).  The free slots start spread evenly over the stripes' free lists; an allocation takes
    from the bucket's own stripe, and only when that one is empty *steals* a slot from the next non-empty stripe
    (one stripe lock at a time, no global lock).  A freed slot goes to the freeing bucket's stripe.  New keys may not
    take the last ``reserve`` free slots (``max(1, min(64, slots // 64))``): replacing a value is copy-on-write and
    needs one spare slot, so existing registrations can still be refreshed when new ones are refused.

Locks, and why a killed worker cannot wedge or corrupt the table
    Every bucket and every stripe has a lock.  Every operation, reads included, holds its bucket's lock; a slot is
    taken from or given to a free list under that stripe's lock, taken while the bucket lock is held (order: bucket,
    then one stripe at a time; nothing else nests, so there is no deadlock).  This twin uses ``fcntl`` (POSIX record)
    locks on one byte of the segment file per record: the kernel drops them when the holder dies, so a SIGKILLed
    worker never leaves a lock held.  fcntl locks belong to the process, not the thread, so each record also has a
    per-process ``threading.Lock`` in front (shared by every ``PyShmTable`` of this process on the same segment, as is
    the file descriptor: closing one must not drop the locks another holds).  The pthread twin uses robust,
    process-shared mutexes: the next locker gets ``EOWNERDEAD`` and makes the mutex consistent.

    A lock being free again is not enough: the dead holder may have been half-way through an update.  So every
    mutation is a sequence of single aligned stores in an order that keeps the structure valid after each of them,
    bracketed by a ``dirty`` flag in the locked record, with an intent log (``pend_new``/``pend_old``) naming the
    slots in flight; whoever next takes a lock and finds ``dirty`` set repairs the record first (both twins: the
    pthread twin does not even rely on ``EOWNERDEAD`` for this).

    * A new or replaced entry is written in full into a slot that is not linked anywhere, then linked by one 4-byte
      store (the bucket's ``head`` or the predecessor's ``next``): readers see the old chain or the new one.  A
      replacement copies (never overwrites in place), so a crash can never leave a torn value.
    * Allocation, under the stripe lock: ``pend_stripe``, ``pend_new = i``; ``owner = b``; ``state = U``;
      ``free_head = next``; ``free_count -= 1``.  Freeing: ``next = free_head``; ``free_head = i``; ``state = F``;
      ``free_count += 1``.  (``owner`` is written before ``state``: a ``U`` slot always names the bucket that took it,
      so a repair tells its own in-flight slot from one another bucket has taken since.)
    * Stripe repair: pop every head slot whose state is not ``F`` (a half-done allocation or free), recount the list.
    * Bucket repair: walk the chain (it is always well-formed), recount it; for each of ``pend_new`` and
      ``pend_old``: if that slot is not in the chain but is ``U`` and owned by this bucket, nobody else can reach it,
      so free it (``pend_new`` to the stripe it came from, which that stripe's own repair first makes consistent;
      ``pend_old`` to the bucket's stripe); then clear the intent log and ``dirty``.  A slot that is in the chain is
      kept; one that is ``F`` or owned by another bucket was never taken or is already free.
    So after any crash point an entry has its old value or its new one, never a mixture, and no slot is lost or
    shared (``check()`` verifies this; the tests kill a process at every step of every operation).  ``compute``'s
    ``fn`` runs before anything is written: an exception from it, a too-large result or a full segment change
    nothing.

Caveats
    ``compute``'s ``fn`` runs under the bucket lock: keep it short and never touch the table from it (the locks are
    not re-entrant; re-locking a bucket lock the thread already holds raises ``ShmError`` in both twins rather than
    hanging).  ``close()`` must not race with operations of other threads on the same object.  Each lock operation
    here is a system call (two per read): the pure twin is the reference and the fallback; the Cython twin is the one
    to deploy.  The segment's numbers are native little-endian; the ``Record`` format is ``marshal``, so every process
    on a segment must run the same interpreter version (they do: the supervisor forks or spawns them).

Crash points
    ``_set_crash_point(n)`` (tests only, in both twins) makes the process SIGKILL itself right after write step ``n``
    (``CP_*`` below), which is how the tests check the repair after every step of every mutation.
"""
import errno
import marshal
import mmap
import os
import signal
import struct
import sys
import threading
import time
import zlib

from ftsip.location.records import Binding, LocationStoreError, Record

try:
    import fcntl
except ImportError:  # not POSIX: the pure twin cannot run, the module still imports
    fcntl = None

__all__ = ["ShmError", "SegmentFull", "ValueTooLarge", "PyShmTable", "ShmTable", "ShmLocationTable", "BACKEND",
           "verify_segment", "dump_record", "load_record", "SHM_DIR", "segment_path"]

SHM_DIR = "/dev/shm"
MAGIC = b"FTSIPSHM"
LAYOUT_VERSION = 1
HEADER_SIZE = 256
LOCK_AREA = 40
BUCKET_SIZE = 64
STRIPE_SIZE = 128
SLOT_HEADER = 20
MAX_STRIPES = 64
MAX_WIDTH = 1 << 24
MAX_SLOTS = (1 << 32) - 2
MAX_SLOT_SIZE = 1 << 20
MIN_SLOT_SIZE = 32
MAX_KEY = 0xFFFF
NIL = 0xFFFFFFFF
FREE = 0x46     # 'F'
USED = 0x55     # 'U'
LOCK_FCNTL = 1
LOCK_PTHREAD = 2
LOCK_NAMES = {LOCK_FCNTL: "fcntl", LOCK_PTHREAD: "pthread-robust"}
HASH_CRC32 = 1
KEY_UTF8 = 1

# bucket record fields
B_HEAD, B_COUNT, B_PNEW, B_POLD, B_PSTRIPE, B_DIRTY, B_RECOV = 40, 44, 48, 52, 56, 58, 60
# stripe record fields
S_HEAD, S_COUNT, S_DIRTY, S_RECOV, S_FULL, S_BIG, S_STEALS = 40, 44, 48, 52, 56, 64, 72
# slot fields
O_NEXT, O_OWNER, O_HASH, O_VLEN, O_KLEN, O_STATE, O_KFLAGS = 0, 4, 8, 12, 16, 18, 19

_HDR = struct.Struct("<8s12I4QdII")
H_LOCK_KIND = 44      # offset of lock_kind in the header
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32x2 = struct.Struct("<II")
_SLOT = struct.Struct("<IIIIHBB")     # next, owner, hash, vlen, klen, state, kflags
_SLOTW = struct.Struct("<IIIIH")      # next, owner, hash, vlen, klen (state and kflags written separately)
_STATS_B = struct.Struct("<II")      # head, count

# Crash points for the tests (``_set_crash_point``): the process SIGKILLs itself right after that step.
CP_DIRTY, CP_PEND, CP_OWNER, CP_STATE, CP_POP_HEAD, CP_POP_COUNT, CP_WRITTEN, CP_PEND_OLD, CP_COMMIT, CP_COUNT, \
    CP_PUSH_NEXT, CP_PUSH_HEAD, CP_PUSH_STATE, CP_PUSH_COUNT, CP_FREED, CP_CLEARED = range(1, 17)
CRASH_POINTS = tuple(range(1, 17))
_crash_point = 0


def _set_crash_point(n):
    """Tests only: SIGKILL this process right after write step ``n`` (0 disables)."""
    global _crash_point
    _crash_point = int(n)


def _crash(n):
    if _crash_point == n:
        os.kill(os.getpid(), signal.SIGKILL)


class ShmError(LocationStoreError):
    """A shared-memory location segment could not be created, opened or used."""


class SegmentFull(ShmError):
    """No free slot is left in the segment (nothing was changed)."""


class ValueTooLarge(ShmError, ValueError):
    """A key and value do not fit in one slot (nothing was changed)."""


def segment_path(name):
    """``/dev/shm/<name>``; the name must be a plain file name."""
    if (type(name) is not str or not name or len(name) > 200 or "/" in name or "\0" in name
            or name in (".", "..")):
        raise ShmError(f"bad shared-memory segment name {name!r}: use a plain file name such as 'ftsip-1234'")
    return os.path.join(SHM_DIR, name)


def check_geometry(width, slots, slot_size):
    """Validate ``create``'s sizes; returns the derived layout as a dict (``slot_size`` rounded up to a multiple
    of 8)."""
    for what, v in (("width", width), ("slots", slots), ("slot_size", slot_size)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ShmError(f"{what} must be an int, got {v!r}")
    if not 1 <= width <= MAX_WIDTH or width & (width - 1):
        raise ShmError(f"[location] hash_width must be a power of two between 1 and 2**24 (e.g. 4096), got {width}")
    if not 1 <= slots <= MAX_SLOTS:
        raise ShmError(f"[location] shm_slots must be between 1 and {MAX_SLOTS}, got {slots}")
    if not MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE:
        raise ShmError(f"[location] shm_slot_size must be between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE} bytes, got "
                       f"{slot_size}")
    slot_size = (slot_size + 7) & ~7        # slots stay 8-aligned
    stripes = min(width, MAX_STRIPES)
    buckets_off = HEADER_SIZE
    stripes_off = buckets_off + width * BUCKET_SIZE
    slots_off = (stripes_off + stripes * STRIPE_SIZE + 63) & ~63
    total = slots_off + slots * slot_size
    return {"width": width, "stripes": stripes, "slots": slots, "slot_size": slot_size,
            "reserve": max(1, min(64, slots // 64)), "buckets_off": buckets_off, "stripes_off": stripes_off,
            "slots_off": slots_off, "total_size": total}


def pack_header(geo, lock_kind):
    return _HDR.pack(b"\0" * 8, LAYOUT_VERSION, HEADER_SIZE, geo["width"], geo["stripes"], geo["slots"],
                     geo["slot_size"], BUCKET_SIZE, STRIPE_SIZE, LOCK_AREA, lock_kind, HASH_CRC32, geo["reserve"],
                     geo["buckets_off"], geo["stripes_off"], geo["slots_off"], geo["total_size"], time.time(),
                     os.getpid(), SLOT_HEADER)


def read_header(buf, name="?", size=None):
    """Parse and validate a segment header; returns a dict (raises ShmError)."""
    if size is not None and size < HEADER_SIZE:
        raise ShmError(f"shared-memory segment {name!r} is too small to be an ftsip location segment")
    (magic, version, header_size, width, stripes, slots, slot_size, bucket_size, stripe_size, lock_area, lock_kind,
     hash_kind, reserve, buckets_off, stripes_off, slots_off, total, created_at, pid, slot_header) = \
        _HDR.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ShmError(f"shared-memory segment {name!r} is not an ftsip location segment (or is still being "
                       f"created)")
    if version != LAYOUT_VERSION:
        raise ShmError(f"shared-memory segment {name!r} has layout version {version}, this ftsip reads "
                       f"{LAYOUT_VERSION}: restart the supervisor so it creates a new one")
    geo = check_geometry(width, slots, slot_size)
    if (header_size, bucket_size, stripe_size, lock_area, hash_kind, slot_header, stripes, buckets_off,
            stripes_off, slots_off, total) != (HEADER_SIZE, BUCKET_SIZE, STRIPE_SIZE, LOCK_AREA, HASH_CRC32,
                                                SLOT_HEADER, geo["stripes"], geo["buckets_off"], geo["stripes_off"],
                                                geo["slots_off"], geo["total_size"]):
        raise ShmError(f"shared-memory segment {name!r} has an inconsistent header")
    if size is not None and size < total:
        raise ShmError(f"shared-memory segment {name!r} is truncated ({size} of {total} bytes)")
    geo.update(lock_kind=lock_kind, reserve=reserve, created_at=created_at, creator_pid=pid)
    return geo


def key_bytes(key):
    """(bytes, kflags) of a str key: latin-1 when possible, else UTF-8 with the flag."""
    if type(key) is not str:
        raise TypeError(f"location table keys must be str, not {type(key).__name__}")
    try:
        return key.encode("latin-1"), 0
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogatepass"), KEY_UTF8


def key_str(kb, kflags):
    return kb.decode("utf-8", "surrogatepass") if kflags & KEY_UTF8 else kb.decode("latin-1")


def full_message(name, slots, reserve):
    return (f"the shared-memory location segment {name!r} is full: its {slots} slots hold bindings (the last "
            f"{reserve} are kept for refreshes); raise [location] shm_slots and restart")


def too_large_message(name, key, klen, vlen, slot_size):
    if klen > MAX_KEY:
        return f"a location table key is at most {MAX_KEY} bytes, {key[:40]!r}... has {klen}"
    return (f"the record of {key!r} needs {klen + vlen} bytes ({klen} key + {vlen} value) but a slot of the "
            f"shared-memory location segment {name!r} holds {slot_size - SLOT_HEADER}; raise [location] "
            f"shm_slot_size (now {slot_size}) and restart")


def _as_value(v):
    if type(v) is bytes:
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"shared-memory table values must be bytes, not {type(v).__name__}")


def _map_file(name, create_geo=None):
    """Create (O_EXCL) or open /dev/shm/name; returns (fd, mmap, size)."""
    path = segment_path(name)
    if create_geo is not None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            raise ShmError(f"shared-memory segment {name!r} already exists ({path}); a supervisor may be using "
                           f"it, or a previous one died: remove it (ShmTable.unlink) or pick another name") from None
        except OSError as e:
            raise ShmError(f"cannot create shared-memory segment {path}: {e.strerror}") from None
        size = create_geo["total_size"]
        try:
            try:
                os.posix_fallocate(fd, 0, size)     # ENOSPC now rather than SIGBUS later
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise ShmError(f"cannot reserve {size} bytes for shared-memory segment {path}: {e.strerror} "
                                   f"(lower [location] shm_slots or shm_slot_size, or enlarge {SHM_DIR})") from None
                os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
    else:
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ShmError(f"shared-memory segment {name!r} does not exist ({path}): the supervisor creates it "
                           f"before it starts the workers") from None
        except OSError as e:
            raise ShmError(f"cannot open shared-memory segment {path}: {e.strerror}") from None
        size = os.fstat(fd).st_size
    try:
        mm = mmap.mmap(fd, size) if size else None
    except OSError as e:
        os.close(fd)
        raise ShmError(f"cannot map shared-memory segment {path}: {e.strerror}") from None
    return fd, mm, size


def unlink_segment(name):
    """Remove /dev/shm/name; True if it existed. Processes that have it open keep their mapping."""
    try:
        os.unlink(segment_path(name))
        return True
    except FileNotFoundError:
        return False


def init_segment(mm, geo, lock_kind):
    """Write the free lists and the header of a new segment (magic last). The lock areas stay zero."""
    width, stripes, slots, ss = geo["width"], geo["stripes"], geo["slots"], geo["slot_size"]
    boff, toff, soff = geo["buckets_off"], geo["stripes_off"], geo["slots_off"]
    for b in range(width):
        o = boff + b * BUCKET_SIZE
        struct.pack_into("<IIIIHBBI", mm, o + B_HEAD, NIL, 0, NIL, NIL, 0, 0, 0, 0)
    # slot i belongs to stripe i * stripes // slots at start: contiguous runs, linked in ascending order
    hdr = bytearray(SLOT_HEADER)
    for t in range(stripes):
        lo = t * slots // stripes
        hi = (t + 1) * slots // stripes
        o = toff + t * STRIPE_SIZE
        struct.pack_into("<IIII", mm, o + S_HEAD, lo if hi > lo else NIL, hi - lo, 0, 0)
        for i in range(lo, hi):
            _SLOT.pack_into(hdr, 0, i + 1 if i + 1 < hi else NIL, NIL, 0, 0, 0, FREE, 0)
            p = soff + i * ss
            mm[p:p + SLOT_HEADER] = hdr
    mm[0:_HDR.size] = pack_header(geo, lock_kind)
    mm[0:8] = MAGIC


def verify_segment(buf):
    """Check the whole segment's invariants (every slot in exactly one chain or free list, chains hashed to their
    bucket, no duplicate keys, counts right). Reads without locks: call it when the segment is quiescent and every
    record has been repaired (``ShmTable.check`` does both). Returns a list of problems (empty when sound)."""
    geo = read_header(buf, size=len(buf))
    width, stripes, slots, ss = geo["width"], geo["stripes"], geo["slots"], geo["slot_size"]
    boff, toff, soff = geo["buckets_off"], geo["stripes_off"], geo["slots_off"]
    where = [None] * slots
    problems = []
    for b in range(width):
        o = boff + b * BUCKET_SIZE
        head, count, pnew, pold, _, dirty, _ = struct.unpack_from("<IIIIHBxI", buf, o + B_HEAD)
        if dirty or pnew != NIL or pold != NIL:
            problems.append(f"bucket {b}: dirty={dirty} pend_new={pnew} pend_old={pold} after repair")
        n = 0
        x = head
        keys = set()
        while x != NIL:
            if x >= slots:
                problems.append(f"bucket {b}: link to slot {x} out of range")
                break
            if where[x] is not None:
                problems.append(f"bucket {b}: slot {x} already in {where[x]}")
                break
            where[x] = f"bucket {b}"
            p = soff + x * ss
            nxt, owner, h, vlen, klen, state, kflags = _SLOT.unpack_from(buf, p)
            kb = bytes(buf[p + SLOT_HEADER:p + SLOT_HEADER + klen])
            if state != USED or owner != b:
                problems.append(f"bucket {b}: slot {x} state={state:#x} owner={owner}")
            if klen + vlen > ss - SLOT_HEADER:
                problems.append(f"bucket {b}: slot {x} lengths {klen}+{vlen} overflow the slot")
            if zlib.crc32(kb) != h or h & (width - 1) != b:
                problems.append(f"bucket {b}: slot {x} hash {h:#x} does not match its key or bucket")
            if (kflags, kb) in keys:
                problems.append(f"bucket {b}: duplicate key {kb!r}")
            keys.add((kflags, kb))
            n += 1
            x = nxt
        if n != count:
            problems.append(f"bucket {b}: count {count} but {n} slots chained")
    for t in range(stripes):
        o = toff + t * STRIPE_SIZE
        head, count, dirty = struct.unpack_from("<III", buf, o + S_HEAD)
        if dirty:
            problems.append(f"stripe {t}: dirty after repair")
        n = 0
        x = head
        while x != NIL:
            if x >= slots:
                problems.append(f"stripe {t}: link to slot {x} out of range")
                break
            if where[x] is not None:
                problems.append(f"stripe {t}: slot {x} already in {where[x]}")
                break
            where[x] = f"stripe {t}"
            p = soff + x * ss
            nxt = _U32.unpack_from(buf, p)[0]
            if buf[p + O_STATE] != FREE:
                problems.append(f"stripe {t}: slot {x} on the free list is not free")
            n += 1
            x = nxt
        if n != count:
            problems.append(f"stripe {t}: free_count {count} but {n} slots listed")
    lost = [i for i in range(slots) if where[i] is None]
    if lost:
        problems.append(f"{len(lost)} slot(s) in no chain and no free list: {lost[:10]}")
    return problems


# -- the pure twin ---------------------------------------------------------------------------------------------------
class _Shared:
    """What every PyShmTable of this process on one segment shares: fd, mapping, per-process locks."""
    __slots__ = ("key", "fd", "mm", "refs", "btl", "stl", "owners")

    def __init__(self, key, fd, mm, stripes):
        self.key = key
        self.fd = fd
        self.mm = mm
        self.refs = 0
        self.btl = [threading.Lock() for _ in range(MAX_STRIPES)]   # bucket b -> btl[b & 63]
        self.owners = [0] * MAX_STRIPES                             # thread holding btl[i] (re-entry check)
        self.stl = [threading.Lock() for _ in range(stripes)]


_shared = {}
_shared_lock = threading.Lock()
_get_ident = threading.get_ident
_REENTRY = ("a shared-memory table was used from inside compute's fn: the bucket locks are not re-entrant (fn must "
            "only compute the new value)")


def _after_fork_in_child():
    # a lock held by another thread of the parent at fork time would never be released in the child
    global _shared_lock
    _shared_lock = threading.Lock()
    for sh in _shared.values():
        sh.btl[:] = [threading.Lock() for _ in sh.btl]
        sh.owners[:] = [0] * len(sh.owners)
        sh.stl[:] = [threading.Lock() for _ in sh.stl]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PyShmTable:
    """A fixed-size chained hash table in a shared-memory segment: str -> bytes, shared between processes.

    ``PyShmTable.create(name, width, slots, slot_size)`` / ``PyShmTable.attach(name, adopt=False)``; see the module
    docstring for the layout and the locking.
    """

    BACKEND = "python"
    LOCK_KIND = LOCK_FCNTL

    def __init__(self, *args, **kwargs):
        raise TypeError("use PyShmTable.create(name, width, slots, slot_size) or PyShmTable.attach(name)")

    # -- life cycle ----------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, name, width, slots, slot_size):
        """Create the segment /dev/shm/<name> (it must not exist) and return it attached."""
        if fcntl is None:
            raise ShmError("the pure shared-memory table needs POSIX fcntl locks")
        geo = check_geometry(width, slots, slot_size)
        fd, mm, size = _map_file(name, geo)
        try:
            init_segment(mm, geo, cls.LOCK_KIND)
        except BaseException:
            mm.close()
            os.close(fd)
            unlink_segment(name)
            raise
        mm.close()
        os.close(fd)
        return cls.attach(name)

    @classmethod
    def attach(cls, name, adopt=False):
        """Open an existing segment. ``adopt=True`` takes over a segment last used by the other twin (only when no
        other process uses it)."""
        if fcntl is None:
            raise ShmError("the pure shared-memory table needs POSIX fcntl locks")
        path = segment_path(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ShmError(f"shared-memory segment {name!r} does not exist ({path}): the supervisor creates it "
                           f"before it starts the workers") from None
        key = (st.st_dev, st.st_ino)
        with _shared_lock:
            sh = _shared.get(key)
            if sh is None or sh.fd < 0:
                fd, mm, size = _map_file(name)
                try:
                    geo = read_header(mm if mm is not None else b"", name, size)
                    if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != key:
                        raise ShmError(f"shared-memory segment {name!r} was replaced while being opened")
                except BaseException:
                    if mm is not None:
                        mm.close()
                    os.close(fd)
                    raise
                sh = _Shared(key, fd, mm, geo["stripes"])
                _shared[key] = sh
            else:
                geo = read_header(sh.mm, name, len(sh.mm))
            if geo["lock_kind"] != cls.LOCK_KIND:
                if not adopt:
                    if sh.refs == 0:
                        _release(sh)
                    raise ShmError(
                        f"shared-memory segment {name!r} is locked with {LOCK_NAMES.get(geo['lock_kind'], '?')} "
                        f"locks (the other ftsip twin) but this process uses {LOCK_NAMES[cls.LOCK_KIND]} locks: "
                        f"every process on a segment must run the same build (check FTSIP_PURE and that "
                        f"ftsip/_fast is built everywhere)")
                struct.pack_into("<I", sh.mm, H_LOCK_KIND, cls.LOCK_KIND)
                geo["lock_kind"] = cls.LOCK_KIND
            sh.refs += 1
        self = object.__new__(cls)
        self._setup(name, sh, geo)
        return self

    def _setup(self, name, sh, geo):
        self.name = name
        self._sh = sh
        self._fd = sh.fd
        self._mm = sh.mm
        self._btl = sh.btl
        self._owners = sh.owners
        self._stl = sh.stl
        self._geo = geo
        self._width = geo["width"]
        self._mask = geo["width"] - 1
        self._nstripes = geo["stripes"]
        self._smask = geo["stripes"] - 1
        self._slots = geo["slots"]
        self._ss = geo["slot_size"]
        self._payload = geo["slot_size"] - SLOT_HEADER
        self._reserve = geo["reserve"]
        self._boff = geo["buckets_off"]
        self._toff = geo["stripes_off"]
        self._soff = geo["slots_off"]
        self.closed = False

    @staticmethod
    def unlink(name):
        """Remove the segment's name (mapped copies stay valid until closed). True if it existed."""
        return unlink_segment(name)

    def close(self):
        if self.closed:
            return
        self.closed = True
        with _shared_lock:
            sh = self._sh
            sh.refs -= 1
            if sh.refs <= 0:
                _release(sh)
        self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self.closed:
                self.close()
        except Exception:
            pass

    @property
    def width(self):
        return self._width

    @property
    def slots(self):
        return self._slots

    @property
    def slot_size(self):
        return self._ss

    # -- locks -----------------------------------------------------------------------------------------------------
    def _lock_bucket(self, b):
        o = self._boff + b * BUCKET_SIZE
        i = b & 63
        me = _get_ident()
        if self._owners[i] == me:
            raise ShmError(_REENTRY)
        tl = self._btl[i]
        tl.acquire()
        self._owners[i] = me
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, o, 0)
        except BaseException:
            self._owners[i] = 0
            tl.release()
            raise
        if self._mm[o + B_DIRTY]:
            try:
                self._repair_bucket(b, o)
            except BaseException:
                self._unlock_bucket(b, o)
                raise
        return o

    def _unlock_bucket(self, b, o):
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, o, 0)
        finally:
            self._owners[b & 63] = 0
            self._btl[b & 63].release()

    def _lock_stripe(self, t):
        o = self._toff + t * STRIPE_SIZE
        tl = self._stl[t]
        tl.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, o, 0)
        except BaseException:
            tl.release()
            raise
        if _U32.unpack_from(self._mm, o + S_DIRTY)[0]:
            try:
                self._repair_stripe(t, o)
            except BaseException:
                self._unlock_stripe(t, o)
                raise
        return o

    def _unlock_stripe(self, t, o):
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, o, 0)
        finally:
            self._stl[t].release()

    # -- repair after a holder died mid-update (see the module docstring) ------------------------------------------
    def _repair_stripe(self, t, o):
        mm, soff, ss, slots = self._mm, self._soff, self._ss, self._slots
        h = _U32.unpack_from(mm, o + S_HEAD)[0]
        n = 0
        while h != NIL and h < slots and mm[soff + h * ss + O_STATE] != FREE and n <= slots:
            h = _U32.unpack_from(mm, soff + h * ss)[0]
            n += 1
        if h >= slots:
            h = NIL
        _U32.pack_into(mm, o + S_HEAD, h)
        n = 0
        link = o + S_HEAD
        x = h
        while x != NIL:
            p = soff + x * ss
            if x >= slots or mm[p + O_STATE] != FREE or n >= slots:
                _U32.pack_into(mm, link, NIL)
                break
            n += 1
            link = p
            x = _U32.unpack_from(mm, p)[0]
        _U32.pack_into(mm, o + S_COUNT, n)
        _U32.pack_into(mm, o + S_RECOV, _U32.unpack_from(mm, o + S_RECOV)[0] + 1)
        _U32.pack_into(mm, o + S_DIRTY, 0)

    def _repair_bucket(self, b, o):
        mm, soff, ss, slots = self._mm, self._soff, self._ss, self._slots
        chain = set()
        link = o + B_HEAD
        x = _U32.unpack_from(mm, link)[0]
        while x != NIL:
            p = soff + x * ss
            if (x >= slots or x in chain or mm[p + O_STATE] != USED
                    or _U32.unpack_from(mm, p + O_OWNER)[0] != b):
                _U32.pack_into(mm, link, NIL)       # never happens with the write order used; defensive
                break
            chain.add(x)
            link = p
            x = _U32.unpack_from(mm, p)[0]
        pnew, pold = _U32x2.unpack_from(mm, o + B_PNEW)
        pstripe = _U16.unpack_from(mm, o + B_PSTRIPE)[0]
        for x, t in ((pnew, pstripe), (NIL if pold == pnew else pold, b & self._smask)):
            if x == NIL or x >= slots or x in chain or t >= self._nstripes:
                continue
            p = soff + x * ss
            if mm[p + O_STATE] == USED and _U32.unpack_from(mm, p + O_OWNER)[0] == b:
                self._push(x, p, t)
        _U32.pack_into(mm, o + B_COUNT, len(chain))
        _U32x2.pack_into(mm, o + B_PNEW, NIL, NIL)
        _U32.pack_into(mm, o + B_RECOV, _U32.unpack_from(mm, o + B_RECOV)[0] + 1)
        mm[o + B_DIRTY] = 0

    # -- free lists ------------------------------------------------------------------------------------------------
    def _free_total(self):
        mm, toff = self._mm, self._toff
        return sum(_U32.unpack_from(mm, toff + t * STRIPE_SIZE + S_COUNT)[0] for t in range(self._nstripes))

    def _alloc(self, b, o, new_key):
        """Take a free slot for bucket b (lock held): sets pend_stripe/pend_new. Raises SegmentFull."""
        mm, smask = self._mm, self._smask
        s = b & smask
        for i in range(self._nstripes):
            t = (s + i) & smask
            to = self._lock_stripe(t)
            try:
                head, cnt = _U32x2.unpack_from(mm, to + S_HEAD)
                if i == 0 and new_key and cnt <= self._reserve and self._free_total() <= self._reserve:
                    break
                if head == NIL:
                    continue
                p = self._soff + head * self._ss
                _U32.pack_into(mm, to + S_DIRTY, 1)
                _U16.pack_into(mm, o + B_PSTRIPE, t)
                _U32.pack_into(mm, o + B_PNEW, head)
                if _crash_point:
                    _crash(CP_PEND)
                _U32.pack_into(mm, p + O_OWNER, b)
                if _crash_point:
                    _crash(CP_OWNER)
                mm[p + O_STATE] = USED
                if _crash_point:
                    _crash(CP_STATE)
                _U32.pack_into(mm, to + S_HEAD, _U32.unpack_from(mm, p)[0])
                if _crash_point:
                    _crash(CP_POP_HEAD)
                _U32.pack_into(mm, to + S_COUNT, cnt - 1)
                if _crash_point:
                    _crash(CP_POP_COUNT)
                if i:
                    _U64.pack_into(mm, to + S_STEALS, _U64.unpack_from(mm, to + S_STEALS)[0] + 1)
                _U32.pack_into(mm, to + S_DIRTY, 0)
                return head
            finally:
                self._unlock_stripe(t, to)
        self._count_error(s, S_FULL)
        raise SegmentFull(full_message(self.name, self._slots, self._reserve))

    def _push(self, x, p, t):
        """Give slot x (at offset p) back to stripe t's free list."""
        mm = self._mm
        to = self._lock_stripe(t)
        try:
            _U32.pack_into(mm, to + S_DIRTY, 1)
            head, cnt = _U32x2.unpack_from(mm, to + S_HEAD)
            _U32.pack_into(mm, p + O_NEXT, head)
            if _crash_point:
                _crash(CP_PUSH_NEXT)
            _U32.pack_into(mm, to + S_HEAD, x)
            if _crash_point:
                _crash(CP_PUSH_HEAD)
            mm[p + O_STATE] = FREE
            if _crash_point:
                _crash(CP_PUSH_STATE)
            _U32.pack_into(mm, to + S_COUNT, cnt + 1)
            if _crash_point:
                _crash(CP_PUSH_COUNT)
            _U32.pack_into(mm, to + S_DIRTY, 0)
        finally:
            self._unlock_stripe(t, to)

    def _count_error(self, t, field):
        to = self._lock_stripe(t)
        try:
            _U64.pack_into(self._mm, to + field, _U64.unpack_from(self._mm, to + field)[0] + 1)
        finally:
            self._unlock_stripe(t, to)

    # -- the three mutations (bucket lock held) --------------------------------------------------------------------
    def _write_slot(self, y, nxt, h, kb, kf, value):
        mm = self._mm
        p = self._soff + y * self._ss
        klen = len(kb)
        _U32.pack_into(mm, p + O_NEXT, nxt)
        struct.pack_into("<IIH", mm, p + O_HASH, h, len(value), klen)
        mm[p + O_KFLAGS] = kf
        d = p + SLOT_HEADER
        mm[d:d + klen] = kb
        mm[d + klen:d + klen + len(value)] = value
        if _crash_point:
            _crash(CP_WRITTEN)

    def _alloc_dirty(self, b, o, new_key):
        mm = self._mm
        mm[o + B_DIRTY] = 1
        if _crash_point:
            _crash(CP_DIRTY)
        try:
            return self._alloc(b, o, new_key)
        except SegmentFull:
            mm[o + B_DIRTY] = 0     # nothing was changed
            raise

    def _insert(self, b, o, h, kb, kf, value):
        mm = self._mm
        y = self._alloc_dirty(b, o, True)
        self._write_slot(y, _U32.unpack_from(mm, o + B_HEAD)[0], h, kb, kf, value)
        _U32.pack_into(mm, o + B_HEAD, y)                       # commit
        if _crash_point:
            _crash(CP_COMMIT)
        _U32.pack_into(mm, o + B_COUNT, _U32.unpack_from(mm, o + B_COUNT)[0] + 1)
        if _crash_point:
            _crash(CP_COUNT)
        _U32.pack_into(mm, o + B_PNEW, NIL)
        if _crash_point:
            _crash(CP_CLEARED)
        mm[o + B_DIRTY] = 0

    def _replace(self, b, o, link, x, xp, h, kb, kf, value):
        mm = self._mm
        y = self._alloc_dirty(b, o, False)
        self._write_slot(y, _U32.unpack_from(mm, xp + O_NEXT)[0], h, kb, kf, value)
        _U32.pack_into(mm, o + B_POLD, x)
        if _crash_point:
            _crash(CP_PEND_OLD)
        _U32.pack_into(mm, link, y)                             # commit
        if _crash_point:
            _crash(CP_COMMIT)
        self._push(x, xp, b & self._smask)
        if _crash_point:
            _crash(CP_FREED)
        _U32x2.pack_into(mm, o + B_PNEW, NIL, NIL)
        if _crash_point:
            _crash(CP_CLEARED)
        mm[o + B_DIRTY] = 0

    def _delete(self, b, o, link, x, xp):
        mm = self._mm
        mm[o + B_DIRTY] = 1
        if _crash_point:
            _crash(CP_DIRTY)
        _U32.pack_into(mm, o + B_POLD, x)
        if _crash_point:
            _crash(CP_PEND_OLD)
        _U32.pack_into(mm, link, _U32.unpack_from(mm, xp + O_NEXT)[0])     # commit
        if _crash_point:
            _crash(CP_COMMIT)
        _U32.pack_into(mm, o + B_COUNT, _U32.unpack_from(mm, o + B_COUNT)[0] - 1)
        if _crash_point:
            _crash(CP_COUNT)
        self._push(x, xp, b & self._smask)
        if _crash_point:
            _crash(CP_FREED)
        _U32.pack_into(mm, o + B_POLD, NIL)
        if _crash_point:
            _crash(CP_CLEARED)
        mm[o + B_DIRTY] = 0

    def _find(self, o, h, kb, kf):
        """(link offset, slot index, slot offset, vlen) of the key in bucket record o, or (.., NIL, -1, 0)."""
        mm, soff, ss = self._mm, self._soff, self._ss
        klen = len(kb)
        link = o + B_HEAD
        x = _U32.unpack_from(mm, link)[0]
        while x != NIL:
            p = soff + x * ss
            nxt, _, hh, vlen, kl, _, fl = _SLOT.unpack_from(mm, p)
            if hh == h and kl == klen and fl == kf and mm[p + SLOT_HEADER:p + SLOT_HEADER + klen] == kb:
                return link, x, p, vlen
            link = p
            x = nxt
        return link, NIL, -1, 0

    def _check_open(self):
        if self.closed:
            raise ShmError(f"shared-memory table {self.name!r} is closed")

    def _too_large(self, key, kb, value, b):
        self._count_error(b & self._smask, S_BIG)
        return ValueTooLarge(too_large_message(self.name, key, len(kb), len(value), self._ss))

    # -- the map API -----------------------------------------------------------------------------------------------
    def get(self, key, default=None):
        kb, kf = key_bytes(key)
        if self.closed:
            self._check_open()
        h = zlib.crc32(kb)
        b = h & self._mask
        o = self._lock_bucket(b)
        try:
            _, x, p, vlen = self._find(o, h, kb, kf)
            if x == NIL:
                return default
            d = p + SLOT_HEADER + len(kb)
            return self._mm[d:d + vlen]
        finally:
            self._unlock_bucket(b, o)

    def __contains__(self, key):
        kb, kf = key_bytes(key)
        if self.closed:
            self._check_open()
        h = zlib.crc32(kb)
        b = h & self._mask
        o = self._lock_bucket(b)
        try:
            return self._find(o, h, kb, kf)[1] != NIL
        finally:
            self._unlock_bucket(b, o)

    def put(self, key, value):
        """Insert or replace. Raises SegmentFull / ValueTooLarge (nothing changed)."""
        kb, kf = key_bytes(key)
        value = _as_value(value)
        if self.closed:
            self._check_open()
        h = zlib.crc32(kb)
        b = h & self._mask
        if len(kb) + len(value) > self._payload or len(kb) > MAX_KEY:
            raise self._too_large(key, kb, value, b)
        o = self._lock_bucket(b)
        try:
            link, x, p, _ = self._find(o, h, kb, kf)
            if x == NIL:
                self._insert(b, o, h, kb, kf, value)
            else:
                self._replace(b, o, link, x, p, h, kb, kf, value)
        finally:
            self._unlock_bucket(b, o)

    def pop(self, key, default=None):
        kb, kf = key_bytes(key)
        if self.closed:
            self._check_open()
        h = zlib.crc32(kb)
        b = h & self._mask
        o = self._lock_bucket(b)
        try:
            link, x, p, vlen = self._find(o, h, kb, kf)
            if x == NIL:
                return default
            d = p + SLOT_HEADER + len(kb)
            old = self._mm[d:d + vlen]
            self._delete(b, o, link, x, p)
            return old
        finally:
            self._unlock_bucket(b, o)

    def compute(self, key, fn):
        """Atomically replace the value with ``fn(old_bytes_or_None)`` under the bucket's cross-process lock; None
        deletes; returning ``old`` itself changes nothing. Returns the new value. An exception from ``fn`` (or
        SegmentFull / ValueTooLarge for its result) propagates and leaves the entry unchanged."""
        kb, kf = key_bytes(key)
        if self.closed:
            self._check_open()
        h = zlib.crc32(kb)
        b = h & self._mask
        o = self._lock_bucket(b)
        try:
            link, x, p, vlen = self._find(o, h, kb, kf)
            if x == NIL:
                old = None
            else:
                d = p + SLOT_HEADER + len(kb)
                old = self._mm[d:d + vlen]
            new = fn(old)
            if new is None:
                if x != NIL:
                    self._delete(b, o, link, x, p)
                return None
            if new is old:
                return new
            new = _as_value(new)
            if len(kb) + len(new) > self._payload or len(kb) > MAX_KEY:
                raise self._too_large(key, kb, new, b)
            if x == NIL:
                self._insert(b, o, h, kb, kf, new)
            else:
                self._replace(b, o, link, x, p, h, kb, kf, new)
            return new
        finally:
            self._unlock_bucket(b, o)

    def __len__(self):
        if self.closed:
            self._check_open()
        n = self._slots - self._free_total()
        return n if n > 0 else 0

    def _scan(self, pairs):
        mm = self._mm
        if self.closed:
            self._check_open()
        boff, soff, ss = self._boff, self._soff, self._ss
        for b in range(self._width):
            if _U32.unpack_from(mm, boff + b * BUCKET_SIZE + B_HEAD)[0] == NIL \
                    and not mm[boff + b * BUCKET_SIZE + B_DIRTY]:
                continue        # empty: no key present throughout the scan lives here
            batch = []
            o = self._lock_bucket(b)
            try:
                x = _U32.unpack_from(mm, o + B_HEAD)[0]
                while x != NIL:
                    p = soff + x * ss
                    nxt, _, _, vlen, klen, _, kf = _SLOT.unpack_from(mm, p)
                    k = key_str(mm[p + SLOT_HEADER:p + SLOT_HEADER + klen], kf)
                    if pairs:
                        d = p + SLOT_HEADER + klen
                        batch.append((k, mm[d:d + vlen]))
                    else:
                        batch.append(k)
                    x = nxt
            finally:
                self._unlock_bucket(b, o)
            yield from batch

    def items(self):
        """Generator of (key, value), bucket by bucket, each bucket read under its lock."""
        return self._scan(True)

    def keys(self):
        return self._scan(False)

    __iter__ = keys

    # -- integrity and introspection -------------------------------------------------------------------------------
    def check(self):
        """Lock every bucket and stripe in turn (repairing what a dead process left), then verify the whole segment
        (``verify_segment``). For tests and for the supervisor after a worker died: run it when no worker is
        writing. Returns a list of problems, empty when the segment is sound."""
        self._check_open()
        for b in range(self._width):
            self._unlock_bucket(b, self._lock_bucket(b))
        for t in range(self._nstripes):
            self._unlock_stripe(t, self._lock_stripe(t))
        return verify_segment(self._mm)

    def stats(self):
        self._check_open()
        mm = self._mm
        stripes = [struct.unpack_from("<IIIIQQQ", mm, self._toff + t * STRIPE_SIZE + S_HEAD)
                   for t in range(self._nstripes)]
        longest = 0
        brecov = 0
        boff = self._boff
        for b in range(self._width):
            c = _U32.unpack_from(mm, boff + b * BUCKET_SIZE + B_COUNT)[0]
            if c > longest:
                longest = c
            brecov += _U32.unpack_from(mm, boff + b * BUCKET_SIZE + B_RECOV)[0]
        return _stats_dict(self, self._geo, stripes, longest, brecov)

    def __repr__(self):
        state = "closed" if self.closed else f"entries={len(self)}"
        return f"<{type(self).__name__} {self.name!r} width={self._width} slots={self._slots} {state}>"


def _release(sh):
    if sh.fd >= 0:
        if sh.mm is not None:
            try:
                sh.mm.close()
            except BufferError:     # a memoryview is still alive somewhere: let the GC unmap it
                pass
        os.close(sh.fd)
        sh.fd = -1
    _shared.pop(sh.key, None)


def _stats_dict(t, geo, stripes, longest, bucket_recoveries):
    """stats() of either twin; ``stripes`` holds (free_head, free_count, dirty, recoveries, full, too_large,
    steals) per stripe."""
    free = sum(s[1] for s in stripes)
    used = max(0, geo["slots"] - free)
    total = geo["total_size"]
    return {
        "kind": "shm",
        "backend": t.BACKEND,
        "lock": LOCK_NAMES[t.LOCK_KIND],
        "name": t.name,
        "entries": used,
        "used": used,
        "free": free,
        "width": geo["width"],
        "buckets": geo["width"],
        "stripes": geo["stripes"],
        "slots": geo["slots"],
        "slot_size": geo["slot_size"],
        "slot_header": SLOT_HEADER,
        "max_payload": geo["slot_size"] - SLOT_HEADER,
        "reserve": geo["reserve"],
        "capacity": geo["slots"] - geo["reserve"],
        "load": used / geo["width"],
        "longest_chain": longest,
        "bytes": total,
        "bytes_per_slot": geo["slot_size"],
        "overhead_bytes": geo["slots_off"],
        "bytes_per_entry": total / used if used else None,
        "full_errors": sum(s[4] for s in stripes),
        "too_large_errors": sum(s[5] for s in stripes),
        "steals": sum(s[6] for s in stripes),
        "recoveries": bucket_recoveries + sum(s[3] for s in stripes),
        "created_at": geo["created_at"],
        "creator_pid": geo["creator_pid"],
    }


# -- Record <-> bytes, and the adapter with the in-process table API ---------------------------------------------------
RECORD_FORMAT = 1
_MARSHAL_VERSION = 4
_loads = marshal.loads


def dump_record(rec):
    """A Record as compact bytes: a format byte, then ``marshal`` (version 4) of a tuple of per-binding tuples of
    plain values (str, float, int, None, tuples). ``key`` is stored as None when it equals ``contact``. marshal is
    fast and safe for data only our own processes write; every worker runs the same interpreter."""
    out = []
    for b in rec.bindings:
        out.append((b.contact, None if b.key == b.contact else b.key, b.expires_at, b.q, b.call_id, b.cseq,
                    b.received, b.transport, b.path, b.instance, b.reg_id, b.user_agent, b.registered_at))
    return b"\x01" + marshal.dumps(tuple(out), _MARSHAL_VERSION)


def load_record(aor, data):
    """The Record ``dump_record`` wrote (a new object, equal field by field)."""
    if data[:1] != b"\x01":
        raise ShmError(f"the record of {aor!r} in shared memory has an unknown format")
    bs = []
    for t in _loads(data[1:]):      # the tuple is in Binding's positional order
        b = Binding(*t)
        if b.key is None:
            b.key = b.contact
        bs.append(b)
    return Record(aor, tuple(bs))


class ShmLocationTable:
    """The in-process location table API (``get, put, pop, compute, items, keys, __len__, __contains__, stats``)
    over a shared-memory table, with ``Record`` values (de)serialized by ``dump_record``/``load_record``, so
    ``LocationService(ShmLocationTable(ShmTable.attach(name)))`` works unchanged in every worker process.

    Records read back are new objects (equal, not identical, to what was stored). ``compute`` deserializes the old
    record, calls ``fn``, and serializes the new one, all under the bucket's cross-process lock; when ``fn`` returns
    the old record itself nothing is written."""

    kind = "shm"

    def __init__(self, shm_table):
        self.shm = shm_table

    def get(self, key, default=None):
        data = self.shm.get(key)
        return default if data is None else load_record(key, data)

    def __contains__(self, key):
        return key in self.shm

    def __len__(self):
        return len(self.shm)

    def put(self, key, record):
        if record is None:
            raise ValueError("location table values must not be None")
        self.shm.put(key, dump_record(record))

    def pop(self, key, default=None):
        data = self.shm.pop(key)
        return default if data is None else load_record(key, data)

    def compute(self, key, fn):
        box = [None]

        def apply(old_data):
            old = None if old_data is None else load_record(key, old_data)
            new = fn(old)
            box[0] = new
            if new is None:
                return None
            if new is old:
                return old_data
            return dump_record(new)

        self.shm.compute(key, apply)
        return box[0]

    def items(self):
        for k, data in self.shm.items():
            yield k, load_record(k, data)

    def keys(self):
        return self.shm.keys()

    __iter__ = keys

    def stats(self):
        st = dict(self.shm.stats())
        st["records"] = "marshal"
        return st

    def close(self):
        self.shm.close()

    def __repr__(self):
        return f"<ShmLocationTable {self.shm!r}>"


from ftsip import _fast  # noqa: E402  (the twin is chosen once the pure classes exist)

_impl = _fast.load("shmtable")
if _impl is not None and sys.byteorder == "little":
    ShmTable = _impl.ShmTable
    BACKEND = "cython"
else:
    ShmTable = PyShmTable
    BACKEND = "python"
