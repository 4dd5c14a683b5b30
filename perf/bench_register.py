#!/usr/bin/env python3
"""Benchmark of REGISTER with digest authentication through a real ``ftsip serve`` (issue 3 section 5): the highest
rate it sustains with at most 0.01 % failed exchanges on 1 thread and on all cores, and its CPU and RSS per 100k
bindings. A thin front-end to the capacity harness (``perf/harness``: SIPp step test, server CPU from /proc,
generator-bound and box-saturated flags); nothing here re-implements what the harness measures.

Not a test. Two phases:

1. Capacity: every ``--threads`` value is one ftsip server (threads mode); all are started, then each rate of
   ``--rates`` is offered to each server in turn (interleaved, so the shared machine's background load falls on all
   of them alike), REGISTER -> 401 -> REGISTER with MD5 credentials -> 200 per SIPp call (two transactions; users
   in sequence, one binding each, Expires 900), ``--warmup`` + ``--step`` seconds per step; a server is not
   offered higher rates after its first failed step. The whole series is repeated ``--repeat`` times with fresh
   servers, and the report gives the range of the highest passing rate, the next step's verdict and flags, and the
   server's CPU per REGISTER exchange at ``--fixed-rate`` (the robust number on a noisy machine).
2. Memory and CPU per 100k bindings: a fresh server with ``--memory-users`` users (loaded before the first
   measurement, so the user store is not counted) registers every one of them once (SIPp at ``--memory-rate``);
   RSS and PSS of its process tree before and after (bindings counted by the server itself, on its metrics
   endpoint), its CPU seconds for the registrations, and its idle CPU with no bindings and with all of them (the
   expiry collector's and timers' background cost). The steady cost of keeping 100k phones registered (each
   refreshing every 600 s, the paper's user model) follows from the CPU per REGISTER.

Every server config sets ``[security] overload_lag = 0``: ftsip's overload shedding (503 when datagrams queue for
longer than overload_lag) would otherwise turn an overload into quick 503s and hide where the capacity ends.

    .venv/bin/python perf/bench_register.py                                   # 1 and 2 threads, default rates
    .venv/bin/python perf/bench_register.py --rates 1000,2000,3000 --repeat 1 --step 10 --warmup 3
    .venv/bin/python perf/bench_register.py --skip memory --threads 2 --python .venv-gil/bin/python

Prints rich tables and writes JSON to perf/results/ (interpreter, free-threaded flag, git revision, machine, every
step as the harness recorded it).
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf import benchenv  # noqa: E402
from perf.harness import step as hstep  # noqa: E402
from perf.harness import sut as hsut  # noqa: E402
from perf.harness import users as husers  # noqa: E402
from perf.harness import workloads as hwl  # noqa: E402

DOMAIN = "example.com"
REFRESH_INTERVAL_S = 600.0          # the paper's phones re-register every 10 min


# ---------------------------------------------------------------------------------------------------------------------
# shared with bench_modes.py


def server_config(path, users, mode="threads", extra=None):
    """An ftsip config for a benchmark server: no overload shedding, a process-mode segment big enough for the
    population. Returns (path, settings)."""
    settings = {"security": {"overload_lag": 0.0}}
    if mode == "processes":
        slots = 1 << max(16, (int(users * 1.5) - 1).bit_length())
        settings["location"] = {"shm_slots": slots}
    for section, keys in (extra or {}).items():
        settings.setdefault(section, {}).update(keys)
    with open(path, "w") as f:
        f.write(hsut.toml_text(settings))
    return path, settings


def make_sut(csv, config, mode, n, python, label):
    s = hsut.FtsipSUT(csv, mode=mode, threads=n, python=python, domain=DOMAIN, config=config, label=label)
    if s.interpreter.get("error"):
        raise hsut.SUTError(f"{python}: {s.interpreter['error']}")
    return s


def interp_tag(python):
    return "gil" if "gil" in os.path.basename(os.path.dirname(os.path.dirname(python))) else "ft"


def environment(python=None):
    """The driver's side of the run (the servers' interpreters are recorded per system by the harness)."""
    sipp = None
    try:
        from perf.harness.sipp import sipp_version
        sipp = sipp_version()
    except Exception:  # noqa: BLE001
        pass
    dirty = benchenv.git("status", "--porcelain", "--untracked-files=no", "--", "ftsip")
    env = benchenv.machine()
    env.update(git_revision=benchenv.git_revision(), git_dirty_files=dirty.splitlines() if dirty else [],
               driver_python=sys.version.split()[0], driver_free_threaded=benchenv.interpreter()["free_threaded_build"],
               loadavg=os.getloadavg(), sipp=sipp,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return env


def step_line(r):
    gens = ", ".join(f"{100 * g['cpu_cores']:.0f}%" for g in r.generators if g.get("cpu_cores") is not None)
    flags = (" GENERATOR-BOUND" if r.generator_bound else "") + (" BOX-SATURATED" if r.box_saturated else "")
    return (f"{r.sut:>14} {r.rate:>6g}/s: achieved {r.achieved_rate:7.0f}/s failed {r.failed:5d} "
            f"({r.failed_pct:.3g}%) server {'-' if r.server_cores is None else f'{100 * r.server_cores:.0f}%'} "
            f"{'-' if r.cpu_per_call_us is None else f'{r.cpu_per_call_us:.0f}'} us/call, SIPp {gens}, other "
            f"{r.other_load_cores} cores -> {r.verdict}{flags}")


def summarize_series(steps, label):
    """From one SUT's steps of one repetition: highest passing rate, and the first failed rate above it (every
    attempt at that rate: its verdicts, and whether any attempt was generator-bound or box-saturated)."""
    mine = [s for s in steps if s["sut"] == label]
    passed = [s for s in mine if s["passed"]]
    best = max((s["rate"] for s in passed), default=None)
    failed = [s for s in mine if not s["passed"] and (best is None or s["rate"] > best)]
    if not failed:
        return {"best": best, "next": None}
    rate = min(s["rate"] for s in failed)
    tries = [s for s in failed if s["rate"] == rate]
    nxt = {"rate": rate, "verdict": " | ".join(s["verdict"] for s in tries),
           "generator_bound": any(s["generator_bound"] for s in tries),
           "box_saturated": any(s["box_saturated"] for s in tries),
           "other_load_cores": [s.get("other_load_cores") for s in tries],
           "server_cores": [s.get("server_cores") for s in tries]}
    return {"best": best, "next": nxt}


def rng_fmt(vals, fmt="{:.0f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def fetch_locations(port, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/locations?limit=0", timeout=timeout) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------------------------------------------------
# phases


def capacity(args, workdir, log):
    pop = husers.Population(args.users, domain=DOMAIN)
    csv = husers.write_ftsip_csv(pop, os.path.join(workdir, "users.csv"))
    wl = hwl.RegisterWorkload(expires=900)
    wl.prepare(workdir, pop, args.generators)
    sipp_opts = {"max_socket": args.max_socket, "recv_timeout_ms": int(args.recv_timeout * 1000)}
    steps, errors, suts_desc = [], {}, []
    for rep in range(args.repeat):
        order = args.threads if rep % 2 == 0 else args.threads[::-1]
        suts = []
        for n in order:
            cfg, _ = server_config(os.path.join(workdir, f"ftsip-t{n}.toml"), args.users)
            suts.append(make_sut(csv, cfg, "threads", n, args.python, f"ftsip-t{n}"))
        log(f"[bold]repetition {rep + 1}/{args.repeat}[/bold]: {', '.join(s.label for s in suts)} x rates "
            f"{', '.join(f'{r:g}' for r in args.rates)}/s")
        results, errs = hstep.run_series(suts, wl, args.rates, args.step, args.warmup, workdir,
                                         generators=args.generators, sipp_opts=sipp_opts, order="rate",
                                         retries=args.retries, on_step=lambda r: log(step_line(r)), on_event=log)
        for r in results:
            d = r.to_dict()
            d["repetition"] = rep + 1
            steps.append(d)
        for k, v in errs.items():
            errors[f"{k} (repetition {rep + 1})"] = v
        suts_desc += [dict(s.describe(), repetition=rep + 1) for s in suts]
    return steps, errors, suts_desc


def memory(args, workdir, log):
    """Per thread count: RSS/PSS and CPU for registering --memory-users bindings."""
    m = args.memory_users
    pop = husers.Population(m, domain=DOMAIN, prefix="m")
    csv = husers.write_ftsip_csv(pop, os.path.join(workdir, "mem-users.csv"))
    wl = hwl.RegisterWorkload(expires=3600)
    workdir = os.path.join(workdir, "memory")
    os.makedirs(workdir, exist_ok=True)
    wl.prepare(workdir, pop, 1)
    sipp_opts = {"max_socket": args.max_socket, "recv_timeout_ms": int(args.recv_timeout * 1000)}
    out = []
    for n in args.threads:
        mport = hsut.free_udp_port()
        cfg, settings = server_config(os.path.join(workdir, f"mem-t{n}.toml"), m,
                                      extra={"metrics": {"listen": f"127.0.0.1:{mport}"}})
        s = make_sut(csv, cfg, "threads", n, args.python, f"ftsip-t{n}-mem")
        s.start(timeout=120)
        try:
            time.sleep(1.0)
            s.refresh_pids()
            mem0 = s.memory()
            idle0 = s.measure_idle(args.idle_seconds)
            loc0 = fetch_locations(mport)
            cpu0 = s.cpu_seconds()
            warm = 2.0
            rate = args.memory_rate
            r = hstep.run_step(s, wl, rate, max(1.0, m / rate - warm), warm, workdir, 1, sipp_opts)
            log(step_line(r))
            cpu1 = s.cpu_seconds()
            time.sleep(2.0)
            loc1 = fetch_locations(mport)
            mem1 = s.memory()
            idle1 = s.measure_idle(args.idle_seconds)
            bindings = loc1.get("bindings", 0) - loc0.get("bindings", 0)
            k = 1e5 / bindings if bindings else None
            d = {
                "threads": n, "users": m, "bindings": bindings, "aors": loc1.get("aors"),
                "register_rate": rate, "registration_step": r.to_dict(),
                "rss_before_mb": mem0.get("rss_kb", 0) / 1024, "rss_after_mb": mem1.get("rss_kb", 0) / 1024,
                "pss_before_mb": mem0.get("pss_kb", 0) / 1024, "pss_after_mb": mem1.get("pss_kb", 0) / 1024,
                "rss_mb_per_100k": (mem1["rss_kb"] - mem0["rss_kb"]) / 1024 * k if k else None,
                "pss_mb_per_100k": (mem1["pss_kb"] - mem0["pss_kb"]) / 1024 * k if k else None,
                "rss_bytes_per_binding": (mem1["rss_kb"] - mem0["rss_kb"]) * 1024 / bindings if bindings else None,
                "cpu_s_registering": cpu1 - cpu0,
                "cpu_s_per_100k_registrations": (cpu1 - cpu0) * k if k else None,
                "idle_cores_empty": idle0, "idle_cores_full": idle1,
                "settings": settings,
            }
            out.append(d)
            log(f"  t{n}: {bindings} bindings, RSS {d['rss_before_mb']:.0f} -> {d['rss_after_mb']:.0f} MB = "
                f"{d['rss_mb_per_100k'] or 0:.1f} MB per 100k (PSS {d['pss_mb_per_100k'] or 0:.1f}); CPU "
                f"{d['cpu_s_registering']:.1f} s for the registrations; idle {100 * (idle0 or 0):.1f}% -> "
                f"{100 * (idle1 or 0):.1f}% of a core")
        finally:
            s.stop()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# report


def report(con, args, env, steps, mem, interp):
    from rich.table import Table
    t = Table(title=f"REGISTER with digest auth (2 transactions), <= 0.01 % failed: ftsip threads mode on "
                    f"{interp.get('version', '?').split()[0]} ({'free-threaded' if interp.get('free_threaded_build') else 'GIL build'}"
                    f", GIL {'on' if interp.get('gil_enabled') else 'off'}), {env['git_revision']}, "
                    f"{args.repeat} repetition(s), overload_lag = 0")
    for c in ("threads", "highest passing /s (range)", "per repetition", "next step failed by",
              f"us CPU/REGISTER @ {args.fixed_rate:g}/s", "server cores @ fixed", "SIPp cores @ best",
              "flags next step"):
        t.add_column(c, justify="right" if c != "next step failed by" else "left")
    summary = []
    for n in args.threads:
        label = f"ftsip-t{n}"
        bests, nexts, flags, fixed_cpu, fixed_cores, sipp_best = [], [], [], [], [], []
        for rep in range(1, args.repeat + 1):
            rs = [s for s in steps if s["repetition"] == rep]
            sm = summarize_series(rs, label)
            bests.append(sm["best"])
            if sm["next"]:
                nx = sm["next"]
                others = ", ".join(f"{o:.2f}" for o in nx["other_load_cores"] if o is not None)
                nexts.append(f"{nx['rate']:g}: {nx['verdict']} (others' load {others} cores)")
                fl = [f for f, on in (("gen-bound", nx["generator_bound"]), ("box-sat", nx["box_saturated"])) if on]
                flags.append(",".join(fl) or "none")
            for s in rs:
                if s["sut"] == label and s["rate"] == args.fixed_rate and s["cpu_per_call_us"]:
                    fixed_cpu.append(s["cpu_per_call_us"])
                    fixed_cores.append(s["server_cores"])
                if s["sut"] == label and s["rate"] == sm["best"] and s["passed"]:
                    sipp_best.append(sum(g.get("cpu_cores") or 0 for g in s["generators"]))
        summary.append({"threads": n, "highest_passing": bests, "next": nexts, "flags_next": flags,
                        "cpu_us_per_register_at_fixed": fixed_cpu, "server_cores_at_fixed": fixed_cores,
                        "sipp_cores_at_best": sipp_best})
        t.add_row(str(n), rng_fmt(bests), " / ".join("-" if b is None else f"{b:g}" for b in bests),
                  "; ".join(nexts) or "(none failed)", rng_fmt(fixed_cpu), rng_fmt(fixed_cores, "{:.2f}"),
                  rng_fmt(sipp_best, "{:.2f}"), " / ".join(flags) or "-")
    con.print(t)
    if mem:
        m = Table(title=f"memory and CPU per 100k bindings ({args.memory_users:,} users registered once, "
                        f"{args.memory_rate:g}/s)")
        for c in ("threads", "bindings", "RSS MB before -> after", "RSS MB / 100k", "PSS MB / 100k", "bytes/binding",
                  "CPU s / 100k registrations", "idle CPU empty -> full", "refresh CPU for 100k phones"):
            m.add_column(c, justify="right")
        for d in mem:
            fixed = next((s for s in summary if s["threads"] == d["threads"]), None)
            us = (sum(fixed["cpu_us_per_register_at_fixed"]) / len(fixed["cpu_us_per_register_at_fixed"])
                  if fixed and fixed["cpu_us_per_register_at_fixed"] else None)
            refresh = (1e5 / REFRESH_INTERVAL_S) * us / 1e6 if us else None
            d["refresh_cores_per_100k"] = refresh
            m.add_row(str(d["threads"]), f"{d['bindings']:,}", f"{d['rss_before_mb']:.0f} -> {d['rss_after_mb']:.0f}",
                      f"{d['rss_mb_per_100k'] or 0:.1f}", f"{d['pss_mb_per_100k'] or 0:.1f}",
                      f"{d['rss_bytes_per_binding'] or 0:.0f}", f"{d['cpu_s_per_100k_registrations'] or 0:.1f}",
                      f"{100 * (d['idle_cores_empty'] or 0):.1f}% -> {100 * (d['idle_cores_full'] or 0):.1f}%",
                      "-" if refresh is None else f"{100 * refresh:.1f}% of a core")
        con.print(m)
    warn_flagged(con, steps)
    return summary


def warn_flagged(con, steps):
    """Say when passing steps were generator-bound or box-saturated (shared with bench_modes.py)."""
    bad = [s for s in steps if s["passed"] and (s["generator_bound"] or s["box_saturated"])]
    if bad:
        con.print(f"[yellow]{len(bad)} passing step(s) were generator-bound or box-saturated: the highest passing "
                  "rate may be SIPp's or the machine's limit, not the server's.[/yellow]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="ftsip worker threads, one server per value (default 1,2)")
    ap.add_argument("--rates", default="1000,1500,2000,2500,3000,3500,4000,5000,6000,7000",
                    help="offered REGISTER exchanges per second")
    ap.add_argument("--step", type=float, default=20.0, help="measured seconds per step")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--users", type=int, default=10000, help="population of the capacity phase")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions of the capacity series (fresh servers)")
    ap.add_argument("--retries", type=int, default=0, help="re-run a failed step up to N times (harness --retries)")
    ap.add_argument("--fixed-rate", type=float, default=1000.0, help="rate whose CPU per REGISTER is reported")
    ap.add_argument("--generators", type=int, default=1, help="SIPp processes per step")
    ap.add_argument("--max-socket", type=int, default=100)
    ap.add_argument("--recv-timeout", type=float, default=10.0)
    ap.add_argument("--memory-users", type=int, default=100_000)
    ap.add_argument("--memory-rate", type=float, default=2000.0)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--python", default=".venv/bin/python", help="the server's interpreter")
    ap.add_argument("--skip", default="", help="comma-separated: capacity, memory")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--report", metavar="JSON", help="print the tables of an earlier result file, run nothing")
    args = ap.parse_args(argv)
    if args.report:
        from rich.console import Console
        with open(args.report) as f:
            d = json.load(f)
        old = argparse.Namespace(**d["settings"])
        report(Console(width=None if sys.stdout.isatty() else 200), old, d["environment"], d["steps"], d["memory"],
               d["server_interpreter"])
        return 0
    args.threads = [int(x) for x in args.threads.split(",") if x.strip()]
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    args.python = args.python if os.path.isabs(args.python) else os.path.join(ROOT, args.python)

    from rich.console import Console
    con = Console(width=None if sys.stdout.isatty() else 200)
    env = environment()
    workdir = tempfile.mkdtemp(prefix="bench-register-")
    steps, errors, suts, mem = [], {}, [], []
    interp = {}
    try:
        probe = make_sut(os.devnull, None, "threads", 1, args.python, "probe")
        interp = probe.interpreter
        con.print(f"bench_register: server {args.python} = {interp.get('version', '?').split()[0]} "
                  f"(free-threaded build {interp.get('free_threaded_build')}, GIL {interp.get('gil_enabled')}), "
                  f"{env['git_revision']}, threads {args.threads}, work dir {workdir}")
        if "capacity" not in skip:
            steps, errors, suts = capacity(args, workdir, con.print)
        if "memory" not in skip:
            mem = memory(args, workdir, con.print)
        summary = report(con, args, env, steps, mem, interp)
        for k, v in errors.items():
            con.print(f"[red]{k}: {v}[/red]")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_json:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        ver = "".join(interp.get("version", "0.0").split()[0].split(".")[:2])
        tag = "t" if interp.get("free_threaded_build") else ""
        path = os.path.join(args.out, f"bench_register-py{ver}{tag}-{stamp}.json")
        settings = {k: v for k, v in vars(args).items()}
        with open(path, "w") as f:
            json.dump({"benchmark": "bench_register", "environment": env, "server_interpreter": interp,
                       "settings": settings, "server_config": {"security": {"overload_lag": 0.0}},
                       "summary": summary, "memory": mem, "steps": steps, "errors": errors, "suts": suts}, f,
                      indent=1, default=str)
        con.print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
