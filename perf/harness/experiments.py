"""The experiment commands beyond `register`: `calls`, `capacity`, `matrix`, `efficiency` (``python -m perf.harness``).

- ``calls``: the paper's call mix at fixed rates (calls/s), or ``--search`` for the highest conforming rate;
- ``capacity``: the paper's users (REGISTER + calls) at a time-compression factor; step up, then bisect, to the
  largest conforming population, per system (``--systems ftsip:t1,ftsip:t2,ftsip:p2,ftsip-gil:p2,kamailio:c2``);
- ``matrix``: ``capacity`` for ftsip's 12 configurations (location table x user store x expiry), a table shaped
  like the paper's Figure 2;
- ``efficiency``: every system at the same fixed loads (REGISTER/s and calls/s), interleaved and repeated: CPU per
  transaction / per call and latency side by side, ratios to a reference (Kamailio).
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time

from . import report
from .callmix import CallMix
from .search import capacity_search
from .step import PASS_FAILED_PCT, run_series, run_step
from .sut import SUTError
from .systems import build_sut, config_label, parse_system, unique_labels
from .users import Population, write_ftsip_csv, write_ftsip_sqlite, write_kamailio_db
from .workloads import CallWorkload, RegisterWorkload, UsersWorkload


def _list(conv):
    def parse(s):
        return [conv(x) for x in s.split(",") if x.strip()]
    return parse


def add_system_args(p, default_systems="ftsip:t1"):
    p.add_argument("--systems", type=_list(str), default=None, action="extend",
                   help=f"systems under test, comma-separated (default {default_systems}): ftsip:tN (threads), "
                        "ftsip:pN (processes), ftsip-gil:... (.venv-gil), ftsip@PYTHON:..., kamailio:cN, "
                        "external:HOST:PORT; ftsip settings with +key=value (table, hash_width, gc, "
                        "sweep_interval, store, overload_lag, SECTION.KEY)")
    p.add_argument("--domain", default="example.com")
    p.add_argument("--no-qop", action="store_true", help="challenge without qop (ftsip and Kamailio)")
    p.add_argument("--overload-lag", type=float, default=0.0,
                   help="ftsip [security] overload_lag (default 0: no 503 shedding, as Kamailio; with a value, its "
                        "503s count as failed transactions)")
    p.add_argument("--hash-size", type=int, default=None, help="Kamailio usrloc hash_size exponent")
    p.add_argument("--kamailio-shm", type=int, default=1024,
                   help="Kamailio shared memory, MB (default 1024: with 256, tm runs out at ~1300 calls/s of 5 s "
                        "holds and answers 500)")
    p.add_argument("--server-cpus", help="pin the server with taskset -c LIST")
    p.add_argument("--gen-cpus", help="pin SIPp (generators and callee UASs) with taskset -c LIST")
    p.add_argument("--generators", type=int, default=1, help="SIPp processes per call kind (the rate is split)")
    p.add_argument("--max-socket", type=int, default=100, help="SIPp -max_socket with -t un (default 100)")
    p.add_argument("--recv-timeout", type=float, default=10.0, help="SIPp -recv_timeout, seconds (default 10)")
    p.add_argument("--trace-rtt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--retries", type=int, default=0, help="run a failing step again up to N times")
    p.add_argument("--json", metavar="OUT", help="result file (default perf/results/<command>-<date>.json)")
    p.add_argument("--plot", action="store_true", help="also write PNGs next to the JSON (matplotlib)")
    p.add_argument("--no-live", action="store_true", help="plain lines instead of the live view")
    p.add_argument("--keep-files", action="store_true", help="keep the work directory (SIPp logs)")
    p.add_argument("--max-failed-pct", type=float, default=PASS_FAILED_PCT, help=argparse.SUPPRESS)
    p.set_defaults(default_systems=default_systems)


def add_mix_args(p):
    g = p.add_argument_group("user model / call mix (see perf/harness/callmix.py)")
    g.add_argument("--compression", type=float, default=60.0,
                   help="time-compression factor c: N users offer N*c/600 REGISTER/s and N*c/3600 calls/s, "
                        "holds / c (default 60: an hour in a minute)")
    g.add_argument("--completed-hold", type=float, default=300.0, help="mean hold of completed calls, real s")
    g.add_argument("--voicemail-hold", type=float, default=30.0, help="mean hold of voicemail calls, real s")
    g.add_argument("--hold-sigma", type=float, default=1.0, help="sigma of ln(hold) of completed calls")
    g.add_argument("--hold-cap", type=float, default=4.0, help="holds are capped at this x their mean")
    g.add_argument("--ring", default="200-2000", help="callee ring time range, ms (uniform; default 200-2000)")
    g.add_argument("--uas-per-class", type=int, default=1, help="SIPp callee UASs per callee class")
    g.add_argument("--register-rate", type=float, default=2000.0,
                   help="rate at which the population is registered before the steps (/s)")


def mix_from(args):
    lo, _, hi = args.ring.partition("-")
    return CallMix(compression=args.compression, completed_hold_s=args.completed_hold,
                   voicemail_hold_s=args.voicemail_hold, hold_sigma=args.hold_sigma, hold_cap=args.hold_cap,
                   ring_min_ms=int(lo), ring_max_ms=int(hi or lo))


def _console():
    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=200)


class Setup:
    """A work directory, a population written in every shape, the SUT objects."""

    def __init__(self, args, users, need_sqlite=False):
        self.workdir = tempfile.mkdtemp(prefix="ftsip-harness-")
        self.keep = args.keep_files
        self.pop = Population(users, domain=args.domain)
        self.files = {"csv": write_ftsip_csv(self.pop, os.path.join(self.workdir, "users.csv")),
                      "kamailio_db": write_kamailio_db(self.pop, os.path.join(self.workdir, "kamailio-db"))}
        self.files["sqlite"] = (write_ftsip_sqlite(self.pop, os.path.join(self.workdir, "users.sqlite"))
                                if need_sqlite else None)

    def suts(self, args, specs, workload, labels=None):
        out = []
        for j, spec in enumerate(specs):
            sp = parse_system(spec) if isinstance(spec, str) else spec
            out.append(build_sut(sp, self.files, self.pop.size, domain=args.domain, qop=not args.no_qop,
                                 cpus=args.server_cpus, workload_options=workload.sut_options(),
                                 overload_lag=args.overload_lag, hash_size=args.hash_size,
                                 label=labels[j] if labels else None,
                                 **({"shm_mb": args.kamailio_shm} if sp["kind"] == "kamailio" else {})))
        return unique_labels(out)

    def sipp_opts(self, args):
        return {"max_socket": args.max_socket, "recv_timeout_ms": int(args.recv_timeout * 1000),
                "trace_rtt": args.trace_rtt, "cpus": args.gen_cpus}

    def close(self):
        if self.keep:
            print(f"work files kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _specs(args):
    specs = args.systems or args.default_systems.split(",")
    for s in specs:
        parse_system(s)          # fail early on a typo
    return specs


def _finish(args, argv, kind, meta, results, errors, suts, extra, con, name):
    meta = dict(meta, kind=kind, **extra)
    meta["suts"] = [s.describe() for s in suts]
    path = args.json or os.path.join(report.RESULTS, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    report.write_json(path, meta, results, errors, suts)
    con.print(f"results: {os.path.relpath(path)}")
    if args.plot:
        pngs = report.plot_any(path)
        con.print("plots: " + (", ".join(os.path.relpath(p) for p in pngs) if pngs
                               else "matplotlib is not installed (scripts/bootstrap --perf)"))
    return path


def _check_tools(con):
    from .sipp import SippError, sipp_binary
    try:
        sipp_binary()
    except SippError as e:
        con.print(f"[red]harness: {e}[/red]")
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
def cmd_calls(args, argv):
    from .cli import Live
    con = _console()
    if not _check_tools(con):
        return 2
    specs = _specs(args)
    mix = mix_from(args)
    setup = Setup(args, args.users, need_sqlite=any("sqlite" in s for s in specs))
    try:
        wl = CallWorkload(mix, uas_per_class=args.uas_per_class, register_rate=args.register_rate,
                          peer_cpus=args.gen_cpus)
        wl.prepare(setup.workdir, setup.pop, args.generators)
        try:
            suts = setup.suts(args, specs, wl)
        except (SUTError, ValueError) as e:
            con.print(f"[red]harness: {e}[/red]")
            return 2
        meta = report.run_meta(argv, suts, wl, {k: v for k, v in vars(args).items() if k != "func"})
        searches = []
        with Live(not args.no_live, wl.unit) as live:
            live.event(f"[bold]calls[/bold]: {len(suts)} system(s), {args.users:,} users registered per system, "
                       f"mix 65/30/5, holds {mix.holds()['completed'].mean_ms / 1000:g} s / "
                       f"{mix.holds()['voicemail'].mean_ms / 1000:g} s (compression {mix.compression:g}x), "
                       f"work dir {setup.workdir}")
            if args.search:
                results, errors = [], {}
                for s in suts:
                    r, steps = capacity_search(s, wl, args.rates[0], args.step, args.warmup, setup.workdir,
                                               growth=args.growth, tolerance=args.tolerance,
                                               max_steps=args.max_steps, retries=args.retries,
                                               generators=args.generators, sipp_opts=setup.sipp_opts(args),
                                               on_progress=live.progress, on_step=live.step, on_event=live.event)
                    searches.append(r)
                    results += steps
                    if r.get("error"):
                        errors[s.label] = r["error"]
            else:
                results, errors = run_series(suts, wl, args.rates, args.step, args.warmup, setup.workdir,
                                             generators=args.generators, sipp_opts=setup.sipp_opts(args),
                                             keep_going=args.keep_going, retries=args.retries,
                                             on_progress=live.progress, on_step=live.step, on_event=live.event,
                                             start_timeout=60)
        if results:
            con.print(report.step_table(results, title="calls: all steps", unit="call", compact=con.width < 160))
            if searches:
                con.print(report.search_table(searches))
            else:
                con.print(report.summary_table(results, args.rates[0] if len(args.rates) == 1 else None,
                                               unit="call"))
        for label, err in errors.items():
            con.print(f"[red]{label}: {err}[/red]")
        _finish(args, argv, "capacity" if searches else "steps", meta, results, errors, suts,
                {"search": searches, "compression": mix.compression}, con, "calls")
        return 0 if results and not errors else 1
    finally:
        setup.close()


# --------------------------------------------------------------------------------------------------------------
def _run_searches(args, argv, specs, labels, title, name, kind, extra_meta=None, configs=None):
    from .cli import Live
    con = _console()
    if not _check_tools(con):
        return 2, None
    mix = mix_from(args)
    setup = Setup(args, args.max_users, need_sqlite=any("sqlite" in str(s) for s in specs))
    try:
        wl = UsersWorkload(mix, uas_per_class=args.uas_per_class, register_rate=args.register_rate,
                           peer_cpus=args.gen_cpus)
        wl.prepare(setup.workdir, setup.pop, args.generators)
        try:
            suts = setup.suts(args, specs, wl, labels)
        except (SUTError, ValueError) as e:
            con.print(f"[red]harness: {e}[/red]")
            return 2, None
        meta = report.run_meta(argv, suts, wl, {k: v for k, v in vars(args).items() if k != "func"})
        searches, results, errors = [], [], {}
        con.print(f"[bold]{title}[/bold]: mapping {mix.describe()['mapping']}")
        con.print(f"  e.g. {mix.describe_users(args.start_users)}")
        with Live(not args.no_live, wl.unit) as live:
            for j, s in enumerate(suts):
                live.event(f"[bold]{s.label}[/bold] ({j + 1}/{len(suts)}): start {args.start_users:,} users, x"
                           f"{args.growth:g} until a step fails, then bisect to {100 * args.tolerance:g} %")
                r, steps = capacity_search(s, wl, args.start_users, args.step, args.warmup, setup.workdir,
                                           growth=args.growth, tolerance=args.tolerance, max_steps=args.max_steps,
                                           max_level=args.max_users, retries=args.retries,
                                           generators=args.generators, sipp_opts=setup.sipp_opts(args),
                                           on_progress=live.progress, on_step=live.step, on_event=live.event)
                if configs:
                    r["config"] = configs[j]
                r["compression"] = mix.compression
                searches.append(r)
                results += steps
                if r.get("error"):
                    errors[s.label] = r["error"]
                live.event(f"{s.label}: largest conforming population "
                           + (f"{r['max_level']:,} users ({r['max_level'] * mix.compression:,.0f} real-time users' "
                              "load)" if r["max_level"] else "none"))
        if results:
            con.print(report.step_table(results, title=f"{name}: all steps", unit="user", compact=con.width < 160))
        con.print(report.search_table(searches, compression=mix.compression))
        con.print(f"users = the population in the location table (all registered); x{mix.compression:g} = the "
                  "real-time users whose messages the step offered. * / flags: generator- or box-bound.",
                  style="dim")
        for label, err in errors.items():
            con.print(f"[red]{label}: {err}[/red]")
        extra = {"search": searches, "compression": mix.compression, "mix": mix.describe()}
        extra.update(extra_meta or {})
        path = _finish(args, argv, kind, meta, results, errors, suts, extra, con, name)
        return (0 if searches and not errors else 1), (path, searches, mix)
    finally:
        setup.close()


def add_search_args(p, start, max_users):
    p.add_argument("--start-users", type=int, default=start, help=f"first population (default {start})")
    p.add_argument("--max-users", type=int, default=max_users,
                   help=f"largest population offered (default {max_users}; the files are written for it)")
    p.add_argument("--growth", type=float, default=2.0, help="population factor between steps going up")
    p.add_argument("--tolerance", type=float, default=0.1, help="bisect until (fail - pass) <= this x pass")
    p.add_argument("--max-steps", type=int, default=10, help="steps per system at most")
    p.add_argument("--step", type=float, default=20.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before the measurement (default: max(5, 1.5 x the compressed completed hold))")


def _default_warmup(args):
    if args.warmup is None:
        args.warmup = max(5.0, 1.5 * args.completed_hold / args.compression)


def cmd_capacity(args, argv):
    _default_warmup(args)
    code, _ = _run_searches(args, argv, _specs(args), None, "capacity (users workload)", "capacity", "capacity")
    return code


MATRIX_TABLES = (("fixed", 512), ("fixed", 131072), ("linear", None))
MATRIX_STORES = ("sqlite-query", "memory")
MATRIX_GC = ("sweep", "incremental")


def matrix_specs(base):
    """The 12 configurations of the paper's experiment on one ftsip system spec."""
    specs, configs = [], []
    for (table, width), store, gc in itertools.product(MATRIX_TABLES, MATRIX_STORES, MATRIX_GC):
        sp = parse_system(base)
        if sp["kind"] != "ftsip":
            raise ValueError("the matrix runs ftsip configurations: give --system ftsip[-gil]:tN|pN")
        loc = sp["settings"].setdefault("location", {})
        loc.update(table=table, gc=gc)
        if width:
            loc["hash_width"] = width
        if gc == "sweep":
            loc["sweep_interval"] = 60
        sp["settings"].setdefault("auth", {})["store"] = store
        specs.append(sp)
        configs.append(config_label(sp["settings"]))
    return specs, configs


def cmd_matrix(args, argv):
    _default_warmup(args)
    specs, configs = matrix_specs(args.system)
    if args.only:
        keep = [j for j, c in enumerate(configs) if any(o in c for o in args.only)]
        specs, configs = [specs[j] for j in keep], [configs[j] for j in keep]
    labels = [f"{parse_system(args.system)['spec'].split('+')[0].replace(':', '-')}-{c}" for c in configs]
    args.systems = None
    code, out = _run_searches(args, argv, specs, labels, "matrix (the paper's Figure 2)", "matrix", "matrix",
                              extra_meta={"configs": configs, "base_system": args.system}, configs=configs)
    if out:
        path, searches, mix = out
        _console().print(report.matrix_table(searches, mix.compression))
    return code


# --------------------------------------------------------------------------------------------------------------
def cmd_efficiency(args, argv):
    """Every system at the same fixed loads, interleaved (system-major inside each repeat), repeated."""
    from .cli import Live
    con = _console()
    if not _check_tools(con):
        return 2
    if args.warmup is None:
        args.warmup = 5.0
    specs = _specs(args)
    mix = mix_from(args)
    setup = Setup(args, args.users, need_sqlite=any("sqlite" in s for s in specs))
    try:
        calls = CallWorkload(mix, uas_per_class=args.uas_per_class, register_rate=args.register_rate,
                             peer_cpus=args.gen_cpus)
        calls.prepare(setup.workdir, setup.pop, args.generators)
        # the REGISTER load refreshes the same users with their callee Contacts, so calls keep finding them
        reg = RegisterWorkload(expires=900, contact_of=calls.contact_of)
        reg.prepare(setup.workdir, setup.pop, args.generators)
        try:
            suts = setup.suts(args, specs, calls)
        except (SUTError, ValueError) as e:
            con.print(f"[red]harness: {e}[/red]")
            return 2
        loads = []
        if args.register_load:
            loads.append((reg, args.register_load))
        if args.call_load:
            loads.append((calls, args.call_load))
        meta = report.run_meta(argv, suts, calls, {k: v for k, v in vars(args).items() if k != "func"})
        meta["workloads"] = {"register": reg.describe()}
        results, errors, live_suts = [], {}, []
        with Live(not args.no_live, "unit") as live:
            live.event(f"[bold]efficiency[/bold]: {len(suts)} system(s) x "
                       + " and ".join(f"{lv:g} {w.unit}/s" for w, lv in loads)
                       + f", {args.repeat} repeat(s), {args.warmup:g}+{args.step:g} s steps, {args.users:,} users")
            try:
                for s in suts:
                    try:
                        s.start(timeout=60)
                        s.measure_idle(1.0)
                        calls.on_sut_started(s)
                        live_suts.append(s)
                        live.event(f"started {s.label} (pid {s.pid}), {args.users:,} users registered")
                    except Exception as e:  # noqa: BLE001
                        errors[s.label] = str(e)
                        live.event(f"[red]{s.label}: {e}[/red]")
                        s.stop()
                for rep in range(args.repeat):
                    for wl, level in loads:
                        for s in live_suts:
                            if not s.alive():
                                continue
                            if wl is calls:
                                calls.start_peers(s)
                            try:
                                r = run_step(s, wl, level, args.step, args.warmup, setup.workdir, args.generators,
                                             setup.sipp_opts(args), live.progress)
                            finally:
                                if wl is calls:
                                    calls.stop_peers()
                            r.attempt = rep + 1
                            results.append(r)
                            live.step(r)
                            time.sleep(1.0)
            finally:
                for s in live_suts:
                    s.stop()
        ref = next((s.label for s in suts if s.kind == "kamailio"), None)
        con.print(report.efficiency_table(results, reference=ref))
        con.print("µs = server CPU (whole process tree, user+system) per unit in the measurement window; tx = SIP "
                  "transaction (REGISTER exchange = 2, call = 3-4); ratios are medians vs "
                  f"{ref or 'no reference'}; latency = SIPp's, ms, histogram bucket bounds.", style="dim")
        flagged = [r for r in results if r.generator_bound or r.box_saturated or not r.passed]
        if flagged:
            con.print(f"[yellow]{len(flagged)} step(s) failed or were generator/box-bound: see the step table in "
                      "the JSON.[/yellow]")
        for label, err in errors.items():
            con.print(f"[red]{label}: {err}[/red]")
        _finish(args, argv, "efficiency", meta, results, errors, suts,
                {"efficiency": report.efficiency_rows(results), "reference": ref,
                 "loads": {"register": args.register_load, "calls": args.call_load}, "compression": mix.compression},
                con, "efficiency")
        return 0 if results and not errors else 1
    finally:
        setup.close()


def add_parsers(sub):
    p = sub.add_parser("calls", help="the paper's call mix (65/30/5, authenticated) at fixed calls/s, or --search")
    add_system_args(p)
    add_mix_args(p)
    p.add_argument("--rates", type=_list(float), default=[50, 100, 200], help="calls/s per step")
    p.add_argument("--users", type=int, default=10000, help="population registered before the steps")
    p.add_argument("--step", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("--search", action="store_true", help="capacity search from the first --rates value")
    p.add_argument("--growth", type=float, default=1.5)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=8)
    p.set_defaults(func=cmd_calls)

    p = sub.add_parser("capacity", help="largest conforming user population (users workload, compressed time)")
    add_system_args(p)
    add_mix_args(p)
    add_search_args(p, 5000, 200000)
    p.set_defaults(func=cmd_capacity)

    p = sub.add_parser("matrix", help="the paper's experiment matrix on ftsip (table x user store x expiry)")
    add_system_args(p)
    add_mix_args(p)
    add_search_args(p, 5000, 200000)
    p.add_argument("--system", default="ftsip:t2", help="the ftsip system the configurations vary (ftsip:t2)")
    p.add_argument("--only", type=_list(str), default=None,
                   help="run only configurations whose label contains one of these (e.g. linear,fixed2^9)")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("efficiency", help="CPU per transaction and latency at fixed loads, every system side by side")
    add_system_args(p, default_systems="ftsip:t1,ftsip:t2,ftsip:p1,ftsip:p2,ftsip-gil:p2,kamailio:c2")
    add_mix_args(p)
    p.add_argument("--register-load", type=float, default=2000.0, help="REGISTER/s (0: skip; default 2000)")
    p.add_argument("--call-load", type=float, default=300.0, help="calls/s of the mix (0: skip; default 300)")
    p.add_argument("--users", type=int, default=20000, help="population (registered on each system)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--step", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=None, help="default 5 s")
    p.set_defaults(func=cmd_efficiency)
