#!/usr/bin/env python3
"""Benchmark of calls through ftsip's proxy (issue 4 section 4): the highest rate of authenticated calls the server
sustains with at most 0.01 % failed transactions, 1 thread vs all threads, on 3.13t; its CPU time per call; and a
profile of the server at that load with the top 10 functions.

Not a test. A front-end that re-implements nothing:

1. ``perf/bench_modes.py``'s call phase on the systems ``ft-t1`` and ``ft-tN`` (``--threads``): SIPp callee UASs
   registered through ftsip's real registrar, SIPp callers placing INVITE -> 407 -> INVITE with Proxy-Authorization
   -> 100/180/200 -> ACK -> hold -> BYE -> 407 -> BYE with credentials -> 200 (four transactions a call; completed
   calls by default, ``--call-mix paper`` for 65 % completed / 30 % voicemail / 5 % cancelled), each rate of
   ``--rates`` offered to each server in turn, ``--repeat`` times; the harness's verdict per step (<= 0.01 % failed
   transactions, offered rate reached, no growing backlog; generator-bound and box-saturated flags) and the server's
   CPU from /proc.
2. ``python -m perf.harness profile`` on ``ftsip:tN`` at the highest passing rate (``--profile-rate`` to choose):
   Linux perf with ``-X perf_jit`` on 3.13t (py-spy cannot read 3.13t), py-spy on a GIL build; a flame graph SVG and
   the top 10 functions by self and inclusive time.

    .venv/bin/python perf/bench_calls.py
    .venv/bin/python perf/bench_calls.py --rates 100,200,300 --repeat 1 --step 10 --profile-seconds 10

Writes ``perf/results/bench_calls-<date>.json`` (the bench_modes result it ran, the profile's top 10 and its files).
"""
import argparse
import datetime
import glob
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_modes  # noqa: E402


def best_rate(summary, system):
    """The highest passing calls/s of ``system`` over the repetitions (None when no step passed)."""
    bests = [b for b in summary.get("calls", {}).get(system, {}).get("best", []) if b]
    return max(bests) if bests else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="the 'all threads' server (default: the CPUs here); always compared with 1 thread")
    ap.add_argument("--rates", default="100,200,300,400,500,600,800", help="calls per second")
    ap.add_argument("--step", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--call-mix", choices=("completed", "paper"), default="completed")
    ap.add_argument("--hold", type=float, default=1.0, help="mean hold of a completed call, seconds")
    ap.add_argument("--fixed-call-rate", default="100", help="call rates whose CPU per transaction is compared")
    ap.add_argument("--profile-rate", type=float, help="calls/s for the profile (default: the highest passing)")
    ap.add_argument("--profile-seconds", type=float, default=20.0)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    modes_json = os.path.join(args.out, f"bench_calls-{stamp}-steps.json")
    systems = ["ft-t1"] + ([f"ft-t{args.threads}"] if args.threads > 1 else [])
    code = bench_modes.main(["--skip", "register,memory", "--systems", ",".join(systems),
                             "--call-rates", args.rates, "--step", str(args.step), "--warmup", str(args.warmup),
                             "--repeat", str(args.repeat), "--call-mix", args.call_mix, "--hold", str(args.hold),
                             "--fixed-call-rate", args.fixed_call_rate, "--out", args.out, "--json", modes_json])
    with open(modes_json) as f:
        steps = json.load(f)
    summary = steps["summary"]
    result = {"benchmark": "bench_calls", "date": stamp, "environment": steps["environment"],
              "steps_file": os.path.relpath(modes_json, ROOT), "systems": systems,
              "highest_passing_calls_per_s": {s: best_rate(summary, s) for s in systems},
              "calls_summary": summary.get("calls"), "profile": None}
    print("highest passing calls/s: " + ", ".join(f"{s} {r}" for s, r in
                                                  result["highest_passing_calls_per_s"].items()))
    if not args.skip_profile:
        rate = args.profile_rate or best_rate(summary, systems[-1]) or float(args.rates.split(",")[0])
        before = set(glob.glob(os.path.join(args.out, "profile-*.json")))
        prof = subprocess.run([sys.executable, "-m", "perf.harness", "profile", "--system",
                               f"ftsip:t{args.threads}", "--load", f"calls:{rate:g}",
                               "--seconds", str(args.profile_seconds), "--out", args.out], cwd=ROOT)
        made = sorted(set(glob.glob(os.path.join(args.out, "profile-*.json"))) - before)
        if prof.returncode == 0 and made:
            with open(made[-1]) as f:
                p = json.load(f)
            result["profile"] = {"file": os.path.relpath(made[-1], ROOT), "rate": rate, "profiler": p["profiler"],
                                 "samples": p["samples"], "top_self": p["top_self"], "top_total": p["top_total"],
                                 "flamegraph": p["flamegraph"]}
        else:
            print(f"profile failed (exit {prof.returncode})", file=sys.stderr)
            code = code or 1
    path = os.path.join(args.out, f"bench_calls-{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
