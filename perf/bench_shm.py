#!/usr/bin/env python3
"""Benchmark of the process mode's shared-memory location table (``ftsip.location.shm``) against the thread mode's
in-process ``LinearHashTable``.

Not a test.  On the current interpreter:

* ``get`` and ``compute`` per second on N keys holding a realistic one-binding record (serialized, ~240 bytes), for
  ``PyShmTable`` (fcntl locks), the Cython ``ShmTable`` (robust pthread mutexes) and ``LinearHashTable`` (the twin
  ``ftsip.location.table`` selects) holding the same bytes; with 1 process and with 2 processes (each attaching the
  segment by name, like the process mode's workers).  ``LinearHashTable`` cannot be shared between processes: its
  "2" row is 2 threads of one process, which is what the thread mode does instead;
* the same through the Record adapter (``ShmLocationTable``: (de)serialization included) vs ``LinearHashTable``
  holding ``Record`` objects: the cost a registrar lookup or save really pays;
* bytes per binding: in the segment (slot size, the bytes a record actually fills, and the whole segment divided by
  the bindings at the chosen fill) vs on the heap (tracemalloc: one ``Record`` + ``Binding`` + its strings, and the
  table's own share).

Prints tables (rich) and writes JSON to ``perf/results/`` with the interpreter, git revision and machine.

    .venv/bin/python perf/bench_shm.py                 # 20k keys, 1.5 s windows
    .venv/bin/python perf/bench_shm.py --quick         # 5k keys, 0.4 s windows
    .venv/bin/python perf/bench_shm.py --keys 100000 --duration 2 --procs 1,2
"""
import argparse
import datetime
import gc
import json
import multiprocessing
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ftsip.location import shm  # noqa: E402
from perf import benchenv  # noqa: E402
from ftsip.location import table as loctable  # noqa: E402
from ftsip.location.records import Binding, Record  # noqa: E402

try:
    from ftsip._fast import shmtable as cyshm
except ImportError:  # not built
    cyshm = None

MP = multiprocessing.get_context("fork")


def aor(i):
    return f"sip:user{i}@example.com"


def binding(i, now=1_700_000_000.0):
    """A binding as the registrar builds it from a typical softphone REGISTER (fresh strings each time)."""
    host = f"192.0.2.{i % 250}"
    contact = f"sip:user{i}@{host}:{5060 + i % 1000};transport=udp"
    return Binding(contact, contact, now + 3600.0, 1.0, f"{i:032x}@{host}", 1 + i % 1000, (host, 5060 + i % 1000),
                   "udp", (), None, None, "Linphone/5.2.0 (belle-sip/5.2.0)", now)


def record(i):
    return Record(aor(i), (binding(i),))


def fmt(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:.0f}"


# -- the contenders ------------------------------------------------------------------------------------------------------
def shm_classes():
    out = {"shm-python": shm.PyShmTable}
    if cyshm is not None:
        out["shm-cython"] = cyshm.ShmTable
    return out


def open_table(kind, seg, records):
    """A table handle in this process: (table, closer)."""
    if kind == "LinearHashTable":
        raise AssertionError("in-process tables are not opened by name")
    t = shm_classes()[kind].attach(seg)
    return (shm.ShmLocationTable(t) if records else t), t.close


def _bump_bytes(old):
    return old[:-1] + bytes([(old[-1] + 1) & 255])


def _bump_record(old):
    b = old.bindings[0]
    return Record(old.aor, (Binding(b.contact, b.key, b.expires_at + 1.0, b.q, b.call_id, b.cseq + 1, b.received,
                                    b.transport, b.path, b.instance, b.reg_id, b.user_agent, b.registered_at),))


def run_ops(t, op, nkeys, duration, records, offset=0):
    """Ops done in ``duration`` seconds (checking the clock every 500 ops)."""
    keys = [aor((i * 7919 + offset) % nkeys) for i in range(nkeys)]
    fn = _bump_record if records else _bump_bytes
    get, compute = t.get, t.compute
    done = 0
    n = len(keys)
    i = 0
    end = time.perf_counter() + duration
    while True:
        if op == "get":
            for _ in range(500):
                get(keys[i])
                i = i + 1 if i + 1 < n else 0
        else:
            for _ in range(500):
                compute(keys[i], fn)
                i = i + 1 if i + 1 < n else 0
        done += 500
        if time.perf_counter() >= end:
            return done


def _child(kind, seg, op, nkeys, duration, records, offset, barrier, q):
    t, close = open_table(kind, seg, records)
    barrier.wait()
    t0 = time.perf_counter()
    n = run_ops(t, op, nkeys, duration, records, offset)
    q.put((n, time.perf_counter() - t0))
    close()


def measure(kind, op, nkeys, duration, workers, records, seg=None, local=None):
    """Total ops/s with ``workers`` processes (shm) or threads (LinearHashTable)."""
    if kind == "LinearHashTable":
        results = []

        def work(w):
            t0 = time.perf_counter()
            n = run_ops(local, op, nkeys, duration, records, w * 104729)
            results.append(n / (time.perf_counter() - t0))

        if workers == 1:
            work(0)
        else:
            ths = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
        return sum(results)
    if workers == 1:
        t, close = open_table(kind, seg, records)
        try:
            t0 = time.perf_counter()
            n = run_ops(t, op, nkeys, duration, records)
            return n / (time.perf_counter() - t0)
        finally:
            close()
    barrier = MP.Barrier(workers)
    q = MP.Queue()
    procs = [MP.Process(target=_child, args=(kind, seg, op, nkeys, duration, records, w * 104729, barrier, q))
             for w in range(workers)]
    for p in procs:
        p.start()
    out = [q.get(timeout=duration * 10 + 30) for _ in procs]
    for p in procs:
        p.join()
    return sum(n / dt for n, dt in out)


def fill_shm(cls, seg, nkeys, slot_size):
    t = cls.create(seg, 1 << max(4, (nkeys // 2).bit_length()), int(nkeys * 1.25) + 64, slot_size)
    loc = shm.ShmLocationTable(t)
    for i in range(nkeys):
        loc.put(aor(i), record(i))
    return t


def run_rates(nkeys, duration, procs, console):
    rows = []
    sample = shm.dump_record(record(nkeys - 1))
    slot_size = (shm.SLOT_HEADER + len(aor(nkeys - 1)) + len(sample) + 16 + 7) // 8 * 8
    for records in (False, True):
        what = "Record (adapter)" if records else "bytes"
        for kind in ["LinearHashTable"] + list(shm_classes()):
            seg = f"ftsip-bench-{os.getpid()}"
            local = None
            try:
                if kind == "LinearHashTable":
                    local = loctable.LinearHashTable()
                    for i in range(nkeys):
                        r = record(i)
                        local.put(aor(i), r if records else shm.dump_record(r))
                else:
                    fill_shm(shm_classes()[kind], seg, nkeys, slot_size).close()
                for op in ("get", "compute"):
                    for w in procs:
                        gc.collect()
                        rate = measure(kind, op, nkeys, duration, w, records, seg, local)
                        rows.append({"values": what, "contender": kind, "op": op, "workers": w,
                                     "workers_are": "threads" if kind == "LinearHashTable" else "processes",
                                     "ops_per_s": rate})
                        console.print(f"  {what:16} {kind:16} {op:8} x{w}: {fmt(rate):>8} ops/s")
            finally:
                if kind != "LinearHashTable":
                    shm.unlink_segment(seg)
    return rows, slot_size


# -- memory ------------------------------------------------------------------------------------------------------------
def run_memory(nkeys, slot_size, console):
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    recs = [record(i) for i in range(nkeys)]
    rec_bytes = tracemalloc.get_traced_memory()[0] - base
    keys = [aor(i) for i in range(nkeys)]
    base2 = tracemalloc.get_traced_memory()[0]
    t = loctable.LinearHashTable()
    for k, r in zip(keys, recs):
        t.put(k, r)
    table_bytes = tracemalloc.get_traced_memory()[0] - base2
    tracemalloc.stop()
    payloads = [shm.SLOT_HEADER + len(aor(i)) + len(shm.dump_record(r)) for i, r in enumerate(recs)]
    seg = f"ftsip-bench-mem-{os.getpid()}"
    try:
        st = fill_shm(shm.ShmTable, seg, nkeys, slot_size)
        stats = st.stats()
        st.close()
    finally:
        shm.unlink_segment(seg)
    out = {
        "bindings": nkeys,
        "heap_record_bytes_per_binding": rec_bytes / nkeys,
        "heap_table_bytes_per_binding": table_bytes / nkeys,
        "heap_key_bytes_per_binding": sum(sys.getsizeof(k) for k in keys) / nkeys,
        "heap_total_bytes_per_binding": (rec_bytes + table_bytes) / nkeys + sum(sys.getsizeof(k) for k in keys)
        / nkeys,
        "shm_bytes_per_slot": stats["bytes_per_slot"],
        "shm_slot_bytes_filled_mean": sum(payloads) / nkeys,
        "shm_slot_bytes_filled_max": max(payloads),
        "shm_segment_bytes": stats["bytes"],
        "shm_segment_slots": stats["slots"],
        "shm_segment_bytes_per_binding": stats["bytes"] / nkeys,
        "shm_bucket_and_header_bytes": stats["overhead_bytes"],
    }
    console.print(f"  heap: Record+Binding+strings {out['heap_record_bytes_per_binding']:.0f} B, key "
                  f"{out['heap_key_bytes_per_binding']:.0f} B, table share {out['heap_table_bytes_per_binding']:.0f}"
                  f" B -> {out['heap_total_bytes_per_binding']:.0f} B per binding")
    console.print(f"  shm: slot {out['shm_bytes_per_slot']} B (filled {out['shm_slot_bytes_filled_mean']:.0f} B on "
                  f"average), whole segment {out['shm_segment_bytes_per_binding']:.0f} B per binding "
                  f"({stats['slots']} slots for {nkeys} bindings)")
    return out


# -- report ------------------------------------------------------------------------------------------------------------
def meta():
    return {"interpreter": benchenv.interpreter(), "machine": benchenv.machine(),
            "git": benchenv.git_revision(("ftsip/location", "ftsip/_fast", "perf")), "shm_backend_selected": shm.BACKEND, "table_backend": loctable.BACKEND}


def print_table(console, rows, procs):
    from rich.table import Table
    for what in ("bytes", "Record (adapter)"):
        tab = Table(title=f"ops/s, values: {what} (LinearHashTable: threads; shm: processes)")
        tab.add_column("contender")
        for op in ("get", "compute"):
            for w in procs:
                tab.add_column(f"{op} x{w}", justify="right")
        for kind in dict.fromkeys(r["contender"] for r in rows):
            cells = []
            for op in ("get", "compute"):
                for w in procs:
                    r = [x for x in rows if x["values"] == what and x["contender"] == kind and x["op"] == op
                         and x["workers"] == w]
                    cells.append(fmt(r[0]["ops_per_s"]) if r else "-")
            tab.add_row(kind, *cells)
        console.print(tab)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 1.5)")
    ap.add_argument("--procs", default="1,2", help="worker counts, e.g. 1,2")
    ap.add_argument("--quick", action="store_true", help="5k keys, 0.4 s windows")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: rates,memory")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.keys = min(args.keys, 5000)
    duration = args.duration or (0.4 if args.quick else 1.5)
    procs = sorted({int(x) for x in args.procs.split(",") if x.strip()})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from rich.console import Console
    console = Console()
    m = meta()
    console.print(f"[bold]shared-memory location table benchmark[/bold]: {sys.version.split()[0]} "
                  f"{'free-threaded' if m['interpreter']['free_threaded_build'] else 'GIL build'} (GIL "
                  f"{'enabled' if m['interpreter']['gil_enabled'] else 'disabled'}), {args.keys} keys, "
                  f"{duration} s windows, workers {procs}, cython twin {'built' if cyshm else 'NOT built'}")
    res = {"benchmark": "shm", "when": datetime.datetime.now(datetime.timezone.utc).isoformat(), **m,
           "args": vars(args), "duration_s": duration, "keys": args.keys, "workers": procs}
    slot_size = None
    if "rates" not in skip:
        res["rates"], slot_size = run_rates(args.keys, duration, procs, console)
        print_table(console, res["rates"], procs)
    if "memory" not in skip and cyshm is not None:
        if slot_size is None:
            sample = shm.dump_record(record(args.keys - 1))
            slot_size = (shm.SLOT_HEADER + len(aor(args.keys - 1)) + len(sample) + 16 + 7) // 8 * 8
        console.print(f"[bold]memory at {args.keys} bindings[/bold]")
        res["memory"] = run_memory(args.keys, slot_size, console)
    res["slot_size"] = slot_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "ft" if m["interpreter"]["free_threaded_build"] and not m["interpreter"]["gil_enabled"] else "gil"
    path = out / (f"shm-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-py{sys.version_info[0]}"
                  f"{sys.version_info[1]}{tag}.json")
    path.write_text(json.dumps(res, indent=1, default=str))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
