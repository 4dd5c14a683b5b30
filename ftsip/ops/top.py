"""``ftsip top``: a live console over the metrics endpoint's /stats.json (rich), readable at 80 columns.

Every ``interval`` seconds it reads /stats.json and shows rates computed between the last two samples: per-worker
load (busy % of one core, datagrams/s), requests by method, responses by code (sent by ftsip and received from
peers), failures and drops, table sizes (transactions, AORs, bindings), the collector's backlog and lag, UDP
receive-buffer drops, RSS and open files. ``--once`` prints one snapshot with rates averaged since start, and exits.
"""
import sys
import time
import urllib.error
import urllib.request

from ftsip.ops import jsonio

# rich is imported where the screen is drawn, so `ftsip serve` (whose parser knows this command) never loads it

DEFAULT_URL = "http://127.0.0.1:9060"
BAR = 16


class FetchError(Exception):
    pass


def fetch(url, timeout=3.0):
    """GET ``url``/stats.json as a dict; FetchError with a readable reason."""
    full = url.rstrip("/") + "/stats.json"
    try:
        with urllib.request.urlopen(full, timeout=timeout) as r:
            return jsonio.loads(r.read())
    except urllib.error.HTTPError as e:
        raise FetchError(f"{full}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchError(f"cannot reach {full}: {e.reason} (is ftsip running with [metrics] listen set to "
                         "this address?)") from None
    except (OSError, ValueError) as e:
        raise FetchError(f"{full}: {e}") from None


class Rates:
    """Per-second differences between two samples (or averages since start when there is one sample)."""

    def __init__(self, cur, prev=None):
        self.cur = cur
        if prev is not None and (prev.get("uptime", 0) > cur.get("uptime", 0) or prev["time"] >= cur["time"]):
            prev = None          # the server restarted, or the same sample twice
        self.prev = prev
        self.dt = (cur["time"] - prev["time"]) if prev else max(cur.get("uptime") or 0.0, 1e-9)
        self.live = prev is not None

    def counter(self, name):
        now = self.cur["counters"].get(name, 0)
        before = self.prev["counters"].get(name, 0) if self.prev else 0
        return max(0, now - before) / self.dt

    def worker(self, wid, key):
        now = _worker(self.cur, wid).get(key) or 0
        before = (_worker(self.prev, wid).get(key) or 0) if self.prev else 0
        return max(0, now - before) / self.dt

    def value(self, get, since_start=True):
        """The rate of a counter read by ``get(sample)``; None without two samples when the counter did not start
        with the server (``since_start`` false: host-wide counters)."""
        now = get(self.cur)
        if now is None or (not since_start and self.prev is None):
            return None
        before = get(self.prev) if self.prev else 0
        return max(0, now - (before or 0)) / self.dt


def _worker(sample, wid):
    for w in sample.get("workers") or ():
        if w.get("wid") == wid:
            return w
    return {}


def _fmt_rate(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _fmt_int(v):
    return "-" if v is None else f"{v:,}"


def _fmt_bytes(v):
    if v is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(v)


def _fmt_duration(s):
    s = int(s or 0)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s"


def _bar(frac):
    from rich.text import Text
    frac = 0.0 if frac is None else min(1.0, max(0.0, frac))
    n = int(round(frac * BAR))
    color = "green" if frac < 0.6 else "yellow" if frac < 0.85 else "red"
    return Text("█" * n, style=color) + Text("·" * (BAR - n), style="dim")


def _table(title, *cols):
    from rich import box
    from rich.table import Table
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1),
              pad_edge=False, expand=False)
    for c in cols:
        name, _, just = c.partition(":")
        t.add_column(name, justify="right" if just == "r" else "left", no_wrap=True)
    return t


def _by_prefix(counters, prefix):
    return sorted((k[len(prefix):], k) for k in counters if k.startswith(prefix))


def _code_key(code):
    return (0, int(code)) if code.isdigit() else (1, code)


def render(cur, prev=None, url=""):
    """The whole screen for one sample (and the one before it, for rates)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    r = Rates(cur, prev)
    counters = cur.get("counters") or {}
    src = cur.get("sources") or {}
    loc = src.get("location") or {}
    txn = src.get("transactions") or {}
    proc = cur.get("process") or {}
    udp = cur.get("udp") or {}
    span = "per second, last sample" if r.live else "per second, average since start"

    head = Text()
    head.append("ftsip ", style="bold cyan")
    head.append(f"{url}  " if url else "")
    head.append(f"{cur.get('mode', '?')}  up {_fmt_duration(cur.get('uptime'))}  ")
    cpu = r.value(lambda s: (s.get("process") or {}).get("cpu_seconds"))
    head.append(f"cpu {cpu * 100:.0f}%  " if cpu is not None else "")
    head.append(f"rss {_fmt_bytes(proc.get('rss_bytes'))}  fds {_fmt_int(proc.get('open_fds'))}")
    rcv = udp.get("rcvbuf_errors")
    rcv_rate = r.value(lambda s: (s.get("udp") or {}).get("rcvbuf_errors"), since_start=False)
    line2 = Text(f"({span})  ", style="dim")
    line2.append("UDP RcvbufErrors ")
    line2.append(f"{_fmt_int(rcv)}", style="red" if rcv_rate else "")
    line2.append(f" (+{_fmt_rate(rcv_rate)}/s)" if rcv_rate is not None else "")

    wlist = cur.get("workers") or ()
    procs = any(w.get("rss_bytes") for w in wlist)       # processes mode: each worker has its own RSS
    workers = _table("Workers (busy: share of one core)", "worker", "busy:r", "load", "dgram/s:r", "datagrams:r",
                     *(("rss:r",) if procs else ()))
    for w in wlist:
        wid = w.get("wid")
        busy = r.worker(wid, "busy")
        name = str(wid) if w.get("alive", True) else f"{wid} (down)"
        row = [name, f"{busy * 100:5.1f}%", _bar(busy), _fmt_rate(r.worker(wid, "datagrams")),
               _fmt_int(w.get("datagrams"))]
        if procs:
            row.append(_fmt_bytes(w.get("rss_bytes")))
        workers.add_row(*row)

    req = _table("Requests in", "method", "/s:r", "total:r")
    for method, k in _by_prefix(counters, "rx.request."):
        req.add_row(method, _fmt_rate(r.counter(k)), _fmt_int(counters[k]))
    resp = _table("Responses", "code", "sent/s:r", "recv/s:r", "sent:r")
    codes = {c for c, _ in _by_prefix(counters, "tx.response.")} | {c for c, _ in _by_prefix(counters, "rx.response.")}
    for code in sorted(codes, key=_code_key):
        tx, rx = "tx.response." + code, "rx.response." + code
        style = "red" if code[:1] in ("5", "6") else "yellow" if code[:1] == "4" and code not in ("401", "407") \
            else ""
        resp.add_row(Text(code, style=style), _fmt_rate(r.counter(tx)), _fmt_rate(r.counter(rx)),
                     _fmt_int(counters.get(tx, 0)))
    top_row = Table.grid(padding=(0, 3))
    top_row.add_row(req, resp)

    fails = _table("Failures and drops", "what", "/s:r", "total:r")
    names = [k for prefix in ("auth.fail.", "rx.bad.", "drops.", "errors.") for _, k in _by_prefix(counters, prefix)]
    if "auth.throttled" in counters:
        names.insert(0, "auth.throttled")
    for k in names:
        rate = r.counter(k)
        if k == "auth.fail.no-credentials":      # the first request of a call or registration: the challenge
            label = Text("challenged (no creds)", style="dim")
        else:
            label = Text(k, style="red" if rate else "")
        fails.add_row(label, _fmt_rate(rate), _fmt_int(counters[k]))
    if not fails.row_count:
        fails.add_row(Text("none", style="green"), "", "")

    state = _table("State", "table", "value:r")
    state.add_row("transactions", _fmt_int(txn.get("active")))
    state.add_row("AORs", _fmt_int(loc.get("aors")))
    state.add_row("bindings", _fmt_int(loc.get("bindings")))
    state.add_row("GC backlog", _fmt_int(loc.get("gc_backlog")))
    if loc.get("gc_lag_seconds") is not None:
        state.add_row("GC lag", f"{loc['gc_lag_seconds']:.1f} s")
    state.add_row("GC expired/s", _fmt_rate(r.value(lambda s: ((s.get("sources") or {}).get("location") or {})
                                                   .get("gc_expired"))))
    guard = src.get("guard")
    if isinstance(guard, dict) and guard:
        bans, blocks = guard.get("pike_bans_active"), guard.get("auth_blocks_active")
        state.add_row("flood bans", Text(_fmt_int(bans), style="red" if bans else ""))
        state.add_row("auth blocks", Text(_fmt_int(blocks), style="red" if blocks else ""))
    pers = src.get("persistence")
    if isinstance(pers, dict):
        state.add_row("persist pending", _fmt_int(pers.get("pending")))
        if pers.get("errors"):
            state.add_row(Text("persist errors", style="red"), _fmt_int(pers.get("errors")))
    bottom = Table.grid(padding=(0, 3))
    bottom.add_row(fails, state)
    return Group(head, line2, workers, top_row, bottom)


def run(url=DEFAULT_URL, interval=1.0, once=False, console=None):
    """The command. Returns the exit code."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text
    console = console or Console()
    if once:
        try:
            cur = fetch(url)
        except FetchError as e:
            print(f"ftsip top: {e}", file=sys.stderr)
            return 1
        console.print(render(cur, None, url))
        return 0
    prev = None
    try:
        with Live(console=console, refresh_per_second=4, screen=False, auto_refresh=False) as live:
            while True:
                t0 = time.monotonic()
                try:
                    cur = fetch(url)
                    live.update(render(cur, prev, url), refresh=True)
                    prev = cur
                except FetchError as e:
                    live.update(Text(f"ftsip top: {e}; retrying every {interval:g} s (Ctrl-C quits)",
                                     style="red"), refresh=True)
                    prev = None
                time.sleep(max(0.05, interval - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        return 0


def add_parser(sub):
    p = sub.add_parser("top", help="live console over the metrics endpoint ([metrics] listen)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the metrics endpoint (default {DEFAULT_URL})")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)")
    p.add_argument("--once", action="store_true", help="print one snapshot (rates averaged since start) and exit")
    p.set_defaults(func=lambda args: run(args.url, args.interval, args.once))
    return p
