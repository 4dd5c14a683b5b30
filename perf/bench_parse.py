"""Benchmark the two SIP parser twins: messages/s of ``parse_message`` alone, and of parse + what a proxy reads +
serializing the forwarded message with a Via added.

    .venv/bin/python perf/bench_parse.py                 # 1 thread, both twins, three messages
    .venv/bin/python perf/bench_parse.py --threads 2     # 2 threads each parsing (free-threaded scaling)
    .venv/bin/python perf/bench_parse.py --quick         # shorter runs

Workloads (per message):
- ``parse``: ``parse_message(data)`` (which already reads the Vias, From, To, CSeq and Max-Forwards, as the contract
  requires);
- ``proxy``: parse, then for a request: top Via branch, From/To tags, CSeq, Call-ID, Request-URI host,
  Max-Forwards, Route set, (REGISTER: Authorization params, Contacts, Expires), and
  ``edit().push_via(...).set_max_forwards(mf - 1).to_bytes()``; for a response: top Via branch, CSeq, Call-ID, tags
  and ``edit().pop_via().to_bytes()``.

Prints a table (rich) and writes JSON to perf/results/ (interpreter, free-threaded flag, git revision, machine,
date, and every number). Each rate is the best of ``--rounds`` timed rounds of about ``--seconds`` each (the best
round is the least disturbed one on a shared machine; the median is recorded too); "CPU us/msg" is the least CPU
time per message over the rounds (``time.thread_time``; with ``--threads`` the process CPU time over all
messages), which a busy machine disturbs much less than wall-clock rates.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from ftsip.sip import backend  # noqa: E402
from perf import benchenv  # noqa: E402

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy.biloxi.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, NOTIFY, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: ftsip-bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 142\r\n"
    b"\r\n"
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\nc=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
REGISTER = (
    b"REGISTER sip:atlanta.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Alice <sip:alice@atlanta.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1827 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.101:5060>\r\n"
    b"Authorization: Digest username=\"alice\", realm=\"atlanta.example.com\", "
    b"nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:atlanta.example.com\", "
    b"response=\"dfe56131d1958046689d83306477ecc\", algorithm=MD5\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: ftsip-bench/1.0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
OK200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKproxy1;received=192.0.2.99\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.101\r\n"
    b"Record-Route: <sip:192.0.2.99;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
MESSAGES = {"INVITE": INVITE, "REGISTER+auth": REGISTER, "200 OK": OK200}
NEW_VIA = "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKproxy2"


def proxy_request(parse, data):
    m = parse(data)
    via = m.via
    branch = via.branch
    ftag = m.from_.tag
    ttag = m.to.tag
    cseq = m.cseq
    call_id = m.call_id
    host = m.ruri.host
    mf = m.max_forwards
    routes = m.routes
    if m.method == "REGISTER":
        creds = m.authorization
        if creds:
            creds[0].params.get("response")
        m.contacts
        m.expires
    out = m.edit().push_via(NEW_VIA).set_max_forwards((mf if mf is not None else 70) - 1).to_bytes()
    return branch, ftag, ttag, cseq, call_id, host, routes, out


def proxy_response(parse, data):
    m = parse(data)
    branch = m.via.branch
    cseq = m.cseq
    call_id = m.call_id
    tags = m.from_.tag, m.to.tag
    out = m.edit().pop_via().to_bytes()
    return branch, cseq, call_id, tags, out


def workload(kind, twin, data):
    parse = twin.parse_message
    if kind == "parse":
        return lambda: parse(data)
    is_request = not data.startswith(b"SIP/")
    fn = proxy_request if is_request else proxy_response
    return lambda: fn(parse, data)


def run_loop(fn, n):
    for _ in range(n):
        fn()


def calibrate(fn, seconds):
    """An iteration count that takes about ``seconds``."""
    n = 64
    while True:
        t = time.perf_counter()
        run_loop(fn, n)
        dt = time.perf_counter() - t
        if dt > 0.05:
            return max(1, int(n * seconds / dt))
        n *= 4


def measure(fn, threads, seconds, rounds):
    """Best and median messages/s (wall clock) over ``rounds`` rounds, ``threads`` threads each running the loop,
    and the least CPU time per message (seconds; all threads' CPU time over all their messages)."""
    n = calibrate(fn, seconds / max(1, threads) if threads > 1 else seconds)
    rates = []
    cpu = []
    for _ in range(rounds):
        if threads <= 1:
            c = time.thread_time()
            t = time.perf_counter()
            run_loop(fn, n)
            dt = time.perf_counter() - t
            cpu.append((time.thread_time() - c) / n)
            rates.append(n / dt)
        else:
            barrier = threading.Barrier(threads + 1)

            def body():
                barrier.wait()
                run_loop(fn, n)

            ts = [threading.Thread(target=body) for _ in range(threads)]
            for th in ts:
                th.start()
            c = time.process_time()
            barrier.wait()
            t = time.perf_counter()
            for th in ts:
                th.join()
            dt = time.perf_counter() - t
            cpu.append((time.process_time() - c) / (n * threads))
            rates.append(n * threads / dt)
    return max(rates), statistics.median(rates), min(cpu)


def environment():
    return benchenv.environment(paths=(), default_twin=backend.NAME)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="threads each running the loop (default 1)")
    ap.add_argument("--seconds", type=float, default=1.0, help="about how long one timed round takes")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per figure (the best is reported)")
    ap.add_argument("--quick", action="store_true", help="--seconds 0.3 --rounds 3")
    ap.add_argument("--twin", choices=["both", "pure", "cython"], default="both")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the JSON result")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 0.3, 3

    twins = []
    if args.twin in ("both", "pure"):
        twins.append(("pure", backend.PURE))
    if args.twin in ("both", "cython"):
        if backend.FAST is None:
            print("the Cython twin is not built (python setup.py build_ext --inplace) or FTSIP_PURE=1",
                  file=sys.stderr)
            if args.twin == "cython":
                return 2
        else:
            twins.append(("cython", backend.FAST))

    env = environment()
    results = []
    for msg_name, data in MESSAGES.items():
        for kind in ("parse", "proxy"):
            row = {"message": msg_name, "workload": kind, "threads": args.threads}
            for twin_name, twin in twins:
                fn = workload(kind, twin, data)
                fn()   # warm up, and fail early if it does not parse
                best, median, cpu = measure(fn, args.threads, args.seconds, args.rounds)
                # us_per_msg: 1e6 / the best aggregate rate (with N threads: wall time per message);
                # cpu_us_per_msg: CPU time per message (least over the rounds; robust on a busy machine)
                row[twin_name] = {"msgs_per_s": round(best), "median_msgs_per_s": round(median),
                                  "us_per_msg": round(1e6 / best, 3), "cpu_us_per_msg": round(cpu * 1e6, 3)}
            if "pure" in row and "cython" in row:
                row["speedup"] = round(row["cython"]["msgs_per_s"] / row["pure"]["msgs_per_s"], 2)
                row["cpu_speedup"] = round(row["pure"]["cpu_us_per_msg"] / row["cython"]["cpu_us_per_msg"], 2)
            results.append(row)
            print(f"  {msg_name:14} {kind:6} " + "  ".join(
                f"{t}: {row[t]['us_per_msg']:8.2f} us (cpu {row[t]['cpu_us_per_msg']:.2f})" for t, _ in twins
                if t in row), file=sys.stderr)

    report(env, args, results, twins)
    if not args.no_json:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        tag = "t" if env["free_threaded_build"] else ""
        path = os.path.join(args.out, f"bench_parse-py{sys.version_info[0]}{sys.version_info[1]}{tag}"
                                      f"-{args.threads}thr-{stamp}.json")
        with open(path, "w") as f:
            json.dump({"benchmark": "bench_parse", "environment": env,
                       "settings": {"threads": args.threads, "seconds": args.seconds, "rounds": args.rounds},
                       "results": results}, f, indent=2)
        print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


def report(env, args, results, twins):
    title = (f"SIP parser twins - Python {env['python']} "
             f"({'free-threaded' if env['free_threaded_build'] else 'GIL build'}, "
             f"GIL {'enabled' if env['gil_enabled'] else 'disabled'}), {args.threads} thread(s), "
             f"{env['git_revision']}")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for r in results:
            print(r)
        return
    table = Table(title=title)
    table.add_column("message")
    table.add_column("workload")
    for t, _ in twins:
        table.add_column(f"{t} msgs/s", justify="right")
        table.add_column(f"{t} CPU us/msg", justify="right")
    if len(twins) == 2:
        table.add_column("speed-up (rate / CPU)", justify="right")
    for r in results:
        cells = [r["message"], r["workload"]]
        for t, _ in twins:
            cells += [f"{r[t]['msgs_per_s']:,}", f"{r[t]['cpu_us_per_msg']:.2f}"]
        if len(twins) == 2:
            cells.append(f"{r['speedup']:.1f}x / {r['cpu_speedup']:.1f}x")
        table.add_row(*cells)
    Console(width=None if sys.stdout.isatty() else 140).print(table)


if __name__ == "__main__":
    sys.exit(main())
