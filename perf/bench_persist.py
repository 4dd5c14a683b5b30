"""Benchmark the registration write-behind store (ftsip.location.persist).

Measures what a worker pays per change (``WriteBehind.__call__``, ns, 1 and N threads, minus the cost of calling a
shared no-op listener object the same way; ``_raw`` includes it), how fast a flush writes (rows/s, one
transaction, WAL) and how fast ``load`` reads.

    .venv/bin/python perf/bench_persist.py [--aors 100000] [--calls 1000000] [--threads 2] [--out FILE.json]
"""
import argparse
import os
import platform
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftsip.location.persist import WriteBehind, load  # noqa: E402
from ftsip.location.records import Binding, Record  # noqa: E402
from ftsip.ops import jsonio  # noqa: E402
from perf import benchenv  # noqa: E402


def make_records(n, now, per=1):
    out = []
    for i in range(n):
        aor = f"sip:user{i}@example.com"
        bs = tuple(Binding(f"sip:user{i}@10.{i % 250}.{j}.1:5060;transport=udp", f"sip:user{i}@10.{i % 250}.{j}.1:5060",
                           now + 3600 + i % 600, 1.0, f"{i}-{j}@client", 1000 + i, ("10.0.0.1", 5060), "udp", (),
                           None, None, "SIPp/3.6.1", now) for j in range(per))
        out.append(Record(aor, bs))
    return out


def per_call(fn, records, calls, threads):
    """ns per call, each of ``threads`` threads making ``calls // threads`` calls."""
    each = calls // threads
    barrier = threading.Barrier(threads + 1)
    spent = [0] * threads

    def run(k):
        local = records[k::threads] or records
        m = len(local)
        barrier.wait()
        t = time.perf_counter_ns()
        for i in range(each):
            r = local[i % m]
            fn(r.aor, r)
        spent[k] = time.perf_counter_ns() - t

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    for t in ts:
        t.join()
    return sum(spent) / (each * threads)


class Noop:
    """The baseline: a listener object that does nothing. On 3.13t, merely calling one object shared by N threads
    costs more per call than calling it from one thread (reference counts of shared objects are atomic), so the
    baseline is measured the same way."""

    def __call__(self, aor, record):
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aors", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bindings", type=int, default=1, help="bindings per AOR")
    ap.add_argument("--out", help="also write the results as JSON to this file")
    a = ap.parse_args(argv)
    now = time.time()
    records = make_records(a.aors, now, a.bindings)
    res = {
        "bench": "persist", "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "gil": getattr(sys, "_is_gil_enabled", lambda: True)(), "json": jsonio.BACKEND,
        "machine": platform.machine(), "cpus": os.cpu_count(), "git": benchenv.git_revision(), "aors": a.aors,
        "bindings_per_aor": a.bindings,
    }
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "reg.db")
        # ---- the worker's cost (no flusher running: the pure call)
        wb = WriteBehind(path, flush_interval=3600, max_pending=10 ** 9).open()
        for threads in sorted({1, a.threads}):
            base = per_call(Noop(), records, a.calls, threads)
            cost = per_call(wb, records, a.calls, threads)
            res[f"call_ns_{threads}t"] = round(cost - base, 1)
            res[f"call_ns_{threads}t_raw"] = round(cost, 1)
        # ---- flush throughput: every AOR changed once, one transaction
        wb._take()
        for r in records:
            wb(r.aor, r)
        t = time.perf_counter()
        wb._rows(dict((r.aor, r) for r in records))
        encode_s = time.perf_counter() - t
        t = time.perf_counter()
        assert wb.flush()
        flush_s = time.perf_counter() - t
        res["flush_rows"] = a.aors
        res["flush_s"] = round(flush_s, 4)
        res["flush_rows_per_s"] = round(a.aors / flush_s)
        res["encode_rows_per_s"] = round(a.aors / encode_s)
        # a second flush of the same AORs (updates of existing rows, the steady state)
        for r in records:
            wb(r.aor, r)
        t = time.perf_counter()
        assert wb.flush()
        res["reflush_rows_per_s"] = round(a.aors / (time.perf_counter() - t))
        # ---- calls while the flusher runs (background flushes every 0.2 s)
        wb.stop()
        wb = WriteBehind(path, flush_interval=0.2).start()
        cost = per_call(wb, records, a.calls, a.threads)
        res[f"call_ns_{a.threads}t_flushing_raw"] = round(cost, 1)
        wb.stop()
        st = wb.stats()
        res["flushing_flushes"] = st["flushes"]
        res["flushing_max_flush_s"] = round(st["max_flush_duration"], 4)
        res["db_bytes"] = os.path.getsize(path)
        # ---- load
        t = time.perf_counter()
        loaded, info = load(path, now)
        load_s = time.perf_counter() - t
        assert len(loaded) == a.aors
        res["load_rows_per_s"] = round(a.aors / load_s)
    for k, v in res.items():
        print(f"{k:32} {v}")
    if a.out:
        with open(a.out, "w") as f:
            f.write(jsonio.dumps(res, indent=True) + "\n")


if __name__ == "__main__":
    main()
