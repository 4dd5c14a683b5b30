"""The cyclic-GC monitor: pauses measured from gc.callbacks, slow ones logged, exported as ftsip_pygc_*."""
import gc
import logging

from ftsip.ops import metrics
from ftsip.ops.pygc import GcMonitor
from ftsip.ops.stats import Registry
from .helpers import parse_prometheus


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_pauses_are_counted_and_slow_ones_logged(caplog):
    clock = Clock()
    m = GcMonitor(slow=0.05, clock=clock)
    m("start", {"generation": 0})
    clock.t += 0.01
    m("stop", {"generation": 0, "collected": 3, "uncollectable": 0})
    assert not [r for r in caplog.records if "cyclic GC" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="ftsip"):
        m("start", {"generation": 0})
        clock.t += 0.2
        m("stop", {"generation": 0, "collected": 7, "uncollectable": 1})
    st = m.stats()
    assert st["collections"] == 2 and st["collected"] == 10 and st["uncollectable"] == 1
    assert abs(st["pause_seconds_total"] - 0.21) < 1e-9 and abs(st["pause_seconds_max"] - 0.2) < 1e-9
    assert st["slow_pauses"] == 1
    [line] = [r.getMessage() for r in caplog.records if "cyclic GC" in r.getMessage()]
    assert "200 ms" in line and "freed 7 objects" in line


def test_a_stop_without_its_start_is_ignored():
    m = GcMonitor(clock=Clock())
    m("stop", {"collected": 1, "uncollectable": 0})       # installed while a collection was running
    assert m.stats()["collections"] == 0


def test_installed_it_sees_real_collections():
    m = GcMonitor().install()
    try:
        assert m in gc.callbacks
        gc.collect()
        gc.collect()
        st = m.stats()
        assert st["collections"] >= 2 and st["pause_seconds_max"] > 0
    finally:
        m.uninstall()
    assert m not in gc.callbacks


def test_exported_with_types_and_merged_across_processes_by_max():
    data = metrics.collect(Registry(), {"pygc": lambda: {"collections": 4, "pause_seconds_total": 0.5,
                                                          "pause_seconds_max": 0.3, "slow_pauses": 1,
                                                          "collected": 9, "uncollectable": 0, "pending": 12}})
    fams = parse_prometheus(metrics.render_prometheus(data))
    assert fams["ftsip_pygc_collections_total"]["type"] == "counter"
    assert fams["ftsip_pygc_collections_total"]["samples"] == {(): 4}
    assert fams["ftsip_pygc_pause_seconds_max"]["type"] == "gauge"
    assert fams["ftsip_pygc_slow_pauses_total"]["samples"] == {(): 1}
    # process mode sums the workers' counters, but the longest pause is the longest of any worker
    out = {}
    metrics._add_leaves(out, {"pygc": {"collections": 2, "pause_seconds_max": 0.3}})
    metrics._add_leaves(out, {"pygc": {"collections": 5, "pause_seconds_max": 0.1}})
    assert out == {"pygc": {"collections": 7, "pause_seconds_max": 0.3}}
