"""Shared parts of the RFC 3261 §17 transactions: states, timer settings, keys, and timer plumbing.

Transactions are sans-I/O: they send through ``ctx.send`` and arm timers on ``ctx.wheel`` (the wheel of the worker
that handles the event; a timer fires on that worker's thread). Every method must be called with ``txn.lock`` held
(the lock is shared with the transaction user's call context, so one call is handled by one thread at a time);
timer callbacks take the lock themselves. Cancelling a timer is lazy (a flag), and a transaction that has
terminated ignores its late timers.
"""
import threading

from ftsip.timers import TimerWheel

MAGIC = "z9hG4bK"

# states (strings keep logs and tests readable; compared by identity in hot paths is not needed)
TRYING = "trying"
CALLING = "calling"
PROCEEDING = "proceeding"
COMPLETED = "completed"
CONFIRMED = "confirmed"
ACCEPTED = "accepted"          # RFC 6026: INVITE after a 2xx
TERMINATED = "terminated"


class TimerConfig:
    """T1/T2/T4 and the timers derived from them (RFC 3261 Table 4, RFC 6026 Timers L and M)."""

    __slots__ = ("t1", "t2", "t4", "b", "d", "f", "h", "i", "j", "k", "l", "m")

    def __init__(self, t1=0.5, t2=4.0, t4=5.0):
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.b = self.f = self.h = self.j = self.l = self.m = 64 * t1
        self.d = max(32.0, 64 * t1)   # unreliable transport
        self.i = t4
        self.k = t4

    @classmethod
    def from_config(cls, cfg):
        t = cfg.transaction
        return cls(t.t1, t.t2, t.t4)


def server_key(req):
    """RFC 3261 §17.2.3: branch + sent-by + method (ACK matches its INVITE; CANCEL has its own); the RFC 2543
    fallback for a branch without the magic cookie. Returns None when the request has no Via."""
    vias = req.vias
    if not vias:
        return None
    via = vias[0]
    method = req.method
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if branch and branch.startswith(MAGIC):
        return f"s|{branch}|{via.sent_by}|{method}"
    # RFC 2543: Request-URI, From tag, Call-ID, CSeq number, top Via (the To tag of an ACK is the server's own,
    # so it is left out and the ACK still finds its INVITE)
    return f"s2|{req.uri}|{req.from_.tag}|{req.call_id}|{req.cseq.num}|{via.raw}|{method}"


def client_key(resp):
    """RFC 3261 §17.1.3: the top Via's branch + the CSeq method."""
    vias = resp.vias
    if not vias or not vias[0].branch:
        return None
    return f"c|{vias[0].branch}|{resp.cseq.method}"


def client_key_for(branch, method):
    return f"c|{branch}|{method}"


class Transaction:
    __slots__ = ("key", "state", "lock", "table", "timers", "tu", "h_retx", "h_timeout", "__weakref__")

    def __init__(self, key, table, timers, tu, lock):
        self.key = key
        self.state = None
        self.lock = lock if lock is not None else threading.Lock()
        self.table = table
        self.timers = timers
        self.tu = tu
        self.h_retx = None
        self.h_timeout = None

    @property
    def terminated(self):
        return self.state is TERMINATED

    def _arm(self, ctx, delay, kind, now):
        return ctx.wheel.schedule(now + delay, _fire, (self, kind, ctx))

    def _cancel_timers(self):
        cancel = TimerWheel.cancel
        if self.h_retx is not None:
            cancel(self.h_retx)
            self.h_retx = None
        if self.h_timeout is not None:
            cancel(self.h_timeout)
            self.h_timeout = None

    def terminate(self):
        """Enter Terminated: drop the timers and leave the table (the memory goes with the last reference)."""
        if self.state is TERMINATED:
            return
        self.state = TERMINATED
        self._cancel_timers()
        if self.table is not None:
            self.table.remove(self)
        tu = self.tu
        if tu is not None:
            tu.on_terminated(self)

    def on_timer(self, kind, now, ctx):   # pragma: no cover - every subclass overrides
        raise NotImplementedError


def _fire(arg, now):
    txn, kind, ctx = arg
    with txn.lock:
        if txn.state is not TERMINATED:
            txn.on_timer(kind, now, ctx)
