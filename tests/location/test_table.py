"""The location table's two twins (pure Python, Cython) x two kinds (linear hashing, fixed width).

Model tests against a dict, growth to 100k+ and back, thread stress with exact final states, iteration while the
table splits and merges under it.  The Cython twin is skipped only when ``ftsip._fast.lhash`` is not built.
"""
import random
import sys
import threading
import time

import pytest

from ftsip.location import table as pytable

try:
    from ftsip._fast import lhash as cytable
except ImportError:  # not built
    cytable = None

TWINS = ["python", "cython"]
KINDS = ["linear", "fixed"]
FIXED_WIDTH = 256


def twin_module(twin):
    if twin == "python":
        return pytable.PyLinearHashTable, pytable.PyFixedTable, pytable.py_make_table
    if cytable is None:
        pytest.skip("ftsip._fast.lhash is not built (python setup.py build_ext --inplace)")
    return cytable.LinearHashTable, cytable.FixedTable, cytable.make_table


@pytest.fixture(params=TWINS)
def twin(request):
    return twin_module(request.param)


@pytest.fixture(params=KINDS)
def new_table(request, twin):
    linear, fixed, _ = twin
    if request.param == "linear":
        return lambda **kw: linear(**kw)
    return lambda **kw: fixed(kw.pop("width", FIXED_WIDTH), **kw)


def key(i):
    return f"sip:user{i}@example.com"


def check_against(t, model):
    assert len(t) == len(model)
    got = list(t.items())
    assert len(got) == len(model), "items() yielded a key twice or missed one"
    assert dict(got) == model
    assert sorted(t.keys()) == sorted(model)
    for k, v in model.items():
        assert t.get(k) == v
        assert k in t


# -- single thread: the model ---------------------------------------------------------------------------------------
def test_random_ops_against_dict(new_table):
    rng = random.Random(20240601)
    t = new_table()
    model = {}
    space = 600
    for step in range(6000):
        k = key(rng.randrange(space))
        op = rng.random()
        if op < 0.35:
            v = (k, step)
            assert t.put(k, v) is None
            model[k] = v
        elif op < 0.50:
            assert t.pop(k) == model.pop(k, None)
        elif op < 0.55:
            assert t.pop(k, "absent") == model.pop(k, "absent")
        elif op < 0.70:
            assert t.get(k) == model.get(k)
            assert t.get(k, -1) == model.get(k, -1)
            assert (k in t) == (k in model)
        elif op < 0.85:
            def bump(old):
                if old is None:
                    return 1
                if isinstance(old, int):
                    return None if old >= 3 else old + 1
                return 1
            new = t.compute(k, bump)
            expect = bump(model.get(k))
            assert new == expect
            if expect is None:
                model.pop(k, None)
            else:
                model[k] = expect
        else:
            v = ("default", step)
            assert t.setdefault(k, v) == model.setdefault(k, v)
        if step % 1000 == 999:
            check_against(t, model)
    check_against(t, model)
    st = t.stats()
    assert st["entries"] == len(model)
    assert st["kind"] in ("linear", "fixed")


def test_grow_past_100k_and_shrink_back(new_table):
    t = new_table()
    linear = t.stats()["kind"] == "linear"
    n = 120_000
    prev = t.stats()["buckets"]
    for i in range(n):
        t.put(key(i), i)
        if linear and i % 97 == 0:
            b = t.stats()["buckets"]
            assert b - prev <= pytable.MAX_STEPS * 97      # one bucket at a time, never a rehash
            prev = b
    st = t.stats()
    assert st["entries"] == len(t) == n
    if linear:
        assert st["splits"] > 0 and st["merges"] == 0
        assert st["load"] <= st["max_load"] * 1.05
        assert st["buckets"] == 2 ** st["level"] + st["split_pointer"]
        assert st["segments"] == -(-st["buckets"] // st["segment_size"])
    else:
        assert st["buckets"] == FIXED_WIDTH and st["splits"] == 0
    for i in range(0, n, 7):
        assert t.get(key(i)) == i
    keep = {key(i): i for i in range(0, n, 1000)}
    for i in range(n):
        k = key(i)
        if k not in keep:
            assert t.pop(k) == i
    st = t.stats()
    assert st["entries"] == len(keep)
    if linear:
        assert st["merges"] > 0
        assert st["buckets"] < 2 * len(keep) / st["min_load"]
        assert st["load"] >= st["min_load"] * 0.8
    check_against(t, keep)
    for k in keep:
        t.pop(k)
    assert len(t) == 0 and list(t.items()) == []
    if linear:
        assert t.stats()["buckets"] == t.stats()["min_buckets"]


def test_compute_semantics(new_table):
    t = new_table()
    assert t.compute("a", lambda old: None) is None and "a" not in t and len(t) == 0
    assert t.compute("a", lambda old: (old or 0) + 5) == 5
    assert t.compute("a", lambda old: old * 2) == 10 and t.get("a") == 10
    seen = []
    assert t.compute("a", lambda old: seen.append(old)) is None
    assert seen == [10] and "a" not in t and len(t) == 0

    def boom(old):
        raise KeyError("from fn")
    t.put("b", 1)
    with pytest.raises(KeyError, match="from fn"):
        t.compute("b", boom)
    assert t.get("b") == 1            # unchanged, and the bucket lock was released:
    t.put("b", 2)
    assert t.compute("b", lambda old: old + 1) == 3


def test_setdefault_and_replace(new_table):
    t = new_table()
    v1, v2 = object(), object()
    assert t.setdefault("x", v1) is v1
    assert t.setdefault("x", v2) is v1
    t.put("x", v2)
    assert t.get("x") is v2 and len(t) == 1
    assert t.pop("x") is v2 and t.pop("x") is None and len(t) == 0


def test_refcounts_released(twin):
    linear, fixed, _ = twin
    for make in (linear, lambda: fixed(16)):
        t = make()
        v = object()
        base = sys.getrefcount(v)
        for i in range(2000):
            t.put(key(i), v)
        for i in range(0, 2000, 2):
            t.put(key(i), v)
            t.compute(key(i), lambda old: old)
        for i in range(0, 2000, 3):
            t.pop(key(i))
        list(t.items())
        assert sys.getrefcount(v) == base + len(t)
        for i in range(2000):
            t.compute(key(i), lambda old: None)
        assert len(t) == 0 and sys.getrefcount(v) == base
        t.put("last", v)
        assert sys.getrefcount(v) == base + 1
        del t
        assert sys.getrefcount(v) == base


def test_bad_arguments(twin):
    linear, fixed, make = twin
    t = linear()
    for bad in (1, b"bytes", None, ("a",)):
        with pytest.raises(TypeError, match="must be str"):
            t.get(bad)
        with pytest.raises(TypeError, match="must be str"):
            t.put(bad, 1)
    with pytest.raises(ValueError, match="must not be None"):
        t.put("k", None)
    with pytest.raises(ValueError, match="must not be None"):
        t.setdefault("k", None)
    assert len(t) == 0
    for w in (0, 3, 500, -512, 2 ** 40, 512.0, True, "512"):
        with pytest.raises(ValueError, match="power of two"):
            fixed(w)
    with pytest.raises(ValueError, match="unknown location table kind 'hashed'"):
        make("hashed")
    with pytest.raises(ValueError, match="needs width"):
        make("fixed")
    with pytest.raises(ValueError, match="power of two"):
        make("fixed", width=1000)
    with pytest.raises(ValueError, match="fixed' only"):
        make("linear", width=512)
    with pytest.raises(ValueError, match="min_load"):
        linear(max_load=2.0, min_load=1.5)
    with pytest.raises(ValueError, match="min_buckets"):
        linear(min_buckets=12)
    assert make("linear").stats()["kind"] == "linear"
    st = make("fixed", width=512).stats()
    assert (st["kind"], st["buckets"], st["level"]) == ("fixed", 512, 9)


def test_module_selects_a_twin():
    assert pytable.BACKEND in ("cython", "python")
    if pytable.BACKEND == "cython":
        assert pytable.LinearHashTable is cytable.LinearHashTable
        assert pytable.make_table("linear").stats()["backend"] == "cython"
    else:
        assert pytable.LinearHashTable is pytable.PyLinearHashTable
    assert isinstance(pytable.make_table("fixed", width=8), pytable.FixedTable)


@pytest.mark.skipif(cytable is None, reason="ftsip._fast.lhash is not built")
def test_twins_behave_identically():
    """The same operations give the same results and the same statistics (splits, merges, level...) in both."""
    rng = random.Random(7)
    tables = [pytable.PyLinearHashTable(), cytable.LinearHashTable(), pytable.PyFixedTable(32), cytable.FixedTable(32)]
    space = 30_000
    for phase_put in (0.9, 0.5, 0.1, 0.6):
        for step in range(8000):
            k = key(rng.randrange(space))
            r = rng.random()
            if r < phase_put:
                results = [t.put(k, step) for t in tables]
            elif r < phase_put + 0.05:
                results = [t.compute(k, lambda old: None if old else step) for t in tables]
            else:
                results = [t.pop(k) for t in tables]
            assert results[0] == results[1] == results[2] == results[3]

        def strip(st):
            return {k: v for k, v in st.items() if k != "backend"}
        assert strip(tables[0].stats()) == strip(tables[1].stats())
        assert strip(tables[2].stats()) == strip(tables[3].stats())
    assert dict(tables[0].items()) == dict(tables[1].items()) == dict(tables[3].items())


@pytest.mark.skipif(cytable is None, reason="ftsip._fast.lhash is not built")
def test_cython_twin_keeps_the_gil_disabled():
    if not hasattr(sys, "_is_gil_enabled"):
        pytest.skip("not a 3.13+ interpreter")
    import sysconfig
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("not a free-threaded build")
    out = []
    th = threading.Thread(target=lambda: out.append(sys._is_gil_enabled()))
    th.start()
    th.join()
    assert out == [False]


# -- iteration while the table splits and merges --------------------------------------------------------------------
def test_iteration_interleaved_with_splits_and_merges(twin):
    """Deterministic: between any two steps of one items() generator, split or merge buckets under the cursor."""
    linear, fixed, _ = twin
    for t in (linear(max_load=2.0, min_load=1.0), fixed(64)):
        stable = {key(i): i for i in range(1500)}
        for k, v in stable.items():
            t.put(k, v)
        churn = iter([f"churn{i}" for i in range(100_000)])
        present = []
        seen = {}
        for n, (k, v) in enumerate(t.items()):
            assert v == stable.get(k, v)
            seen[k] = seen.get(k, 0) + 1
            if (n // 100) % 2 == 0:                  # grow: splits under the cursor
                for _ in range(30):
                    c = next(churn)
                    t.put(c, 0)
                    present.append(c)
            else:                                    # shrink: merges under the cursor
                for _ in range(min(30, len(present))):
                    t.pop(present.pop())
        assert {k: c for k, c in seen.items() if c != 1} == {}, "yielded twice"
        missing = set(stable) - set(seen)
        assert not missing, f"{len(missing)} stable keys missed"
        if t.stats()["kind"] == "linear":
            assert t.stats()["splits"] > 1000 and t.stats()["merges"] > 1000


def test_iteration_during_concurrent_resizing(new_table):
    t = new_table()
    stable = [key(i) for i in range(3000)]
    for k in stable:
        t.put(k, k)
    stop = threading.Event()
    errors = []

    def churn(tid):
        try:
            rng = random.Random(tid)
            names = [f"c{tid}-{i}" for i in range(15_000)]
            upto = len(names)           # the first cycle grows 3k -> 33k entries and back: splits, then merges
            while not stop.is_set():
                for c in names[:upto]:
                    t.put(c, tid)
                for c in names[:upto]:
                    t.pop(c)
                upto = rng.randrange(2000, len(names))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    rounds = 0
    before = t.stats()
    linear = before["kind"] == "linear"

    def resized_both_ways():
        st = t.stats()
        return not linear or (st["splits"] > before["splits"] and st["merges"] > before["merges"])
    try:
        deadline = time.monotonic() + 0.7
        give_up = time.monotonic() + 20     # a loaded machine: wait for the churn to have split and merged
        while rounds < 3 or time.monotonic() < deadline or not resized_both_ways():
            rounds += 1
            counts = {}
            for i, k in enumerate(t.keys()):
                counts[k] = counts.get(k, 0) + 1
                if i % 64 == 0:
                    time.sleep(0)       # let the churn threads split and merge under the cursor
            twice = [k for k, c in counts.items() if c > 1]
            assert not twice, f"yielded twice: {twice[:5]}"
            missing = [k for k in stable if k not in counts]
            assert not missing, f"missed {len(missing)} stable keys, e.g. {missing[:5]}"
            if time.monotonic() > give_up:
                break
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not errors, errors
    assert resized_both_ways(), (before, t.stats())
    assert sorted(t.keys()) == sorted(stable)


# -- threads: exact final states ------------------------------------------------------------------------------------
def test_stress_threads_exact_final_state(new_table):
    t = new_table()
    nthreads = 4
    counters = [f"counter{i}" for i in range(8)]
    always = {f"always{i}": i for i in range(500)}       # present from start to end: lookups must never miss
    for k, v in always.items():
        t.put(k, v)
    ops = 5_000 if t.stats()["backend"] == "cython" else 2_500     # keys per thread
    always_keys = list(always)
    models = [None] * nthreads
    increments = [0] * nthreads
    misses = []
    errors = []
    barrier = threading.Barrier(nthreads)

    def worker(tid):
        try:
            rng = random.Random(1000 + tid)
            model = {}
            mine = [f"t{tid}-{i}" for i in range(ops)]
            barrier.wait()
            step = 0
            for phase in range(4):          # grow, shrink, grow, shrink: splits and merges under everyone
                grow = phase % 2 == 0
                rng.shuffle(mine)
                for k in mine:
                    step += 1
                    r = rng.random()
                    if r < 0.9:
                        if grow:
                            t.put(k, (k, step))
                            model[k] = (k, step)
                        else:
                            assert t.pop(k) == model.pop(k, None)
                    if r < 0.2:
                        c = counters[step % len(counters)]
                        t.compute(c, lambda old: (old or 0) + 1)
                        increments[tid] += 1
                    if 0.1 < r < 0.3:
                        a = rng.choice(always_keys)
                        if t.get(a) != always[a]:
                            misses.append(a)
                        k2 = rng.choice(mine)
                        assert t.get(k2) == model.get(k2), (k2, t.get(k2), model.get(k2))
                        assert (k2 in t) == (k2 in model)
            models[tid] = model
        except BaseException as e:
            errors.append(e)
            raise

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert not misses, f"{len(misses)} lookups missed a key that was present throughout"
    expected = dict(always)
    for m in models:
        expected.update(m)
    total = sum(increments)
    got_counters = {c: t.pop(c) for c in counters}
    assert sum(v for v in got_counters.values() if v) == total
    check_against(t, expected)
    st = t.stats()
    if st["kind"] == "linear":
        assert st["splits"] > 0 and st["merges"] > 0
        assert st["buckets"] == 2 ** st["level"] + st["split_pointer"]


def test_readers_never_see_a_key_missing_while_splitting(twin):
    """A dedicated check of the split/merge protocol: hammer lookups of fixed keys while one thread resizes."""
    linear, _, _ = twin
    t = linear()
    fixed_keys = [key(i) for i in range(256)]
    for k in fixed_keys:
        t.put(k, 1)
    stop = threading.Event()
    started = threading.Event()
    misses = []
    lookups = [0]

    def reader():
        started.set()
        while not stop.is_set():
            for k in fixed_keys:
                if t.get(k) is None:
                    misses.append(k)
            lookups[0] += len(fixed_keys)

    rd = threading.Thread(target=reader)
    rd.start()
    started.wait()
    try:
        names = [f"grow{i}" for i in range(20_000 if t.stats()["backend"] == "cython" else 8_000)]
        for _ in range(2):
            for c in names:
                t.put(c, 0)
            for c in names:
                t.pop(c)
    finally:
        stop.set()
        rd.join()
    assert lookups[0] > 0
    assert not misses, f"{len(misses)} misses, e.g. {misses[:3]}"
    st = t.stats()
    assert st["splits"] > 2000 and st["merges"] > 2000


def test_lookups_on_a_tiny_flapping_table(twin):
    """Every bucket splits and merges thousands of times a second while readers look up keys that never leave.

    A tiny table (min_buckets=1, min_load=max_load/2) makes each lookup race a split or merge of its own bucket,
    which is what catches a missing ownership check or a resize that publishes its state in the wrong order.
    """
    linear, _, _ = twin
    t = linear(max_load=2.0, min_load=1.0, min_buckets=1)
    stable = [key(i) for i in range(12)]
    for k in stable:
        t.put(k, k)
    stop = threading.Event()
    started = threading.Event()
    misses = []
    lookups = [0]

    def reader():
        started.set()
        while not stop.is_set():
            for k in stable:
                if t.get(k) is not k:
                    misses.append(k)
            lookups[0] += len(stable)

    rd = threading.Thread(target=reader)
    rd.start()
    started.wait()
    churn = [f"flap{i}" for i in range(48)]
    deadline = time.monotonic() + 0.8
    give_up = deadline + 10
    try:
        while len(misses) < 100 and time.monotonic() < give_up and (
                time.monotonic() < deadline or lookups[0] < 20_000):
            for c in churn:
                t.put(c, 0)
            for c in churn:
                t.pop(c)
    finally:
        stop.set()
        rd.join()
    st = t.stats()
    assert lookups[0] > 1000 and st["splits"] > 1000 and st["merges"] > 1000
    assert not misses, f"{len(misses)} misses in {lookups[0]} lookups"


def test_expiry_queue_ticks_cost_the_time_since_the_last_tick_not_since_start():
    """A binding expiring far ahead must not make every tick walk all the seconds elapsed since start."""
    from ftsip.location.expiry import ExpiryQueue
    q = ExpiryQueue(1000.0)
    q.push(1000.0 + 86400, "far@example.com")
    for t in range(1001, 1000 + 7200):          # two hours of one-second ticks
        assert q.backlog(float(t)) == 0
    assert q.cursor == 1000 + 7200              # moved along with time (past the last second ticked)
    q.push(9000.5, "soon@example.com")
    assert q.backlog(9001.0) == 1 and q.pop_due(9001.0, 10) == ["soon@example.com"]
    assert q.backlog(1000.0 + 86400) == 1


def test_a_storm_is_collected_in_small_steps_and_the_collector_says_when_it_is_behind():
    """2,000 AORs expiring in the same second: no step examines more than gc_budget AORs, ``behind`` stays set until
    the backlog is gone (the runtime then ticks every millisecond), and every binding is collected."""
    from ftsip.location.records import Binding, Record
    from ftsip.location.service import LocationService
    from ftsip.runtime.worker import GC_TICK, next_tick
    loc = LocationService(gc_budget=32)
    st = loc.local_state(1000.0)
    for i in range(2000):
        aor = f"u{i}@example.com"
        b = Binding(f"<sip:u{i}@192.0.2.1:{5060 + i}>", f"sip:u{i}@192.0.2.1:{5060 + i}", 1010.5, 1.0, f"c{i}", 1)
        loc.update(aor, lambda old, b=b, aor=aor: Record(aor, (b,)), st)
    assert loc.bindings() == 2000
    now, steps = 1011.0, []
    while True:
        steps.append(loc.tick(now, st, 0))
        if not st.behind:
            break
        assert next_tick(now, 0.01, st.behind) == now + GC_TICK
        now += GC_TICK
    assert max(steps) == 32 and sum(steps) == 2000 and len(steps) == 2000 // 32 + 1
    assert loc.bindings() == 0 and loc.aors() == 0
    assert next_tick(now, 0.01, st.behind) == now + 0.01      # caught up: back to the normal tick
