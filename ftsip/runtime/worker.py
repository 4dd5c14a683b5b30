"""The worker loop shared by the thread mode and the process mode, and the context it hands the sans-I/O core."""
import logging
import time

from ftsip.ops import log as oplog
from ftsip.timers import TimerWheel


class Context:
    """What the core may use from the worker that runs it: ``send(data, addr)`` on the worker's own socket, the
    worker's timing wheel, its stats, its id, the address it advertises, and ``state``: whatever the core keeps per
worker (set by ``App.attach``)."""

    __slots__ = ("wid", "sock", "wheel", "stats", "host", "port", "state", "lag", "_sendto")

    def __init__(self, wid, sock, stats, host, port, now, resolution=0.01):
        self.wid = wid
        self.sock = sock
        self.wheel = TimerWheel(now, resolution)
        self.stats = stats
        self.host = host
        self.port = port
        self.state = None            # the core's per-worker state (App.attach sets it)
        self.lag = 0.0               # queueing delay of recent datagrams, seconds (for overload shedding)
        self._sendto = sock.sendto if sock is not None else None

    def send(self, data, addr):
        try:
            self._sendto(data, addr)
        except OSError as e:   # e.g. EPERM from a firewall, ENETUNREACH: count it, never kill the worker
            self.stats.inc("drops.send_error")
            oplog.event(logging.WARNING, "send-error", "send to %s failed: %s", addr, e)


def run(app, ctx, keep_running, tick=0.01):
    """Receive datagrams until ``keep_running()`` is false; hand each to the core; advance timers every ``tick``.
    An exception in the core is counted and logged (rate-limited) and the loop goes on."""
    recv = ctx.sock.recvfrom
    on_datagram = app.on_datagram
    on_tick = app.on_tick
    clock = time.time
    perf = time.perf_counter
    stats = ctx.stats
    next_tick = 0.0
    while keep_running():
        try:
            data, addr = recv(65535)
        except BlockingIOError:        # SO_RCVTIMEO expired: time to look at the timers
            data = None
        except InterruptedError:
            continue
        except OSError as e:
            if not keep_running():
                break
            stats.inc("errors.recv")
            oplog.event(logging.WARNING, "recv-error", "recvfrom failed: %s", e)
            continue
        t0 = perf()
        now = clock()
        if data is not None:
            stats.datagrams += 1
            try:
                on_datagram(data, addr, now, ctx)
            except Exception as e:
                stats.inc("errors.core")
                oplog.event(logging.ERROR, "core-error", "error handling a datagram from %s: %r", addr, e,
                            exc_info=True)
        if now >= next_tick:
            next_tick = now + tick
            try:
                on_tick(now, ctx)
            except Exception as e:
                stats.inc("errors.tick")
                oplog.event(logging.ERROR, "tick-error", "error in timer tick: %r", e, exc_info=True)
        stats.busy += perf() - t0
