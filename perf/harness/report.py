"""Results: run metadata (interpreter, git revision, machine, tools), the final table, JSON, optional PNG plots."""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess

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
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
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
    doc = dict(meta, errors=errors, steps=[r.to_dict() for r in results],
               summary=summarize(results),
               series={"columns": ["t_s", "cpu_s", "pss_kb", "rss_kb"], "data": series})
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
    cols = [("SUT", "left"), ("offered/s", "right"), ("achieved/s", "right"), ("failed", "right"),
            ("retr", "right"), ("server CPU", "right"), (f"µs/{unit}", "right"), ("µs/tx", "right"),
            ("mean p50/p99 ms", "right"), ("SIPp CPU", "right"), ("other", "right"), ("PSS MB", "right"),
            ("verdict", "left")]
    keep = {"SUT", "offered/s", "achieved/s", "failed", "server CPU", f"µs/{unit}", "SIPp CPU", "verdict"}
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
        row = [r.sut, f"{r.rate:g}" + (f" #{r.attempt}" if r.attempt > 1 else ""), f"{r.achieved_rate:.0f}",
               f"{r.failed} ({r.failed_pct:.3g}%)", str(r.retransmissions),
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
