"""The metrics endpoint: Prometheus text, the same data as JSON, and the bindings of an AOR, over stdlib HTTP.

``MetricsServer(registry, host, port, sources)`` runs a ``ThreadingHTTPServer`` in its own daemon thread, off the
SIP path: nothing here is called by a worker, and a scrape only reads (per-worker counters are copied and summed by
``Registry.snapshot()``, the tables report their own sizes).

Endpoints
- ``/metrics``   Prometheus text exposition format 0.0.4 (every family has HELP and TYPE).
- ``/stats.json`` the same data as one JSON document (what ``ftsip top`` reads).
- ``/locations?aor=user@domain`` the bindings of one AOR (404 when it has none); without ``aor``: the number of AORs
  and bindings and the first ``limit`` AORs (default 100, at most 1000).
- ``/healthz``  "ok".
- ``/debug/heap?limit=40`` GC-tracked objects by type (walks the whole heap: for soak runs and leak hunting, not
  for a scraper).

``sources`` maps a name to a callable returning a dict of numbers (nested dicts allowed), e.g. ``{"location":
app.location.stats, "transactions": lambda: {"active": len(app.txns)}}``; the special entry ``"locations"`` is the
location service itself (``record(aor)``, ``aors()``, ``bindings()``, ``table.keys()``), used by ``/locations``.
``start_metrics(cfg, registry, app)`` wires all of that from an ``App``.

Process mode: every worker process has its own ``Registry``. Each worker writes its snapshot once a second into
``<dir>/worker-<wid>-<pid>.json`` (atomic rename, tmpfs: ``/dev/shm`` when there is one), a daemon thread of its own
(``start_worker_snapshots``); the supervisor serves ``ProcessAggregate``, which merges the files on read. Counters
are summed over every file, also those of workers that died (their last snapshot stays), so totals do not go back
when a worker is restarted (at most its last second is lost); gauges (transactions active, RSS) come from live
workers only. No extra ports, no pipes to drain, nothing on the SIP path of a worker: see ``start_process_metrics``.
"""
import glob
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ftsip.config import split_hostport
from ftsip.ops import jsonio, pygc

log = logging.getLogger("ftsip")

DEFAULT_PORT = 9060
JSON_VERSION = 1
LOCATIONS_DEFAULT = 100
LOCATIONS_MAX = 1000
PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _process_start_time(pid="self"):
    """When a process started (seconds since the epoch), from /proc; now when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


_START = _process_start_time()

# counter prefix -> (family, label, help); the rest of the counter name is the label value
PREFIX_FAMILIES = (
    ("rx.request.", "ftsip_requests_received_total", "method", "SIP requests received, by method"),
    ("rx.response.", "ftsip_responses_received_total", "code", "SIP responses received, by status code"),
    ("tx.response.", "ftsip_responses_sent_total", "code", "SIP responses sent by ftsip itself (not relayed), "
                                                           "by status code"),
    ("rx.bad.", "ftsip_bad_requests_total", "status", "malformed requests answered with an error, by status"),
    ("drops.", "ftsip_drops_total", "reason", "datagrams or messages dropped, by reason"),
    ("auth.fail.", "ftsip_auth_failures_total", "reason", "failed digest authentications, by reason"),
    ("proxy.", "ftsip_proxy_events_total", "event", "proxy events (calls, branches, cancels, final codes...)"),
    ("errors.", "ftsip_errors_total", "kind", "errors caught by the workers (recv, core, tick)"),
    ("guard.", "ftsip_guard_events_total", "event", "protection events (shed: new requests refused under "
                                                    "overload)"),
)
# counter name -> (family, help)
NAMED_COUNTERS = {
    "rx.keepalive": ("ftsip_keepalives_received_total", "CRLF keep-alives received"),
    "rx.absorbed": ("ftsip_retransmissions_absorbed_total", "requests absorbed by an existing transaction"),
    "rx.ack_absorbed": ("ftsip_acks_absorbed_total", "ACKs of non-2xx final responses absorbed"),
    "auth.throttled": ("ftsip_auth_throttled_total", "authentications refused by the brute-force throttle"),
}
OTHER_FAMILY = ("ftsip_other_events_total", "name", "other counters, by their internal name")


# ---- what a scrape reads ------------------------------------------------------------------------------------------
def read_proc_status(pid="self"):
    """RSS (bytes), open file descriptors and threads of a process from /proc (None when unavailable)."""
    out = {"rss_bytes": None, "open_fds": None, "threads": None}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_bytes"] = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        out["open_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def process_info():
    info = read_proc_status()
    t = os.times()
    info["pid"] = os.getpid()
    info["cpu_seconds"] = t.user + t.system
    info["start_time"] = _START
    return info


def udp_errors():
    """Host-wide (network namespace) UDP error counters from /proc/net/snmp and /proc/net/snmp6 (IPv4 + IPv6)."""
    out = {"rcvbuf_errors": None, "sndbuf_errors": None, "in_errors": None}
    names = {"RcvbufErrors": "rcvbuf_errors", "SndbufErrors": "sndbuf_errors", "InErrors": "in_errors"}
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        if len(rows) >= 2:
            for k, v in zip(rows[0][1:], rows[1][1:]):
                if k in names:
                    out[names[k]] = int(v)
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/net/snmp6") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0].startswith("Udp6") and parts[0][4:] in names:
                    key = names[parts[0][4:]]
                    out[key] = (out[key] or 0) + int(parts[1])
    except (OSError, ValueError):
        pass
    return out


def gc_lag(location, now):
    """Seconds since the oldest due, not yet collected entry of the incremental collector's queues (0 when
    none is due). Reads each worker's queue through a copy of its dict (dict.copy is atomic on 3.13t)."""
    lag = 0.0
    if getattr(location, "gc", None) != "incremental":
        return None
    limit = int(now)
    for st in list(getattr(location, "locals", ())):
        q = st.queue
        if not q.size:
            continue
        try:
            due = [sec for sec, b in q.buckets.copy().items() if sec <= limit and b]
        except RuntimeError:
            continue
        if due:
            lag = max(lag, now - min(due))
    return lag


def location_source(location):
    """``location.stats()`` plus the collector's lag."""
    def stats():
        d = location.stats()
        lag = gc_lag(location, time.time())
        if lag is not None:
            d["gc_lag_seconds"] = lag
        return d
    return stats


def app_sources(app):
    """The sources an App offers: its location service (stats and /locations), its transactions, its guard."""
    src = {
        "location": location_source(app.location),
        "transactions": lambda: {"active": len(app.txns), "created": app.txns.created},
        "locations": app.location,
        "pygc": pygc.monitor().stats,
    }
    guard_stats = getattr(app.guard, "stats", None)
    if guard_stats is not None:
        src["guard"] = guard_stats
    return src


def collect(registry, sources, mode="threads"):
    """Everything one scrape reports, as a JSON-ready dict (``/stats.json``; ``/metrics`` renders the same)."""
    now = time.time()
    snap = registry.snapshot()
    out = {
        "version": JSON_VERSION,
        "time": now,
        "uptime": max(0.0, now - _START),
        "mode": mode,
        "process": process_info(),
        "udp": udp_errors(),
        "counters": snap.get("counters", {}),
        "workers": snap.get("workers", []),
        "sources": {},
    }
    merged = dict(snap.get("gauges") or {})      # Registry.gauge(name, fn): numbers or dicts (persistence)
    for name, fn in (sources or {}).items():
        if name == "locations" or not callable(fn):
            continue
        merged[name] = fn
    for name, v in merged.items():
        if callable(v):
            try:
                v = v()
            except Exception as e:        # a broken source must not break the scrape
                log.debug("metrics source %s failed: %r", name, e)
                v = None
        out["sources"][name] = v
    return out


# ---- Prometheus text format 0.0.4 ---------------------------------------------------------------------------------
def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v):
    if v is True:
        return "1"
    if v is False:
        return "0"
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _sanitize(name):
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name.lower())
    return out if out and not out[0].isdigit() else "_" + out


class Exposition:
    """Families in insertion order; a family is emitted once with its HELP and TYPE; a series once."""

    def __init__(self):
        self.families = {}     # name -> [type, help, {labels_tuple: value}]

    def add(self, name, kind, help_, value, labels=()):
        if value is None or isinstance(value, str):
            return
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = [kind, help_, {}]
        elif fam[0] != kind:
            return                  # a name already taken by a family of another type: never mix them
        key = tuple(labels)
        series = fam[2]
        series[key] = series.get(key, 0) + value if kind == "counter" and key in series else value

    def render(self):
        lines = []
        for name, (kind, help_, series) in self.families.items():
            lines.append(f"# HELP {name} {_esc(help_)}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in series.items():
                if labels:
                    lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{lab}}} {_num(value)}")
                else:
                    lines.append(f"{name} {_num(value)}")
        return "\n".join(lines) + "\n"


def counter_series(name):
    """(family, help, labels) for an internal counter name."""
    named = NAMED_COUNTERS.get(name)
    if named is not None:
        return named[0], named[1], ()
    for prefix, family, label, help_ in PREFIX_FAMILIES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return family, help_, ((label, name[len(prefix):]),)
    return OTHER_FAMILY[0], OTHER_FAMILY[2], ((OTHER_FAMILY[1], name),)


# source name -> key -> (metric, type, help); other numeric leaves become gauges ftsip_<source>_<path>
KNOWN_SOURCE_KEYS = {
    "location": {
        "aors": ("ftsip_aors", "gauge", "addresses-of-record in the location table"),
        "bindings": ("ftsip_bindings", "gauge", "contact bindings in the location table"),
        "gc_examined": ("ftsip_gc_examined_total", "counter", "AORs examined by the expiry collector"),
        "gc_expired": ("ftsip_gc_expired_total", "counter", "bindings removed by the expiry collector"),
        "gc_backlog": ("ftsip_gc_backlog", "gauge", "entries waiting in the expiry queues (due or not)"),
        "gc_lag_seconds": ("ftsip_gc_lag_seconds", "gauge", "age of the oldest due entry the incremental "
                                                            "collector has not examined yet"),
    },
    "transactions": {
        "active": ("ftsip_transactions_active", "gauge", "SIP transactions in the transaction table"),
        "created": ("ftsip_transactions_created_total", "counter", "SIP transactions created (approximate)"),
    },
    "guard": {
        "pike_bans_active": ("ftsip_pike_bans_active", "gauge", "source addresses banned for flooding now"),
        "pike_bans_issued": ("ftsip_pike_bans_total", "counter", "flood bans issued"),
        "pike_sources": ("ftsip_pike_tracked_sources", "gauge", "source addresses whose request rate is tracked"),
        "auth_blocks_active": ("ftsip_auth_blocks_active", "gauge", "source/user pairs refused for failed "
                                                                    "authentications now"),
        "auth_blocks_issued": ("ftsip_auth_blocks_total", "counter", "authentication blocks issued"),
        "auth_fail_sources": ("ftsip_auth_fail_tracked_sources", "gauge", "sources with recent failed "
                                                                          "authentications"),
        "auth_fail_users": ("ftsip_auth_fail_tracked_users", "gauge", "users with recent failed authentications"),
        "evicted": ("ftsip_guard_evicted_total", "counter", "guard entries evicted to bound its memory"),
    },
    "pygc": {
        "collections": ("ftsip_pygc_collections_total", "counter", "collections of the interpreter's cyclic "
                                                                   "garbage collector (each stops every worker)"),
        "collected": ("ftsip_pygc_collected_total", "counter", "objects freed by the cyclic garbage collector"),
        "uncollectable": ("ftsip_pygc_uncollectable_total", "counter", "unreachable objects the cyclic garbage "
                                                                       "collector could not free"),
        "pause_seconds_total": ("ftsip_pygc_pause_seconds_total", "counter", "time spent in cyclic garbage "
                                                                            "collections"),
        "pause_seconds_max": ("ftsip_pygc_pause_seconds_max", "gauge", "longest cyclic garbage collection so far"),
        "slow_pauses": ("ftsip_pygc_slow_pauses_total", "counter", "cyclic garbage collections longer than "
                                                                   f"{pygc.SLOW_PAUSE * 1000:g} ms (each one is "
                                                                   "logged)"),
        "pending": ("ftsip_pygc_pending_objects", "gauge", "net GC-tracked allocations since the last collection"),
    },
    "persistence": {
        "flushes": ("ftsip_persistence_flushes_total", "counter", "write-behind flushes to the registration store"),
        "rows_written": ("ftsip_persistence_rows_written_total", "counter", "rows written to the registration "
                                                                            "store"),
        "upserts": ("ftsip_persistence_upserts_total", "counter", "AOR records saved"),
        "deletes": ("ftsip_persistence_deletes_total", "counter", "AOR records deleted"),
        "errors": ("ftsip_persistence_errors_total", "counter", "failed flushes"),
        "pending": ("ftsip_persistence_pending", "gauge", "changed AORs not yet written"),
        "lag": ("ftsip_persistence_lag_seconds", "gauge", "age of the oldest change not yet durable"),
        "last_flush_duration": ("ftsip_persistence_last_flush_seconds", "gauge", "duration of the last flush"),
        "max_flush_duration": ("ftsip_persistence_max_flush_seconds", "gauge", "longest flush so far"),
        "flushing_for": ("ftsip_persistence_flushing_seconds", "gauge", "time the flush in progress has taken"),
    },
}


def _leaves(d, path=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, path + (str(k),))
        elif isinstance(v, (int, float)) and not isinstance(v, str):
            yield path + (str(k),), v


def render_prometheus(data):
    ex = Exposition()
    for name, value in sorted(data["counters"].items()):
        family, help_, labels = counter_series(name)
        ex.add(family, "counter", help_, value, labels)
    for w in data["workers"]:
        wid = (("worker", str(w["wid"])),)
        ex.add("ftsip_worker_busy_seconds_total", "counter", "seconds a worker spent handling datagrams and timers",
               w.get("busy"), wid)
        ex.add("ftsip_worker_datagrams_total", "counter", "datagrams a worker received", w.get("datagrams"), wid)
        ex.add("ftsip_worker_resident_memory_bytes", "gauge", "resident memory of a worker process (processes "
               "mode)", w.get("rss_bytes"), wid)
        ex.add("ftsip_worker_open_fds", "gauge", "open file descriptors of a worker process (processes mode)",
               w.get("open_fds"), wid)
    for src, d in data["sources"].items():
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            ex.add(f"ftsip_{_sanitize(src)}", "gauge", f"{src}", d)
            continue
        if not isinstance(d, dict):
            continue
        known = KNOWN_SOURCE_KEYS.get(src, {})
        for path, v in _leaves(d):
            spec = known.get(path[0]) if len(path) == 1 else None
            if spec is not None:
                ex.add(spec[0], spec[1], spec[2], v)
            else:
                name = f"ftsip_{_sanitize(src)}_" + "_".join(_sanitize(p).strip("_") for p in path)
                if name not in ex.families:      # never two families under one name
                    ex.add(name, "gauge", f"{src}: {'.'.join(path)}", v)
    udp = data["udp"]
    ex.add("ftsip_udp_rcvbuf_errors_total", "counter", "UDP datagrams the kernel dropped for a full receive buffer "
           "(RcvbufErrors, /proc/net/snmp + snmp6; whole host/namespace)", udp.get("rcvbuf_errors"))
    ex.add("ftsip_udp_sndbuf_errors_total", "counter", "UDP send buffer errors (SndbufErrors; whole host/namespace)",
           udp.get("sndbuf_errors"))
    ex.add("ftsip_udp_in_errors_total", "counter", "UDP InErrors (whole host/namespace)", udp.get("in_errors"))
    p = data["process"]
    ex.add("process_resident_memory_bytes", "gauge", "resident memory size in bytes", p.get("rss_bytes"))
    ex.add("process_open_fds", "gauge", "number of open file descriptors", p.get("open_fds"))
    ex.add("process_cpu_seconds_total", "counter", "user and system CPU time in seconds", p.get("cpu_seconds"))
    ex.add("process_start_time_seconds", "gauge", "start time of the process since the epoch in seconds",
           p.get("start_time"))
    ex.add("process_threads", "gauge", "threads of the process", p.get("threads"))
    ex.add("ftsip_uptime_seconds", "gauge", "seconds since ftsip started", data["uptime"])
    ex.add("ftsip_info", "gauge", "constant 1, labelled with the runtime mode", 1, (("mode", data["mode"]),))
    return ex.render()


# ---- /debug/heap: what is alive (for leak hunting in soak runs; costs a walk of every GC-tracked object) --------
def heap_census(limit=40, largest=10):
    """The number of GC-tracked objects, the ``limit`` most common types (module.qualname -> count), the
    ``largest`` containers by length (a growing cache is one object whose length grows), and the allocator's
    count of allocated memory blocks (``sys.getallocatedblocks``): blocks flat while RSS grows means the
    allocator keeps freed memory, not a leak of objects."""
    import gc
    import heapq
    import sys
    from collections import Counter
    counts = Counter()
    big = []
    objs = gc.get_objects()
    total = len(objs)
    seen = set()
    kinds = (dict, list, set)
    for o in objs:
        counts[type(o)] += 1
        # containers of atomic values (a str -> str cache) are not GC-tracked: look at what objects refer to
        for c in (o, *gc.get_referents(o)) if type(o) in kinds or largest else ():
            if type(c) in kinds and len(c) > 1000 and id(c) not in seen:
                seen.add(id(c))
                item = (len(c), id(c), c)
                if len(big) < largest:
                    heapq.heappush(big, item)
                elif item[0] > big[0][0]:
                    heapq.heapreplace(big, item)
    del objs, seen
    types = {f"{t.__module__}.{t.__qualname__}": n for t, n in counts.most_common(limit)}
    containers = []
    for n, ident, o in sorted(big, reverse=True):
        try:
            sample = next(iter(o.items() if isinstance(o, dict) else o), None)
        except RuntimeError:            # changed size while we looked: another thread owns it
            sample = None
        containers.append({"id": ident, "type": type(o).__name__, "len": n, "sample": repr(sample)[:120]})
    del big
    return {"objects": total, "types": types, "largest": containers, "gc_counts": list(gc.get_count()),
            "allocated_blocks": sys.getallocatedblocks()}


# ---- /locations -----------------------------------------------------------------------------------------------------
def normalize_aor(aor):
    """'sip:Alice@Example.COM' -> 'Alice@example.com' (the registrar's key: user as is, host lower-case)."""
    a = aor.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    for scheme in ("sip:", "sips:"):
        if a.lower().startswith(scheme):
            a = a[len(scheme):]
            break
    a = a.split(";", 1)[0]
    user, at, host = a.rpartition("@")
    return f"{user}@{host.lower()}" if at else a.lower()


def binding_json(b, now):
    d = {}
    for k in ("contact", "q", "call_id", "cseq", "received", "transport", "path", "instance", "reg_id",
              "user_agent", "registered_at", "expires_at"):
        v = getattr(b, k, None)
        d[k] = list(v) if isinstance(v, tuple) else v
    d["expires_in"] = b.remaining(now) if hasattr(b, "remaining") else None
    return d


def locations_json(location, aor=None, limit=LOCATIONS_DEFAULT):
    """(status, dict) for /locations."""
    now = time.time()
    if location is None:
        return 404, {"error": "no location service is wired to the metrics endpoint"}
    if aor:
        key = normalize_aor(aor)
        rec = location.record(key)
        live = () if rec is None else rec.live(now)
        if not live:
            return 404, {"aor": key, "bindings": [], "error": f"no bindings for {key}"}
        return 200, {"aor": key, "bindings": [binding_json(b, now) for b in live]}
    first = []
    if limit > 0:
        for k in location.table.keys():
            first.append(k)
            if len(first) >= limit:
                break
    try:
        bindings = location.bindings()
    except Exception:
        bindings = None
    return 200, {"aors": location.aors(), "bindings": bindings, "limit": limit, "first": first}


# ---- the HTTP server ----------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "ftsip-metrics"
    protocol_version = "HTTP/1.1"
    timeout = 10              # a slow or idle client cannot hold a thread forever

    def do_GET(self):
        ms = self.server.owner
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        try:
            if url.path == "/metrics":
                body, ctype, status = render_prometheus(ms.collect()), PROM_CONTENT_TYPE, 200
            elif url.path in ("/stats.json", "/stats"):
                body, ctype, status = jsonio.dumps(ms.collect()), "application/json", 200
            elif url.path == "/locations":
                try:
                    limit = int(q.get("limit", [LOCATIONS_DEFAULT])[0])
                except ValueError:
                    limit = -1
                if not 0 <= limit <= LOCATIONS_MAX:
                    status, d = 400, {"error": f"limit must be an integer from 0 to {LOCATIONS_MAX}"}
                else:
                    status, d = locations_json(ms.sources.get("locations"), q.get("aor", [""])[0], limit)
                body, ctype = jsonio.dumps(d), "application/json"
            elif url.path == "/debug/heap":
                try:
                    limit = max(1, min(1000, int(q.get("limit", [40])[0])))
                except ValueError:
                    limit = 40
                body, ctype, status = jsonio.dumps(heap_census(limit)), "application/json", 200
            elif url.path == "/healthz":
                body, ctype, status = "ok\n", "text/plain; charset=utf-8", 200
            elif url.path == "/":
                body, ctype, status = ("ftsip metrics: /metrics (Prometheus), /stats.json, /locations?aor=user@domain,"
                                       " /healthz\n", "text/plain; charset=utf-8", 200)
            else:
                body, ctype, status = "not found\n", "text/plain; charset=utf-8", 404
        except Exception as e:
            log.warning("metrics endpoint: %s failed: %r", url.path, e, exc_info=True)
            body, ctype, status = f"internal error: {e!r}\n", "text/plain; charset=utf-8", 500
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_GET

    def log_message(self, fmt, *args):       # no access log on stderr
        log.debug("metrics %s " + fmt, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16


class MetricsServer:
    """The endpoint in its own daemon thread. ``start()`` binds (raises OSError), ``stop()`` shuts it down;
    ``port`` is the bound port (useful with port 0)."""

    def __init__(self, registry, host="127.0.0.1", port=DEFAULT_PORT, sources=None, mode="threads", on_stop=None):
        self.registry = registry
        self.host = host
        self.port = port
        self.sources = dict(sources or {})
        self.mode = mode
        self.on_stop = on_stop
        self.httpd = None
        self.thread = None

    def collect(self):
        return collect(self.registry, self.sources, self.mode)

    def start(self):
        cls = type("_Server", (_HTTPServer,), {"address_family": socket.AF_INET6 if ":" in self.host
                                                else socket.AF_INET})
        self.httpd = cls((self.host, self.port), _Handler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="metrics", daemon=True)
        self.thread.start()
        return self

    @property
    def url(self):
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def stop(self, timeout=2.0):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout)
            self.httpd = None
        if self.on_stop is not None:
            on_stop, self.on_stop = self.on_stop, None
            on_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _listen(cfg):
    listen = cfg.metrics.listen
    if not listen:
        return None
    return split_hostport(listen, DEFAULT_PORT)


def _start(server):
    try:
        server.start()
    except OSError as e:
        log.error("metrics: cannot listen on %s:%s: %s (change [metrics] listen; SIP service goes on without "
                  "metrics)", server.host, server.port, e.strerror or e)
        if server.on_stop is not None:
            server.on_stop()
        return None
    log.info("metrics on %s/metrics (also /stats.json, /locations)", server.url)
    return server


def start_metrics(cfg, registry, app, extra_sources=None):
    """Thread mode: start the endpoint ``[metrics] listen`` asks for; None when it is "" (or cannot bind: logged,
    the SIP service goes on). Stop it with ``.stop()``."""
    hp = _listen(cfg)
    if hp is None:
        return None
    sources = app_sources(app) if app is not None else {}
    sources.update(extra_sources or {})
    return _start(MetricsServer(registry, hp[0], hp[1], sources, mode=cfg.server.mode))


# ---- process mode: per-worker snapshot files merged by the supervisor ---------------------------------------------
def stats_dir(seg):
    """Where the workers of supervisor segment ``seg`` (``ftsip-<pid>``) write their snapshots."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"{seg}-stats")


class SnapshotWriter:
    """In a worker process: writes ``{wid, pid, time, snapshot, sources, process}`` to ``worker-<wid>-<pid>.json``
    every ``interval`` seconds, from a daemon thread (the worker loop is not touched)."""

    def __init__(self, registry, directory, wid, sources=None, interval=1.0):
        self.registry = registry
        self.dir = directory
        self.wid = wid
        self.sources = dict(sources or {})
        self.interval = interval
        self.path = os.path.join(directory, f"worker-{wid}-{os.getpid()}.json")
        self.stopping = threading.Event()
        self.thread = None

    def write(self):
        srcs = {}
        for name, fn in self.sources.items():
            try:
                srcs[name] = fn()
            except Exception:
                srcs[name] = None
        d = {"wid": self.wid, "pid": os.getpid(), "time": time.time(), "snapshot": self.registry.snapshot(),
             "sources": srcs, "process": process_info()}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(jsonio.dumps(d))
        os.replace(tmp, self.path)

    def _run(self):
        while True:
            try:
                os.makedirs(self.dir, exist_ok=True)
                self.write()
            except Exception as e:
                log.debug("metrics snapshot of worker %d failed: %r", self.wid, e)
            if self.stopping.wait(self.interval):
                return

    def start(self):
        self.thread = threading.Thread(target=self._run, name=f"metrics-snapshot-{self.wid}", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        """Stop and write a last snapshot (so a graceful stop loses nothing)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(2.0)
        try:
            self.write()
        except Exception:
            pass


def start_worker_snapshots(cfg, registry, wid, app, seg, interval=1.0):
    """In a worker process (processes mode): start writing snapshots for the supervisor; None when metrics are
    off."""
    if _listen(cfg) is None:
        return None
    srcs = {"transactions": lambda: {"active": len(app.txns), "created": app.txns.created},
            "location": app.location.stats, "pygc": pygc.monitor().stats}
    guard_stats = getattr(app.guard, "stats", None)
    if guard_stats is not None:
        srcs["guard"] = guard_stats
    return SnapshotWriter(registry, stats_dir(seg), wid, srcs, interval).start()


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _add_leaves(into, d):
    for k, v in d.items():
        if isinstance(v, dict):
            _add_leaves(into.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            cur = into.get(k)
            if not isinstance(cur, (int, float)):
                into[k] = v
            else:
                into[k] = max(cur, v) if k.endswith("_max") else cur + v


class ProcessAggregate:
    """The supervisor's view of its workers' snapshot files, with the ``Registry.snapshot()`` shape, plus
    ``worker_sources()`` (numeric leaves of live workers' sources, summed) and ``bindings_delta()``."""

    def __init__(self, directory, registry=None):
        self.dir = directory
        self.registry = registry       # the supervisor's own counters (gauges), optional

    def _files(self):
        out = []
        for path in glob.glob(os.path.join(self.dir, "worker-*.json")):
            try:
                with open(path) as f:
                    out.append(jsonio.loads(f.read()))
            except (OSError, ValueError):
                continue
        return out

    def read(self):
        files = self._files()
        for d in files:
            d["alive"] = _alive(d.get("pid", 0))
        return files

    def snapshot(self, files=None):
        files = self.read() if files is None else files
        total, workers = {}, {}
        for d in files:
            snap = d.get("snapshot") or {}
            for k, v in (snap.get("counters") or {}).items():
                total[k] = total.get(k, 0) + v
            wid = d.get("wid")
            w = workers.setdefault(wid, {"wid": wid, "busy": 0.0, "datagrams": 0, "pid": None, "alive": False,
                                         "rss_bytes": None, "open_fds": None, "restarts": -1})
            w["restarts"] += 1
            for pw in snap.get("workers") or ():
                w["busy"] += pw.get("busy", 0.0)
                w["datagrams"] += pw.get("datagrams", 0)
            if d["alive"]:
                p = d.get("process") or {}
                w.update(pid=d.get("pid"), alive=True, rss_bytes=p.get("rss_bytes"), open_fds=p.get("open_fds"))
        gauges = self.registry.snapshot()["gauges"] if self.registry is not None else {}
        return {"counters": total, "workers": [workers[k] for k in sorted(workers, key=lambda x: (x is None, x))],
                "gauges": gauges}


def process_sources(agg, location, baseline_bindings=0):
    """Sources for the supervisor: the shared-memory location service (the supervisor runs its collector;
    bindings = those in the segment before the workers started + the supervisor's removals + every worker's
    additions, dead workers included), the live workers' transactions and guards summed, and ``locations`` for
    /locations."""
    def worker_sum(name):
        def fn():
            out = {}
            for d in agg.read():
                if d["alive"] and isinstance((d.get("sources") or {}).get(name), dict):
                    _add_leaves(out, d["sources"][name])
            return out
        return fn

    def loc_stats():
        st = location.stats()
        delta = 0
        for d in agg.read():
            w = (d.get("sources") or {}).get("location") or {}
            delta += w.get("bindings") or 0
        st["bindings"] = baseline_bindings + st["bindings"] + delta
        return st

    class _Loc:                     # /locations over the segment, with the corrected binding count
        def __init__(self):
            self.table = location.table

        def record(self, aor):
            return location.record(aor)

        def aors(self):
            return location.aors()

        def bindings(self):
            return loc_stats()["bindings"]

    return {"location": loc_stats, "transactions": worker_sum("transactions"), "guard": worker_sum("guard"),
            "pygc": worker_sum("pygc"), "locations": _Loc()}


def start_process_metrics(cfg, location, seg, extra_sources=None):
    """Processes mode, in the supervisor: serve the merged snapshots of the workers; None when metrics are off.
    Call it BEFORE spawning the workers (after restoring persisted bindings into the segment): the bindings already
    in the segment are counted once here, the workers report what they add and remove. Stopping the server removes
    the snapshot directory."""
    hp = _listen(cfg)
    if hp is None:
        return None
    directory = stats_dir(seg)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    baseline = 0
    if location.aors():
        baseline = sum(len(rec.bindings) for _, rec in location.table.items())
    agg = ProcessAggregate(directory)
    sources = process_sources(agg, location, baseline)
    sources.update(extra_sources or {})
    return _start(MetricsServer(agg, hp[0], hp[1], sources, mode="processes",
                                on_stop=lambda: shutil.rmtree(directory, ignore_errors=True)))
