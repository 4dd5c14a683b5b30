"""``python -m perf.harness``: the capacity harness's command line.

    python -m perf.harness register --sut ftsip,kamailio --rates 500,1000,2000 --step 20 --users 10000 \\
        --threads 1,2 --children 2,4 [--json OUT]
    python -m perf.harness register --sut external --target 127.0.0.1:5070 --rates 1000
    python -m perf.harness users --users 10000 --out DIR
    python -m perf.harness plot perf/results/FILE.json
    python -m perf.harness calls --systems ftsip:t2,kamailio:c2 --rates 100,200,300
    python -m perf.harness capacity --systems ftsip:t1,ftsip:t2,kamailio:c2 --compression 60
    python -m perf.harness matrix --system ftsip:t2 --start-users 2000 --max-users 50000
    python -m perf.harness efficiency --register-load 2000 --call-load 300 --repeat 3
    python -m perf.harness profile --system ftsip:t2 --load register:2000 --seconds 20
(perf/README.md explains each experiment and how to read the results.)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from . import report
from .step import PASS_FAILED_PCT, run_series
from .sut import ExternalSUT, FtsipSUT, KamailioSUT, SUTError
from .users import Population, kamailio_htable_size, write_all, write_ftsip_csv, write_kamailio_db
from .workloads import RegisterWorkload


def _list(conv):
    def parse(s):
        return [conv(x) for x in s.split(",") if x.strip()]
    return parse


def _hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def _common(p):
    p.add_argument("--sut", type=_list(str), default=None, action="extend",
                   help="systems under test: ftsip, kamailio, external (comma-separated or repeated)")
    p.add_argument("--rates", type=_list(float), default=[500, 1000, 2000], help="offered rates per second, e.g. "
                   "500,1000,2000")
    p.add_argument("--step", type=float, default=20.0, help="measured seconds per step (default 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the measurement in each step (default 5)")
    p.add_argument("--users", type=int, default=10000, help="user population (default 10000)")
    p.add_argument("--domain", default="example.com")
    p.add_argument("--threads", type=_list(int), default=None, help="ftsip threads/workers, one SUT per value "
                   "(default 1)")
    p.add_argument("--mode", choices=("threads", "processes"), default="threads", help="ftsip mode")
    p.add_argument("--python", type=_list(str), default=None,
                   help="interpreter(s) for ftsip, one SUT per value (default .venv/bin/python; "
                        ".venv-gil/bin/python for a GIL build)")
    p.add_argument("--ftsip-arg", action="append", default=[], help="extra argument for `ftsip serve` (repeatable)")
    p.add_argument("--children", type=_list(int), default=None,
                   help="Kamailio children, one SUT per value (default: number of CPUs)")
    p.add_argument("--hash-size", type=int, default=None,
                   help="Kamailio usrloc hash_size exponent (2^N slots; default: log2 of --users, 10..16)")
    p.add_argument("--target", type=_hostport, help="HOST:PORT of the external SUT")
    p.add_argument("--no-qop", action="store_true", help="challenge without qop (both ftsip and Kamailio)")
    p.add_argument("--generators", type=int, default=1, help="SIPp processes per step (the rate is split)")
    p.add_argument("--max-socket", type=int, default=100, help="SIPp -max_socket with -t un (default 100)")
    p.add_argument("--recv-timeout", type=float, default=10.0, help="SIPp -recv_timeout in seconds (a call with "
                   "no answer for this long fails; default 10)")
    p.add_argument("--trace-rtt", action="store_true", help="also record every response time (-trace_rtt)")
    p.add_argument("--server-cpus", help="pin the server with taskset -c LIST (e.g. 0-3)")
    p.add_argument("--gen-cpus", help="pin the SIPp generators with taskset -c LIST (disjoint from --server-cpus)")
    p.add_argument("--order", choices=("rate", "sut"), default="rate",
                   help="rate: start every SUT, interleave them at each rate (default; spreads noise evenly); "
                        "sut: one SUT at a time")
    p.add_argument("--keep-going", action="store_true", help="offer higher rates after a failing step")
    p.add_argument("--retries", type=int, default=0,
                   help="run a failing step again up to N times (shared machine: bursts of other load); a rate "
                        "passes when one attempt passes, every attempt is reported")
    p.add_argument("--fixed-rate", type=float, default=None,
                   help="rate whose CPU per call goes in the summary (default 2000 if it is one of --rates)")
    p.add_argument("--json", metavar="OUT", help="result file (default perf/results/<workload>-<suts>-<date>.json)")
    p.add_argument("--plot", action="store_true", help="also write a PNG next to the JSON (needs matplotlib)")
    p.add_argument("--no-live", action="store_true", help="no live view (plain lines)")
    p.add_argument("--keep-files", action="store_true", help="keep the work directory (SIPp stats and error logs)")
    p.add_argument("--max-failed-pct", type=float, default=PASS_FAILED_PCT, help=argparse.SUPPRESS)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m perf.harness", description="ftsip capacity harness (SIPp-driven)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("register", help="REGISTER-with-auth step test")
    _common(p)
    p.add_argument("--expires", type=int, default=900, help="Expires asked by the users (default 900 = 15 min)")
    p.add_argument("--systems", type=_list(str), default=None, action="extend",
                   help="systems as specs instead of --sut/--threads/--python/--mode/--children: ftsip:t2, "
                        "ftsip:p2, ftsip-gil:t1, kamailio:c2, external:HOST:PORT (see `calls --help`)")
    p.add_argument("--overload-lag", type=float, default=None,
                   help="ftsip [security] overload_lag for --systems (default: ftsip's own, 0.5 s)")
    p.set_defaults(func=cmd_register)
    from . import experiments, profile
    experiments.add_parsers(sub)
    profile.add_parser(sub)
    p = sub.add_parser("users", help="write a user population: ftsip CSV, Kamailio db_text dir, SIPp injection")
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--domain", default="example.com")
    p.add_argument("--generators", type=int, default=1)
    p.add_argument("--expires", type=int, default=900)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_users)
    p = sub.add_parser("plot", help="PNG from a result JSON (needs matplotlib)")
    p.add_argument("json")
    p.set_defaults(func=cmd_plot)
    return parser


def make_suts(args, files):
    kinds = []
    for k in args.sut or ["ftsip"]:
        if k not in ("ftsip", "kamailio", "external"):
            raise SystemExit(f"unknown --sut {k!r}: ftsip, kamailio or external")
        if k not in kinds:
            kinds.append(k)
    from .procfs import ncpus
    suts = []
    for kind in kinds:
        if kind == "ftsip":
            for py in args.python or [".venv/bin/python"]:
                for n in args.threads or [1]:
                    suts.append(FtsipSUT(files["csv"], mode=args.mode, threads=n, python=py, domain=args.domain,
                                         extra_args=args.ftsip_arg, qop=not args.no_qop, cpus=args.server_cpus))
        elif kind == "kamailio":
            hs = args.hash_size or max(10, min(16, (max(args.users, 2) - 1).bit_length()))
            for n in args.children or [ncpus()]:
                suts.append(KamailioSUT(files["kamailio_db"], children=n, hash_size=hs,
                                        htable_size=kamailio_htable_size(args.users), qop=not args.no_qop,
                                        domain=args.domain, cpus=args.server_cpus))
        else:
            if not args.target:
                raise SystemExit("--sut external needs --target HOST:PORT")
            suts.append(ExternalSUT(*args.target))
    return suts


class Live:
    """A rich live view: the current step (offered load, progress, failures, server and SIPp CPU) above a table of
    finished steps; falls back to plain lines."""

    def __init__(self, enabled, unit):
        from rich.console import Console
        self.console = Console() if sys.stdout.isatty() else Console(width=200)
        self.enabled = enabled and self.console.is_terminal
        self.unit = unit
        self.results = []
        self.current = None
        self._live = None
        self._last_print = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.live import Live as RichLive
            self._live = RichLive(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self.current = None
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def _render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        parts = []
        p = self.current
        if p is not None:
            def pct(v):
                return "-" if v is None else f"{100 * v:.0f}%"
            sc, mc = p["server_cores"], p["machine_cores"]
            gens = [c for c in p["sipp_cores"] if c is not None]
            others = None if sc is None or mc is None else max(0.0, mc - sc - sum(gens) - (p.get("peer_cores") or 0))
            head = Table.grid(padding=(0, 2))
            level = (f"offered [bold]{p['rate']:g}[/bold] {p['unit']}/s" if p.get("unit") != "user"
                     else f"[bold]{p.get('level_text', p['rate'])}[/bold]")
            head.add_row(f"[bold]{p['sut']}[/bold]  {level}",
                         f"{p['phase']} {p['elapsed']:.0f}/{p['total']:.0f}s",
                         ProgressBar(total=p["total"], completed=min(p["elapsed"], p["total"]), width=20))
            fail_style = "red" if p["failed"] else "green"
            body = (f"SIPp {p['call_rate']:.0f}/s  created {p['created']}  ok {p['successful']}  "
                    f"[{fail_style}]failed {p['failed']}[/{fail_style}]  retrans {p['retrans']}  "
                    f"in flight {p['current']}  offered {p.get('offered_rate', p['rate']):.0f} SIPp calls/s\n"
                    f"CPU: server {pct(sc)}  SIPp {', '.join(pct(c) for c in p['sipp_cores'])}"
                    f"{'  UAS ' + pct(p.get('peer_cores')) if p.get('peer_cores') else ''}  "
                    f"machine {pct(mc)} of {100 * self.ncpus}% (others {pct(others)})")
            parts.append(Panel(Group(head, body), title="step", border_style="cyan"))
        if self.results:
            parts.append(report.step_table(self.results, title="finished steps", unit=self.unit,
                                           compact=self.console.width < 160))
        return Group(*parts)

    @property
    def ncpus(self):
        from .procfs import ncpus
        return ncpus()

    def progress(self, p):
        self.current = p
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_print >= 5:
            self._last_print = time.monotonic()
            sc = p["server_cores"]
            self.console.print(f"  {p['sut']} {p['rate']:g}/s {p['phase']} {p['elapsed']:.0f}/{p['total']:.0f}s "
                               f"created {p['created']} failed {p['failed']} "
                               f"server CPU {'-' if sc is None else f'{100 * sc:.0f}%'}", highlight=False)

    def step(self, r):
        self.results.append(r)
        self.current = None
        if self._live is not None:
            self._live.update(self._render())
        else:
            level = f"{r.rate:,.0f} users" if self.unit == "user" else f"{r.rate:g}/s"
            self.console.print(f"{r.sut} {level}: achieved {r.achieved_rate:.0f}/s, failed {r.failed} "
                               f"({r.failed_tx_pct:.3g}% of tx), server {r.cpu_per_tx_us} µs/tx -> {r.verdict}",
                               highlight=False)

    def event(self, msg):
        self.console.print(msg)


def cmd_register(args, argv, workload=None):
    from .sipp import SippError, sipp_binary
    try:
        sipp_binary()
    except SippError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 2
    if args.server_cpus and args.gen_cpus:
        a, b = _cpuset(args.server_cpus), _cpuset(args.gen_cpus)
        if a & b:
            print(f"harness: --server-cpus and --gen-cpus overlap ({sorted(a & b)})", file=sys.stderr)
            return 2
    workload = workload or RegisterWorkload(expires=args.expires)
    workdir = tempfile.mkdtemp(prefix="ftsip-harness-")
    pop = Population(args.users, domain=args.domain)
    files = {"csv": write_ftsip_csv(pop, os.path.join(workdir, "users.csv")),
             "kamailio_db": write_kamailio_db(pop, os.path.join(workdir, "kamailio-db"))}
    try:
        workload.prepare(workdir, pop, args.generators)
        try:
            if args.systems:
                from .systems import build_sut, parse_system, unique_labels
                if any("sqlite" in x for x in args.systems):
                    from .users import write_ftsip_sqlite
                    files["sqlite"] = write_ftsip_sqlite(pop, os.path.join(workdir, "users.sqlite"))
                suts = unique_labels([build_sut(parse_system(x), dict(files, sqlite=files.get("sqlite")), args.users,
                                                domain=args.domain, qop=not args.no_qop, cpus=args.server_cpus,
                                                overload_lag=args.overload_lag, hash_size=args.hash_size)
                                      for x in args.systems])
            else:
                suts = make_suts(args, files)
        except (SUTError, ValueError) as e:
            print(f"harness: {e}", file=sys.stderr)
            return 2
        fixed = args.fixed_rate if args.fixed_rate is not None else (2000.0 if 2000.0 in args.rates else None)
        params = {k: v for k, v in vars(args).items() if k not in ("func",)}
        meta = report.run_meta(argv, suts, workload, params)
        sipp_opts = {"max_socket": args.max_socket, "recv_timeout_ms": int(args.recv_timeout * 1000),
                     "trace_rtt": args.trace_rtt, "cpus": args.gen_cpus}
        with Live(not args.no_live, workload.unit) as live:
            rates = ", ".join(f"{r:g}" for r in args.rates)
            live.event(f"[bold]{workload.name}[/bold]: {len(suts)} SUT(s) x rates {rates} /s, {args.warmup:g}s "
                       f"warm-up + {args.step:g}s per step, {args.users} users, {args.generators} SIPp process(es), "
                       f"work dir {workdir}")
            results, errors = run_series(suts, workload, args.rates, args.step, args.warmup, workdir,
                                         generators=args.generators, sipp_opts=sipp_opts, order=args.order,
                                         keep_going=args.keep_going, retries=args.retries,
                                         on_progress=live.progress, on_step=live.step, on_event=live.event)
        meta["suts"] = [s.describe() for s in suts]
        from rich.console import Console
        con = Console() if sys.stdout.isatty() else Console(width=200)
        if results:
            con.print(report.step_table(results, title=f"{workload.name}: all steps", unit=workload.unit,
                                        compact=con.width < 160))
            con.print(report.summary_table(results, fixed, unit=workload.unit))
        for label, err in errors.items():
            con.print(f"[red]{label}: {err}[/red]")
        gen_flags = [r for r in results if r.generator_bound or r.box_saturated]
        if gen_flags:
            con.print(f"[yellow]{len(gen_flags)} step(s) flagged generator-bound or box-saturated: their limits "
                      "say more about SIPp/the machine than about the server.[/yellow]")
        con.print("Numbers from a shared machine (SIPp on the same cores, other people's tests): compare SUTs "
                  "within one run; 'other' = cores used by neither the server nor SIPp.", style="dim")
        path = args.json or report.default_json_path(workload.name, suts)
        report.write_json(path, meta, results, errors, suts)
        con.print(f"results: {os.path.relpath(path)}")
        if args.plot:
            png = report.plot(path)
            con.print(f"plot: {png}" if png else "plot: matplotlib is not installed (pip install matplotlib)")
        return 0 if results and not errors else 1
    finally:
        if args.keep_files:
            print(f"work files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _cpuset(s):
    out = set()
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    return out


def cmd_users(args, argv):
    pop = Population(args.users, domain=args.domain)
    files = write_all(pop, args.out, args.generators, args.expires)
    print(f"ftsip users:      {files['csv']}")
    print(f"kamailio db_text: {files['kamailio_db']}  (kamailio ... -A 'CRED_DB=\"text://"
          f"{os.path.abspath(files['kamailio_db'])}\"')")
    for p in files["injection"]:
        print(f"SIPp injection:   {p}")
    return 0


def cmd_plot(args, argv):
    pngs = report.plot_any(args.json)
    if not pngs:
        print("harness: matplotlib is not installed (scripts/bootstrap --perf), or nothing to plot",
              file=sys.stderr)
        return 2
    for p in pngs:
        print(p)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
