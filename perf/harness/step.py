"""The step test: offer fixed rates, one step at a time, and record per step what the server did with them.

A step = SIPp at ``rate`` units/s for ``warmup + duration`` seconds. The measurement window is the ``duration``
seconds after the warm-up: offered vs achieved rate, CPU of the server (whole process tree) and of each SIPp, and
of the whole machine (what is left is other people's load: this machine is shared), all between the same two
instants. Outcomes are counted for every call that ends after the warm-up (including the tail after the window:
a call created in the window that times out later is a failure of this step).

A step passes when failed calls are at most ``max_failed_pct`` (default 0.01 %, the paper's 99.99 %), the offered
rate was reached (achieved >= 97 % of it) and no backlog built up: calls in flight at the end of the window must not
exceed both twice those at its start and 100 ms worth of calls (a server that queues in its socket buffer passes a
20 s step without a failure, but not a longer one). It is flagged generator-bound when a SIPp used >= 90 % of a
core or its watchdog saw its own scheduling late, and box-saturated when the machine had < 5 % idle CPU.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from . import procfs
from .sipp import SippRun, merge_windows, peer_window, percentiles_from_histogram, window

PASS_FAILED_PCT = 0.01
RATE_REACHED = 0.97
GEN_BOUND_CPU = 0.90
BOX_SATURATED_IDLE = 0.05
BACKLOG_SECONDS = 0.1


@dataclass
class StepResult:
    sut: str
    workload: str
    rate: float
    duration_s: float
    warmup_s: float
    started_at: float = 0.0
    window_s: float = 0.0
    created: int = 0
    achieved_rate: float = 0.0
    successful: int = 0
    failed: int = 0
    unfinished: int = 0
    failed_pct: float = 0.0
    transactions: int = 0
    failed_tx_pct: float = 0.0
    peer_failed: int = 0
    kinds: dict = field(default_factory=dict)
    level_text: str = ""
    offered_rate: float = 0.0
    generator_cores: float | None = None
    failures: dict = field(default_factory=dict)
    unexpected_codes: dict = field(default_factory=dict)
    retransmissions: int = 0
    out_of_call: int = 0
    sipp_watchdog: int = 0
    in_flight: list = field(default_factory=list)
    server_cpu_s: float | None = None
    server_cores: float | None = None
    cpu_per_call_us: float | None = None
    cpu_per_tx_us: float | None = None
    server_idle_cores: float | None = None
    server_mem: dict | None = None
    latency_ms: dict = field(default_factory=dict)
    generators: list = field(default_factory=list)
    machine_busy_cores: float | None = None
    other_load_cores: float | None = None
    ncpus: int = 0
    generator_bound: bool = False
    box_saturated: bool = False
    sut_alive: bool = True
    passed: bool = False
    verdict: str = ""
    attempt: int = 1
    notes: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


class _Marks:
    def __init__(self, sut, runs, peers=()):
        self.t = time.monotonic()
        self.epoch = time.time()
        self.server = sut.cpu_seconds()
        self.gens = [r.cpu_seconds() for r in runs]
        self.peers = [p.cpu_seconds() for p in peers]
        self.busy, self.total = procfs.machine_cpu()


def run_step(sut, workload, rate, duration, warmup, workdir, generators=1, sipp_opts=None, on_progress=None,
             max_failed_pct=PASS_FAILED_PCT, tail_grace=None):
    """Run one step against a started SUT and return a :class:`StepResult`. ``rate`` is the workload's level
    (a rate in /s, or a population for the users workload)."""
    sipp_opts = dict(sipp_opts or {})
    res = StepResult(sut=sut.label, workload=workload.name, rate=rate, duration_s=duration, warmup_s=warmup,
                     ncpus=procfs.ncpus())
    res.level_text = workload.describe_level(rate)
    res.offered_rate = round(workload.offered_rate(rate), 3)
    step_dir = os.path.join(workdir, f"{sut.label}-{rate:g}-{time.strftime('%H%M%S')}")
    cfgs = workload.generators(sut, rate, warmup + duration, generators, step_dir, **sipp_opts)
    runs = [SippRun(c, step_dir, name=f"gen{j}-{c.kind}") for j, c in enumerate(cfgs)]
    peers = workload.peers()
    recv_timeout = max(c.recv_timeout_ms for c in cfgs) / 1000.0
    if tail_grace is None:
        tail_grace = recv_timeout + workload.max_call_seconds + 10.0
    res.started_at = time.time()
    try:
        for r in runs:
            r.start()
        t0 = time.monotonic()
        start = _Marks(sut, runs, peers)
        w0 = w1 = None
        deadline = t0 + warmup + duration + tail_grace
        prev = start
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            if w0 is None and now - t0 >= warmup:
                w0 = _Marks(sut, runs, peers)
            if w0 is not None and w1 is None and now - t0 >= warmup + duration:
                w1 = _Marks(sut, runs, peers)
            running = any(r.running() for r in runs)
            alive = sut.alive()
            if on_progress is not None:
                cur = _Marks(sut, runs, peers)
                on_progress(_progress(sut, workload, rate, duration, warmup, runs, prev, cur, t0, w0, w1))
                prev = cur
            if not alive:
                res.sut_alive = False
                break
            if not running:
                break
            if now > deadline:
                res.notes.append(f"SIPp still running {tail_grace:.0f}s after the step: stopped")
                for r in runs:
                    r.wait(0)
                break
        if w0 is None:
            w0 = _Marks(sut, runs, peers)
        if w1 is None:
            w1 = _Marks(sut, runs, peers)
            res.notes.append("SIPp ended before the end of the window")
        t_end = time.time()
    finally:
        for r in runs:
            if r.running():
                r.wait(0)
            r.stop()

    # --- counts from SIPp
    wins, unfinished, silent = [], 0, []
    tx_total = tx_window = 0.0
    kinds = {}
    for r in runs:
        rows = r.rows()
        if not rows:
            res.notes.append(f"{r.name}: no statistics (SIPp exit {r.proc.returncode}): {r.output_tail(400)!r}")
            silent.append(r.name)
            continue
        w_ = window(rows, w0.epoch, w1.epoch)
        wins.append(w_)
        last = rows[-1]
        left = last.current_calls if r.proc.returncode not in (0, 1) else 0
        unfinished += left
        tx = r.cfg.tx_per_call
        tx_total += (w_.successful + w_.failed + left) * tx
        tx_window += w_.created * tx
        k = kinds.setdefault(r.cfg.kind, {"offered_per_s": 0.0, "created": 0, "successful": 0, "failed": 0,
                                          "unfinished": 0, "tx_per_call": tx})
        k["offered_per_s"] = round(k["offered_per_s"] + r.cfg.rate, 3)
        k["created"] += w_.created
        k["successful"] += w_.successful
        k["failed"] += w_.failed + left
        k["unfinished"] += left
        for key, v in r.unexpected_codes().items():
            key = f"{r.cfg.kind}: {key}" if len(cfgs) > 1 else key
            res.unexpected_codes[key] = res.unexpected_codes.get(key, 0) + v
        if r.proc.returncode not in (0, 1):
            res.notes.append(f"{r.name}: SIPp exit status {r.proc.returncode}")
    w = merge_windows(wins)
    res.window_s = round(w.seconds, 3)
    res.created = w.created
    # per generator (their stat rows are 1 s apart and not aligned with each other), summed
    res.achieved_rate = sum(x.created / x.seconds for x in wins if x.seconds)
    res.successful, res.unfinished = w.successful, unfinished
    res.failed = w.failed + unfinished
    res.failures = dict(w.failures, **({"unfinished": unfinished} if unfinished else {}))
    # callee side (UASs): a failure there (e.g. no ACK for a 200) is a failed transaction too
    peer_failed = 0
    for p in peers:
        ok, failed, fails = peer_window(p.rows(), w0.epoch, t_end)
        if failed:
            peer_failed += failed
            for kk, v in fails.items():
                res.failures[f"{p.cfg.kind}:{kk}"] = res.failures.get(f"{p.cfg.kind}:{kk}", 0) + v
            for kk, v in p.unexpected_codes().items():
                res.unexpected_codes[f"{p.cfg.kind}: {kk}"] = res.unexpected_codes.get(f"{p.cfg.kind}: {kk}", 0) + v
    res.peer_failed = peer_failed
    res.kinds = kinds
    ended = res.successful + res.failed
    res.failed_pct = 100.0 * res.failed / ended if ended else (100.0 if w.created else 0.0)
    # QoS per transaction (the paper's 99.99 %): a call stops at its first failed transaction, so each failed call
    # (caller or callee side) is one failed transaction
    res.transactions = int(tx_total)
    failed_tx = res.failed + peer_failed
    res.failed_tx_pct = 100.0 * failed_tx / max(tx_total, 1.0) if tx_total else (100.0 if w.created else 0.0)
    res.retransmissions, res.out_of_call = w.retransmissions, w.out_of_call + w.dead_call
    res.sipp_watchdog = w.watchdog_major + w.watchdog_minor
    res.in_flight = [w.in_flight_start, w.in_flight_end]
    offered = workload.offered_rate(rate)
    expected = workload.expected_in_flight(rate)
    backlog = w.in_flight_end > max(2 * w.in_flight_start, BACKLOG_SECONDS * offered + 1.5 * expected, 10)
    lat = {"mean": round(w.mean_response_s * 1000, 3) if w.mean_response_s is not None else None,
           "resolution": "1 ms (SIPp clock); percentiles are histogram bucket upper bounds",
           "histogram": [[b, c] for b, c in w.histogram]}
    lat.update(percentiles_from_histogram(w.histogram))
    res.latency_ms = lat
    # per kind: latency histograms differ in buckets between scenarios, so percentiles are kept per kind
    if len(kinds) > 1:
        for r in runs:
            rows = r.rows()
            if rows:
                h = window(rows, w0.epoch, w1.epoch).histogram
                k = kinds[r.cfg.kind]
                if h:
                    k.setdefault("_hist", []).append(h)
        for k in kinds.values():
            hs = k.pop("_hist", [])
            if hs:
                merged = [(b, sum(hh[i][1] for hh in hs)) for i, (b, _) in enumerate(hs[0])]
                k["latency_ms"] = percentiles_from_histogram(merged)

    # --- CPU between the window's marks
    span = w1.t - w0.t
    if span > 0:
        if w1.server is not None and w0.server is not None:
            res.server_cpu_s = round(w1.server - w0.server, 4)
            res.server_cores = round(res.server_cpu_s / span, 4)
            done = res.achieved_rate * span
            if done > 0:
                res.cpu_per_call_us = round(1e6 * res.server_cpu_s / done, 2)
            if tx_window > 0 and w.seconds > 0:
                res.cpu_per_tx_us = round(1e6 * res.server_cpu_s * (w.seconds / span if w.seconds else 1.0)
                                          / tx_window, 2)
        gen_cores = 0.0
        for j, r in enumerate(runs):
            a, b = w0.gens[j], w1.gens[j]
            frac = (b - a) / span if a is not None and b is not None else None
            gen_cores += frac or 0.0
            res.generators.append({"pid": r.pid, "kind": r.cfg.kind, "rate": r.cfg.rate,
                                   "cpu_cores": round(frac, 4) if frac else frac,
                                   "cpus": r.cfg.cpus, "exit": r.proc.returncode if r.proc else None})
        for j, p in enumerate(peers):
            a, b = w0.peers[j], w1.peers[j]
            frac = (b - a) / span if a is not None and b is not None else None
            gen_cores += frac or 0.0
            res.generators.append({"pid": p.pid, "kind": p.cfg.kind, "rate": None, "peer": True,
                                   "cpu_cores": round(frac, 4) if frac else frac, "cpus": p.cfg.cpus})
        res.machine_busy_cores = round((w1.busy - w0.busy) / span, 3)
        res.generator_cores = round(gen_cores, 3)
        res.other_load_cores = round(res.machine_busy_cores - (res.server_cores or 0.0) - gen_cores, 3)
    res.server_mem = sut.memory() if sut.alive() else None
    res.server_idle_cores = sut.idle_cores

    # --- verdict
    gen_hot = [g for g in res.generators if (g["cpu_cores"] or 0) >= GEN_BOUND_CPU]
    res.generator_bound = bool(gen_hot) or res.sipp_watchdog > 0
    if gen_hot:
        res.notes.append("SIPp used " + ", ".join(f"{100 * g['cpu_cores']:.0f}% ({g['kind']})" for g in gen_hot)
                         + " of a core: the generator, not the server, may be the limit")
    if res.sipp_watchdog:
        res.notes.append(f"SIPp's watchdog fired {res.sipp_watchdog} times (its scheduler ran late)")
    cap = getattr(sut, "max_cores", None)
    if cap and res.server_cores is not None and res.server_cores >= 0.95 * cap:
        res.notes.append(f"server at {100 * res.server_cores:.0f}% of its {cap:g} core(s): saturated")
    if res.machine_busy_cores is not None and res.ncpus:
        res.box_saturated = res.machine_busy_cores >= res.ncpus * (1 - BOX_SATURATED_IDLE)
    rate_ok = res.achieved_rate >= RATE_REACHED * offered
    if not res.sut_alive:
        res.verdict = "SUT died"
    elif silent:
        res.verdict = f"generator error ({', '.join(silent)}: see notes)"
    elif res.failed_tx_pct > max_failed_pct:
        res.verdict = f"failed {res.failed_tx_pct:.3g}% of tx"
    elif not rate_ok:
        res.verdict = f"rate not reached ({res.achieved_rate:.0f}/s of {offered:.0f}/s)"
    elif backlog:
        res.verdict = f"backlog growing ({w.in_flight_start}->{w.in_flight_end} in flight)"
    else:
        res.verdict = "pass"
    res.passed = res.verdict == "pass"
    return res


def _progress(sut, workload, rate, duration, warmup, runs, prev, cur, t0, w0, w1):
    rows = [r.rows() for r in runs]
    last = [rr[-1] for rr in rows if rr]
    dt = cur.t - prev.t
    elapsed = cur.t - t0
    phase = "warm-up" if w0 is None else ("measure" if w1 is None else "drain")
    def d(a, b):
        return (b - a) / dt if a is not None and b is not None and dt > 0 else None
    gen = [d(a, b) for a, b in zip(prev.gens, cur.gens)]
    peer = [d(a, b) for a, b in zip(prev.peers, cur.peers)]
    return {
        "sut": sut.label, "workload": workload.name, "unit": workload.unit, "rate": rate, "phase": phase,
        "level_text": workload.describe_level(rate), "offered_rate": workload.offered_rate(rate),
        "peer_cores": sum(p for p in peer if p is not None),
        "elapsed": elapsed, "total": warmup + duration,
        "created": sum(r.c("OutgoingCall") for r in last),
        "successful": sum(r.c("SuccessfulCall") for r in last),
        "failed": sum(r.c("FailedCall") for r in last),
        "retrans": sum(r.c("Retransmissions") for r in last),
        "current": sum(r.current_calls for r in last),
        "call_rate": sum(r.p("CallRate") for r in last),
        "server_cores": d(prev.server, cur.server),
        "sipp_cores": gen,
        "machine_cores": (cur.busy - prev.busy) / dt if dt > 0 else None,
    }


def run_series(suts, workload, rates, duration, warmup, workdir, generators=1, sipp_opts=None, order="rate",
               keep_going=False, retries=0, settle=2.0, on_progress=None, on_step=None, on_event=None,
               start_timeout=30.0, idle_seconds=2.0):
    """Run every rate against every SUT. ``suts`` are unstarted SUT objects.

    ``order="rate"``: all SUTs are started first and each rate is run against each SUT in turn (interleaving spreads
    the machine's background noise over all of them); ``order="sut"``: one SUT at a time, all rates.
    A failing step is run again up to ``retries`` times (a shared machine has bursts of other load); a rate passes
    when one attempt passes, and every attempt is reported. Unless ``keep_going``, a SUT is not offered higher
    rates after a rate where every attempt failed.
    Returns (results, errors): StepResults in run order and {sut label: error message}.
    """
    results, errors, done = [], {}, set()

    def event(msg):
        if on_event:
            on_event(msg)

    def start(s):
        try:
            s.start(timeout=start_timeout)
            idle = s.measure_idle(idle_seconds) if idle_seconds else None
            event(f"started {s.label} on {s.host}:{s.port}" + (f" (pid {s.pid})" if s.pid else "")
                  + (f", idle CPU {100 * idle:.1f}% of a core" if idle is not None else ""))
            workload.on_sut_started(s)
            return True
        except Exception as e:  # noqa: BLE001 - reported, the other SUTs still run
            errors[s.label] = str(e)
            event(f"[red]{s.label}: {e}[/red]")
            s.stop()
            return False

    def one(s, rate):
        for attempt in range(1 + retries):
            try:
                workload.before_step(s, rate)
            except Exception as e:  # noqa: BLE001
                errors[s.label] = f"before the {rate:g} step: {e}"
                done.add(s.label)
                return
            workload.start_peers(s)
            try:
                r = run_step(s, workload, rate, duration, warmup, workdir, generators, sipp_opts, on_progress)
            finally:
                workload.stop_peers()
            r.attempt = attempt + 1
            results.append(r)
            if on_step:
                on_step(r)
            time.sleep(settle)
            if not r.sut_alive:
                done.add(s.label)
                errors[s.label] = f"died during the {rate:g}/s step:\n{s.log_tail()}"
                return
            if r.passed:
                return
            if attempt < retries:
                event(f"{s.label} {rate:g}/s: {r.verdict}; attempt {attempt + 2} of {retries + 1}")
        if not keep_going:
            done.add(s.label)

    if order == "sut":
        for s in suts:
            if not start(s):
                continue
            try:
                for rate in rates:
                    if s.label in done:
                        break
                    one(s, rate)
            finally:
                s.stop()
    else:
        live = []
        try:
            for s in suts:
                if start(s):
                    live.append(s)
            for rate in rates:
                for s in live:
                    if s.label not in done:
                        one(s, rate)
        finally:
            for s in live:
                s.stop()
    return results, errors
