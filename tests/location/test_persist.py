"""Write-behind persistence of registrations (ftsip.location.persist).

Proves the module docstring's guarantees: coalescing; a graceful stop loses nothing; after SIGKILL only changes
younger than flush_interval (+ one flush) can be missing; expired bindings do not come back; a worker's call never
waits for a slow flush; an unusable file is refused with a message that says what to do.
"""
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ftsip.location import persist
from ftsip.location.persist import PersistError, WriteBehind, load, restore
from ftsip.location.records import Binding, Record
from ftsip.location.service import LocationService

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def binding(n, expires_at, **kw):
    return Binding(f"sip:dev{n}@10.0.{n % 250}.1:5060;transport=udp", f"sip:dev{n}@10.0.{n % 250}.1:5060",
                   expires_at, kw.pop("q", 1.0), f"call-{n}@host", kw.pop("cseq", n), ("10.0.0.1", 5060 + n % 1000),
                   "udp", ("<sip:edge.example.com;lr>",) if n % 3 == 0 else (), kw.pop("instance", None),
                   kw.pop("reg_id", None), "Phone/1.0 \xe9", 1000.0 + n, **kw)


def as_map(records):
    return {r.aor: r.bindings for r in records}


def table_map(svc):
    return {aor: rec.bindings for aor, rec in svc.table.items()}


def db_rows(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM bindings").fetchone()[0]
    finally:
        conn.close()


# ---- coalescing, stats

def test_coalescing_many_changes_of_one_aor_write_one_row(tmp_path):
    path = str(tmp_path / "reg.db")
    wb = WriteBehind(path, flush_interval=60).open()     # no thread: flushes are driven by the test
    now = time.time()
    for i in range(1000):
        aor = f"sip:u{i % 10}@example.com"
        wb(aor, Record(aor, (binding(i, now + 600),)))
    st = wb.stats()
    assert st["pending"] == 10 and st["flushes"] == 0
    assert st["lag"] > 0
    assert wb.flush()
    st = wb.stats()
    assert st["flushes"] == 1 and st["rows_written"] == 10 and st["upserts"] == 10
    assert st["pending"] == 0 and st["lag"] == 0.0 and st["errors"] == 0
    assert wb.flush() and wb.stats()["flushes"] == 1        # nothing pending: no transaction at all
    wb("sip:u3@example.com", None)                          # a removed AOR becomes a DELETE
    assert wb.stop()
    records, info = load(path, now)
    got = as_map(records)
    assert len(got) == 9 and "sip:u3@example.com" not in got
    assert got["sip:u7@example.com"] == (binding(997, now + 600),)      # the latest state won
    assert info["rows"] == 9


def test_max_pending_starts_a_flush_early(tmp_path):
    wb = WriteBehind(str(tmp_path / "reg.db"), flush_interval=30, max_pending=persist.STRIPES * 4).start()
    try:
        now = time.time()
        for i in range(2000):
            wb(f"sip:u{i}@x", Record(f"sip:u{i}@x", (binding(i, now + 600),)))
        deadline = time.monotonic() + 5
        while wb.stats()["rows_written"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wb.stats()["rows_written"] > 0           # long before the 30 s interval
    finally:
        assert wb.stop()
    assert len(load(wb.path, time.time())[0]) == 2000


# ---- graceful stop

def test_graceful_stop_loses_nothing_with_concurrent_workers(tmp_path):
    """Two worker threads change 4,000 AORs (adds, refreshes, removals) through the service while the flusher runs
    every 20 ms (at least three flushes overlap the writes); after stop() a fresh load holds exactly the table."""
    path = str(tmp_path / "sub" / "dir" / "reg.db")         # the parent directory is created
    now = time.time()
    svc = LocationService()
    wb = WriteBehind(path, flush_interval=0.02, source=svc.record).start()
    svc.listeners.append(wb)
    n_aors = 4000

    def worker(seed):
        rnd = random.Random(seed)
        st = svc.local_state(now)
        j = 0
        while j < 12000 or (wb.flushes < 3 and j < 500_000):     # keep writing until flushes ran meanwhile
            j += 1
            k = rnd.randrange(n_aors)
            aor = f"sip:user{k}@example.com"
            if rnd.random() < 0.1:
                svc.update(aor, lambda old: None, st)
            else:
                n = seed * 100000 + j
                b = binding(n, now + 60 + rnd.random() * 3600, q=round(rnd.random(), 3))

                def add(old, b=b, aor=aor):
                    bs = () if old is None else old.bindings
                    return Record(aor, (bs + (b,))[-3:])
                svc.update(aor, add, st)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wb.stats()["flushes"] >= 3          # flushes ran while the workers wrote
    assert wb.stop()
    st = wb.stats()
    assert st["pending"] == 0 and st["errors"] == 0
    expected = table_map(svc)
    assert len(expected) > 3000
    records, info = load(path, now)
    assert as_map(records) == expected
    assert info["bindings"] == sum(len(b) for b in expected.values())
    assert db_rows(path) == len(expected)


# ---- expiry and restore

def test_expired_bindings_are_not_restored_and_rows_are_deleted(tmp_path):
    path = str(tmp_path / "reg.db")
    t0 = 1_800_000_000.0
    wb = WriteBehind(path).open()
    wb("sip:dead@x", Record("sip:dead@x", (binding(1, t0 - 10), binding(2, t0))))     # nothing alive at t0
    wb("sip:half@x", Record("sip:half@x", (binding(3, t0 - 1), binding(4, t0 + 30))))
    wb("sip:live@x", Record("sip:live@x", (binding(5, t0 + 300),)))
    assert wb.stop()
    records, info = load(path, t0)
    got = as_map(records)
    assert got == {"sip:half@x": (binding(4, t0 + 30),), "sip:live@x": (binding(5, t0 + 300),)}
    assert info["expired_bindings"] == 3 and info["deleted_rows"] == 1 and info["bindings"] == 2
    assert db_rows(path) == 2

    svc = LocationService()
    st = svc.local_state(t0)
    assert restore(svc, records, st) == 2
    assert svc.lookup("sip:live@x", t0) == (binding(5, t0 + 300),)
    assert st.bindings == 2 and st.queue.size == 2           # the worker's expiry queue learned them
    removed = sum(svc.collect(t0 + s, st) for s in range(0, 40))
    assert removed >= 1 and "sip:half@x" not in svc and "sip:live@x" in svc


def test_missing_file_is_an_empty_start(tmp_path):
    records, info = load(str(tmp_path / "nope" / "reg.db"), time.time())
    assert records == [] and info["missing"]
    assert not os.path.exists(tmp_path / "nope")


# ---- unusable files

def test_corrupt_file_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "reg.db"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(PersistError) as e:
        load(str(path), time.time())
    msg = str(e.value)
    assert str(path) in msg and "move it away" in msg and "[persistence] path" in msg
    with pytest.raises(PersistError, match="move it away"):
        WriteBehind(str(path)).start()
    assert path.read_bytes().startswith(b"this is not")       # never overwritten


def test_wrong_schema_is_refused(tmp_path):
    other = str(tmp_path / "users.db")
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (username TEXT, password TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(PersistError, match=r"users\.db.*other tables \(users\).*move it away"):
        load(other, time.time())
    old = str(tmp_path / "old.db")
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE bindings (aor TEXT, contact TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(PersistError, match="columns"):
        WriteBehind(old).start()


def test_a_bad_row_is_skipped_and_counted(tmp_path, caplog):
    path = str(tmp_path / "reg.db")
    now = time.time()
    wb = WriteBehind(path).open()
    wb("sip:a@x", Record("sip:a@x", (binding(1, now + 60),)))
    assert wb.stop()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO bindings VALUES ('sip:b@x', '{not json', ?)", (now + 60,))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="ftsip"):
        records, info = load(path, now)
    assert [r.aor for r in records] == ["sip:a@x"] and info["bad_rows"] == 1


# ---- slow or failing disk

def test_worker_call_never_blocks_while_a_flush_waits_for_the_disk(tmp_path):
    """Another connection holds SQLite's write lock for 1.2 s: the flush waits inside SQLite, and meanwhile the
    workers' calls still take microseconds. Then the lock goes and everything is written."""
    path = str(tmp_path / "reg.db")
    wb = WriteBehind(path, flush_interval=0.02, timeout=5.0).start()
    now = time.time()
    rec = Record("sip:x@x", (binding(0, now + 600),))
    wb("sip:first@x", rec)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")                        # the disk is "slow": nobody else can write
    try:
        deadline = time.monotonic() + 3
        wb("sip:trigger@x", rec)
        while wb.stats()["flushing_for"] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert wb.stats()["flushing_for"] > 0, "no flush started"
        durations = []
        pc = time.perf_counter_ns
        t_end = time.monotonic() + 0.8
        i = 0
        while time.monotonic() < t_end:
            aor = f"sip:u{i % 5000}@x"
            t = pc()
            wb(aor, rec)
            durations.append(pc() - t)
            i += 1
        assert wb.stats()["flushing_for"] > 0.5               # the flush was stuck the whole time
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    durations.sort()
    p99 = durations[len(durations) * 99 // 100]
    print(f"\n{len(durations)} calls during a stuck flush: median {durations[len(durations) // 2]} ns, "
          f"p99 {p99} ns, max {durations[-1]} ns")
    assert len(durations) > 10000
    assert p99 < 1_000_000                                    # < 1 ms
    # the max may include an OS preemption on this shared machine, but never the 1.2 s the flush waited
    assert durations[-1] < 100_000_000
    assert wb.stop()
    assert wb.stats()["errors"] == 0
    assert len(load(path, now)[0]) == min(i, 5000) + 2


def test_failing_disk_is_counted_logged_retried_and_bounded(tmp_path, monkeypatch, caplog):
    path = str(tmp_path / "reg.db")
    wb = WriteBehind(path, flush_interval=60).open()
    real = wb._write
    state = {"fail": True}

    def write(conn, upserts, deletes):
        if state["fail"]:
            conn.execute("BEGIN IMMEDIATE")
            raise sqlite3.OperationalError("database or disk is full")
        real(conn, upserts, deletes)
    monkeypatch.setattr(wb, "_write", write)
    now = time.time()
    with caplog.at_level(logging.ERROR, logger="ftsip"):
        for rnd in range(20):
            for i in range(300):
                aor = f"sip:u{i}@x"
                wb(aor, Record(aor, (binding(rnd * 1000 + i, now + 600),)))
            assert wb.flush() is False
            st = wb.stats()
            assert st["pending"] == 300                       # only the latest state per AOR: bounded
    st = wb.stats()
    assert st["errors"] == 20 and "disk is full" in st["last_error"] and st["lag"] > 0
    logged = [r for r in caplog.records if "flush of 300 rows failed" in r.getMessage()]
    assert 1 <= len(logged) <= 6                              # rate-limited
    wb("sip:u5@x", None)                                      # newer than the retained rows: wins the merge
    state["fail"] = False
    assert wb.stop()
    got = as_map(load(path, now)[0])
    assert len(got) == 299 and "sip:u5@x" not in got
    assert got["sip:u7@x"] == (binding(19007, now + 600),)


# ---- kill -9

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from ftsip.location.persist import WriteBehind, load, restore
    from ftsip.location.records import Binding, Record
    from ftsip.location.service import LocationService

    path, interval, n_aors, i = sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    svc = LocationService()
    st = svc.local_state(time.time())
    records, info = load(path, time.time())
    restore(svc, records, st)
    wb = WriteBehind(path, interval, source=svc.record).start()
    svc.listeners.append(wb)
    print("ready", info["records"], flush=True)
    exp = time.time() + 3600
    while True:
        for _ in range(40):
            aor = "sip:u%d@x" % (i % n_aors)
            if i % 7 == 0:
                svc.update(aor, lambda old: None, st)
            else:
                b = Binding("sip:d@h;n=%d" % i, "k", exp, 1.0, "cid", i, registered_at=time.time())
                svc.update(aor, lambda old, b=b, aor=aor: Record(aor, (b,)), st)
            i += 1
        print(i - 1, repr(time.time()), flush=True)   # every change <= i-1 was made before this time
        time.sleep(0.0005)
""")


def run_and_kill(path, interval, n_aors, start, run_for):
    """Run the child for ``run_for`` s, SIGKILL it; returns (timeline [(last_i, t)], t_kill, restored)."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, ROOT, path, str(interval), str(n_aors), str(start)],
                         stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline().split()
        assert first and first[0] == "ready", first
        time.sleep(run_for)
        t_kill = time.time()
        os.kill(p.pid, signal.SIGKILL)
        out = p.stdout.read()                     # what was in the pipe before the kill is still there
    finally:
        p.kill()
        p.wait()
    timeline = [(int(a), float(b)) for a, b in (line.split() for line in out.splitlines() if line)]
    return timeline, t_kill, int(first[1])


def check_bound(path, timeline, t_kill, n_aors, start, interval, margin):
    """Every change made before t_kill - (interval + margin) must be in the file. Returns the measured window:
    how long before the kill the oldest lost change may have been made."""
    records, _ = load(path, time.time())
    stored = {r.aor: r.bindings[0].cseq for r in records}
    last = timeline[-1][0] + 40                   # no change index beyond this was made

    def persisted(i):
        """Is the state after change i (or a newer one of the same AOR) in the file?"""
        aor = f"sip:u{i % n_aors}@x"
        have = stored.get(aor)
        if have is not None:
            return have >= i
        if i % 7 == 0:                            # a removal: absent is right
            return True
        return any(j % 7 == 0 for j in range(i + n_aors, last + 1, n_aors))    # a later removal was written

    # the latest change of each AOR at index <= J decides; scan the last n_aors changes before each point
    def all_persisted_upto(J):
        return all(persisted(i) for i in range(max(start, J - n_aors + 1), J + 1))

    cutoff = t_kill - (interval + margin)
    before = [i for i, t in timeline if t <= cutoff]
    assert before, "the child ran too briefly"
    assert all_persisted_upto(before[-1]), f"a change older than {interval + margin:.2f} s before the kill is lost"
    # measured window: the oldest lost change was made after the last line printed before it
    first_lost = next((i for i in range(start, last + 1) if not persisted(i)), None)
    lost_after = [t for i, t in timeline if first_lost is not None and i < first_lost]
    return (t_kill - lost_after[-1]) if lost_after else 0.0, len(stored)


def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path):
    path = str(tmp_path / "reg.db")
    interval, margin, n_aors = 0.1, 0.4, 3000
    windows = []
    start = 0
    for run_for in (1.3, 1.0):           # kill, restart from the killed file, kill again
        timeline, t_kill, restored = run_and_kill(path, interval, n_aors, start, run_for)
        assert len(timeline) > 20
        if start:
            assert restored > 0.5 * n_aors      # the second run started from what the first one left
        window, n = check_bound(path, timeline, t_kill, n_aors, start, interval, margin)
        windows.append(window)
        start = timeline[-1][0] + 41
    print(f"\nSIGKILL: changes lost from at most {', '.join(f'{w * 1000:.0f} ms' for w in windows)} before the "
          f"kill (flush_interval {interval * 1000:.0f} ms, bound asserted {(interval + margin) * 1000:.0f} ms)")


def test_opening_retries_while_the_database_is_locked():
    """Several processes open the file at once (process mode's start): SQLite may answer "database is locked" at
    once, without its busy timeout; opening retries until the timeout instead of failing the worker."""
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "wal"

    assert persist._when_unlocked(flaky, 2.0) == "wal" and len(calls) == 3

    def broken():
        raise sqlite3.OperationalError("attempt to write a readonly database")

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        persist._when_unlocked(broken, 2.0)                 # not a lock: no retry

    def locked():
        raise sqlite3.OperationalError("database is locked")

    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        persist._when_unlocked(locked, 0.3)
    assert 0.1 < time.monotonic() - t0 < 1.0
