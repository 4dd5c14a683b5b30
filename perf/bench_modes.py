#!/usr/bin/env python3
"""Benchmark of ftsip's two architectures (issue 5): threads and heap (the paper's authors' suggestion) vs processes
and a shared-memory segment (OpenSER's way), with the same protocol code, on the same machine and workloads.

Not a test. A front-end to the capacity harness (``perf/harness``: SIPp step tests, server CPU from /proc,
generator-bound and box-saturated flags). Systems (``--systems``; default all six):

    ft-t1, ft-t2    threads mode, 1 and 2 worker threads, free-threaded 3.13t (.venv)
    ft-p1, ft-p2    process mode, 1 and 2 worker processes, 3.13t
    gil-p1, gil-p2  process mode on the GIL build (.venv-gil; ``scripts/bootstrap --gil`` creates it)
    (gil-t1, gil-t2 are accepted too)

Phases (``--skip`` any of them):

1. ``register``: REGISTER -> 401 -> REGISTER with MD5 credentials -> 200 (two transactions) at each of ``--rates``;
   every system is started first and each rate is offered to each system in turn (interleaved against the shared
   machine's background load); a system gets no higher rate after its first failed step (<= 0.01 % failed,
   offered rate reached, no backlog: the harness's verdict). Repeated ``--repeat`` times with fresh servers.
2. ``calls``: authenticated calls through the proxy with the harness's call workload - INVITE -> 407 -> INVITE
   with Proxy-Authorization -> 180/200 -> ACK -> hold -> BYE -> 407 -> BYE with credentials -> 200 (four
   transactions), callee SIPp UASs registered under the callee users before the steps, completed calls only by
   default (``--call-mix`` for the paper's 65/30/5), ``--hold`` seconds mean hold, ``--ring`` ms ring time.
3. ``memory``: bytes per binding in the shared-memory segment vs on the heap: (a) in-process with perf/bench_shm.py's
   measurement (tracemalloc for a Record on the heap and its table share; slot and segment bytes in the segment);
   (b) end to end: a fresh server per system registers ``--memory-users`` users once, PSS/RSS of its whole process
   tree (workers and supervisor; the /dev/shm segment's touched pages count in PSS) before and after, per 100k
   bindings, and the segment the administrator had to reserve for them ([location] shm_slots x shm_slot_size).

Reported ratios: threads/processes at equal workers (t1/p1, t2/p2 on 3.13t) and 3.13t/GIL (ft-pN / gil-pN) for the
highest passing rates and for the CPU per transaction at a fixed rate (the robust number on a noisy machine).

Every server config sets ``[security] overload_lag = 0``: overload shedding would answer 503 instead of showing
where the capacity ends.

    .venv/bin/python perf/bench_modes.py
    .venv/bin/python perf/bench_modes.py --skip calls,memory --systems ft-t2,ft-p2 --rates 1000,2000,3000
    .venv/bin/python perf/bench_modes.py --skip register,memory --call-rates 100,200,400 --repeat 1
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_register as br  # noqa: E402
from perf.harness import step as hstep  # noqa: E402
from perf.harness import sut as hsut  # noqa: E402
from perf.harness import users as husers  # noqa: E402
from perf.harness import workloads as hwl  # noqa: E402

PYTHONS = {"ft": ".venv/bin/python", "gil": ".venv-gil/bin/python"}
DEFAULT_SYSTEMS = "ft-t1,ft-t2,ft-p1,ft-p2,gil-p1,gil-p2"


def parse_system(name):
    interp, _, shape = name.partition("-")
    if interp not in PYTHONS or len(shape) < 2 or shape[0] not in "tp" or not shape[1:].isdigit():
        raise SystemExit(f"unknown system {name!r}: ft-t1, ft-t2, ft-p1, ft-p2, gil-p1, gil-p2, gil-t1 ...")
    return {"name": name, "python": os.path.join(ROOT, PYTHONS[interp]), "interp": interp,
            "mode": "threads" if shape[0] == "t" else "processes", "n": int(shape[1:])}


def build_suts(systems, csv, workdir, users, extra=None, suffix=""):
    out = []
    for s in systems:
        cfg, _ = br.server_config(os.path.join(workdir, f"{s['name']}{suffix}.toml"), users, s["mode"], extra)
        out.append(br.make_sut(csv, cfg, s["mode"], s["n"], s["python"], s["name"] + suffix))
    return out


def check_interpreters(systems, con):
    ok = []
    for s in systems:
        if not os.path.exists(s["python"]):
            con.print(f"[red]{s['name']}: no interpreter at {s['python']} (scripts/bootstrap --gil creates "
                      ".venv-gil)[/red]")
            continue
        ok.append(s)
    return ok


# ---------------------------------------------------------------------------------------------------------------------
# phases


def run_capacity(kind, args, systems, workdir, log):
    """Step series for 'register' or 'calls', --repeat times; returns (steps, errors, sut descriptions, workload)."""
    sipp_opts = {"max_socket": args.max_socket, "recv_timeout_ms": int(args.recv_timeout * 1000)}
    wdir = os.path.join(workdir, kind)
    os.makedirs(wdir, exist_ok=True)
    if kind == "register":
        pop = husers.Population(args.users, domain=br.DOMAIN)
        wl = hwl.RegisterWorkload(expires=900)
        rates = args.rates
        extra = None
    else:
        if not hasattr(hwl, "CallWorkload") or not hasattr(hwl.CallWorkload, "on_sut_started"):
            raise SystemExit("the harness has no usable call workload (perf/harness/workloads.py:CallWorkload)")
        from perf.harness.callmix import CallMix
        mix = {"completed": (("completed", 1.0), ("voicemail", 0.0), ("cancelled", 0.0)),
               "paper": (("completed", 0.65), ("voicemail", 0.30), ("cancelled", 0.05))}[args.call_mix]
        # CallMix divides the paper's real-time holds by a compression factor: pick it so the mean hold is --hold
        cm = CallMix(compression=300.0 / args.hold, ring_min_ms=args.ring[0], ring_max_ms=args.ring[1], mix=mix)
        pop = husers.Population(args.call_users, domain=br.DOMAIN)
        wl = hwl.CallWorkload(cm, uas_per_class=args.uas_per_class)
        rates = args.call_rates
        extra = None
    csv = husers.write_ftsip_csv(pop, os.path.join(wdir, "users.csv"))
    wl.prepare(wdir, pop, args.generators)
    if kind == "calls":
        extra = {"proxy": {k: v for k, v in wl.sut_options().items() if k == "voicemail"}}
    steps, errors, descs = [], {}, []
    for rep in range(args.repeat):
        order = systems if rep % 2 == 0 else systems[::-1]
        suts = build_suts(order, csv, wdir, pop.size, extra)
        log(f"[bold]{kind}, repetition {rep + 1}/{args.repeat}[/bold]: {', '.join(s.label for s in suts)} x rates "
            f"{', '.join(f'{r:g}' for r in rates)}/s")
        results, errs = hstep.run_series(suts, wl, rates, args.step, args.warmup, wdir, generators=args.generators,
                                         sipp_opts=sipp_opts, order="rate", retries=args.retries,
                                         on_step=lambda r: log(br.step_line(r)), on_event=log, start_timeout=90)
        for r in results:
            d = r.to_dict()
            d["repetition"] = rep + 1
            d["phase"] = kind
            steps.append(d)
        for k, v in errs.items():
            errors[f"{kind} {k} (repetition {rep + 1})"] = v
        descs += [dict(s.describe(), repetition=rep + 1, phase=kind) for s in suts]
    return steps, errors, descs, wl


def run_memory(args, systems, workdir, log):
    out = {"in_process": None, "servers": []}
    try:
        import bench_shm
        from rich.console import Console
        from ftsip.location import shm
        n = args.memory_users
        sample = shm.dump_record(bench_shm.record(n - 1))
        slot_size = (shm.SLOT_HEADER + len(bench_shm.aor(n - 1)) + len(sample) + 16 + 7) // 8 * 8
        quiet = Console(file=open(os.devnull, "w"))
        d = bench_shm.run_memory(n, slot_size, quiet)
        d["slot_size_used"] = slot_size
        d["default_slot_size"] = 1024
        out["in_process"] = d
        log(f"  in-process ({n:,} bindings, perf/bench_shm.py): heap {d['heap_total_bytes_per_binding']:.0f} B per "
            f"binding (record {d['heap_record_bytes_per_binding']:.0f} + key {d['heap_key_bytes_per_binding']:.0f} + "
            f"table {d['heap_table_bytes_per_binding']:.0f}); segment {d['shm_segment_bytes_per_binding']:.0f} B per "
            f"binding with {slot_size} B slots ({d['shm_slot_bytes_filled_mean']:.0f} B filled)")
    except Exception as e:  # noqa: BLE001 - the end-to-end part still runs
        log(f"[red]in-process memory measurement failed: {e!r}[/red]")
    m = args.memory_users
    wdir = os.path.join(workdir, "memory")
    os.makedirs(wdir, exist_ok=True)
    pop = husers.Population(m, domain=br.DOMAIN, prefix="m")
    csv = husers.write_ftsip_csv(pop, os.path.join(wdir, "users.csv"))
    wl = hwl.RegisterWorkload(expires=3600)
    wl.prepare(wdir, pop, 1)
    sipp_opts = {"max_socket": args.max_socket, "recv_timeout_ms": int(args.recv_timeout * 1000)}
    for s in systems:
        if s["name"] not in args.memory_systems:
            continue
        mport = hsut.free_udp_port()
        cfg, settings = br.server_config(os.path.join(wdir, f"{s['name']}.toml"), m, s["mode"],
                                         {"metrics": {"listen": f"127.0.0.1:{mport}"}})
        sut = br.make_sut(csv, cfg, s["mode"], s["n"], s["python"], s["name"] + "-mem")
        sut.start(timeout=120)
        try:
            time.sleep(1.5)
            sut.refresh_pids()
            mem0 = sut.memory()
            try:
                loc0 = br.fetch_locations(mport)
            except OSError:
                loc0 = {}
            cpu0 = sut.cpu_seconds()
            warm = 2.0
            r = hstep.run_step(sut, wl, args.memory_rate, max(1.0, m / args.memory_rate - warm), warm, wdir, 1,
                               sipp_opts)
            log(br.step_line(r))
            cpu1 = sut.cpu_seconds()
            time.sleep(2.0)
            sut.refresh_pids()
            mem1 = sut.memory()
            try:
                loc1 = br.fetch_locations(mport)
            except OSError as e:
                loc1 = {"error": str(e)}
            bindings = (loc1.get("bindings") or 0) - (loc0.get("bindings") or 0)
            if bindings <= 0:       # no count from the server: trust SIPp's successful registrations
                bindings = r.successful
            k = 1e5 / bindings if bindings else None
            loc_cfg = settings.get("location", {})
            seg = (loc_cfg.get("shm_slots", 65536) * loc_cfg.get("shm_slot_size", 1024)
                   if s["mode"] == "processes" else None)
            d = {"system": s["name"], "mode": s["mode"], "workers": s["n"], "interp": s["interp"],
                 "users": m, "bindings": bindings, "locations": loc1, "registration_step": r.to_dict(),
                 "rss_before_mb": mem0["rss_kb"] / 1024, "rss_after_mb": mem1["rss_kb"] / 1024,
                 "pss_before_mb": mem0["pss_kb"] / 1024, "pss_after_mb": mem1["pss_kb"] / 1024,
                 "pss_mb_per_100k": (mem1["pss_kb"] - mem0["pss_kb"]) / 1024 * k if k else None,
                 "rss_mb_per_100k": (mem1["rss_kb"] - mem0["rss_kb"]) / 1024 * k if k else None,
                 "pss_bytes_per_binding": (mem1["pss_kb"] - mem0["pss_kb"]) * 1024 / bindings if bindings else None,
                 "segment_reserved_mb": seg / 2**20 if seg else None,
                 "segment_reserved_bytes_per_binding": seg / bindings if seg and bindings else None,
                 "cpu_s_per_100k_registrations": (cpu1 - cpu0) * k if k else None,
                 "settings": settings}
            out["servers"].append(d)
            log(f"  {s['name']}: {bindings:,} bindings, PSS {d['pss_before_mb']:.0f} -> {d['pss_after_mb']:.0f} MB "
                f"= {d['pss_mb_per_100k'] or 0:.1f} MB per 100k ({d['pss_bytes_per_binding'] or 0:.0f} B/binding)"
                + (f"; segment reserved {d['segment_reserved_mb']:.0f} MB" if seg else ""))
        finally:
            sut.stop()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# report


def best_by_system(steps, phase, names, repeat, fixed):
    """Per system: highest passing rate per repetition, CPU per transaction at each rate of ``fixed`` (a list), the
    first failed rate above the best (all attempts) and its flags."""
    out = {}
    for name in names:
        bests, nexts, gen_flags, box_flags = [], [], [], []
        fixed_tx = {f: [] for f in fixed}
        for rep in range(1, repeat + 1):
            rs = [s for s in steps if s["phase"] == phase and s["repetition"] == rep]
            sm = br.summarize_series(rs, name)
            bests.append(sm["best"])
            if sm["next"]:
                nx = sm["next"]
                others = ", ".join(f"{o:.2f}" for o in nx.get("other_load_cores", []) if o is not None)
                nexts.append(f"{nx['rate']:g}: {nx['verdict']}" + (f" (others' load {others} cores)" if others
                                                                      else ""))
                gen_flags.append(nx["generator_bound"])
                box_flags.append(nx["box_saturated"])
            for s in rs:
                if s["sut"] == name and s["rate"] in fixed_tx and s["cpu_per_tx_us"] and s["passed"]:
                    fixed_tx[s["rate"]].append(s["cpu_per_tx_us"])
        out[name] = {"best": bests, "cpu_per_tx_us_at_fixed": fixed_tx, "next": nexts,
                     "next_generator_bound": gen_flags, "next_box_saturated": box_flags}
    return out


def ratio_range(a, b):
    """min-max of a_i / b_j over matching repetitions (same index), skipping missing values."""
    rs = [x / y for x, y in zip(a, b) if x and y]
    return (min(rs), max(rs)) if rs else None


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r[0]:.2f}" if f"{r[0]:.2f}" == f"{r[1]:.2f}" else f"{r[0]:.2f}-{r[1]:.2f}"


def report(con, args, env, systems, steps, mem):
    from rich.table import Table
    names = [s["name"] for s in systems]
    summary = {}
    for phase, unit, fixed in (("register", "REGISTER", args.fixed_rate), ("calls", "call", args.fixed_call_rate)):
        if not any(s["phase"] == phase for s in steps):
            continue
        top = max(s["rate"] for s in steps if s["phase"] == phase)
        b = best_by_system(steps, phase, names, args.repeat, fixed)
        summary[phase] = b
        t = Table(title=f"{phase}: highest passing {unit}/s (<= 0.01 % failed; {top:g}/s was the highest offered), "
                        f"{args.repeat} repetition(s), {env['git_revision']}, overload_lag = 0")
        for c in ("system", f"highest {unit}/s (range)", "per repetition",
                  *[f"us CPU/tx @ {f:g}/s" for f in fixed], "next step", "next: gen-bound / box-sat"):
            t.add_column(c, justify="left" if c in ("system", "next step") else "right")
        for name in names:
            d = b[name]
            t.add_row(name, br.rng_fmt(d["best"]), " / ".join("-" if x is None else f"{x:g}" for x in d["best"]),
                      *[br.rng_fmt(d["cpu_per_tx_us_at_fixed"][f]) for f in fixed],
                      "; ".join(d["next"]) or "(none failed)",
                      " / ".join(f"{'Y' if g else 'n'}/{'Y' if x else 'n'}" for g, x in
                                 zip(d["next_generator_bound"], d["next_box_saturated"])) or "-")
        con.print(t)
        r = Table(title=f"{phase}: ratios a/b (per repetition, min-max): highest passing rate, and CPU per "
                        "transaction at fixed rates (lower CPU ratio = a is cheaper)")
        for c in ("comparison (a/b)", "capacity ratio", *[f"CPU/tx ratio @ {f:g}/s" for f in fixed]):
            r.add_column(c, justify="right" if not c.startswith("comparison") else "left")
        pairs = []
        for n in (1, 2):
            pairs.append((f"threads/processes, {n} worker(s), 3.13t", f"ft-t{n}", f"ft-p{n}"))
        for n in (1, 2):
            pairs.append((f"3.13t/GIL, processes, {n} worker(s)", f"ft-p{n}", f"gil-p{n}"))
        pairs.append(("2 workers / 1 worker, threads 3.13t", "ft-t2", "ft-t1"))
        pairs.append(("2 workers / 1 worker, processes 3.13t", "ft-p2", "ft-p1"))
        pairs.append(("2 workers / 1 worker, processes GIL", "gil-p2", "gil-p1"))
        ratios = []
        for label, a, c in pairs:
            if a in b and c in b:
                cap = ratio_range(b[a]["best"], b[c]["best"])
                cpu = {f: ratio_range(b[a]["cpu_per_tx_us_at_fixed"][f], b[c]["cpu_per_tx_us_at_fixed"][f])
                       for f in fixed}
                ratios.append({"comparison": label, "a": a, "b": c, "capacity": cap,
                               "cpu_per_tx": {str(f): v for f, v in cpu.items()}})
                r.add_row(label, fmt_ratio(cap), *[fmt_ratio(cpu[f]) for f in fixed])
        summary[phase + "_ratios"] = ratios
        con.print(r)
    if mem and mem.get("servers"):
        t = Table(title=f"memory per binding ({args.memory_users:,} bindings): heap (threads) vs shared-memory segment "
                        "(processes)")
        for c in ("system", "bindings", "PSS MB before -> after", "PSS MB / 100k", "PSS B / binding",
                  "segment reserved", "reserved B / binding", "CPU s / 100k registrations"):
            t.add_column(c, justify="right" if c != "system" else "left")
        for d in mem["servers"]:
            t.add_row(d["system"], f"{d['bindings']:,}", f"{d['pss_before_mb']:.0f} -> {d['pss_after_mb']:.0f}",
                      f"{d['pss_mb_per_100k'] or 0:.1f}", f"{d['pss_bytes_per_binding'] or 0:.0f}",
                      "-" if d["segment_reserved_mb"] is None else f"{d['segment_reserved_mb']:.0f} MB",
                      "-" if d["segment_reserved_bytes_per_binding"] is None
                      else f"{d['segment_reserved_bytes_per_binding']:.0f}",
                      f"{d['cpu_s_per_100k_registrations'] or 0:.1f}")
        con.print(t)
    if mem and mem.get("in_process"):
        d = mem["in_process"]
        con.print(f"in-process (perf/bench_shm.py, {d['bindings']:,} one-binding records): heap "
                  f"{d['heap_total_bytes_per_binding']:.0f} B per binding vs segment "
                  f"{d['shm_segment_bytes_per_binding']:.0f} B per binding at {d['slot_size_used']} B slots "
                  f"({d['shm_slot_bytes_filled_mean']:.0f} B of each slot filled; ftsip's default shm_slot_size is "
                  f"1024 B)")
    br.warn_flagged(con, steps)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS)
    ap.add_argument("--rates", default="1000,1500,2000,2500,3000,4000,5000,6000",
                    help="REGISTER exchanges per second")
    ap.add_argument("--call-rates", default="100,200,300,400,500,600,800", help="calls per second")
    ap.add_argument("--step", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--users", type=int, default=10000, help="population of the REGISTER phase")
    ap.add_argument("--call-users", type=int, default=2000, help="population of the call phase (all registered)")
    ap.add_argument("--call-mix", choices=("completed", "paper"), default="completed")
    ap.add_argument("--hold", type=float, default=1.0, help="mean hold of a completed call, seconds")
    ap.add_argument("--ring", default="100,300", help="ring time range, ms (uniform)")
    ap.add_argument("--uas-per-class", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--retries", type=int, default=0)
    ap.add_argument("--fixed-rate", default="1000,4000", help="REGISTER rates whose CPU/tx is compared")
    ap.add_argument("--fixed-call-rate", default="100,300", help="call rates whose CPU/tx is compared")
    ap.add_argument("--generators", type=int, default=1)
    ap.add_argument("--max-socket", type=int, default=100)
    ap.add_argument("--recv-timeout", type=float, default=10.0)
    ap.add_argument("--memory-users", type=int, default=100_000)
    ap.add_argument("--memory-rate", type=float, default=2000.0)
    ap.add_argument("--memory-systems", default="ft-t2,ft-p2,gil-p2")
    ap.add_argument("--skip", default="", help="comma-separated: register, calls, memory")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="the result file (default: --out/bench_modes-<date>.json)")
    ap.add_argument("--report", metavar="JSON", help="print the tables of an earlier result file, run nothing "
                    "(--fixed-rate/--fixed-call-rate may be changed)")
    args = ap.parse_args(argv)
    args.fixed_rate = [float(x) for x in str(args.fixed_rate).split(",") if x.strip()]
    args.fixed_call_rate = [float(x) for x in str(args.fixed_call_rate).split(",") if x.strip()]
    if args.report:
        from rich.console import Console
        with open(args.report) as f:
            d = json.load(f)
        old = argparse.Namespace(**d["settings"])
        old.fixed_rate, old.fixed_call_rate = args.fixed_rate, args.fixed_call_rate
        report(Console(width=None if sys.stdout.isatty() else 200), old, d["environment"], d["systems"], d["steps"],
               d["memory"])
        return 0
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    args.call_rates = [float(x) for x in args.call_rates.split(",") if x.strip()]
    args.ring = tuple(int(x) for x in args.ring.split(","))
    args.memory_systems = [x.strip() for x in args.memory_systems.split(",") if x.strip()]
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}

    from rich.console import Console
    con = Console(width=None if sys.stdout.isatty() else 200)
    env = br.environment()
    systems = check_interpreters([parse_system(x.strip()) for x in args.systems.split(",") if x.strip()], con)
    interps = {}
    for key, py in PYTHONS.items():
        path = os.path.join(ROOT, py)
        if os.path.exists(path):
            interps[key] = br.make_sut(os.devnull, None, "threads", 1, path, "probe").interpreter
    con.print(f"bench_modes: {env['git_revision']}, systems {', '.join(s['name'] for s in systems)}; interpreters: "
              + "; ".join(f"{k} = {v.get('version', '?').split()[0]} (GIL {'on' if v.get('gil_enabled') else 'off'})"
                          for k, v in interps.items()))
    workdir = tempfile.mkdtemp(prefix="bench-modes-")
    steps, errors, suts, mem, workloads = [], {}, [], None, {}
    try:
        for phase in ("register", "calls"):
            if phase in skip:
                continue
            st, er, ds, wl = run_capacity(phase, args, systems, workdir, con.print)
            steps += st
            errors.update(er)
            suts += ds
            workloads[phase] = wl.describe()
        if "memory" not in skip:
            mem = run_memory(args, systems, workdir, con.print)
        summary = report(con, args, env, systems, steps, mem)
        for k, v in errors.items():
            con.print(f"[red]{k}: {v}[/red]")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_json:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = args.json or os.path.join(args.out, f"bench_modes-{stamp}.json")
        with open(path, "w") as f:
            json.dump({"benchmark": "bench_modes", "environment": env, "interpreters": interps,
                       "settings": vars(args), "server_config": {"security": {"overload_lag": 0.0}},
                       "systems": systems, "workloads": workloads, "summary": summary, "memory": mem,
                       "steps": steps, "errors": errors, "suts": suts}, f, indent=1, default=str)
        con.print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
