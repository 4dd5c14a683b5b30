#!/usr/bin/env python3
"""Benchmark of amortized expiry (issue 3 section 4): a registration storm in a 1M-binding location table, collected by
the incremental collector (``[location] gc = "incremental"``: per-worker expiry queues, a budgeted ``collect`` every
tick) or by the paper's baseline (``gc = "sweep"``: one full sweep of the whole table), while the same worker loop
keeps serving REGISTERs.

Not a test. Each configuration runs in a fresh child process (clean heap, clean RSS); configurations are interleaved
and repeated, and the report gives min-max ranges over the repetitions.

What one run does
    * An ``App`` (the real sans-I/O core: parser, digest auth, registrar, location service) with ``--users`` users in
      its in-memory user store, and ``--bindings`` AORs in its location table, one binding each, built as the
      registrar builds them (fresh strings per binding: Contact, key, Call-ID, source host, User-Agent), filed
      through ``LocationService.update`` by the worker(s) that serve them (so the incremental collector's queues
      hold them, as after real registrations). ``--burst`` of them (10 %) expire in the same second B; the others
      expire spread evenly over the next hour (about 250 a second: the steady trickle a 1M-user server collects).
    * A worker loop that does what ``ftsip.runtime.worker.run`` does: take the next datagram, ``app.on_datagram``,
      then ``app.on_tick(now, ctx)`` when a tick (``[server] tick``, 10 ms) is due; when nothing arrives it ticks on
      time (the socket's receive timeout). Traffic: REGISTER exchanges arriving as a Poisson process at ``--rate``
      per second per worker; each is two transactions, REGISTER -> 401, then (after ``--rtt``) REGISTER with MD5
      credentials -> 200, a refresh of one of the ``--users`` users (one binding each, Expires 900).
    * Time is simulated and advances with the work done. ``--threads 1`` (default) uses a *virtual clock*: a
      discrete-event simulation in which every datagram and every tick advances the clock by the CPU time it really
      took (``time.thread_time``; ``--meter wall`` for wall-clock time), so a REGISTER that arrives while a GC step
      runs waits for it, exactly as in the socket buffer, while other people's load on this shared machine (which
      preempts us) does not inflate the numbers. ``--threads N`` runs N worker threads on one App in *real time*
      (wall clock, ``now`` = simulated start + elapsed): that adds contention on the table and the interpreter, and
      the machine's noise.
    * Windows (by arrival time of a transaction): *steady* = from 1 s after the start until the burst is due (only the
      background trickle to collect); *burst* = from the moment the burst is due (B + 1: the queues file an AOR under
      the second its binding expires, rounded up) until the burst is cleared and the worker has caught up with the
      arrivals that queued meanwhile. The sweep is scheduled at B + 1 (in production it runs every
      ``sweep_interval`` = 60 s, so its clear time is up to a minute longer; its step is the same).

What is reported (per collector; ranges over the repetitions)
    longest GC step (one ``on_tick``: wheel + ``LocationService.tick``; wall and CPU), p99 of the steps during the
    burst, time to clear the burst (simulated seconds from B + 1), latency of the transactions (arrival -> answer:
    queueing + service) p50/p99/p99.9/max in both windows and the p99.9 ratio, REGISTER service time alone, RSS per
    100k bindings (RSS after the fill minus before, over the bindings), and CPython cyclic-GC pauses seen in the
    windows. Goals (issue 3): no GC step over 2 ms; p99.9 during the burst within 1.5x of steady state.

The benchmark servers' overload shedding is irrelevant here (no sockets, no guard), but the config still sets
``[security] overload_lag = 0`` like every benchmark config.

    .venv/bin/python perf/bench_expiry.py                           # 1M bindings, both collectors, 3 repetitions
    .venv/bin/python perf/bench_expiry.py --threads 2 --repeat 2    # 2 worker threads, real time
    .venv/bin/python perf/bench_expiry.py --quick                   # 200k bindings, 1 repetition
    .venv/bin/python perf/bench_expiry.py --gc incremental --gc-budget 50 --rate 1500
"""
import argparse
import array
import datetime
import gc
import heapq
import json
import os
import random
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from perf import benchenv  # noqa: E402

DOMAIN = "example.com"
GOAL_STEP_MS = 2.0
GOAL_RATIO = 1.5


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pct(values, q):
    """The q-quantile (0..1) of a sorted sequence (nearest rank); None when empty."""
    if not values:
        return None
    i = min(len(values) - 1, max(0, int(q * len(values) + 0.5) - 1))
    return values[i]


def lat_summary(values):
    """{n, p50, p99, p99.9, max, mean} in milliseconds from seconds."""
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50": pct(v, 0.5) * 1e3, "p99": pct(v, 0.99) * 1e3, "p99.9": pct(v, 0.999) * 1e3,
            "max": v[-1] * 1e3, "mean": sum(v) / len(v) * 1e3}


def environment():
    from ftsip.location.table import BACKEND
    from ftsip.sip import backend
    return benchenv.environment(table_backend=BACKEND, parser_twin=backend.NAME)


# ---------------------------------------------------------------------------------------------------------------------
# the population


def user_name(i):
    return f"u{i:07d}"


def source(i):
    """The (host, port) user i registers from."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 5060 + i % 1000


def call_id(i):
    return f"{i:016x}@bench"


def make_record(i, expires_at, now):
    """Record for user i as the registrar would have built it (fresh strings each time, as parsed from a REGISTER)."""
    from ftsip.location.records import Binding, Record
    user = user_name(i)
    host, port = source(i)
    contact = f"sip:{user}@{host}:{port}"
    key = f"sip:{user}@{host}:{port}"            # uri_key() builds its own string
    b = Binding(contact, key, expires_at, 1.0, call_id(i), 1, (host, port), "udp", (), None, None,
                f"Linphone/5.2.{i % 10} (belle-sip)", now)
    return Record(f"{user}@{DOMAIN}", (b,))


def build_app(args, start):
    from ftsip import config
    from ftsip.app import App
    from ftsip.auth import User, UserStore
    overrides = {("server", "domain"): [DOMAIN], ("auth", "algorithms"): ["MD5"],
                 ("location", "gc"): args.gc, ("location", "gc_budget"): args.gc_budget,
                 ("location", "sweep_interval"): 3600, ("security", "overload_lag"): 0.0,
                 ("server", "tick"): args.tick}
    cfg = config.load(overrides=overrides)
    users = UserStore({user_name(i): User.from_password(user_name(i), f"pw{i}", DOMAIN) for i in range(args.users)},
                      realm=DOMAIN)
    app = App(cfg, users=users, secret=b"b" * 32, rng=random.Random(1))
    app.bind("127.0.0.1", 5070)
    return app


class Ctx:
    """A worker context for the in-memory loop: keeps only the status of the last datagram sent."""

    def __init__(self, now, wid, tick):
        from ftsip.ops.stats import Registry
        from ftsip.timers import TimerWheel
        self.wid = wid
        self.host = "127.0.0.1"
        self.port = 5070
        self.wheel = TimerWheel(now, tick)
        self.stats = Registry().new_worker(wid)
        self.sock = None
        self.state = None
        self.lag = 0.0
        self.last = None
        self.sent = 0

    def send(self, data, addr):
        self.last = data
        self.sent += 1


class UA:
    """One registering user: precomputed credentials (stateless nonces stay valid for nonce_lifetime; nonce-count
    tracking is off by default, so a phone may reuse them), a REGISTER built per transaction (new branch and CSeq)."""

    __slots__ = ("i", "user", "host", "port", "call_id", "cseq", "auth")

    def __init__(self, i, app, now):
        from support import digest_header
        self.i = i
        self.user = user_name(i)
        self.host, self.port = source(i)
        self.call_id = call_id(i)
        self.cseq = 1
        ch = app.auth.challenge(now)[0]
        self.auth = digest_header(ch, self.user, f"pw{i}", "REGISTER", f"sip:{DOMAIN}", cnonce=f"c{i:x}")

    def register(self, n, with_auth):
        self.cseq += 1
        u = self.user
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{n}x{self.cseq};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{u}@{DOMAIN}>;tag=f{u}\r\n"
                f"To: <sip:{u}@{DOMAIN}>\r\n"
                f"Call-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} REGISTER\r\n"
                f"Contact: <sip:{u}@{self.host}:{self.port}>\r\n"
                "Expires: 900\r\n"
                "User-Agent: Linphone/5.2.0 (belle-sip)\r\n"
                + (self.auth + "\r\n" if with_auth else "")
                + "Content-Length: 0\r\n\r\n").encode()


# ---------------------------------------------------------------------------------------------------------------------
# clocks


class VirtualClock:
    """Simulated time advanced by the measured cost of each piece of work (one worker)."""

    def __init__(self, start, meter):
        self.t = start
        self.meter = time.thread_time if meter == "cpu" else time.perf_counter

    def now(self):
        return self.t

    def run(self, fn, *a):
        """Run fn, advance the clock by its cost; returns (wall seconds, cpu seconds)."""
        c0 = time.thread_time()
        w0 = time.perf_counter()
        fn(*a)
        w = time.perf_counter() - w0
        c = time.thread_time() - c0
        self.t += c if self.meter is time.thread_time else w
        return w, c

    def wait_until(self, t):
        if t > self.t:
            self.t = t


class RealClock:
    """Simulated time = start + wall-clock seconds since a common origin (shared by the worker threads)."""

    def __init__(self, start, origin):
        self.start = start
        self.origin = origin

    def now(self):
        return self.start + (time.perf_counter() - self.origin)

    def run(self, fn, *a):
        c0 = time.thread_time()
        w0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - w0, time.thread_time() - c0

    def wait_until(self, t):
        """Sleep (no spinning: two spinning workers would steal the 2 cores from each other). The kernel's wake-up
        delay shows in the latency of what arrived meanwhile, as it does for a worker blocked in recvfrom."""
        left = t - self.now()
        if left > 0:
            time.sleep(left)


# ---------------------------------------------------------------------------------------------------------------------
# one worker's loop


class WorkerRun:
    def __init__(self, app, ctx, clock, uas, rate, rtt, tick, end, after, seed, shared):
        self.after = after
        self.app, self.ctx, self.clock = app, ctx, clock
        self.uas, self.rate, self.rtt, self.tick, self.end = uas, rate, rtt, tick, end
        self.rng = random.Random(seed)
        self.shared = shared
        # per transaction: arrival (sim s), latency (s), service wall (s), kind (0: 401 leg, 1: 200 leg)
        self.arrival = array.array("d")
        self.latency = array.array("d")
        self.service = array.array("d")
        self.kind = array.array("b")
        # per tick: sim time, wall s, cpu s, AORs examined
        self.tick_at = array.array("d")
        self.tick_wall = array.array("d")
        self.tick_cpu = array.array("d")
        self.tick_work = array.array("l")
        self.statuses = {}
        self.n = 0

    def run(self):
        from ftsip.runtime import worker
        app, ctx, clock = self.app, self.ctx, self.clock
        on_datagram, on_tick = app.on_datagram, app.on_tick
        st = ctx.state.loc
        uas = self.uas
        rng = self.rng
        heap = []
        seq = 0
        t = clock.now()
        heapq.heappush(heap, (t + rng.expovariate(self.rate), seq, 0, None))
        next_tick = 0.0
        arrival_a, latency_a, service_a, kind_a = (self.arrival.append, self.latency.append, self.service.append,
                                                   self.kind.append)
        statuses = self.statuses
        end = self.end
        shared = self.shared
        after = self.after
        while True:
            t = clock.now()
            if t >= end or (shared.cleared_at is not None and t >= shared.cleared_at + after):
                break
            ev = heap[0][0]
            if ev <= t:
                at, _, leg, ua = heapq.heappop(heap)
                if leg == 0:                # a new exchange: pick a user, schedule the next arrival
                    ua = uas[rng.randrange(len(uas))]
                    seq += 1
                    heapq.heappush(heap, (at + rng.expovariate(self.rate), seq, 0, None))
                self.n += 1
                data = ua.register(self.n, leg == 1)        # client work: not timed (virtual clock)
                addr = (ua.host, ua.port)
                w, _ = clock.run(on_datagram, data, addr, t, ctx)
                done = clock.now()
                arrival_a(at)
                latency_a(done - at)
                service_a(w)
                kind_a(leg)
                last = ctx.last
                code = last[8:11] if last is not None else b"---"
                statuses[code] = statuses.get(code, 0) + 1
                if leg == 0 and code == b"401":
                    seq += 1
                    heapq.heappush(heap, (done + self.rtt, seq, 1, ua))
                now = t                      # the worker ticks with the clock read before the datagram
            else:
                nt = next_tick if next_tick > t else t
                if nt < ev:                  # idle until the tick (SO_RCVTIMEO wakes the worker; 1 ms while behind)
                    clock.wait_until(nt)
                    now = clock.now()
                else:
                    clock.wait_until(ev)
                    continue
            if now >= next_tick:
                e0 = st.examined
                w, c = clock.run(on_tick, now, ctx)
                next_tick = worker.next_tick(now, self.tick, st.behind)   # the runtime's rule (1 ms while behind)
                self.tick_at.append(now)
                self.tick_wall.append(w)
                self.tick_cpu.append(c)
                self.tick_work.append(st.examined - e0)
                shared.after_tick(clock.now())


class Shared:
    """What the worker threads share: when the burst was cleared (first seen after a tick)."""

    def __init__(self, app, gc_kind, burst_sec):
        self.loc = app.location
        self.gc_kind = gc_kind
        self.burst_sec = burst_sec      # the queue second the burst is filed under
        self.cleared_at = None
        self.lock = threading.Lock()

    def after_tick(self, now):
        if self.cleared_at is not None or now < self.burst_sec:
            return
        locs = self.loc.locals
        if self.gc_kind == "sweep":
            done = locs[0].steps >= 1
        else:
            done = all(s.queue.cursor > self.burst_sec for s in locs)
        if done:
            with self.lock:
                if self.cleared_at is None:
                    self.cleared_at = now


# ---------------------------------------------------------------------------------------------------------------------
# one configuration (child process)


def run_one(args):
    from ftsip.location.table import BACKEND
    gc_pauses = []
    gc_t = [0.0]

    def gc_cb(phase, info):
        if phase == "start":
            gc_t[0] = time.perf_counter()
        else:
            gc_pauses.append((time.perf_counter(), time.perf_counter() - gc_t[0], info.get("generation")))

    S0 = 1_700_000_000.0                    # simulated start of the loop
    B = S0 + 1.0 + args.steady - 1.0        # the burst second: due at B + 1 = S0 + 1 + steady
    due = int(B) + 1
    fill_now = S0 - 1.0
    t_setup = time.perf_counter()
    app = build_app(args, fill_now)
    loc = app.location
    uas_all = [UA(i, app, S0) for i in range(args.users)]
    shared = Shared(app, args.gc, due)
    nthreads = args.threads
    n = args.bindings
    nburst_target = int(n * args.burst)
    every = max(1, round(n / nburst_target)) if nburst_target else n + 1
    end_limit = due + args.max_clear
    runs = [None] * nthreads
    fill = [0.0] * nthreads
    nburst = [0] * nthreads
    errors = []
    filled = threading.Barrier(nthreads + 1)
    go = threading.Barrier(nthreads + 1)
    origin = [0.0]
    gc.collect()
    rss0 = rss_bytes()

    def worker(w):
        # As the thread runtime does: each worker builds its own copy of the core in its own thread (App.for_worker,
        # where the tree has it: on 3.13t an object is owned by the thread that made it) and its context; then it
        # files its share of the bindings itself, as if it had served their REGISTERs (the records are its own,
        # and its expiry queue holds them).
        try:
            core = app.for_worker() if hasattr(app, "for_worker") else app
            ctx = Ctx(fill_now, w, args.tick)
            core.attach(ctx, fill_now)
            st = ctx.state.loc
            if args.gc == "sweep" and w == 0:
                st.next_sweep = due          # the sweep runs at the first tick of the burst's second
            rng = random.Random(7 + w)
            t0 = time.perf_counter()
            kb = 0
            update = core.location.update
            for i in range(w, n, nthreads):
                if i % every == every - 1:
                    exp = B + rng.random() * 0.999
                    kb += 1
                elif i < args.users:          # the registering users: expire after the run
                    exp = S0 + 3600.0 + rng.random() * 60.0
                else:
                    exp = S0 + 1.0 + rng.random() * 3600.0
                rec = make_record(i, exp, fill_now)
                update(rec.aor, lambda old, rec=rec: rec, st)
            fill[w] = time.perf_counter() - t0
            nburst[w] = kb
            # the users are spread over the workers (SO_REUSEPORT: one phone's datagrams land on one worker)
            runs[w] = WorkerRun(core, ctx, None, uas_all[w::nthreads], args.rate, args.rtt, args.tick, end_limit,
                                args.after, args.seed + w, shared)
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            errors.append(repr(e))
            filled.abort()
            raise
        filled.wait()
        go.wait()
        r = runs[w]
        r.clock = VirtualClock(S0, args.meter) if nthreads == 1 else RealClock(S0, origin[0])
        r.run()

    ths = [threading.Thread(target=worker, args=(w,), name=f"worker-{w}") for w in range(nthreads)]
    for th in ths:
        th.start()
    try:
        filled.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a worker failed: {errors}") from None
    gc.collect()
    rss1 = rss_bytes()
    fill_s = max(fill)
    nburst = sum(nburst)
    setup_s = time.perf_counter() - t_setup
    gc.callbacks.append(gc_cb)
    t_run = time.perf_counter()
    origin[0] = t_run + 0.01
    go.wait()
    for th in ths:
        th.join()
    run_s = time.perf_counter() - t_run
    gc.callbacks.remove(gc_cb)
    rss2 = rss_bytes()
    return summarize(args, runs, shared, loc, S0, due, nburst, rss0, rss1, rss2, fill_s, setup_s, run_s, gc_pauses,
                     t_run, BACKEND)


def summarize(args, runs, shared, loc, S0, due, nburst, rss0, rss1, rss2, fill_s, setup_s, run_s, gc_pauses, t_run,
              backend):
    cleared = shared.cleared_at
    steady_lo, steady_hi = S0 + 1.0, float(due)
    # burst window: from `due` until cleared and caught up (the first 401-leg answered within 3x its own service
    # time after the clear, per worker: the queue that built up meanwhile is gone)
    lat_steady, lat_burst, svc_steady, svc_burst, lat_after = [], [], [], [], []
    burst_end = None
    for r in runs:
        end_r = None
        if cleared is not None:
            for at, lat, svc in zip(r.arrival, r.latency, r.service):
                if at >= cleared and lat <= 3 * svc + 1e-4:
                    end_r = at
                    break
            if end_r is None:
                end_r = cleared
        burst_end = end_r if burst_end is None or (end_r is not None and end_r > burst_end) else burst_end
    for r in runs:
        for at, lat, svc in zip(r.arrival, r.latency, r.service):
            if steady_lo <= at < steady_hi:
                lat_steady.append(lat)
                svc_steady.append(svc)
            elif at >= due and (burst_end is None or at < burst_end):
                lat_burst.append(lat)
                svc_burst.append(svc)
            elif burst_end is not None and at >= burst_end:
                lat_after.append(lat)
    steps_all_w, steps_all_c, steps_burst_w, steps_steady_w = [], [], [], []
    work_burst = 0
    nsteps_burst = 0
    for r in runs:
        for at, w, c, k in zip(r.tick_at, r.tick_wall, r.tick_cpu, r.tick_work):
            steps_all_w.append(w)
            steps_all_c.append(c)
            if at >= due and (cleared is None or at <= cleared):
                steps_burst_w.append(w)
                work_burst += k
                nsteps_burst += 1
            elif steady_lo <= at < steady_hi:
                steps_steady_w.append(w)
    statuses = {}
    for r in runs:
        for k, v in r.statuses.items():
            k = k.decode(errors="replace")
            statuses[k] = statuses.get(k, 0) + v
    stats = loc.stats()
    slow = []                          # the slowest datagrams (diagnostics: what else than GC steps stalls a worker)
    for r in runs:
        slow.extend((svc, at) for at, svc in zip(r.arrival, r.service))
    slow = sorted(slow, reverse=True)[:5]
    sb = sorted(steps_burst_w)
    ss = sorted(steps_steady_w)
    longest_i = max(range(len(steps_all_w)), key=steps_all_w.__getitem__) if steps_all_w else None
    out = {
        "gc": args.gc, "threads": args.threads, "clock": "virtual" if args.threads == 1 else "real",
        "meter": args.meter if args.threads == 1 else "wall",
        "bindings": args.bindings, "burst_bindings": nburst, "users": args.users,
        "rate_per_worker": args.rate, "gc_budget": args.gc_budget, "tick_s": args.tick, "table_backend": backend,
        "fill_s": round(fill_s, 2), "setup_s": round(setup_s, 2), "run_wall_s": round(run_s, 2),
        "rss_before_fill_mb": rss0 / 1e6, "rss_after_fill_mb": rss1 / 1e6, "rss_after_run_mb": rss2 / 1e6,
        "rss_bytes_per_binding": (rss1 - rss0) / args.bindings,
        "rss_mb_per_100k_bindings": (rss1 - rss0) / args.bindings * 1e5 / 1e6,
        "cleared": cleared is not None,
        "clear_s": (cleared - due) if cleared is not None else None,
        "burst_window_s": (burst_end - due) if burst_end is not None else None,
        "longest_step_ms": max(steps_all_w) * 1e3 if steps_all_w else None,
        "longest_step_cpu_ms": max(steps_all_c) * 1e3 if steps_all_c else None,
        "longest_step_at_s": (runs[0].tick_at[longest_i] - due) if longest_i is not None and len(runs) == 1
        else None,
        "steps_over_2ms": sum(1 for w in steps_all_w if w > GOAL_STEP_MS / 1e3),
        "steps_over_2ms_cpu": sum(1 for c in steps_all_c if c > GOAL_STEP_MS / 1e3),
        "burst_steps": nsteps_burst,
        "burst_step_p50_ms": pct(sb, 0.5) * 1e3 if sb else None,
        "burst_step_p99_ms": pct(sb, 0.99) * 1e3 if sb else None,
        "burst_aors_examined": work_burst,
        "steady_step_p50_ms": pct(ss, 0.5) * 1e3 if ss else None,
        "steady_step_max_ms": ss[-1] * 1e3 if ss else None,
        "latency_steady_ms": lat_summary(lat_steady),
        "latency_burst_ms": lat_summary(lat_burst),
        "latency_after_ms": lat_summary(lat_after),
        "service_steady_ms": lat_summary(svc_steady),
        "service_burst_ms": lat_summary(svc_burst),
        "slowest_datagrams": [{"ms": round(v * 1e3, 3), "at_s": round(at - due, 3)} for v, at in slow],
        "statuses": statuses,
        "location": {k: v for k, v in stats.items() if k != "table"},
        "table": stats["table"],
        "cpython_gc_pauses": [{"t_s": round(t - t_run, 3), "ms": round(d * 1e3, 3), "generation": g}
                              for t, d, g in gc_pauses],
    }
    ls, lb = out["latency_steady_ms"], out["latency_burst_ms"]
    out["p999_ratio"] = (lb["p99.9"] / ls["p99.9"]) if lb.get("n") and ls.get("n") else None
    # judged on the step's CPU time: its wall time also counts the moments this process was not running at all
    # (other people's benchmarks on this shared 2-core machine); both are reported
    out["goal_step_met"] = out["longest_step_cpu_ms"] is not None and out["longest_step_cpu_ms"] <= GOAL_STEP_MS
    out["goal_step_met_wall"] = out["longest_step_ms"] is not None and out["longest_step_ms"] <= GOAL_STEP_MS
    out["goal_p999_met"] = out["p999_ratio"] is not None and out["p999_ratio"] <= GOAL_RATIO
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the parent: interleave, repeat, report


def child_argv(args, gc_kind):
    a = [sys.executable, os.path.abspath(__file__), "--child", "--gc", gc_kind,
         "--bindings", str(args.bindings), "--burst", str(args.burst), "--users", str(args.users),
         "--rate", str(args.rate), "--rtt", str(args.rtt), "--tick", str(args.tick), "--threads", str(args.threads),
         "--steady", str(args.steady), "--after", str(args.after), "--max-clear", str(args.max_clear),
         "--gc-budget", str(args.gc_budget), "--meter", args.meter, "--seed", str(args.seed)]
    return a


def rng_fmt(vals, fmt="{:.2f}"):
    """min-max of numbers; strings are listed per run (or once when all equal)."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if isinstance(vals[0], str):
        return vals[0] if len(set(vals)) == 1 else ", ".join(vals)
    lo, hi = min(vals), max(vals)
    if len(vals) == 1 or fmt.format(lo) == fmt.format(hi):
        return fmt.format(lo)
    return fmt.format(lo) + "-" + fmt.format(hi)


def report(env, args, results):
    from rich.console import Console
    from rich.table import Table
    con = Console(width=None if sys.stdout.isatty() else 180)
    kinds = list(dict.fromkeys(r["gc"] for r in results))
    clock = "virtual clock (CPU time)" if args.threads == 1 and args.meter == "cpu" else (
        "virtual clock (wall time)" if args.threads == 1 else "real time")
    title = (f"expiry storm: {args.bindings:,} bindings, {args.burst:.0%} due in one second; {args.threads} worker(s), "
             f"{args.rate:g} REGISTER exchanges/s per worker (2 tx each), {clock}; Python {env['python']} "
             f"({'free-threaded' if env['free_threaded_build'] else 'GIL build'}, GIL "
             f"{'on' if env['gil_enabled'] else 'off'}), {env['git_revision']}; ranges over {args.repeat} run(s)")
    con.print(title)
    t = Table(show_lines=False)
    t.add_column("metric")
    for k in kinds:
        t.add_column(k, justify="right")
    def row(label, fn, fmt="{:.2f}"):
        t.add_row(label, *[rng_fmt([fn(r) for r in results if r["gc"] == k], fmt) for k in kinds])
    row("longest GC step, ms (CPU)", lambda r: r["longest_step_cpu_ms"], "{:.2f}")
    row("longest GC step, ms (wall)", lambda r: r["longest_step_ms"], "{:.2f}")
    row("GC steps > 2 ms (CPU / wall)", lambda r: f"{r['steps_over_2ms_cpu']} / {r['steps_over_2ms']}", "{}")
    row("  burst step p50, ms", lambda r: r["burst_step_p50_ms"], "{:.3f}")
    row("  burst step p99, ms", lambda r: r["burst_step_p99_ms"], "{:.3f}")
    row("burst steps (ticks)", lambda r: r["burst_steps"], "{:d}")
    row("time to clear the burst, s", lambda r: r["clear_s"], "{:.2f}")
    for win, key in (("steady", "latency_steady_ms"), ("burst", "latency_burst_ms")):
        row(f"{win}: transactions", lambda r, key=key: r[key].get("n"), "{:d}")
        for q in ("p50", "p99", "p99.9", "max"):
            row(f"{win}: latency {q}, ms", lambda r, key=key, q=q: r[key].get(q), "{:.3f}")
    row("p99.9 burst / steady", lambda r: r["p999_ratio"], "{:.2f}x")
    row("REGISTER service p50, ms (steady)", lambda r: r["service_steady_ms"].get("p50"), "{:.3f}")
    row("RSS per 100k bindings, MB", lambda r: r["rss_mb_per_100k_bindings"], "{:.1f}")
    row("RSS per binding, bytes", lambda r: r["rss_bytes_per_binding"], "{:.0f}")
    row("CPython GC pauses in run", lambda r: len(r["cpython_gc_pauses"]), "{:d}")
    row("goal: step <= 2 ms (CPU)", lambda r: "yes" if r["goal_step_met"] else "NO", "{}")
    row("  (judged on wall time)", lambda r: "yes" if r["goal_step_met_wall"] else "NO", "{}")
    row("goal: p99.9 <= 1.5x", lambda r: "yes" if r["goal_p999_met"] else "NO", "{}")
    con.print(t)
    bad = {k: v for r in results for k, v in r["statuses"].items() if k not in ("200", "401")}
    if bad:
        con.print(f"[red]unexpected answers: {bad}[/red]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gc", default="incremental,sweep", help="collectors to compare (comma-separated)")
    ap.add_argument("--bindings", type=int, default=1_000_000)
    ap.add_argument("--burst", type=float, default=0.10, help="fraction of the bindings expiring in one second")
    ap.add_argument("--users", type=int, default=10_000, help="users sending REGISTERs (a subset of the AORs)")
    ap.add_argument("--rate", type=float, default=1000.0, help="REGISTER exchanges per second per worker (Poisson)")
    ap.add_argument("--rtt", type=float, default=2e-4, help="seconds from a 401 to the credentialed REGISTER")
    ap.add_argument("--tick", type=float, default=0.01, help="[server] tick")
    ap.add_argument("--gc-budget", type=int, default=None, help="[location] gc_budget (default: the config's)")
    ap.add_argument("--threads", type=int, default=1, help="worker threads (1: virtual clock; >1: real time)")
    ap.add_argument("--meter", choices=("cpu", "wall"), default="cpu",
                    help="virtual clock: advance by CPU time (default; immune to other processes) or wall time")
    ap.add_argument("--steady", type=float, default=8.0, help="simulated seconds of steady state before the burst")
    ap.add_argument("--after", type=float, default=2.0, help="simulated seconds to run after the burst is cleared")
    ap.add_argument("--max-clear", type=float, default=60.0, help="give up this long after the burst is due")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (collectors interleaved)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="200k bindings, 1 repetition, 3 s steady")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.bindings, args.repeat, args.steady = min(args.bindings, 200_000), 1, 3.0
    if args.gc_budget is None:
        from ftsip import config
        args.gc_budget = config.load().location.gc_budget
    if args.child:
        print(json.dumps(run_one(args)))
        return 0

    env = environment()
    kinds = [k.strip() for k in args.gc.split(",") if k.strip()]
    results = []
    for rep in range(args.repeat):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        for k in order:
            t0 = time.perf_counter()
            out = subprocess.run(child_argv(args, k), capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["repetition"] = rep + 1
            r["loadavg_after"] = os.getloadavg()
            results.append(r)
            print(f"  run {rep + 1} {k:11}: longest step {r['longest_step_cpu_ms']:.2f} ms CPU "
                  f"({r['longest_step_ms']:.2f} wall), clear "
                  f"{r['clear_s'] if r['clear_s'] is None else round(r['clear_s'], 2)} s, p99.9 steady "
                  f"{r['latency_steady_ms'].get('p99.9', 0):.3f} / burst {r['latency_burst_ms'].get('p99.9', 0):.3f}"
                  f" ms, RSS {r['rss_mb_per_100k_bindings']:.1f} MB/100k ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    report(env, args, results)
    if not args.no_json:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        tag = "t" if env["free_threaded_build"] else ""
        path = os.path.join(args.out, f"bench_expiry-py{sys.version_info[0]}{sys.version_info[1]}{tag}"
                                      f"-{args.threads}thr-{stamp}.json")
        settings = {k: v for k, v in vars(args).items() if k != "child"}
        with open(path, "w") as f:
            json.dump({"benchmark": "bench_expiry", "environment": env, "settings": settings,
                       "goals": {"longest_step_ms": GOAL_STEP_MS, "p999_ratio": GOAL_RATIO},
                       "results": results}, f, indent=1)
        print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
