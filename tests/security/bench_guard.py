"""Micro-benchmarks for issue 6 (run by hand: ``.venv/bin/python tests/security/bench_guard.py [--old OLD_WORKER]``).

- the receive loop (``ftsip.runtime.worker.run``) over a pre-filled socket with a no-op core: ns per datagram, with
  the lag measurement, and optionally against an older copy of worker.py (``--old path``);
- ``Guard.allow_datagram`` (pike off, pike on with one source and with many sources), ``auth_blocked``,
  ``check_request``: ns per call, one thread and N threads.
"""
import argparse
import importlib.util
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ftsip import config  # noqa: E402
from ftsip.ops.guard import Guard  # noqa: E402
from ftsip.ops.stats import Registry  # noqa: E402

N = 2000


class NoCore:
    def __init__(self, want):
        self.want = want
        self.got = 0

    def on_datagram(self, data, addr, now, ctx):
        self.got += 1

    def on_tick(self, now, ctx):
        pass


def bench_loop(worker_mod, rounds=40):
    from ftsip.runtime.sockets import udp_socket
    sock, _ = udp_socket("127.0.0.1", 0, reuseport=False, rcvbuf=8 << 20, recv_timeout=0.01)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = sock.getsockname()
    payload = b"x" * 500
    times = []
    for _ in range(rounds):
        for _ in range(N):
            tx.sendto(payload, dest)
        core = NoCore(N)
        ctx = worker_mod.Context(0, sock, Registry().new_worker(0), "127.0.0.1", dest[1], time.time())
        t0 = time.perf_counter()
        worker_mod.run(core, ctx, lambda: core.got < N, 10.0)
        times.append((time.perf_counter() - t0) / N * 1e9)
    sock.close()
    tx.close()
    times.sort()
    return times[0], times[len(times) // 2]


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def per_call(fn, n):
    t0 = time.perf_counter()
    fn(n)
    return (time.perf_counter() - t0) / n * 1e9


def bench_guard(threads):
    from ftsip.sip import parse
    from support import FakeCtx, options
    off = Guard(config.load())
    on = Guard(config.load(overrides={("security", "pike_rate"): 10 ** 9}))
    addrs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5060) for i in range(20000)]
    req = parse(options(("127.0.0.1", 5060)))
    ctx = FakeCtx()

    def run(g, many):
        def loop(n):
            allow = g.allow_datagram
            now = time.time()
            if many:
                for i in range(n):
                    allow(addrs[i % 20000], now)
            else:
                a = addrs[0]
                for _ in range(n):
                    allow(a, now)
        return loop

    banned = Guard(config.load(overrides={("security", "pike_rate"): 1}))
    while banned.allow_datagram(addrs[0], time.time()):
        pass

    def drop(n):
        f = banned.allow_datagram
        now = time.time()
        a = addrs[0]
        for _ in range(n):
            f(a, now)

    def blocked(n):
        f = on.auth_blocked
        now = time.time()
        for i in range(n):
            f("alice", addrs[i % 20000], now)

    def check(n):
        f = on.check_request
        now = time.time()
        a = addrs[0]
        for _ in range(n):
            f(req, a, now, ctx)

    out = {}
    cases = (("allow_datagram pike off", run(off, False)), ("allow_datagram pike on, 1 source", run(on, False)),
             ("allow_datagram pike on, 20k sources", run(on, True)),
             ("allow_datagram, a banned source (drop)", drop), ("auth_blocked (no blocks)", blocked),
             ("check_request", check))
    for name, fn in cases:
        best = min(per_call(fn, 200_000) for _ in range(5))
        out[name] = best
        if threads > 1:
            res = []

            def worker():
                t0 = time.perf_counter()
                fn(200_000)
                res.append((time.perf_counter() - t0) / 200_000 * 1e9)
            ts = [threading.Thread(target=worker) for _ in range(threads)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            out[name + f" ({threads} threads, aggregate ns/call)"] = wall / (200_000 * threads) * 1e9
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="an older worker.py to compare the receive loop with")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    print(sys.version.split()[0], "GIL", getattr(sys, "_is_gil_enabled", lambda: True)())
    from ftsip.runtime import worker
    mods = [("new", worker)]
    if a.old:
        mods.insert(0, ("old", load(a.old, "worker_old")))
    for rep in range(3):
        for name, mod in mods:
            lo, med = bench_loop(mod)
            print(f"receive loop ({name}): min {lo:.0f} ns/datagram, median {med:.0f}")
    for k, v in bench_guard(a.threads).items():
        print(f"{k}: {v:.0f} ns")


if __name__ == "__main__":
    main()
