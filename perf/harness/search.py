"""Capacity search: raise the level (users, or a rate) step by step until a step fails, then bisect between the
last passing and the first failing level; the result is the largest conforming level (>= 99.99 % of transactions
succeeded after the warm-up, rate reached, no backlog; see step.py).

The SUT is restarted after a failing step (queues, timers and the overload state it left would bias the next
step) and before a level below what it already holds (the users workload's table must hold exactly N users);
passing steps going up keep it (the users workload then registers only the users a bigger population adds).
"""
from __future__ import annotations

import math
import time

from .step import run_step


def nice(level, unit):
    """Round a level to 2-3 significant digits (users to a multiple of 20, so every callee class is present)."""
    if level <= 0:
        return level
    digits = 2 if level < 1000 else 3
    mag = 10 ** max(0, int(math.floor(math.log10(level))) - digits + 1)
    v = round(level / mag) * mag
    if unit == "users":
        v = max(20, int(round(v / 20.0)) * 20)
    return v


class SearchResult(dict):
    pass


def capacity_search(sut, workload, start, duration, warmup, workdir, growth=2.0, tolerance=0.1, max_steps=10,
                    max_level=None, min_level=None, retries=0, generators=1, sipp_opts=None, on_progress=None,
                    on_step=None, on_event=None, settle=2.0, start_timeout=60.0, idle_seconds=1.0):
    """Search one SUT (not started). Returns (SearchResult, [StepResult])."""
    unit = workload.level_unit
    steps, lo, hi = [], None, None
    lo_step = hi_step = None
    level = nice(start, unit)
    min_level = min_level or (20 if unit == "users" else 1)
    alive = False
    error = None

    def event(msg):
        if on_event:
            on_event(msg)

    def start_sut():
        sut.start(timeout=start_timeout)
        idle = sut.measure_idle(idle_seconds) if idle_seconds else None
        event(f"started {sut.label} on {sut.host}:{sut.port} (pid {sut.pid})"
              + (f", idle CPU {100 * idle:.1f}% of a core" if idle is not None else ""))
        workload.on_sut_started(sut)

    try:
        for _ in range(max_steps):
            held = workload.registered.get(sut.label, 0) if hasattr(workload, "registered") else 0
            if alive and unit == "users" and level < held:
                sut.stop()
                alive = False
            if not alive:
                start_sut()
                alive = True
            verdict_passed = False
            for attempt in range(1 + retries):
                workload.before_step(sut, level)
                workload.start_peers(sut)
                try:
                    r = run_step(sut, workload, level, duration, warmup, workdir, generators, sipp_opts,
                                 on_progress)
                finally:
                    workload.stop_peers()
                r.attempt = attempt + 1
                steps.append(r)
                if on_step:
                    on_step(r)
                time.sleep(settle)
                if r.passed:
                    verdict_passed = True
                    break
                # a failed attempt: restart before anything else is offered
                sut.stop()
                alive = False
                if not r.sut_alive:
                    error = f"died at {level:g} {unit}:\n{sut.log_tail()}"
                    break
                if attempt < retries:
                    event(f"{sut.label} {level:g}: {r.verdict}; attempt {attempt + 2} of {retries + 1}")
                    start_sut()
                    alive = True
            if verdict_passed:
                lo, lo_step = level, r
            else:
                hi, hi_step = level, r
            # next level
            if hi is None:
                if max_level is not None and lo >= max_level:
                    event(f"{sut.label}: passed at the maximum level {max_level:g}: capacity not reached")
                    break
                nxt = nice(level * growth, unit)
                if max_level is not None:
                    nxt = min(nxt, max_level)
            elif lo is None:
                nxt = nice(level / growth, unit)
                if nxt < min_level:
                    break
                if hi_step is not None and nxt >= hi:
                    break
            else:
                if (hi - lo) <= tolerance * lo:
                    break
                nxt = nice((lo + hi) / 2, unit)
                if nxt in (lo, hi):
                    break
            level = nxt
    except Exception as e:  # noqa: BLE001 - reported with the result
        error = f"{type(e).__name__}: {e}"
        event(f"[red]{sut.label}: {error}[/red]")
    finally:
        if sut.alive():
            sut.stop()
    res = SearchResult(
        sut=sut.label, unit=unit, max_level=lo, first_failing=hi,
        max_level_text=workload.describe_level(lo) if lo else None,
        limit_verdict=hi_step.verdict if hi_step is not None else None,
        generator_bound=bool(hi_step is not None and (hi_step.generator_bound or hi_step.box_saturated)
                             or lo_step is not None and (lo_step.generator_bound or lo_step.box_saturated)),
        notes=(hi_step.notes if hi_step is not None else []),
        cpu_per_tx_us_at_max=lo_step.cpu_per_tx_us if lo_step is not None else None,
        server_cores_at_max=lo_step.server_cores if lo_step is not None else None,
        error=error, steps=len(steps))
    if lo is None and hi is not None:
        res["note"] = "no level passed"
    elif hi is None and lo is not None:
        res["note"] = "capacity not reached (no failing level)"
    return res, steps
