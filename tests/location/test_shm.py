"""The process mode's shared-memory location table: both twins (pure ``PyShmTable``, Cython ``ShmTable``).

A model test against a dict; atomic ``compute`` across 4 processes; a process SIGKILLed while it holds a bucket lock
(and, for every write step of every mutation, a process killed right after that step) leaves a usable, consistent
table; SegmentFull / ValueTooLarge change nothing; the twins' layouts are byte-identical; ``LocationService`` runs on
the adapter across processes; no segment is left in /dev/shm.  The Cython twin is skipped when it is not built.
"""
import glob
import multiprocessing
import os
import random
import signal
import sys
import time
import zlib

import pytest

from ftsip.location import shm
from ftsip.location.records import Binding, Record
from ftsip.location.service import LocationService

try:
    from ftsip._fast import shmtable as cyshm
except ImportError:  # not built
    cyshm = None

TWINS = ["python", "cython"]
PREFIX = f"ftsip-test-{os.getpid()}-"
_seq = [0]
MP = multiprocessing.get_context("fork")
# The children only open the segment by name and run table operations; under pytest-xdist the worker has threads
# (execnet), which makes every fork warn.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def twin_class(name):
    if name == "python":
        return shm.PyShmTable
    if cyshm is None:
        pytest.skip("ftsip._fast.shmtable is not built (python setup.py build_ext --inplace)")
    return cyshm.ShmTable


def set_crash_point(twin, n):
    (shm if twin == "python" else cyshm)._set_crash_point(n)


@pytest.fixture(params=TWINS)
def twin(request):
    twin_class(request.param)
    return request.param


@pytest.fixture
def seg():
    """A fresh segment name, unlinked afterwards whatever happens."""
    _seq[0] += 1
    name = f"{PREFIX}{_seq[0]}"
    yield name
    shm.unlink_segment(name)


@pytest.fixture(scope="module", autouse=True)
def no_leaked_segments():
    yield
    left = glob.glob(os.path.join(shm.SHM_DIR, PREFIX + "*"))
    for path in left:
        os.unlink(path)
    assert not left, f"segments left in {shm.SHM_DIR}: {left}"


def bucket_of(key, width):
    kb, _ = shm.key_bytes(key)
    return zlib.crc32(kb) & (width - 1)


def keys_in_bucket(b, width, n, start=0):
    out = []
    i = start
    while len(out) < n:
        k = f"sip:u{i}@example.com"
        if bucket_of(k, width) == b:
            out.append(k)
        i += 1
    return out


def check_against(t, model):
    assert len(t) == len(model)
    got = list(t.items())
    assert len(got) == len(model), "items() yielded a key twice or missed one"
    assert dict(got) == model
    assert sorted(t.keys()) == sorted(model)
    for k, v in model.items():
        assert t.get(k) == v
        assert k in t
    assert t.check() == []


# -- single process: the model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 8, 64])
def test_random_ops_against_dict(twin, seg, width):
    rng = random.Random(20240601 + width)
    T = twin_class(twin)
    t = T.create(seg, width, 400, 96)
    model = {}
    space = [f"sip:user{i}@example.com" for i in range(250)] + ["sip:jösé@exämple.com", "sip:€uro@x", "k\udc80",
                                                                "", "sip:" + "x" * 56]
    try:
        for step in range(4000):
            k = rng.choice(space)
            op = rng.random()
            if op < 0.30:
                v = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 96 - 20 - len(k.encode("utf-8",
                                                                                                     "surrogatepass")) + 1)))
                assert t.put(k, v) is None
                model[k] = v
            elif op < 0.42:
                assert t.pop(k) == model.pop(k, None)
            elif op < 0.47:
                assert t.pop(k, "absent") == model.pop(k, "absent")
            elif op < 0.67:
                def fn(old, step=step, k=k):
                    assert old == model.get(k)
                    if step % 7 == 0:
                        return None
                    return (old or b"")[-8:] + step.to_bytes(2, "little")
                new = t.compute(k, fn)
                if new is None:
                    model.pop(k, None)
                else:
                    model[k] = new
                assert t.get(k) == model.get(k)
            elif op < 0.72:
                old = model.get(k)
                assert t.compute(k, lambda o: o) == old     # returning old itself writes nothing
            elif op < 0.90:
                assert t.get(k) == model.get(k)
                assert t.get(k, -1) == model.get(k, -1)
            else:
                assert (k in t) == (k in model)
            if step % 1000 == 999:
                check_against(t, model)
        check_against(t, model)
        st = t.stats()
        assert st["entries"] == st["used"] == len(model)
        assert st["free"] + st["used"] == 400
        assert st["bytes_per_slot"] == 96
        assert st["backend"] == twin
        assert st["longest_chain"] >= (len(model) + width - 1) // width
        assert st["recoveries"] == 0
    finally:
        t.close()


def test_values_and_keys_types(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 16, 32, 64) as t:
        t.put("a", bytearray(b"xy"))
        assert t.get("a") == b"xy" and type(t.get("a")) is bytes
        t.put("b", memoryview(b"zz"))
        assert t.get("b") == b"zz"
        t.put("e", b"")
        assert t.get("e") == b"" and "e" in t
        with pytest.raises(TypeError):
            t.put(1, b"x")
        with pytest.raises(TypeError):
            t.get(b"a")
        with pytest.raises(TypeError):
            t.put("a", "text")
        with pytest.raises(TypeError):
            t.compute("a", lambda old: 42)
        assert t.get("a") == b"xy"
        # latin-1 and UTF-8 stored keys never collide: "é" (latin-1 byte e9) vs the 2 UTF-8 bytes decoded as latin-1
        t.put("é", b"1")
        t.put("Ã©", b"2")
        t.put("€", b"3")
        assert (t.get("é"), t.get("Ã©"), t.get("€")) == (b"1", b"2", b"3")
        assert t.check() == []
    assert t.closed
    with pytest.raises(shm.ShmError):
        t.get("a")


# -- full segment, too-large values -----------------------------------------------------------------------------------
def test_segment_full_is_clean(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 8, 40, 64) as t:
        reserve = t.stats()["reserve"]
        model = {}
        i = 0
        with pytest.raises(shm.SegmentFull) as ei:
            while True:
                k = f"sip:user{i}@example.com"
                t.put(k, b"v%d" % i)
                model[k] = b"v%d" % i
                i += 1
        assert isinstance(ei.value, shm.ShmError)
        assert "[location] shm_slots" in str(ei.value)
        assert len(model) == 40 - reserve == t.stats()["capacity"]
        check_against(t, model)
        # a new key is refused by put and by compute alike, and nothing changes
        with pytest.raises(shm.SegmentFull):
            t.compute("sip:new@example.com", lambda old: b"x")
        assert "sip:new@example.com" not in t
        # existing keys can still be refreshed (copy-on-write uses the reserve) and deleted
        for k in list(model)[:10]:
            model[k] = t.compute(k, lambda old: old + b"+")
        assert model[k].endswith(b"+")
        check_against(t, model)
        gone = list(model)[0]
        assert t.pop(gone) == model.pop(gone)
        t.put("sip:new@example.com", b"fits now")
        model["sip:new@example.com"] = b"fits now"
        check_against(t, model)
        st = t.stats()
        assert st["full_errors"] == 2
        assert st["free"] == reserve


def test_steal_from_other_stripes(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 2, 16, 64) as t:     # 2 stripes of 8 free slots
        model = {}
        for k in keys_in_bucket(0, 2, 15):  # all in stripe 0: the last 7 are stolen from stripe 1
            t.put(k, k.encode())
            model[k] = k.encode()
        st = t.stats()
        assert st["steals"] == 7 and st["free"] == 1
        with pytest.raises(shm.SegmentFull):
            t.put(keys_in_bucket(1, 2, 1)[0], b"x")
        check_against(t, model)
        for k in list(model):
            assert t.pop(k) == model.pop(k)
        check_against(t, model)
        assert t.stats()["free"] == 16


def test_value_too_large_is_clean(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 4, 16, 64) as t:
        k = "sip:alice@example.com"         # 21 bytes; a slot holds 64 - 20 = 44
        room = 64 - shm.SLOT_HEADER - len(k)
        t.put(k, b"a" * room)
        assert t.get(k) == b"a" * room
        with pytest.raises(shm.ValueTooLarge) as ei:
            t.put(k, b"b" * (room + 1))
        assert isinstance(ei.value, shm.ShmError) and isinstance(ei.value, ValueError)
        assert "[location] shm_slot_size" in str(ei.value)
        with pytest.raises(shm.ValueTooLarge):
            t.compute(k, lambda old: old + b"!")
        with pytest.raises(shm.ValueTooLarge):
            t.put("x" * 45, b"")
        assert t.get(k) == b"a" * room
        assert len(t) == 1
        assert t.stats()["too_large_errors"] == 3
        assert t.check() == []


def test_compute_exception_leaves_entry_and_releases_lock(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 1, 8, 64) as t:     # one bucket: any later operation needs the same lock
        t.put("k", b"old")

        def boom(old):
            raise KeyError("from fn")

        with pytest.raises(KeyError):
            t.compute("k", boom)
        with pytest.raises(KeyError):
            t.compute("absent", boom)
        assert t.get("k") == b"old" and "absent" not in t
        assert _in_child(_child_compute_incr, twin, t.name, ["k2"], 1) == 0      # another process gets the lock
        assert t.get("k2") == b"1"
        assert t.check() == []


def test_reentry_from_fn_is_refused(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 1, 8, 64) as t:
        t.put("k", b"old")
        with pytest.raises(shm.ShmError, match="re-entrant"):
            t.compute("k", lambda old: t.get("k"))
        assert t.get("k") == b"old"              # unchanged, and the lock was released
        assert t.check() == []


def test_key_longer_than_a_slot_length_field(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 1, 2, 1 << 17) as t:
        with pytest.raises(shm.ValueTooLarge, match="at most 65535 bytes"):
            t.put("x" * 70000, b"")
        assert t.get("x" * 70000) is None and len(t) == 0
        t.put("y" * 65535, b"v")
        assert t.get("y" * 65535) == b"v"


# -- across processes -------------------------------------------------------------------------------------------------
def _in_child(target, *args, timeout=20):
    p = MP.Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise AssertionError(f"child {target.__name__} did not finish within {timeout} s (wedged lock?)")
    return p.exitcode


def _child_compute_incr(twin, name, keys, n, barrier=None):
    T = shm.PyShmTable if twin == "python" else cyshm.ShmTable
    t = T.attach(name)
    if barrier is not None:
        barrier.wait()

    def incr(old):
        return str(int(old or b"0") + 1).encode()

    for i in range(n):
        t.compute(keys[i % len(keys)], incr)
    t.close()


def test_compute_atomic_across_4_processes(twin, seg):
    T = twin_class(twin)
    keys = [f"counter{i}" for i in range(5)]
    with T.create(seg, 4, 64, 64) as t:     # 4 buckets for 5 keys: chains are shared too
        barrier = MP.Barrier(4)
        procs = [MP.Process(target=_child_compute_incr, args=(twin, seg, keys[i:] + keys[:i], 2000, barrier))
                 for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        assert {k: int(t.get(k)) for k in keys} == {k: 1600 for k in keys}
        assert sum(int(t.get(k)) for k in keys) == 4 * 2000
        assert len(t) == 5
        assert t.check() == []


def test_compute_atomic_across_threads(twin, seg):
    import threading
    T = twin_class(twin)
    keys = [f"counter{i}" for i in range(3)]
    with T.create(seg, 2, 16, 64) as t:
        def work(i):
            for j in range(1500):
                t.compute(keys[(i + j) % 3], lambda old: str(int(old or b"0") + 1).encode())
        ths = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        assert sum(int(t.get(k)) for k in keys) == 6000
        assert t.check() == []


def _child_hold_lock(twin, name, key, wfd):
    T = shm.PyShmTable if twin == "python" else cyshm.ShmTable
    t = T.attach(name)

    def slow(old):
        os.write(wfd, b"L")
        time.sleep(60)
        return b"never"

    t.compute(key, slow)


def test_killed_lock_holder_does_not_wedge_the_bucket(twin, seg):
    T = twin_class(twin)
    with T.create(seg, 1, 16, 64) as t:     # one bucket: every key shares the lock
        t.put("held", b"0")
        t.put("other", b"0")
        r, w = os.pipe()
        holder = MP.Process(target=_child_hold_lock, args=(twin, seg, "held", w))
        holder.start()
        assert os.read(r, 1) == b"L"          # the child is inside compute, holding the bucket lock
        # a waiter queued behind the holder before it dies must get the lock once it is killed
        waiter = MP.Process(target=_child_compute_incr, args=(twin, seg, ["held", "other"], 2))
        waiter.start()
        time.sleep(0.2)
        assert waiter.is_alive()              # blocked on the lock
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert holder.exitcode == -signal.SIGKILL
        waiter.join(10)
        assert waiter.exitcode == 0, "the waiter stayed blocked on a lock whose holder was killed"
        assert _in_child(_child_compute_incr, twin, seg, ["held"], 3) == 0
        assert t.get("held") == b"4" and t.get("other") == b"1"
        assert t.check() == []
        os.close(r)
        os.close(w)


# every mutation, killed right after each of its write steps ----------------------------------------------------------
def _setup_crash_table(T, seg, steal):
    """A 2-bucket table; with ``steal`` stripe 0 is empty, so bucket 0's next allocation comes from stripe 1."""
    t = T.create(seg, 2, 16, 64)
    model = {}
    for k in keys_in_bucket(0, 2, 8 if steal else 3, start=1000):
        model[k] = ("v-" + k).encode()
        t.put(k, model[k])
    for k in keys_in_bucket(1, 2, 2, start=1000):
        model[k] = ("v-" + k).encode()
        t.put(k, model[k])
    return t, model


CRASH_OPS = ["insert", "replace", "delete", "insert-steal", "replace-steal", "compute-delete"]


def test_kill_at_every_write_step(twin, seg):
    T = twin_class(twin)
    died = 0
    for op in CRASH_OPS:
        for point in shm.CRASH_POINTS:
            t, model = _setup_crash_table(T, seg, op.endswith("-steal"))
            try:
                b0 = [k for k in model if bucket_of(k, 2) == 0]
                if op.startswith("insert"):
                    key, old, new = keys_in_bucket(0, 2, 1, start=5000)[0], None, b"NEW"
                elif op.startswith("replace"):
                    key, old, new = b0[1], model[b0[1]], b"NEW"    # mid-chain: its predecessor's link changes
                else:
                    key, old, new = b0[1], model[b0[1]], None
                pid = os.fork()
                if pid == 0:      # child: do the operation and get killed at the crash point
                    code = 0
                    try:
                        set_crash_point(twin, point)
                        if op == "compute-delete":
                            t.compute(key, lambda o: None)
                        elif new is None:
                            t.pop(key)
                        else:
                            t.put(key, new)
                    except BaseException:
                        code = 3
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                assert killed or os.WEXITSTATUS(status) == 0, (op, point, status)
                died += killed
                where = f"{op} killed after step {point}" if killed else f"{op} (step {point} not on its path)"
                assert t.check() == [], where
                got = t.get(key)
                assert got in (old, new), where
                if not killed:
                    assert got == new, where
                if got is None:
                    model.pop(key, None)
                else:
                    model[key] = got
                check_against(t, model)
                # the repaired bucket and stripes keep working
                t.put(key, b"again")
                for k in list(model)[:3]:
                    t.pop(k)
                assert t.check() == [], where
                if killed:
                    assert t.stats()["recoveries"] >= 1, where
            finally:
                t.close()
                T.unlink(seg)
    assert died >= 50, died
    print(f"{twin}: {died} of {len(CRASH_OPS) * len(shm.CRASH_POINTS)} runs killed mid-update")


def _fork_and_crash(twin, point, action):
    pid = os.fork()
    if pid == 0:
        try:
            set_crash_point(twin, point)
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("first,second", [(shm.CP_PUSH_HEAD, shm.CP_PUSH_HEAD), (shm.CP_POP_HEAD, shm.CP_PUSH_STATE),
                                          (shm.CP_PUSH_NEXT, shm.CP_PUSH_HEAD), (shm.CP_STATE, shm.CP_PUSH_COUNT)])
def test_repair_killed_midway_is_finished_by_the_next_locker(twin, seg, first, second):
    T = twin_class(twin)
    t, model = _setup_crash_table(T, seg, steal=False)
    try:
        victim = [k for k in model if bucket_of(k, 2) == 0][1]
        new = keys_in_bucket(0, 2, 1, start=5000)[0]
        op = (lambda: t.put(new, b"n")) if first in (shm.CP_POP_HEAD, shm.CP_STATE) else (lambda: t.pop(victim))
        assert _fork_and_crash(twin, first, op)
        assert _fork_and_crash(twin, second, lambda: t.get(victim))    # the repair itself is killed
        assert t.check() == []
        assert t.get(victim) in (None, model[victim]) and t.get(new) is None
        if t.get(victim) is None:
            del model[victim]
        check_against(t, model)
        assert t.stats()["free"] + len(t) == 16
    finally:
        t.close()


# -- the twins share one layout -----------------------------------------------------------------------------------------
def _scripted_ops(t, seed):
    rng = random.Random(seed)
    for i in range(600):
        k = f"sip:user{rng.randrange(80)}@example.com" if i % 17 else f"sip:ü{rng.randrange(5)}@x"
        r = rng.random()
        if r < 0.5:
            t.put(k, bytes([i & 255]) * rng.randrange(20))
        elif r < 0.7:
            t.pop(k)
        else:
            t.compute(k, lambda old: None if old and len(old) > 20 else (old or b"") + b"c")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _masked(path, geo):
    data = bytearray(_read(path))
    data[44:48] = bytes(4)                          # lock_kind
    data[88:100] = bytes(12)                        # created_at, creator_pid
    for i in range(geo["width"]):
        o = geo["buckets_off"] + i * shm.BUCKET_SIZE
        data[o:o + shm.LOCK_AREA] = bytes(shm.LOCK_AREA)
    for i in range(geo["stripes"]):
        o = geo["stripes_off"] + i * shm.STRIPE_SIZE
        data[o:o + shm.LOCK_AREA] = bytes(shm.LOCK_AREA)
    return bytes(data)


def test_twins_write_identical_bytes_and_read_each_other(seg):
    if cyshm is None:
        pytest.skip("ftsip._fast.shmtable is not built")
    images = []
    for T in (shm.PyShmTable, cyshm.ShmTable):
        name = f"{seg}-{T.BACKEND}"
        try:
            with T.create(name, 16, 200, 64) as t:
                _scripted_ops(t, 7)
                geo = shm.read_header(_read(shm.segment_path(name)))
                images.append((_masked(shm.segment_path(name), geo), dict(t.items())))
        finally:
            T.unlink(name)
    assert images[0][1] == images[1][1]
    assert images[0][0] == images[1][0], "the two twins laid out the same operations differently"
    # written by one twin, read (and written) by the other, and back
    for A, B in ((shm.PyShmTable, cyshm.ShmTable), (cyshm.ShmTable, shm.PyShmTable)):
        with A.create(seg, 16, 200, 64) as a:
            _scripted_ops(a, 11)
            want = dict(a.items())
        with pytest.raises(shm.ShmError, match="same build"):
            B.attach(seg)
        with B.attach(seg, adopt=True) as b:
            assert dict(b.items()) == want
            assert len(b) == len(want) and b.check() == []
            b.put("sip:added@example.com", b"by the other twin")
            want["sip:added@example.com"] = b"by the other twin"
        with A.attach(seg, adopt=True) as a:
            assert dict(a.items()) == want and a.check() == []
        A.unlink(seg)


# -- life cycle and errors --------------------------------------------------------------------------------------------
def test_create_attach_unlink_errors(twin, seg):
    T = twin_class(twin)
    with pytest.raises(shm.ShmError, match="does not exist"):
        T.attach(seg)
    for args, setting in (((3, 10, 64), "hash_width"), ((4, 0, 64), "shm_slots"), ((4, 10, 16), "shm_slot_size"),
                          ((4, 10, 2 << 20), "shm_slot_size")):
        with pytest.raises(shm.ShmError, match=setting):
            T.create(seg, *args)
    assert not os.path.exists(shm.segment_path(seg))
    with pytest.raises(shm.ShmError, match="segment name"):
        T.create("../etc/x", 4, 10, 64)
    t = T.create(seg, 4, 10, 64)
    try:
        with pytest.raises(shm.ShmError, match="already exists"):
            T.create(seg, 4, 10, 64)
        t.put("k", b"v")
        u = T.attach(seg)
        assert u.get("k") == b"v" and (u.width, u.slots, u.slot_size) == (4, 10, 64)
        u.close()
    finally:
        t.close()
    assert T.unlink(seg) is True
    with T.create(seg, 4, 10, 61) as t:        # slots stay 8-aligned
        assert t.slot_size == 64 and t.stats()["max_payload"] == 44
        t.put("k", b"v")
    t = T.attach(seg)
    try:
        u = T.attach(seg)
        u.close()
        assert t.get("k") == b"v"             # closing one handle leaves the other working
    finally:
        t.close()
    assert T.unlink(seg) is True
    assert T.unlink(seg) is False
    with open(shm.segment_path(seg), "wb") as f:
        f.write(b"not a segment" * 100)
    with pytest.raises(shm.ShmError, match="not an ftsip location segment"):
        T.attach(seg)


def test_gil_stays_disabled():
    if cyshm is None:
        pytest.skip("ftsip._fast.shmtable is not built")
    if not hasattr(sys, "_is_gil_enabled"):
        pytest.skip("not a free-threaded interpreter")
    import sysconfig
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("not a free-threaded interpreter")
    assert not sys._is_gil_enabled()
    from ftsip import _fast
    assert shm.BACKEND == ("python" if _fast.PURE else "cython")


# -- the Record adapter and the location service ----------------------------------------------------------------------
def _binding(i, now, **kw):
    d = dict(contact=f"sip:u{i}@10.0.0.{i % 250}:5060;ob", key=f"sip:u{i}@10.0.0.{i % 250}:5060",
             expires_at=now + 3600.25, q=0.5, call_id=f"cid-{i}@host", cseq=7 + i, received=("192.0.2.1", 5062),
             transport="tcp", path=("<sip:edge1;lr>", "<sip:edge2;lr>"), instance="<urn:uuid:00000000-1>",
             reg_id=1, user_agent="UA/1.0 ü", registered_at=now)
    d.update(kw)
    return Binding(**d)


def test_record_round_trip():
    now = 1_700_000_000.5
    rec = Record("sip:alice@example.com", (_binding(1, now), _binding(2, now, key="sip:u2@10.0.0.2:5060;ob",
                                                                      contact="sip:u2@10.0.0.2:5060;ob",
                                                                      received=None, path=(), instance=None,
                                                                      reg_id=None, user_agent=None, q=1.0)))
    data = shm.dump_record(rec)
    back = shm.load_record("sip:alice@example.com", data)
    assert back.aor == rec.aor and back.bindings == rec.bindings
    assert type(back.bindings) is tuple and type(back.bindings[0].path) is tuple
    assert back.bindings[1].key == back.bindings[1].contact
    assert len(data) < 400


def _child_register(twin, name, aor, i, now):
    T = shm.PyShmTable if twin == "python" else cyshm.ShmTable
    svc = LocationService(shm.ShmLocationTable(T.attach(name)))
    st = svc.local_state(now)

    def add(old):
        return Record(aor, (old.bindings if old else ()) + (_binding(i, now),))

    svc.update(aor, add, st)
    svc.table.close()


def test_location_service_over_shared_memory(twin, seg):
    T = twin_class(twin)
    now = 1_700_000_000.0
    table = shm.ShmLocationTable(T.create(seg, 64, 100, 1024))
    try:
        svc = LocationService(table)
        st = svc.local_state(now)
        aor = "sip:alice@example.com"
        svc.update(aor, lambda old: Record(aor, (_binding(0, now, expires_at=now + 10),)), st)
        for i in (1, 2):                         # two other worker processes register contacts for the same AOR
            assert _in_child(_child_register, twin, seg, aor, i, now) == 0
        live = svc.lookup(aor, now + 1)
        assert [b.call_id for b in live] == ["cid-0@host", "cid-1@host", "cid-2@host"]
        assert live[1] == _binding(1, now)
        assert aor in svc and svc.aors() == 1 and len(table) == 1
        assert svc.purge(aor, now + 20, st) == 1     # the first binding expired
        assert [b.call_id for b in svc.lookup(aor, now + 20)] == ["cid-1@host", "cid-2@host"]
        assert svc.purge(aor, now + 20, st) == 0     # nothing expired: fn returns the record itself, nothing written
        assert dict((k, len(r.bindings)) for k, r in table.items()) == {aor: 2}
        assert svc.sweep(now + 7200, st) == 2 and aor not in svc
        table.put("sip:bob@example.com", Record("sip:bob@example.com", (_binding(9, now),)))
        assert table.get("sip:bob@example.com").bindings[0] == _binding(9, now)
        assert table.pop("sip:bob@example.com").aor == "sip:bob@example.com"
        assert table.get("sip:bob@example.com", "none") == "none"
        s = svc.stats()["table"]
        assert s["kind"] == "shm" and s["bytes_per_slot"] == 1024
        with pytest.raises(shm.ValueTooLarge, match="shm_slot_size"):      # too many bindings for one slot
            table.put(aor, Record(aor, tuple(_binding(i, now) for i in range(20))))
        assert table.shm.check() == []
    finally:
        table.close()
