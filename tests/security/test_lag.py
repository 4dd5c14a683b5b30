"""The runtime's queueing-delay estimate (``ctx.lag``) from kernel receive timestamps, in both receive loops."""
import socket
import threading
import time

import pytest

from ftsip.ops.stats import Registry
from ftsip.runtime import processes, worker
from ftsip.runtime.sockets import udp_socket


class SlowCore:
    """Takes ``cost`` seconds per datagram and records the lag the worker reported when it was handled."""

    def __init__(self, cost):
        self.cost = cost
        self.seen = []
        self.handled = 0

    def on_datagram(self, data, addr, now, ctx):
        self.handled += 1
        self.seen.append(ctx.lag)
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass

    def on_tick(self, now, ctx):
        pass


def blast(dest, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        s.sendto(b"x" * 200, dest)
    s.close()


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def start_loop(mode, core, rcvbuf=0):
    """Run ``core`` in the thread mode's loop or the process mode's on a fresh socket, in a thread.
    Returns (socket, context, stop); ``stop()`` ends the loop and closes the socket."""
    sock, _ = udp_socket("127.0.0.1", 0, reuseport=False, rcvbuf=rcvbuf, recv_timeout=0.01)
    ctx = worker.Context(0, sock, Registry().new_worker(0), "127.0.0.1", sock.getsockname()[1], time.time())
    running = [True]
    if mode == "threads":
        t = threading.Thread(target=worker.run, args=(core, ctx, lambda: running[0], 0.01))
    else:
        t = threading.Thread(target=processes.run_sockets, args=(core, ctx, [sock], lambda: running[0], 0.01))
    t.start()

    def stop():
        running[0] = False
        t.join(2)
        sock.close()
    return sock, ctx, stop


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_lag_rises_under_a_backlog_and_falls_to_zero_when_idle(mode):
    core = SlowCore(0.0005)                   # 2,000 datagrams/s at most
    sock, ctx, stop = start_loop(mode, core, rcvbuf=4 << 20)
    dest = sock.getsockname()
    try:
        blast(dest, 10)                       # a trickle: no queue
        assert wait_until(lambda: core.handled == 10 and ctx.lag == 0.0)
        blast(dest, 1500)                     # a burst: ~0.75 s of work queued at once
        deadline = time.monotonic() + 10
        while core.handled < 1510 and time.monotonic() < deadline:
            time.sleep(0.05)
        peak = max(core.seen)
        assert peak > 0.2, peak               # the tail of the burst waited ~0.5 s or more
        # the lag seen grew along the burst (roughly linear: each datagram waited for those before it)
        burst = core.seen[10:]
        assert max(burst[:100]) < max(burst[-200:])
        assert wait_until(lambda: ctx.lag == 0.0)     # idle: receives time out, the queue is empty
    finally:
        stop()


class BehindCore(SlowCore):
    """A core whose collector is behind for its first ``n`` ticks."""

    def __init__(self, n):
        super().__init__(0.0)
        self.n = n
        self.ticks = []

    def on_tick(self, now, ctx):
        self.ticks.append(now)
        return len(self.ticks) <= self.n


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_an_idle_worker_ticks_every_millisecond_while_the_collector_is_behind(mode):
    """No datagrams at all: while ``on_tick`` says it is behind the loop ticks every GC_TICK (1 ms), then it goes
    back to the configured tick (10 ms): so a storm is collected in small steps even on an idle server."""
    core = BehindCore(100)
    _, _, stop = start_loop(mode, core)
    try:
        assert wait_until(lambda: len(core.ticks) >= 130)
    finally:
        stop()
    fast = [b - a for a, b in zip(core.ticks[1:100], core.ticks[2:101])]
    slow = [b - a for a, b in zip(core.ticks[102:129], core.ticks[103:130])]
    assert sorted(fast)[len(fast) // 2] < 0.004, fast        # median: about 1 ms
    assert sorted(slow)[len(slow) // 2] > 0.008, slow        # median: about 10 ms
