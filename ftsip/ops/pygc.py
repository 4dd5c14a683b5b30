"""The interpreter's cyclic garbage collector, seen from the server: how often it runs and how long it stops us.

On the free-threaded build a collection stops every thread ("stop the world") while it scans all GC-tracked
objects, so its pause is a latency every worker pays at once. ``GcMonitor`` hooks ``gc.callbacks`` and records
each collection's wall time (from the "start" to the "stop" callback: the stop-the-world scan plus finalizers),
the number of objects it freed, the longest and the total pause, and logs a rate-limited line for each pause longer
than ``slow`` seconds. ``stats()`` is a metrics source (``ftsip_pygc_*``). The cost is two perf_counter calls per
collection, nothing per object or per message.
"""
import gc
import logging
import threading
import time

from ftsip.ops.log import event

SLOW_PAUSE = 0.05          # seconds: a pause longer than this is logged (SIPp's T1 is 0.5 s)


class GcMonitor:
    def __init__(self, slow=SLOW_PAUSE, clock=time.perf_counter):
        self.slow = slow
        self.clock = clock
        self.lock = threading.Lock()
        self.started = None
        self.collections = 0
        self.collected = 0
        self.uncollectable = 0
        self.pause_total = 0.0
        self.pause_max = 0.0
        self.slow_pauses = 0

    def __call__(self, phase, info):
        # one collection at a time (the interpreter's ``collecting`` flag), in the thread that triggered it
        if phase == "start":
            self.started = self.clock()
            return
        if self.started is None:              # installed between a start and its stop
            return
        d = self.clock() - self.started
        self.started = None
        with self.lock:
            self.collections += 1
            self.collected += info.get("collected", 0)
            self.uncollectable += info.get("uncollectable", 0)
            self.pause_total += d
            if d > self.pause_max:
                self.pause_max = d
            if d >= self.slow:
                self.slow_pauses += 1
        if d >= self.slow:
            event(logging.WARNING, "pygc.slow", "cyclic GC paused the workers for %.0f ms (freed %d objects); "
                  "see ftsip_pygc_* in /metrics", d * 1000, info.get("collected", 0),
                  pause_ms=round(d * 1000, 1), collected=info.get("collected", 0))

    def install(self):
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def uninstall(self):
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def stats(self):
        with self.lock:
            return {"collections": self.collections, "collected": self.collected,
                    "uncollectable": self.uncollectable, "pause_seconds_total": self.pause_total,
                    "pause_seconds_max": self.pause_max,
                    "slow_pauses": self.slow_pauses, "pending": gc.get_count()[0]}


_monitor = None
_monitor_lock = threading.Lock()


def monitor():
    """The process's monitor, installed on first use (one per process: thread mode, each worker process)."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = GcMonitor().install()
        return _monitor
