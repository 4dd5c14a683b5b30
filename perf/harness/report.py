"""Results: run metadata (interpreter, git revision, machine, tools), the final table, JSON, optional PNG plots."""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess

from perf import benchenv

from . import procfs
from .sipp import sipp_version
from .sut import ROOT

RESULTS = os.path.join(ROOT, "perf", "results")


def git_info():
    def run(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"revision": run("rev-parse", "HEAD"), "describe": run("log", "-1", "--format=%h %s"),
            "dirty": bool(status) if status is not None else None}


def machine_info():
    model = benchenv.cpu_model() or None
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    debian = None
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpus": procfs.ncpus(), "cpu_model": model, "mem_kb": mem_kb,
            "kernel": platform.release(), "debian": debian, "loadavg_at_start": os.getloadavg()}


def run_meta(argv, suts, workload, params):
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m perf.harness " + " ".join(argv),
        "git": git_info(),
        "machine": machine_info(),
        "tools": {"sipp": sipp_version()},
        "workload": workload.describe(),
        "params": params,
        "suts": [s.describe() for s in suts],
        "noise": "shared 2-core machine: SIPp runs on the same cores, other engineers run tests; see "
                 "other_load_cores per step",
    }


def write_json(path, meta, results, errors, suts):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    series = {}
    starts = [s.series[0][0] for s in suts if s.series]
    t0 = min(starts) if starts else 0.0
    for s in suts:
        if s.series:
            series[s.label] = [[round(t - t0, 2), round(c, 3) if c is not None else None, pss, rss]
                               for t, c, pss, rss in s.series]
    import time as _time
    offset = _time.time() - _time.monotonic()      # steps carry epoch times; the series monotonic ones
    doc = dict(meta, errors=errors, steps=[r.to_dict() for r in results],
               summary=summarize(results),
               series={"columns": ["t_s", "cpu_s", "pss_kb", "rss_kb"], "data": series,
                       "t0_epoch": round(t0 + offset, 3) if starts else None})
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    return path


def default_json_path(workload, suts):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kinds = "-".join(sorted({s.kind for s in suts})) or "none"
    return os.path.join(RESULTS, f"{workload}-{kinds}-{stamp}.json")


def summarize(results, fixed_rate=None):
    """Per SUT: the highest passing rate, whether a higher step failed, and CPU per call/transaction per rate."""
    out = {}
    passed_rates = {(r.sut, r.rate) for r in results if r.passed}
    for r in results:
        s = out.setdefault(r.sut, {"max_passing_rate": None, "first_failing_rate": None, "generator_bound_at_max":
                                   None, "first_failing_verdict": None, "first_failing_flagged": None,
                                   "attempts": {}, "cpu_per_call_us": {}, "cpu_per_tx_us": {}})
        key = f"{r.rate:g}"
        s["attempts"][key] = s["attempts"].get(key, 0) + 1
        if r.passed and (s["max_passing_rate"] is None or r.rate > s["max_passing_rate"]):
            s["max_passing_rate"] = r.rate
            s["generator_bound_at_max"] = r.generator_bound or r.box_saturated
        if (r.sut, r.rate) not in passed_rates and (s["first_failing_rate"] is None
                                                     or r.rate < s["first_failing_rate"]):
            s["first_failing_rate"] = r.rate
            s["first_failing_verdict"] = r.verdict
            s["first_failing_flagged"] = r.generator_bound or r.box_saturated
        if r.cpu_per_call_us is not None and (r.passed or key not in s["cpu_per_call_us"]):
            s["cpu_per_call_us"][key] = r.cpu_per_call_us
            s["cpu_per_tx_us"][key] = r.cpu_per_tx_us
    return out


def _fmt(v, spec="{:.0f}", none="-"):
    return none if v is None else spec.format(v)


def _lat(v):
    if v is None:
        return "-"
    return ">1000" if v == float("inf") else f"<{v:g}"


def step_table(results, title="steps", unit="call", compact=False):
    """The per-step table; ``compact`` keeps the columns that matter in an 80-column terminal."""
    from rich.table import Table
    t = Table(title=title, show_lines=False)
    level_col = "users" if unit == "user" else "offered/s"
    cols = [("SUT", "left"), (level_col, "right"), ("achieved/s", "right"), ("failed", "right"),
            ("retr", "right"), ("server CPU", "right"), (f"µs/{unit}", "right"), ("µs/tx", "right"),
            ("mean p50/p99 ms", "right"), ("SIPp CPU", "right"), ("other", "right"), ("PSS MB", "right"),
            ("verdict", "left")]
    keep = {"SUT", level_col, "achieved/s", "failed", "server CPU", f"µs/{unit}", "µs/tx", "SIPp CPU", "verdict"}
    idx = [i for i, (c, _) in enumerate(cols) if not compact or c in keep]
    for i in idx:
        t.add_column(cols[i][0], justify=cols[i][1])
    for r in results:
        gens = "+".join(_fmt(100 * g["cpu_cores"], "{:.0f}%") if g["cpu_cores"] is not None else "-"
                        for g in r.generators) or "-"
        flags = []
        if r.generator_bound:
            flags.append("gen-bound")
        if r.box_saturated:
            flags.append("box-saturated")
        verdict = r.verdict + (f" [{', '.join(flags)}]" if flags else "")
        style = "green" if r.passed and not flags else ("yellow" if r.passed else "red")
        mem = (r.server_mem or {}).get("pss_kb") or (r.server_mem or {}).get("rss_kb")
        fpct = getattr(r, "failed_tx_pct", None)
        fpct = r.failed_pct if fpct is None else fpct
        row = [r.sut, f"{r.rate:g}" + (f" #{r.attempt}" if r.attempt > 1 else ""), f"{r.achieved_rate:.0f}",
               f"{r.failed + getattr(r, 'peer_failed', 0)} ({fpct:.3g}% tx)", str(r.retransmissions),
               _fmt(r.server_cores and 100 * r.server_cores, "{:.0f}%"),
               _fmt(r.cpu_per_call_us, "{:.1f}"), _fmt(r.cpu_per_tx_us, "{:.1f}"),
               f"{_fmt(r.latency_ms.get('mean'), '{:.1f}')} {_lat(r.latency_ms.get('p50'))}/"
               f"{_lat(r.latency_ms.get('p99'))}",
               gens, _fmt(r.other_load_cores, "{:.2f}"), _fmt(mem and mem / 1024, "{:.0f}"),
               f"[{style}]{verdict}[/{style}]"]
        t.add_row(*[row[i] for i in idx])
    return t


def summary_table(results, fixed_rate=None, unit="call"):
    from rich.table import Table
    summ = summarize(results)
    t = Table(title="summary (capacity = highest passing step, <= 0.01% failed)")
    t.add_column("SUT")
    t.add_column(f"max {unit}/s passing", justify="right")
    t.add_column("next step", justify="right")
    t.add_column("next step's verdict", justify="left")
    if fixed_rate is not None:
        t.add_column(f"µs/{unit} @ {fixed_rate:g}/s", justify="right")
        t.add_column(f"µs/tx @ {fixed_rate:g}/s", justify="right")
    for sut, s in summ.items():
        limit = "-"
        if s["first_failing_rate"] is not None:
            limit = s["first_failing_verdict"] + (" [generator/box flagged]" if s["first_failing_flagged"] else "")
        elif s["max_passing_rate"] is not None:
            limit = "no failing step: capacity not reached" + (
                " [generator/box flagged at the top step]" if s["generator_bound_at_max"] else "")
        row = [sut, _fmt(s["max_passing_rate"], "{:g}", "none"), _fmt(s["first_failing_rate"], "{:g} failed"), limit]
        if fixed_rate is not None:
            row += [_fmt(s["cpu_per_call_us"].get(f"{fixed_rate:g}"), "{:.1f}"),
                    _fmt(s["cpu_per_tx_us"].get(f"{fixed_rate:g}"), "{:.1f}")]
        t.add_row(*row)
    return t


def plot(json_path, out_png=None):
    """PNG: CPU per call against offered rate per SUT, and CPU/memory over time. Needs matplotlib (optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    with open(json_path) as f:
        doc = json.load(f)
    out_png = out_png or os.path.splitext(json_path)[0] + ".png"
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5))
    by = {}
    for s in doc["steps"]:
        by.setdefault(s["sut"], []).append(s)
    for sut, steps in by.items():
        ok = [s for s in steps if s["passed"] and s["cpu_per_call_us"] is not None]
        bad = [s for s in steps if not s["passed"] and s["cpu_per_call_us"] is not None]
        line, = a1.plot([s["rate"] for s in ok], [s["cpu_per_call_us"] for s in ok], "o-", label=sut)
        if bad:
            a1.plot([s["rate"] for s in bad], [s["cpu_per_call_us"] for s in bad], "x", color=line.get_color())
        good = [s["achieved_rate"] * (1 - s["failed_pct"] / 100.0) for s in steps]
        a2.plot([s["rate"] for s in steps], good, "o-", label=sut, color=line.get_color())
    a1.set(xlabel="offered /s", ylabel="server CPU µs per " + doc["workload"]["unit"],
           title="CPU per unit (x = failed step)")
    a2.set(xlabel="offered /s", ylabel="successful /s", title="goodput")
    for sut, rows in doc["series"]["data"].items():
        if len(rows) > 1:
            ts = [r[0] for r in rows[1:]]
            cores = [(rows[i][1] - rows[i - 1][1]) / max(1e-9, rows[i][0] - rows[i - 1][0])
                     for i in range(1, len(rows))]
            a3.plot(ts, cores, label=f"{sut} CPU (cores)")
    a3.set(xlabel="s since start", ylabel="cores", title="server CPU over time")
    for a in (a1, a2, a3):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


# ---------------------------------------------------------------------------------------------------------------
# capacity search, matrix, efficiency


def search_table(results, title="capacity (largest conforming level: >= 99.99 % of transactions succeeded)",
                 compression=None):
    from rich.table import Table
    t = Table(title=title)
    for c, j in (("SUT", "left"), ("max conforming", "right"), ("real-time users (x c)", "right"),
                 ("first failing", "right"), ("why it failed", "left"), ("µs/tx at max", "right"),
                 ("server CPU at max", "right"), ("steps", "right"), ("flags", "left")):
        t.add_column(c, justify=j)
    for r in results:
        users = r.get("unit") == "users"
        rt = "-"
        if users and r.get("max_level") and compression:
            rt = f"{r['max_level'] * compression:,.0f}"
        flags = []
        if r.get("generator_bound"):
            flags.append("[yellow]generator/box-bound[/yellow]")
        if r.get("error"):
            flags.append(f"[red]{r['error'][:60]}[/red]")
        if r.get("note"):
            flags.append(r["note"])
        t.add_row(r["sut"], _fmt(r.get("max_level"), "{:,.0f}" if users else "{:g}/s", "none"), rt,
                  _fmt(r.get("first_failing"), "{:,.0f}" if users else "{:g}/s"), r.get("limit_verdict") or "-",
                  _fmt(r.get("cpu_per_tx_us_at_max"), "{:.1f}"),
                  _fmt(r.get("server_cores_at_max") and 100 * r["server_cores_at_max"], "{:.0f}%"),
                  str(r.get("steps")), " ".join(flags))
    return t


MATRIX_COLUMNS = (("sqlite", "sweep60s"), ("sqlite", "incr"), ("memory", "sweep60s"), ("memory", "incr"))


def matrix_table(results, compression):
    """The paper's Figure 2 as a table: rows = location table, columns = user store x expiry, cells = the largest
    conforming population (x compression = real-time users' message load)."""
    from rich.table import Table
    t = Table(title=f"max conforming users (Figure 2 shape), compression {compression:g}x "
                    "(cell: users in the table / x c = real-time users' message load)")
    t.add_column("location table")
    for store, gc in MATRIX_COLUMNS:
        t.add_column(f"{'SQLite per auth' if store == 'sqlite' else 'in-memory users'}, "
                     f"{'sweep 60 s' if gc.startswith('sweep') else 'incremental GC'}", justify="right")
    by = {r["config"]: r for r in results}
    for table in ("fixed2^9", "fixed2^17", "linear"):
        row = [{"fixed2^9": "fixed 2^9", "fixed2^17": "fixed 2^17", "linear": "linear hashing"}[table]]
        for store, gc in MATRIX_COLUMNS:
            r = by.get(f"{table}-{store}-{gc}")
            if r is None:
                row.append("-")
                continue
            v = r.get("max_level")
            cell = "none" if v is None else f"{v:,.0f} / {v * compression:,.0f}"
            if r.get("first_failing") is None and v is not None:
                cell += " (not reached)"
            if r.get("generator_bound"):
                cell += " [yellow]*[/yellow]"
            if r.get("error"):
                cell += " [red]err[/red]"
            row.append(cell)
        t.add_row(*row)
    return t


def efficiency_rows(results):
    """Per SUT and workload: ranges (min, max, n) of CPU per unit / per transaction and latency over repeats."""
    out = {}
    for r in results:
        if not r.passed and r.cpu_per_tx_us is None:
            continue
        d = out.setdefault(r.sut, {}).setdefault(r.workload, {"cpu_per_call_us": [], "cpu_per_tx_us": [],
                                                              "p50": [], "p99": [], "mean": [], "passed": [],
                                                              "server_cores": [], "rate": r.rate})
        if r.cpu_per_call_us is not None:
            d["cpu_per_call_us"].append(r.cpu_per_call_us)
            d["cpu_per_tx_us"].append(r.cpu_per_tx_us)
            d["server_cores"].append(r.server_cores)
        d["p50"].append(r.latency_ms.get("p50"))
        d["p99"].append(r.latency_ms.get("p99"))
        d["mean"].append(r.latency_ms.get("mean"))
        d["passed"].append(r.passed)
    return out


def _rng(vals, spec="{:.0f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return spec.format(lo) if lo == hi else f"{spec.format(lo)}-{spec.format(hi)}"


def efficiency_table(results, reference=None):
    from rich.table import Table
    rows = efficiency_rows(results)
    t = Table(title="efficiency at fixed offered load (ranges over repeats: min-max)")
    for c in ("SUT", "µs/REGISTER", "µs/tx (REG)", "REG ms p50/p99", "µs/call", "µs/tx (calls)",
              "call ms p50/p99", "vs ref (tx, REG / calls)", "failed steps"):
        t.add_column(c, justify="left" if c == "SUT" else "right")
    ref = rows.get(reference, {}) if reference else {}

    def med(v):
        v = sorted(x for x in v if x is not None)
        return v[len(v) // 2] if v else None

    for sut, wl in rows.items():
        reg, calls = wl.get("register", {}), wl.get("calls", {})
        ratio = []
        for name, d in (("register", reg), ("calls", calls)):
            a, b = med(d.get("cpu_per_tx_us", [])), med(ref.get(name, {}).get("cpu_per_tx_us", []))
            ratio.append(f"{a / b:.1f}x" if a and b else "-")
        bad = sum(1 for d in (reg, calls) for p in d.get("passed", []) if not p)
        t.add_row(sut, _rng(reg.get("cpu_per_call_us", [])), _rng(reg.get("cpu_per_tx_us", [])),
                  f"{_rng(reg.get('p50', []), '{:g}')}/{_rng(reg.get('p99', []), '{:g}')}",
                  _rng(calls.get("cpu_per_call_us", [])), _rng(calls.get("cpu_per_tx_us", [])),
                  f"{_rng(calls.get('p50', []), '{:g}')}/{_rng(calls.get('p99', []), '{:g}')}",
                  " / ".join(ratio), str(bad))
    return t


# ---------------------------------------------------------------------------------------------------------------
# plots (matplotlib, optional)

def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def plot_any(json_path):
    """The PNG(s) that fit the result file's kind; returns the list of paths (empty without matplotlib)."""
    plt = _plt()
    if plt is None:
        return []
    with open(json_path) as f:
        doc = json.load(f)
    base = os.path.splitext(json_path)[0]
    kind = doc.get("kind", "steps")
    out = []
    if kind == "matrix":
        out.append(plot_matrix(doc, base + "-fig2.png", plt))
    if kind in ("capacity", "matrix"):
        out.append(plot_capacity(doc, base + "-capacity.png", plt))
    if kind == "efficiency":
        out.append(plot_efficiency(doc, base + "-efficiency.png", plt))
    if kind == "steps":
        out.append(plot(json_path))
    out.append(plot_timeline(doc, base + "-timeline.png", plt))
    return [p for p in out if p]


def plot_matrix(doc, path, plt):
    res = doc.get("search", [])
    if not res:
        return None
    c = doc.get("compression") or 1
    fig, ax = plt.subplots(figsize=(11, 4.8))
    labels, vals, colors, marks = [], [], [], []
    palette = {"fixed2^9": "#c44e52", "fixed2^17": "#dd8452", "linear": "#4c72b0"}
    for table in ("fixed2^9", "fixed2^17", "linear"):
        for store, gc in MATRIX_COLUMNS:
            r = next((x for x in res if x.get("config") == f"{table}-{store}-{gc}"), None)
            if r is None:
                continue
            labels.append(f"{table}\n{store}\n{gc}")
            vals.append(r.get("max_level") or 0)
            colors.append(palette[table])
            marks.append(("≥" if r.get("first_failing") is None else "") + ("*" if r.get("generator_bound") else ""))
    bars = ax.bar(range(len(vals)), vals, color=colors)
    for b, v, m in zip(bars, vals, marks):
        if m.startswith("≥"):
            b.set_hatch("//")
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{m.rstrip('*')[:1]}{v:,.0f}{'*' if '*' in m else ''}",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    ax.set_ylabel(f"max conforming users (table), x{c:g} message load")
    ax.set_title("ftsip: capacity per configuration (the paper's Figure 2 shape; 99.99 % of transactions)\n"
                 "hatched / ≥: no failing step within the search (a lower bound); *: generator- or box-bound",
                 fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_capacity(doc, path, plt):
    """Capacity per system; systems of one family (interpreter + mode) are also drawn against their core count
    (the paper's Figure 5)."""
    res = [r for r in doc.get("search", []) if r.get("max_level") is not None or r.get("first_failing")]
    if not res:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 4.8))
    bars = a1.barh([r["sut"] for r in res], [r.get("max_level") or 0 for r in res],
                   color=["#999999" if r.get("generator_bound") else "#4c72b0" for r in res])
    for b, r in zip(bars, res):
        lower = r.get("first_failing") is None          # no failing step within the search: a lower bound
        if lower:
            b.set_hatch("//")
        a1.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {'≥' if lower else ''}{b.get_width():,.0f}",
                va="center", fontsize=8)
    a1.set_xlabel(f"largest conforming level ({res[0].get('unit')})\ngrey = generator/box-bound; "
                  "hatched / ≥ = no failing step within the search (a lower bound)", fontsize=9)
    a1.set_title("capacity per system")
    fam = {}
    for r in res:
        d = next((s for s in doc.get("suts", []) if s.get("label") == r["sut"]), {})
        n = d.get("threads") or d.get("children")
        if n is None:
            continue
        key = f"{d.get('kind')}-{d.get('mode', 'children')}" + (
            "-gil" if (d.get("interpreter") or {}).get("gil_enabled") else "")
        fam.setdefault(key, []).append((n, r.get("max_level") or 0))
    for k, pts in fam.items():
        pts.sort()
        a2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k)
    a2.set(xlabel="threads / worker processes / children", ylabel="largest conforming level",
           title="capacity per core count (Figure 5 shape)")
    a2.legend(fontsize=7)
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_efficiency(doc, path, plt):
    rows = doc.get("efficiency", {})
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    for ax, wl, title in ((axes[0], "register", "REGISTER"), (axes[1], "calls", "call mix")):
        names, med, lo, hi = [], [], [], []
        for sut, d in rows.items():
            v = sorted(x for x in d.get(wl, {}).get("cpu_per_tx_us", []) if x is not None)
            if not v:
                continue
            names.append(sut)
            m = v[len(v) // 2]
            med.append(m)
            lo.append(m - v[0])
            hi.append(v[-1] - m)
        ax.barh(names, med, xerr=[lo, hi], color="#4c72b0", capsize=3)
        ax.set_xlabel("server CPU µs per SIP transaction (median, whiskers = range over repeats)")
        ax.set_title(f"{title} at {doc.get('loads', {}).get(wl, '?')}/s")
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timeline(doc, path, plt):
    """Server CPU (cores) and memory (PSS) over the run per SUT, steps shaded (the paper's Figure 4 shape)."""
    data = doc.get("series", {}).get("data", {})
    if not data:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True)
    for sut, rows in data.items():
        ts, cores, mem_t, mem = [], [], [], []
        for i in range(1, len(rows)):
            (t0, c0, _, _), (t1, c1, pss, rss) = rows[i - 1], rows[i]
            if c0 is None or c1 is None or t1 <= t0 or c1 < c0 or t1 - t0 > 5:
                continue          # a restart (new process) or a gap
            ts.append(t1)
            cores.append((c1 - c0) / (t1 - t0))
            m = pss or rss
            if m:
                mem_t.append(t1)
                mem.append(m / 1024)
        a1.plot(ts, cores, lw=0.8, label=sut)
        a2.plot(mem_t, mem, lw=0.8, label=sut)
    t0e = doc.get("series", {}).get("t0_epoch")
    if t0e:
        for s in doc.get("steps", []):
            a = s["started_at"] - t0e
            a1.axvspan(a + s["warmup_s"], a + s["warmup_s"] + s["duration_s"], color="#dddddd", alpha=0.5, lw=0)
    a1.set(ylabel="server CPU (cores)", title="server CPU and memory over the run (shaded: measurement windows)")
    a2.set(xlabel="seconds since the first server started", ylabel="PSS (MB)")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
