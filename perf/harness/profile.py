"""``python -m perf.harness profile``: the server under the right profiler at a chosen load -> flame graph + top 10.

- Free-threaded build (3.13t): py-spy cannot read it (FACTS.md), so Linux ``perf`` samples the server started with
  ``-X perf_jit`` (CPython 3.13's DWARF-unwindable trampolines): ``perf record -k 1 --call-graph dwarf -p PIDS``
  for the measured seconds only, ``perf inject --jit``, ``perf script``. Frame pointers are not needed (the cached
  3.13t build has none, so ``-X perf`` + ``-g`` gives broken stacks; DWARF unwinding gives full ones). Works for the
  process mode too (every worker pid is sampled; the workers inherit ``-X perf_jit``).
- GIL builds (threads and process mode): ``py-spy record --format raw --function --subprocesses`` launches the
  server (attaching by pid failed on this kind of machine); samples cover the whole run (idle threads excluded), so
  registration before the step is in it too (small with the default population).

Both give collapsed stacks, from which this module writes an SVG flame graph (its own small renderer: no
flamegraph.pl needed) and a top-10 table by self time and by inclusive time.
"""
from __future__ import annotations

import glob
import html
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter

from . import procfs, report
from .sut import ROOT, SUTError

INTERP_DSOS = ("python3", "libpython")


# --------------------------------------------------------------------------------------------------------------
# collapsing stacks

def _short_path(path):
    if path.startswith(ROOT + "/"):
        return os.path.relpath(path, ROOT)
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/lib/python3" in path:
        return "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return os.path.basename(path)


def perf_frame(sym, dso):
    """A perf script frame -> (name, kind) with kind 'py', 'cython', 'interp', 'native' or 'kernel'."""
    if sym.startswith("py::"):
        fn, _, path = sym[4:].partition(":")
        return f"{fn} ({_short_path(path)})", "py"
    base = os.path.basename(dso.strip("()"))
    if "kernel" in dso or base.startswith("[k"):
        return f"{sym} [kernel]", "kernel"
    if base.startswith(INTERP_DSOS):
        return sym, "interp"
    if "_fast" in dso or base.endswith(".so") and "cpython-313" in base:
        return f"{sym} ({base.split('.')[0]})", "cython"
    return f"{sym} ({base})", "native"


def collapse_perf_script(text, keep_interp="leaf"):
    """``perf script -F comm,tid,ip,sym,dso`` output -> Counter{'root;...;leaf': samples}. Interpreter frames
    (the eval loop, vectorcall glue) are dropped except a run of them at the leaf, which is kept as its leaf-most
    frame (where the interpreter itself spends the time: dict lookups, refcounting, allocation)."""
    stacks = Counter()
    frames = []

    def flush():
        if not frames:
            return
        out = []
        # perf prints leaf first
        for j, (name, kind) in enumerate(frames):
            if kind == "interp":
                if keep_interp == "leaf" and j == 0:
                    out.append(name)
                continue
            if name.startswith("[unknown]"):
                continue
            out.append(name)
        if out:
            stacks[";".join(reversed(out))] += 1
        frames.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
            continue
        if not line.startswith((" ", "\t")):
            flush()               # a sample header line
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        sym, _, dso = rest.rpartition(" (")
        if not sym:
            sym, dso = rest, ""
        sym = sym.split("+0x")[0]
        frames.append(perf_frame(sym, "(" + dso))
    flush()
    return stacks


def collapse_pyspy_raw(text):
    """py-spy's raw output ('process ...;frame;frame N') -> Counter, the process frame dropped."""
    import re
    proc = re.compile(r'^(?:process \d+:"(?:[^"\\]|\\.)*";?)+')
    stacks = Counter()
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        stack = proc.sub("", stack)          # the process frame (its command line may hold ';')
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        out = []
        for f in frames:
            name, _, loc = f.partition(" (")
            out.append(f"{name} ({_short_path(loc.rstrip(')').split(':')[0])})" if loc else name)
        if out:
            stacks[";".join(out)] += int(n)
    return stacks


def top_functions(stacks, n=10):
    """(self, total): [(frame, samples, share)] by self time (leaf) and by inclusive time (counted once a stack)."""
    total = sum(stacks.values()) or 1
    self_c, incl = Counter(), Counter()
    for stack, c in stacks.items():
        frames = stack.split(";")
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    return ([(f, c, c / total) for f, c in self_c.most_common(n)],
            [(f, c, c / total) for f, c in incl.most_common(n)])


# --------------------------------------------------------------------------------------------------------------
# flame graph (SVG)

def _color(name):
    h = sum(ord(ch) for ch in name) % 40
    if "[kernel]" in name:
        return f"rgb({200 + h // 2},{90 + h},{70})"
    if ".py)" in name:
        return f"rgb({230},{130 + h * 2},{40 + h})"
    if "(" not in name:
        return f"rgb({200 + h},{200 + h},{80})"          # interpreter leaf
    return f"rgb({80 + h},{180 + h},{90})"               # Cython / native


def flamegraph_svg(stacks, title, width=1400, row=17):
    tree = {"n": 0, "kids": {}}
    for stack, c in stacks.items():
        node = tree
        node["n"] += c
        for f in stack.split(";"):
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += c
    total = tree["n"] or 1
    depth = [0]
    rects = []

    def walk(node, x, level):
        depth[0] = max(depth[0], level)
        for name in sorted(node["kids"]):
            kid = node["kids"][name]
            w = kid["n"] / total * (width - 20)
            if w >= 0.3:
                rects.append((x, level, w, name, kid["n"]))
                walk(kid, x, level + 1)
            x += w

    walk(tree, 10.0, 0)
    height = (depth[0] + 3) * row + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11"><rect width="100%" height="100%" fill="#fdfdf5"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{html.escape(title)}</text>']
    for x, level, w, name, n in rects:
        y = height - (level + 2) * row
        label = html.escape(name)
        text = ""
        chars = int((w - 4) / 6.6)
        if chars >= 3:
            shown = name if len(name) <= chars else name[:chars - 2] + ".."
            text = f'<text x="{x + 2:.1f}" y="{y + row - 5}">{html.escape(shown)}</text>'
        out.append(f'<g><title>{label}: {n} samples ({100 * n / total:.1f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{_color(name)}" rx="2"/>'
                   f'{text}</g>')
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# the command

def _parse_load(s):
    kind, _, v = s.partition(":")
    if kind not in ("register", "calls", "users") or not v:
        raise ValueError("--load KIND:LEVEL with KIND register (/s), calls (/s) or users (population)")
    return kind, float(v)


def cmd_profile(args, argv):
    from .callmix import CallMix
    from .experiments import Setup, _console, mix_from
    from .step import run_step
    from .systems import build_sut, parse_system
    from .workloads import CallWorkload, RegisterWorkload, UsersWorkload
    con = _console()
    kind, level = _parse_load(args.load)
    spec = parse_system(args.system)
    if spec["kind"] != "ftsip":
        con.print("[red]profile: only ftsip systems (Kamailio: use perf record on it yourself)[/red]")
        return 2
    users = int(level) if kind == "users" else args.users
    setup = Setup(args, users, need_sqlite="sqlite" in args.system)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or report.RESULTS
    os.makedirs(out_dir, exist_ok=True)
    sut = None
    try:
        mix = mix_from(args) if hasattr(args, "compression") else CallMix()
        if kind == "register":
            wl = RegisterWorkload(expires=900)
        elif kind == "calls":
            wl = CallWorkload(mix, register_rate=args.register_rate)
        else:
            wl = UsersWorkload(mix, register_rate=args.register_rate)
        wl.prepare(setup.workdir, setup.pop, 1)
        sut = build_sut(spec, setup.files, users, domain=args.domain, workload_options=wl.sut_options(),
                        overload_lag=args.overload_lag)
        ft = bool(sut.interpreter.get("free_threaded_build"))
        profiler = args.profiler if args.profiler != "auto" else ("perf" if ft else "py-spy")
        name = f"profile-{sut.label}-{kind}{level:g}-{stamp}"
        base = os.path.join(out_dir, name)
        if profiler == "perf":
            if shutil.which("perf") is None:
                con.print("[red]profile: `perf` is missing (apt-get install linux-perf; scripts/bootstrap --perf)"
                          "[/red]")
                return 2
            sut.python_args = ["-X", "perf_jit"]
            sut.extra_env["PYTHON_PERF_JIT_SUPPORT"] = "1"
        else:
            if ft:
                con.print("[yellow]py-spy cannot read a free-threaded 3.13 process (FACTS.md); use --profiler perf"
                          "[/yellow]")
                return 2
            pyspy = os.path.join(os.path.dirname(sut.python), "py-spy")
            pyspy = pyspy if os.path.exists(pyspy) else shutil.which("py-spy")
            if not pyspy:
                con.print("[red]profile: py-spy is missing (pip install py-spy into the venv)[/red]")
                return 2
            sut.launcher = [pyspy, "record", "--format", "raw", "--function", "--rate", str(args.freq),
                            "--nonblocking", "--subprocesses", "-o", base + ".raw.txt", "--"]
        con.print(f"profiling {sut.label} ({'free-threaded' if ft else 'GIL'} build) with {profiler} at "
                  f"{wl.describe_level(level)}, {args.warmup:g}+{args.seconds:g} s")
        sut.start(timeout=60)
        wl.on_sut_started(sut)
        wl.before_step(sut, level)
        wl.start_peers(sut)
        result = {}

        def step():
            result["r"] = run_step(sut, wl, level, args.seconds, args.warmup, setup.workdir, 1,
                                   {"max_socket": 100, "recv_timeout_ms": 10000})

        th = threading.Thread(target=step, daemon=True)
        th.start()
        data = base + ".perf.data"
        perf_rc = None
        if profiler == "perf":
            time.sleep(args.warmup)
            pids = [p for p in procfs.tree(sut.proc.pid)]
            perf_rc = subprocess.run(["perf", "record", "-k", "1", "-F", str(args.freq), "--call-graph", "dwarf",
                                      "-N", "-p", ",".join(map(str, pids)), "-o", data, "--", "sleep",
                                      str(args.seconds)], capture_output=True, text=True)
        th.join()
        wl.stop_peers()
        if profiler == "py-spy":
            kids = procfs.descendants(sut.proc.pid)
            if kids:
                os.kill(kids[0], signal.SIGTERM)           # ftsip; py-spy writes its file when it exits
            try:
                sut.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        pids = procfs.tree(sut.proc.pid) if sut.alive() else [sut.proc.pid]
        sut.stop()
        r = result.get("r")
        # --- stacks
        if profiler == "perf":
            if perf_rc is None or perf_rc.returncode != 0 or not os.path.exists(data):
                con.print(f"[red]perf record failed: {perf_rc.stderr[-800:] if perf_rc else ''}[/red]")
                return 1
            jit = data + ".jit"
            subprocess.run(["perf", "inject", "-i", data, "--jit", "-o", jit], capture_output=True, cwd=out_dir)
            txt = subprocess.run(["perf", "script", "--no-inline", "-F", "comm,tid,ip,sym,dso", "-i", jit],
                                 capture_output=True, text=True, cwd=out_dir).stdout
            stacks = collapse_perf_script(txt)
            for p in [data, jit] + [f for pid in pids for f in
                                    glob.glob(f"/tmp/jitted-{pid}-*.so") + glob.glob(f"/tmp/jit-{pid}.dump")
                                    + glob.glob(f"/tmp/perf-{pid}.map")]:
                if not args.keep_data or p not in (data, jit):
                    try:
                        os.remove(p)
                    except OSError:
                        pass
        else:
            try:
                with open(base + ".raw.txt") as f:
                    stacks = collapse_pyspy_raw(f.read())
                if not args.keep_data:
                    os.remove(base + ".raw.txt")      # the .collapsed.txt holds the same stacks
            except OSError:
                con.print("[red]py-spy wrote no output (see the server log)[/red]")
                con.print(sut.log_tail())
                return 1
        with open(base + ".collapsed.txt", "w") as f:
            for s, c in stacks.most_common():
                f.write(f"{s} {c}\n")
        svg = base + ".svg"
        total = sum(stacks.values())
        title = (f"{sut.label} at {wl.describe_level(level)} - {profiler}, {total} samples"
                 + (f", server {100 * r.server_cores:.0f}% CPU, {r.cpu_per_tx_us} µs/tx" if r and r.server_cores
                    else ""))
        with open(svg, "w") as f:
            f.write(flamegraph_svg(stacks, title))
        selfs, incl = top_functions(stacks, 10)
        from rich.markup import escape
        from rich.table import Table
        t = Table(title=f"top 10 by self time ({total} samples)")
        t.add_column("function")
        t.add_column("self", justify="right")
        for fn, c, sh in selfs:
            t.add_row(escape(fn), f"{100 * sh:.1f}%")
        con.print(t)
        t = Table(title="top 10 by inclusive time")
        t.add_column("function")
        t.add_column("total", justify="right")
        for fn, c, sh in incl:
            t.add_row(escape(fn), f"{100 * sh:.1f}%")
        con.print(t)
        summary = {"kind": "profile", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": "python -m perf.harness "
                   + " ".join(argv), "git": report.git_info(), "machine": report.machine_info(),
                   "sut": sut.describe(), "profiler": profiler, "samples": total, "load": args.load,
                   "step": r.to_dict() if r else None, "top_self": selfs, "top_total": incl,
                   "flamegraph": os.path.relpath(svg, ROOT), "collapsed": os.path.relpath(base + ".collapsed.txt",
                                                                                         ROOT)}
        with open(base + ".json", "w") as f:
            json.dump(summary, f, indent=1, default=str)
        if r is not None:
            con.print(f"step: {r.verdict}, achieved {r.achieved_rate:.0f}/s, server "
                      f"{100 * (r.server_cores or 0):.0f}% CPU, {r.cpu_per_tx_us} µs/tx (under the profiler)")
        con.print(f"flame graph: {os.path.relpath(svg)}  top-10/JSON: {os.path.relpath(base + '.json')}")
        return 0
    except SUTError as e:
        con.print(f"[red]profile: {e}[/red]")
        return 2
    finally:
        if sut is not None and sut.alive():
            sut.stop()
        setup.close()


def add_parser(sub):
    from .experiments import add_mix_args
    p = sub.add_parser("profile", help="run ftsip under perf (3.13t) or py-spy (GIL) at a load: flame graph + top 10")
    p.add_argument("--system", default="ftsip:t2", help="one ftsip system spec (ftsip:t2, ftsip-gil:p2, ...)")
    p.add_argument("--load", default="register:2000", help="register:RATE, calls:RATE or users:N")
    p.add_argument("--seconds", type=float, default=20.0, help="profiled seconds (after the warm-up)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--users", type=int, default=10000, help="population for register/calls loads")
    p.add_argument("--profiler", choices=("auto", "perf", "py-spy"), default="auto")
    p.add_argument("--freq", type=int, default=99, help="samples per second")
    p.add_argument("--out", help="directory for the SVG/JSON (default perf/results)")
    p.add_argument("--keep-data", action="store_true", help="keep perf.data files")
    p.add_argument("--domain", default="example.com")
    p.add_argument("--overload-lag", type=float, default=0.0)
    p.add_argument("--keep-files", action="store_true", help="keep the work directory")
    add_mix_args(p)
    p.set_defaults(func=cmd_profile)
