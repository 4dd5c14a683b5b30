"""The worker loop shared by the thread mode and the process mode, and the context it hands the sans-I/O core."""
import logging
import socket
import struct
import time

from ftsip.ops import log as oplog
from ftsip.timers import TimerWheel

GC_TICK = 0.001     # the tick period while the location collector is behind: many small steps, not a long one


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
        if not numeric_host(addr[0]):     # sendto() would resolve a name: blocking DNS inside a worker
            self.stats.inc("drops.unresolved_destination")
            oplog.event(logging.INFO, "send-name", "not sending to %s: not an IP address (no DNS in workers)",
                        addr[0])
            return
        try:
            self._sendto(data, addr)
        except OSError as e:   # e.g. EPERM from a firewall, ENETUNREACH: count it, never kill the worker
            self.stats.inc("drops.send_error")
            oplog.event(logging.WARNING, "send-error", "send to %s failed: %s", addr, e)


def numeric_host(host, _pton=socket.inet_pton, _v4=socket.AF_INET, _v6=socket.AF_INET6):
    """True for an IPv4 or IPv6 literal (what sendto() takes without a DNS lookup)."""
    try:
        _pton(_v6 if ":" in host else _v4, host)
        return True
    except (OSError, ValueError, TypeError):
        return False


def run(app, ctx, keep_running, tick=0.01):
    """Receive datagrams until ``keep_running()`` is false; hand each to the core; advance timers every ``tick``.
    An exception in the core is counted and logged (rate-limited) and the loop goes on.

    ``ctx.lag`` is this worker's queueing delay (how long datagrams wait in its socket buffer), for overload
    shedding. One datagram in 16 is read with ``recvmsg`` to get its kernel arrival time (SO_TIMESTAMPNS, the
    same clock as ``time.time()``): sample = now - arrival, smoothed (EWMA, weight 1/4). Sampling keeps the cost
    near 0.1 us per datagram (``recvmsg`` on every datagram costs ~0.6 us more than ``recvfrom`` on 3.13t). A
    receive that times out means the queue is empty: the lag is 0 again."""
    sock = ctx.sock
    recv = sock.recvfrom
    recvmsg = sock.recvmsg
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMPNS", 35), 1)
        sample_mask = 15           # sample when n & 15 == 0
    except (OSError, AttributeError):
        sample_mask = -1           # no kernel timestamps: never sample (n & -1 == n > 0)
    n = 0
    lag = 0.0
    on_datagram = app.on_datagram
    on_tick = app.on_tick
    clock = time.time
    perf = time.perf_counter
    stats = ctx.stats
    due = 0.0
    fast = False                   # ticking every GC_TICK (the collector is behind): the receive timeout follows
    while keep_running():
        n += 1
        anc = None
        try:
            if n & sample_mask:
                data, addr = recv(65535)
            else:
                data, anc, _, addr = recvmsg(65535, 64)
        except (BlockingIOError, TimeoutError):    # SO_RCVTIMEO (or the 1 ms timeout while behind) expired: time
            data = None                            # to look at the timers; the queue is empty
            if lag:
                ctx.lag = lag = 0.0
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
        if anc:
            ctx.lag = lag = smoothed_lag(lag, anc, now)
        if data is not None:
            stats.datagrams += 1
            handle(on_datagram, data, addr, now, ctx)
        if now >= due:
            behind = run_tick(on_tick, now, ctx)
            due = next_tick(now, tick, behind)
            if behind is not fast and tick > GC_TICK:    # an idle worker keeps collecting every millisecond:
                fast = behind                            # SO_RCVTIMEO counts in jiffies (4 ms here), so a
                sock.settimeout(GC_TICK if fast else None)   # poll()-based timeout while behind, then blocking again
        stats.busy += perf() - t0


def handle(on_datagram, data, addr, now, ctx):
    """One datagram, isolated: an exception in the core is counted and logged (rate-limited), never raised."""
    try:
        on_datagram(data, addr, now, ctx)
    except Exception as e:
        ctx.stats.inc("errors.core")
        oplog.event(logging.ERROR, "core-error", "error handling a datagram from %s: %r", addr, e, exc_info=True)


def run_tick(on_tick, now, ctx):
    """One timer tick, isolated like ``handle``. True when the core wants the next tick soon (``next_tick``)."""
    try:
        return on_tick(now, ctx) is True
    except Exception as e:
        ctx.stats.inc("errors.tick")
        oplog.event(logging.ERROR, "tick-error", "error in timer tick: %r", e, exc_info=True)
        return False


def next_tick(now, tick, behind):
    """When the next tick is due: ``tick`` seconds on, or GC_TICK while the location collector is behind (its steps
    stay small - ``[location] gc_budget`` AORs - and come often until the backlog is cleared)."""
    return now + (GC_TICK if behind and tick > GC_TICK else tick)


_TIMESPEC = struct.Struct("@ll").unpack_from


def smoothed_lag(lag, anc, now):
    """The queueing-delay estimate updated with one datagram's kernel arrival time (SO_TIMESTAMPNS ancillary data):
    an EWMA of now - arrival, weight 1/4, kept within 0..60 s."""
    sec, nsec = _TIMESPEC(anc[0][2])
    return lag + (min(max(now - sec - nsec * 1e-9, 0.0), 60.0) - lag) * 0.25
