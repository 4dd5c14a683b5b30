"""Client transactions (RFC 3261 §17.1, RFC 6026 §7.2), unreliable transport.

``start`` sends the request and arms the retransmission timer (A or E) and the timeout (B or F). Responses come in
through ``on_response``, which returns True when the transaction user must see the response; a timeout calls
``tu.on_timeout(txn, now, ctx)``. A non-2xx final response to an INVITE is acknowledged here (§17.1.1.3), also
when it is retransmitted.

INVITE:      calling --1xx--> proceeding --2xx--> accepted --M--> terminated
                     --3xx-6xx--> completed (ACK sent; D) --> terminated;  calling --B--> timeout
non-INVITE:  trying --1xx--> proceeding --final--> completed --K--> terminated;  trying/proceeding --F--> timeout
"""
from ftsip.sip.message import hop_request
from ftsip.transaction.base import (ACCEPTED, CALLING, COMPLETED, PROCEEDING, TERMINATED, TRYING, Transaction,
                                    client_key_for)

A, B, D, E, F, K, M = "A", "B", "D", "E", "F", "K", "M"


class ClientTransaction(Transaction):
    __slots__ = ("data", "dest", "branch", "method", "interval", "last_status", "ack_info", "ack", "user")

    is_invite = False

    def __init__(self, data, branch, method, dest, table, timers, tu, lock=None, ack_info=None):
        Transaction.__init__(self, client_key_for(branch, method), table, timers, tu, lock)
        self.data = data            # the request as sent
        self.dest = dest            # (host, port)
        self.branch = branch
        self.method = method
        self.interval = timers.t1
        self.last_status = 0
        self.ack_info = ack_info    # INVITE: (request-uri, via, from, call-id, cseq number, routes, max-forwards)
        self.ack = None
        self.user = None            # the transaction user's per-branch data

    def start(self, now, ctx):
        ctx.send(self.data, self.dest)
        self.h_retx = self._arm(ctx, self.interval, A if self.is_invite else E, now)
        self.h_timeout = self._arm(ctx, self.timers.b if self.is_invite else self.timers.f,
                                   B if self.is_invite else F, now)


class InviteClientTransaction(ClientTransaction):
    __slots__ = ()
    is_invite = True

    def __init__(self, *a, **kw):
        ClientTransaction.__init__(self, *a, **kw)
        self.state = CALLING

    def on_response(self, resp, now, ctx):
        status = resp.status
        state = self.state
        if status < 200:
            if state is CALLING:
                self.state = PROCEEDING
                self._cancel_timers()                  # A stops; B no longer applies (Timer C is the proxy's)
            if state is CALLING or state is PROCEEDING:
                self.last_status = status
                return True
            return False
        if status < 300:
            if state is CALLING or state is PROCEEDING:
                self._cancel_timers()
                self.state = ACCEPTED
                self.last_status = status
                self.h_timeout = self._arm(ctx, self.timers.m, M, now)
                return True
            return state is ACCEPTED                   # 2xx retransmissions and other forks' 2xx go up
        if state is CALLING or state is PROCEEDING:
            self._cancel_timers()
            self.state = COMPLETED
            self.last_status = status
            self.ack = self._build_ack(resp)
            ctx.send(self.ack, self.dest)
            self.h_timeout = self._arm(ctx, self.timers.d, D, now)
            return True
        if state is COMPLETED:
            ctx.send(self.ack, self.dest)              # retransmitted final response: ACK again, absorb
        return False

    def _build_ack(self, resp):
        """RFC 3261 §17.1.1.3: same Request-URI, Call-ID, From, CSeq number and top Via as the INVITE; To from
        the response (with its tag); the INVITE's Route headers."""
        ruri, via, from_, call_id, cseq, routes = self.ack_info
        return hop_request("ACK", ruri, via, from_, resp.get("to"), call_id, cseq, routes)

    def on_timer(self, kind, now, ctx):
        state = self.state
        if kind == A and state is CALLING:
            ctx.send(self.data, self.dest)
            self.interval *= 2
            self.h_retx = self._arm(ctx, self.interval, A, now)
        elif kind == B and state is CALLING:
            self.last_status = 408
            self.terminate_with_timeout(now, ctx)
        elif (kind == D and state is COMPLETED) or (kind == M and state is ACCEPTED):
            self.terminate()

    def terminate_with_timeout(self, now, ctx):
        tu = self.tu
        self.terminate()
        if tu is not None:
            tu.on_timeout(self, now, ctx)


class NonInviteClientTransaction(ClientTransaction):
    __slots__ = ()

    def __init__(self, *a, **kw):
        ClientTransaction.__init__(self, *a, **kw)
        self.state = TRYING

    def on_response(self, resp, now, ctx):
        status = resp.status
        state = self.state
        if state is not TRYING and state is not PROCEEDING:
            return False                               # completed: retransmissions absorbed
        self.last_status = status
        if status < 200:
            self.state = PROCEEDING
            return True
        self._cancel_timers()
        self.state = COMPLETED
        self.h_timeout = self._arm(ctx, self.timers.k, K, now)
        return True

    def on_timer(self, kind, now, ctx):
        state = self.state
        if kind == E and (state is TRYING or state is PROCEEDING):
            ctx.send(self.data, self.dest)
            self.interval = self.timers.t2 if state is PROCEEDING else min(2 * self.interval, self.timers.t2)
            self.h_retx = self._arm(ctx, self.interval, E, now)
        elif kind == F and (state is TRYING or state is PROCEEDING):
            self.last_status = 408
            tu = self.tu
            self.terminate()
            if tu is not None:
                tu.on_timeout(self, now, ctx)
        elif kind == K and state is COMPLETED:
            self.terminate()


__all__ = ["ClientTransaction", "InviteClientTransaction", "NonInviteClientTransaction", "TERMINATED"]
