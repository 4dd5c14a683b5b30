"""Server transactions (RFC 3261 §17.2, RFC 6026 §7.1), unreliable transport.

The transaction user builds each response (bytes) and hands it to ``respond``; the transaction sends it to
``addr`` (the request's top Via, with received/rport), keeps the last one to answer request retransmissions, and
runs Timers G/H/I (INVITE), L (INVITE after 2xx) and J (non-INVITE).

INVITE:      proceeding --1xx--> proceeding --2xx--> accepted --L--> terminated
                        --3xx-6xx--> completed (G retransmits, H gives up) --ACK--> confirmed --I--> terminated
non-INVITE:  trying --1xx--> proceeding --final--> completed --J--> terminated
"""
from ftsip.transaction.base import (ACCEPTED, COMPLETED, CONFIRMED, PROCEEDING, TERMINATED, TRYING,
                                    Transaction)

G, H, I, J, L = "G", "H", "I", "J", "L"


class ServerTransaction(Transaction):
    __slots__ = ("addr", "last", "last_status", "top_via", "g_interval", "data")

    is_invite = False

    def __init__(self, key, addr, table, timers, tu=None, lock=None, top_via=None):
        # no reference to the parsed request: a transaction waits up to 64*T1 after its final response, and all
        # it needs for that is the response's bytes and where they go (see Call.settle)
        Transaction.__init__(self, key, table, timers, tu, lock)
        self.addr = addr            # where responses go (RFC 3261 §18.2.2 / RFC 3581)
        self.top_via = top_via      # the request's top Via value with received/rport, for building responses
        self.last = None            # bytes of the last response sent
        self.last_status = 0
        self.g_interval = 0.0
        self.data = None            # the transaction user's per-transaction data

    def _send(self, data, status, ctx):
        self.last = data
        self.last_status = status
        ctx.send(data, self.addr)


class InviteServerTransaction(ServerTransaction):
    __slots__ = ()
    is_invite = True

    def __init__(self, *a, **kw):
        ServerTransaction.__init__(self, *a, **kw)
        self.state = PROCEEDING

    def on_request(self, req, now, ctx):
        """A request that matched this transaction: an INVITE retransmission or the ACK of a non-2xx final
        response. Returns True when the transaction user must see it: only an ACK in Accepted (RFC 6026 §7.1 -
        the ACK of a 2xx that reused the INVITE's branch, e.g. an RFC 2543 client's, is the TU's to route)."""
        state = self.state
        if req.method == "ACK":
            if state is COMPLETED:
                self.state = CONFIRMED
                self._cancel_timers()                 # G and H stop
                self.h_timeout = self._arm(ctx, self.timers.i, I, now)
            return state is ACCEPTED                  # completed/confirmed: absorbed
        if state is PROCEEDING or state is COMPLETED:
            if self.last is not None:
                ctx.send(self.last, self.addr)        # retransmission: resend the last response
        return False                                  # accepted/confirmed: absorbed (RFC 6026)

    def respond(self, data, status, now, ctx):
        """Send a response the transaction user generated (or relays)."""
        state = self.state
        if status < 200:
            if state is PROCEEDING:
                self._send(data, status, ctx)
            return
        if status < 300:
            if state is PROCEEDING:
                self._send(data, status, ctx)
                self.state = ACCEPTED
                self.h_timeout = self._arm(ctx, self.timers.l, L, now)
            elif state is ACCEPTED:
                self._send(data, status, ctx)         # more 2xx (forks, retransmissions): all go upstream
            return
        if state is PROCEEDING:
            self._send(data, status, ctx)
            self.state = COMPLETED
            self.g_interval = self.timers.t1
            self.h_retx = self._arm(ctx, self.g_interval, G, now)
            self.h_timeout = self._arm(ctx, self.timers.h, H, now)

    def on_timer(self, kind, now, ctx):
        state = self.state
        if kind == G and state is COMPLETED:
            ctx.send(self.last, self.addr)
            self.g_interval = min(2 * self.g_interval, self.timers.t2)
            self.h_retx = self._arm(ctx, self.g_interval, G, now)
        elif kind == H and state is COMPLETED:
            self.terminate()                          # no ACK ever came
        elif kind == I and state is CONFIRMED:
            self.terminate()
        elif kind == L and state is ACCEPTED:
            self.terminate()


class NonInviteServerTransaction(ServerTransaction):
    __slots__ = ()

    def __init__(self, *a, **kw):
        ServerTransaction.__init__(self, *a, **kw)
        self.state = TRYING

    def on_request(self, req, now, ctx):
        if self.state is PROCEEDING or self.state is COMPLETED:
            ctx.send(self.last, self.addr)
        return False

    def respond(self, data, status, now, ctx):
        state = self.state
        if state is COMPLETED or state is TERMINATED:
            return
        self._send(data, status, ctx)
        if status < 200:
            self.state = PROCEEDING
        else:
            self.state = COMPLETED
            self.h_timeout = self._arm(ctx, self.timers.j, J, now)

    def on_timer(self, kind, now, ctx):
        if kind == J and self.state is COMPLETED:
            self.terminate()
