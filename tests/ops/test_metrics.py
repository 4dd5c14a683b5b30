"""The metrics endpoint: Prometheus exposition, JSON, /locations, start/stop, and the process-mode aggregation."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ftsip import config
from ftsip.location.records import Binding, Record
from ftsip.location.service import LocationService
from ftsip.ops import metrics
from ftsip.ops.stats import Registry

from .helpers import get, parse_prometheus


def two_workers():
    reg = Registry()
    a, b = reg.new_worker(0), reg.new_worker(1)
    a.inc("rx.request.INVITE", 3)
    b.inc("rx.request.INVITE", 4)
    a.inc("rx.request.REGISTER", 10)
    a.inc("tx.response.200", 5)
    b.inc("tx.response.200", 6)
    b.inc("rx.response.486", 2)
    a.inc("rx.bad.400")
    b.inc("drops.refused.503", 7)
    a.inc("drops.unparseable")
    a.inc("auth.fail.stale", 2)
    b.inc("auth.fail.wrong-password")
    a.inc("proxy.calls", 3)
    a.inc("rx.keepalive")
    b.inc("errors.core")
    b.inc('odd.na"me\\x')                # an unknown counter with characters that need escaping
    a.busy, a.datagrams = 1.25, 100
    b.busy, b.datagrams = 0.5, 40
    return reg


def make_location(now):
    loc = LocationService()
    st = loc.local_state(now)
    b1 = Binding("sip:alice@192.0.2.10:5062", "k1", now + 600, 1.0, "cid-1", 7, ("192.0.2.10", 5062),
                 user_agent="phone/1.0")
    b2 = Binding("sip:alice@192.0.2.11:5064", "k2", now + 60, 0.5, "cid-2", 2, ("192.0.2.11", 5064))
    loc.update("alice@example.com", lambda old: Record("alice@example.com", (b1, b2)), st)
    loc.update("bob@example.com", lambda old: Record("bob@example.com", (
        Binding("sip:bob@192.0.2.20", "k3", now + 300, 1.0, "cid-3", 1),)), st)
    return loc


@pytest.fixture
def server():
    now = time.time()
    loc = make_location(now)
    sources = {"location": metrics.location_source(loc), "transactions": lambda: {"active": 12},
               "guard": lambda: {"banned": 2, "tracked": {"sources": 5}}, "locations": loc,
               "broken": lambda: 1 / 0}
    m = metrics.MetricsServer(two_workers(), "127.0.0.1", 0, sources).start()
    yield m
    m.stop()


def test_prometheus_exposition_parses_and_sums_workers(server):
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    fams = parse_prometheus(body)
    s = {name: f["samples"] for name, f in fams.items()}
    assert s["ftsip_requests_received_total"][(("method", "INVITE"),)] == 7       # 3 + 4: summed over workers
    assert s["ftsip_requests_received_total"][(("method", "REGISTER"),)] == 10
    assert s["ftsip_responses_sent_total"][(("code", "200"),)] == 11
    assert s["ftsip_responses_received_total"][(("code", "486"),)] == 2
    assert s["ftsip_bad_requests_total"][(("status", "400"),)] == 1
    assert s["ftsip_drops_total"] == {(("reason", "refused.503"),): 7, (("reason", "unparseable"),): 1}
    assert s["ftsip_auth_failures_total"][(("reason", "stale"),)] == 2
    assert s["ftsip_proxy_events_total"][(("event", "calls"),)] == 3
    assert s["ftsip_errors_total"][(("kind", "core"),)] == 1
    assert s["ftsip_keepalives_received_total"][()] == 1
    assert s["ftsip_other_events_total"][(("name", 'odd.na\\"me\\\\x'),)] == 1
    assert s["ftsip_worker_busy_seconds_total"] == {(("worker", "0"),): 1.25, (("worker", "1"),): 0.5}
    assert s["ftsip_worker_datagrams_total"][(("worker", "1"),)] == 40
    assert s["ftsip_transactions_active"][()] == 12
    assert s["ftsip_aors"][()] == 2 and s["ftsip_bindings"][()] == 3
    for name in ("ftsip_gc_examined_total", "ftsip_gc_expired_total", "ftsip_gc_backlog", "ftsip_gc_lag_seconds",
                 "process_resident_memory_bytes", "process_open_fds", "ftsip_uptime_seconds",
                 "ftsip_udp_rcvbuf_errors_total"):
        assert name in fams, name
    assert s["ftsip_guard_banned"][()] == 2 and s["ftsip_guard_tracked_sources"][()] == 1 * 5
    assert fams["ftsip_requests_received_total"]["type"] == "counter"
    assert fams["ftsip_aors"]["type"] == "gauge"
    assert s["process_resident_memory_bytes"][()] > 1e6 and s["process_open_fds"][()] >= 3


def test_stats_json_is_the_same_data(server):
    status, ctype, body = get(server.url + "/stats.json")
    assert status == 200 and ctype == "application/json"
    d = json.loads(body)
    assert d["version"] == 1 and d["mode"] == "threads"
    assert d["counters"]["rx.request.INVITE"] == 7
    assert [w["wid"] for w in d["workers"]] == [0, 1]
    assert d["sources"]["location"]["aors"] == 2
    assert d["sources"]["transactions"] == {"active": 12}
    assert d["sources"]["broken"] is None                         # a failing source does not break the scrape
    assert "locations" not in d["sources"]
    assert d["process"]["rss_bytes"] > 0 and d["uptime"] >= 0
    assert set(d["udp"]) == {"rcvbuf_errors", "sndbuf_errors", "in_errors"}


def test_locations_of_one_aor(server):
    status, _, body = get(server.url + "/locations?aor=sip:alice@EXAMPLE.com")
    assert status == 200
    d = json.loads(body)
    assert d["aor"] == "alice@example.com"
    by_contact = {b["contact"]: b for b in d["bindings"]}
    assert set(by_contact) == {"sip:alice@192.0.2.10:5062", "sip:alice@192.0.2.11:5064"}
    b = by_contact["sip:alice@192.0.2.10:5062"]
    assert 590 <= b["expires_in"] <= 600 and b["q"] == 1.0 and b["received"] == ["192.0.2.10", 5062]
    assert b["user_agent"] == "phone/1.0" and b["call_id"] == "cid-1" and b["cseq"] == 7


def test_locations_listing_and_errors(server):
    status, _, body = get(server.url + "/locations")
    d = json.loads(body)
    assert status == 200 and d["aors"] == 2 and d["bindings"] == 3
    assert sorted(d["first"]) == ["alice@example.com", "bob@example.com"]
    d = json.loads(get(server.url + "/locations?limit=1")[2])
    assert len(d["first"]) == 1
    status, _, body = get(server.url + "/locations?aor=nobody@example.com")
    assert status == 404 and "no bindings" in json.loads(body)["error"]
    assert get(server.url + "/locations?limit=-3")[0] == 400
    assert get(server.url + "/locations?limit=x")[0] == 400
    assert get(server.url + "/nope")[0] == 404
    assert get(server.url + "/healthz")[2] == "ok\n"


def test_expired_binding_not_listed():
    now = time.time()
    loc = LocationService()
    st = loc.local_state(now)
    old = Binding("sip:carol@192.0.2.30", "k", now - 1, 1.0, "c", 1)
    loc.update("carol@example.com", lambda _: Record("carol@example.com", (old,)), st)
    assert metrics.locations_json(loc, "carol@example.com")[0] == 404


def test_server_starts_and_stops_cleanly_on_an_ephemeral_port():
    before = {t.name for t in threading.enumerate()}
    m = metrics.MetricsServer(Registry(), "127.0.0.1", 0, {}).start()
    port = m.port
    assert port > 0
    assert get(m.url + "/metrics")[0] == 200
    t0 = time.monotonic()
    m.stop()
    assert time.monotonic() - t0 < 2.0
    assert not m.thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    m.stop()                                     # idempotent
    assert "metrics" not in {t.name for t in threading.enumerate()} - before


def test_start_metrics_reads_the_config(caplog):
    from ftsip.app import App
    cfg = config.load()
    assert metrics.start_metrics(cfg, Registry(), None) is None            # [metrics] listen = "": off
    cfg = config.load(overrides={("metrics", "listen"): "127.0.0.1:0"})
    app = App(cfg)
    reg = Registry()
    reg.new_worker(0).inc("rx.request.OPTIONS")
    m = metrics.start_metrics(cfg, reg, app)
    try:
        d = json.loads(get(m.url + "/stats.json")[2])
        assert d["counters"] == {"rx.request.OPTIONS": 1}
        assert d["sources"]["transactions"]["active"] == 0 and d["sources"]["location"]["aors"] == 0
        parse_prometheus(get(m.url + "/metrics")[2])
        # a port in use: logged, None, the SIP service would go on
        busy = config.load(overrides={("metrics", "listen"): f"127.0.0.1:{m.port}"})
        assert metrics.start_metrics(busy, reg, app) is None
        assert "cannot listen" in caplog.text
    finally:
        m.stop()


def test_ipv6_listener():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        m = metrics.MetricsServer(Registry(), "::1", 0, {}).start()
    except OSError:
        pytest.skip("no ::1")
    try:
        assert m.url.startswith("http://[::1]:")
        assert get(m.url + "/healthz")[0] == 200
    finally:
        m.stop()


def test_process_mode_aggregation(tmp_path):
    """Two live workers' snapshot files plus the last file of a worker that died: counters summed over all,
    gauges (transactions) from the live ones only, bindings = baseline + supervisor + worker deltas."""
    d = str(tmp_path / "stats")
    regs = []
    writers = []
    for wid in (0, 1):
        reg = Registry()
        w = reg.new_worker(wid)
        w.inc("rx.request.REGISTER", 10 + wid)
        w.busy, w.datagrams = 0.5, 20
        regs.append(reg)
        src = {"transactions": lambda wid=wid: {"active": 3 + wid}, "location": lambda: {"bindings": 4}}
        writers.append(metrics.SnapshotWriter(reg, d, wid, src, interval=0.05).start())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    time.sleep(0.2)                              # the writers have created the directory and written once
    with open(os.path.join(d, f"worker-0-{dead}.json"), "w") as f:
        json.dump({"wid": 0, "pid": int(dead), "time": 0, "process": {"rss_bytes": 1},
                   "snapshot": {"counters": {"rx.request.REGISTER": 100, "errors.core": 1},
                                "workers": [{"wid": 0, "busy": 2.0, "datagrams": 200, "counters": {}}]},
                   "sources": {"transactions": {"active": 50}, "location": {"bindings": 5}}}, f)
    for w in writers:
        w.stop()
    regs[0].workers[0].inc("rx.request.REGISTER", 1000)     # after the final write: not seen
    agg = metrics.ProcessAggregate(d)
    snap = agg.snapshot()
    assert snap["counters"]["rx.request.REGISTER"] == 10 + 11 + 100
    assert snap["counters"]["errors.core"] == 1
    w0 = next(w for w in snap["workers"] if w["wid"] == 0)
    assert w0["busy"] == 2.5 and w0["datagrams"] == 220 and w0["alive"] and w0["restarts"] == 1
    assert w0["pid"] == os.getpid() and w0["rss_bytes"] > 1

    class Loc:                                   # the supervisor's location service over the segment
        table = None

        def stats(self):
            return {"aors": 7, "bindings": -2, "gc_examined": 9, "gc_expired": 2, "gc_backlog": 0}

        def aors(self):
            return 7

    srcs = metrics.process_sources(agg, Loc(), baseline_bindings=3)
    assert srcs["transactions"]() == {"active": 3 + 4}       # live workers only
    assert srcs["location"]()["bindings"] == 3 - 2 + 4 + 4 + 5
    m = metrics.MetricsServer(agg, "127.0.0.1", 0, srcs, mode="processes").start()
    try:
        fams = parse_prometheus(get(m.url + "/metrics")[2])
        assert fams["ftsip_requests_received_total"]["samples"][(("method", "REGISTER"),)] == 121
        assert fams["ftsip_worker_resident_memory_bytes"]["samples"][(("worker", "1"),)] > 1
        assert fams["ftsip_info"]["samples"] == {(("mode", "processes"),): 1}
    finally:
        m.stop()


def test_start_process_metrics_counts_bindings_already_in_the_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "stats_dir", lambda seg: str(tmp_path / f"{seg}-stats"))
    now = time.time()
    loc = make_location(now)
    cfg = config.load(overrides={("metrics", "listen"): "127.0.0.1:0"})
    m = metrics.start_process_metrics(cfg, loc, "ftsip-test")
    try:
        assert os.path.isdir(tmp_path / "ftsip-test-stats")
        d = json.loads(get(m.url + "/stats.json")[2])
        assert d["mode"] == "processes" and d["sources"]["location"]["bindings"] == 3 + 3   # baseline + own
        assert json.loads(get(m.url + "/locations?aor=bob@example.com")[2])["bindings"][0]["contact"] == \
            "sip:bob@192.0.2.20"
    finally:
        m.stop()
    assert not os.path.exists(tmp_path / "ftsip-test-stats")           # removed at stop


def test_gc_lag_reports_the_oldest_due_entry():
    now = 10_000.0
    loc = LocationService()
    st = loc.local_state(now - 100)
    loc.update("a@x", lambda _: Record("a@x", (Binding("sip:a@h", "k", now - 30, 1.0, "c", 1),)), st)
    assert 29 <= metrics.gc_lag(loc, now) <= 31
    loc.tick(now, st, 0)
    assert metrics.gc_lag(loc, now) == 0.0
    assert metrics.gc_lag(LocationService(gc="sweep"), now) is None


def _wired(path, name):
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), path)) as f:
        return name in f.read()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_real_server_serves_metrics(tmp_path, mode):
    """`ftsip serve` with [metrics] listen: an OPTIONS shows up in /metrics (skipped until the runtime calls
    start_metrics / start_process_metrics)."""
    if not _wired("ftsip/runtime/serve.py" if mode == "threads" else "ftsip/runtime/processes.py",
                  "start_metrics" if mode == "threads" else "start_process_metrics"):
        pytest.skip(f"the {mode} runtime does not start the metrics endpoint yet")
    from support import ServerProcess, options, udp_exchange
    cfg = tmp_path / "ftsip.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nmode = "{mode}"\nthreads = 2\nworkers = 2\n'
                   '[metrics]\nlisten = "127.0.0.1:0"\n')
    with ServerProcess("--config", str(cfg)) as srv:
        m = srv.wait_for(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", 10)
        assert m, srv.log()
        url = m.group(1)
        assert udp_exchange(srv.addr, options(srv.addr))
        deadline = time.monotonic() + 5
        while True:        # processes mode: the workers' snapshots are written once a second
            fams = parse_prometheus(get(url + "/metrics")[2])
            got = fams.get("ftsip_requests_received_total", {}).get("samples", {}).get((("method", "OPTIONS"),))
            if got == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == 1
        assert fams["ftsip_info"]["samples"] == {(("mode", mode),): 1}
        assert len(fams["ftsip_worker_busy_seconds_total"]["samples"]) == 2
        # the interpreter's cyclic GC as the workers see it (every worker process's, summed / max)
        assert fams["ftsip_pygc_collections_total"]["type"] == "counter"
        assert fams["ftsip_pygc_pause_seconds_max"]["type"] == "gauge"
        assert fams["ftsip_pygc_pause_seconds_total"]["samples"][()] >= 0


def test_guard_and_persistence_sources_are_typed():
    data = metrics.collect(Registry(), {
        "guard": lambda: {"pike_bans_active": 1, "pike_bans_issued": 4, "evicted": 0},
        "persistence": lambda: {"path": "/var/lib/r.db", "flushes": 3, "pending": 2, "lag": 0.1, "last_error": None},
        "pike": lambda: {"bans_active": "x", "bans": {"active": 9}},     # would collide with a known name
    })
    fams = parse_prometheus(metrics.render_prometheus(data))
    assert fams["ftsip_pike_bans_total"]["type"] == "counter"
    assert fams["ftsip_pike_bans_active"]["type"] == "gauge"
    assert fams["ftsip_pike_bans_active"]["samples"] == {(): 1}          # the generic duplicate was dropped
    assert fams["ftsip_persistence_flushes_total"]["samples"] == {(): 3}
    assert fams["ftsip_persistence_lag_seconds"]["samples"] == {(): 0.1}
    assert not [k for k in fams if k.startswith("ftsip_persistence_path")]


def test_debug_heap(server):
    d = json.loads(get(server.url + "/debug/heap?limit=5")[2])
    assert d["objects"] > 1000 and len(d["types"]) == 5 and "builtins.tuple" in d["types"]
    assert d["allocated_blocks"] > 0 and isinstance(d["largest"], list)
