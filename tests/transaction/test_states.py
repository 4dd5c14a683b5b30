"""The four RFC 3261 §17 state machines (with RFC 6026's Accepted state), table-driven, in memory.

Every (state, event) pair of every machine is a row: the next state, what goes on the wire (a request
retransmission, an ACK, a response retransmission, or nothing) and whether the transaction user is called. States are
reached through the real events from the start state; timers are injected through the wheel's own callback (the
same path a lazily cancelled or racing timer takes), and their values are checked separately by driving
``ctx.wheel.advance(now)`` of a FakeCtx in 10 ms steps.
"""
import itertools

import pytest
from support import FakeCtx

from ftsip import config
from ftsip.sip import make_response, parse
from ftsip.transaction import (ACCEPTED, CALLING, COMPLETED, CONFIRMED, PROCEEDING, TERMINATED, TRYING,
                               InviteClientTransaction, InviteServerTransaction, NonInviteClientTransaction,
                               NonInviteServerTransaction, TimerConfig, TransactionTable, client_key,
                               client_key_for, server_key)
from ftsip.transaction.base import _fire

T0 = 1000.0
BRANCH = "z9hG4bKclient1"
UAC = ("192.0.2.10", 5062)
UAS = ("192.0.2.20", 5062)
VIA = f"SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch={BRANCH};rport"


# ---------------------------------------------------------------------------------------------------- messages
def request(method="INVITE", branch=BRANCH, sent_by="192.0.2.10:5062", cseq_method=None, cseq=1,
            uri="sip:bob@example.com", call_id="call-1", from_tag="ft1", to_tag=None, via=None):
    via = via or f"SIP/2.0/UDP {sent_by}" + (f";branch={branch}" if branch else "")
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
             f"From: <sip:alice@example.com>;tag={from_tag}", f"To: {to}", f"Call-ID: {call_id}",
             f"CSeq: {cseq} {cseq_method or method}", "Content-Length: 0"]
    return parse(("\r\n".join(lines) + "\r\n\r\n").encode())


def response(status, method="INVITE", branch=BRANCH, to_tag="tt1", cseq=1):
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag and status > 100 else "")
    lines = [f"SIP/2.0 {status} X", f"Via: SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch={branch};rport",
             "From: <sip:alice@example.com>;tag=ft1", f"To: {to}", "Call-ID: call-1",
             f"CSeq: {cseq} {method}", "Content-Length: 0"]
    return parse(("\r\n".join(lines) + "\r\n\r\n").encode())


def response_bytes(req, status):
    return make_response(req, status, to_tag="uas1")


class TU:
    """Records every call a transaction makes to its user."""

    def __init__(self):
        self.timeouts = []
        self.terminated = []

    def on_timeout(self, txn, now, ctx):
        assert txn.state is TERMINATED          # the timeout comes with (after) termination
        self.timeouts.append((txn, now))

    def on_terminated(self, txn):
        self.terminated.append(txn)


def sent_summary(ctx):
    """What went on the wire since the last call: request method / response status strings."""
    out = []
    for data, _addr in ctx.take():
        m = parse(data)
        out.append(m.method if m.is_request else str(m.status))
    return out


def armed(ctx, txn):
    """Kinds of the live timers on the wheel that belong to ``txn``."""
    return sorted(e[2][1] for slot in ctx.wheel.slots for e in slot
                  if e[3] and isinstance(e[2], tuple) and e[2][0] is txn)


# ---------------------------------------------------------------------------------------------------- fixtures
class Machine:
    """One transaction under test, with its table, context and user."""

    def __init__(self, kind, timers=None):
        self.kind = kind
        self.ctx = FakeCtx(T0)
        self.table = TransactionTable()
        self.timers = timers or TimerConfig()
        self.tu = TU()
        self.now = T0
        if kind == "ict":
            data = _raw("INVITE")
            self.txn = InviteClientTransaction(data, BRANCH, "INVITE", UAS, self.table, self.timers, self.tu,
                                               ack_info=("sip:bob@example.com", VIA, "<sip:alice@example.com>;tag=ft1",
                                                         "call-1", 1, ()))
        elif kind == "nict":
            self.txn = NonInviteClientTransaction(_raw("BYE"), BRANCH, "BYE", UAS, self.table, self.timers, self.tu)
        elif kind == "ist":
            self.req = request("INVITE")
            self.txn = InviteServerTransaction(server_key(self.req), UAC, self.table, self.timers,
                                               tu=self.tu)
        else:
            self.req = request("BYE", to_tag="tt1")
            self.txn = NonInviteServerTransaction(server_key(self.req), UAC, self.table, self.timers,
                                                  tu=self.tu)
        assert self.table.add(self.txn) is self.txn
        if kind in ("ict", "nict"):
            self.txn.start(self.now, self.ctx)

    # events -----------------------------------------------------------------------------------------------
    def respond(self, status):
        """Server side: the TU hands a response to the transaction."""
        self.txn.respond(response_bytes(self.req, status), status, self.now, self.ctx)
        return False

    def receive(self, status):
        """Client side: a response arrives; returns whether it goes up to the TU."""
        return self.txn.on_response(response(status, self.txn.method), self.now, self.ctx)

    def request_in(self, method):
        if method == "ACK":
            req = request("ACK", cseq_method="ACK", to_tag="uas1")
        else:
            req = self.req
        return self.txn.on_request(req, self.now, self.ctx)

    def fire(self, kind):
        _fire((self.txn, kind, self.ctx), self.now)

    def event(self, ev):
        """Apply one event; returns 'response'/'request' when the TU must see it, 'timeout' when the TU was told of
        a timeout, else None."""
        before = len(self.tu.timeouts)
        passed = False
        if ev in ("1xx", "2xx", "3xx-6xx"):
            status = {"1xx": 180, "2xx": 200, "3xx-6xx": 486}[ev]
            if self.kind in ("ict", "nict"):
                passed = self.receive(status) and "response"
            else:
                if self.kind == "nist" and ev == "1xx":
                    status = 100
                self.respond(status)
        elif ev in ("INVITE", "ACK", "request"):
            passed = self.request_in("ACK" if ev == "ACK" else "INVITE") and "request"
        else:
            self.fire(ev)
        if len(self.tu.timeouts) > before:
            return "timeout"
        return passed or None


def _raw(method):
    lines = [f"{method} sip:bob@example.com SIP/2.0", f"Via: {VIA}", "Max-Forwards: 70",
             "From: <sip:alice@example.com>;tag=ft1", "To: <sip:bob@example.com>", "Call-ID: call-1",
             f"CSeq: 1 {method}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# How to reach each state from the start, through real events.
PATHS = {
    "ict": {CALLING: [], PROCEEDING: ["1xx"], COMPLETED: ["3xx-6xx"], ACCEPTED: ["2xx"],
            TERMINATED: ["3xx-6xx", "D"]},
    "nict": {TRYING: [], PROCEEDING: ["1xx"], COMPLETED: ["2xx"], TERMINATED: ["2xx", "K"]},
    "ist": {PROCEEDING: ["1xx"], COMPLETED: ["1xx", "3xx-6xx"], CONFIRMED: ["1xx", "3xx-6xx", "ACK"],
            ACCEPTED: ["1xx", "2xx"], TERMINATED: ["1xx", "3xx-6xx", "ACK", "I"]},
    "nist": {TRYING: [], PROCEEDING: ["1xx"], COMPLETED: ["2xx"], TERMINATED: ["2xx", "J"]},
}

EVENTS = {
    "ict": ["1xx", "2xx", "3xx-6xx", "A", "B", "D", "M"],
    "nict": ["1xx", "2xx", "3xx-6xx", "E", "F", "K"],
    "ist": ["INVITE", "ACK", "1xx", "2xx", "3xx-6xx", "G", "H", "I", "L"],
    "nist": ["request", "1xx", "2xx", "3xx-6xx", "J"],
}

# Timers live on entering each state.
ARMED = {
    "ict": {CALLING: ["A", "B"], PROCEEDING: [], COMPLETED: ["D"], ACCEPTED: ["M"], TERMINATED: []},
    "nict": {TRYING: ["E", "F"], PROCEEDING: ["E", "F"], COMPLETED: ["K"], TERMINATED: []},
    "ist": {PROCEEDING: [], COMPLETED: ["G", "H"], CONFIRMED: ["I"], ACCEPTED: ["L"], TERMINATED: []},
    "nist": {TRYING: [], PROCEEDING: [], COMPLETED: ["J"], TERMINATED: []},
}

_ = None
# (machine, state, event) -> (next state, what is sent, TU called)
# sent: a request method (retransmission / ACK), a response status (server), or None
TABLE = {
    # ---- INVITE client (§17.1.1, RFC 6026 §7.2)
    ("ict", CALLING, "1xx"): (PROCEEDING, _, "response"),
    ("ict", CALLING, "2xx"): (ACCEPTED, _, "response"),
    ("ict", CALLING, "3xx-6xx"): (COMPLETED, "ACK", "response"),
    ("ict", CALLING, "A"): (CALLING, "INVITE", _),
    ("ict", CALLING, "B"): (TERMINATED, _, "timeout"),
    ("ict", CALLING, "D"): (CALLING, _, _),
    ("ict", CALLING, "M"): (CALLING, _, _),
    ("ict", PROCEEDING, "1xx"): (PROCEEDING, _, "response"),
    ("ict", PROCEEDING, "2xx"): (ACCEPTED, _, "response"),
    ("ict", PROCEEDING, "3xx-6xx"): (COMPLETED, "ACK", "response"),
    ("ict", PROCEEDING, "A"): (PROCEEDING, _, _),
    ("ict", PROCEEDING, "B"): (PROCEEDING, _, _),
    ("ict", PROCEEDING, "D"): (PROCEEDING, _, _),
    ("ict", PROCEEDING, "M"): (PROCEEDING, _, _),
    ("ict", COMPLETED, "1xx"): (COMPLETED, _, _),
    ("ict", COMPLETED, "2xx"): (COMPLETED, _, _),
    ("ict", COMPLETED, "3xx-6xx"): (COMPLETED, "ACK", _),        # retransmitted final: ACK again, absorbed
    ("ict", COMPLETED, "A"): (COMPLETED, _, _),
    ("ict", COMPLETED, "B"): (COMPLETED, _, _),
    ("ict", COMPLETED, "D"): (TERMINATED, _, _),
    ("ict", COMPLETED, "M"): (COMPLETED, _, _),
    ("ict", ACCEPTED, "1xx"): (ACCEPTED, _, _),
    ("ict", ACCEPTED, "2xx"): (ACCEPTED, _, "response"),         # 2xx retransmissions / other forks go up
    ("ict", ACCEPTED, "3xx-6xx"): (ACCEPTED, _, _),
    ("ict", ACCEPTED, "A"): (ACCEPTED, _, _),
    ("ict", ACCEPTED, "B"): (ACCEPTED, _, _),
    ("ict", ACCEPTED, "D"): (ACCEPTED, _, _),
    ("ict", ACCEPTED, "M"): (TERMINATED, _, _),
    # ---- non-INVITE client (§17.1.2)
    ("nict", TRYING, "1xx"): (PROCEEDING, _, "response"),
    ("nict", TRYING, "2xx"): (COMPLETED, _, "response"),
    ("nict", TRYING, "3xx-6xx"): (COMPLETED, _, "response"),
    ("nict", TRYING, "E"): (TRYING, "BYE", _),
    ("nict", TRYING, "F"): (TERMINATED, _, "timeout"),
    ("nict", TRYING, "K"): (TRYING, _, _),
    ("nict", PROCEEDING, "1xx"): (PROCEEDING, _, "response"),
    ("nict", PROCEEDING, "2xx"): (COMPLETED, _, "response"),
    ("nict", PROCEEDING, "3xx-6xx"): (COMPLETED, _, "response"),
    ("nict", PROCEEDING, "E"): (PROCEEDING, "BYE", _),
    ("nict", PROCEEDING, "F"): (TERMINATED, _, "timeout"),
    ("nict", PROCEEDING, "K"): (PROCEEDING, _, _),
    ("nict", COMPLETED, "1xx"): (COMPLETED, _, _),
    ("nict", COMPLETED, "2xx"): (COMPLETED, _, _),             # retransmitted final: absorbed
    ("nict", COMPLETED, "3xx-6xx"): (COMPLETED, _, _),
    ("nict", COMPLETED, "E"): (COMPLETED, _, _),
    ("nict", COMPLETED, "F"): (COMPLETED, _, _),
    ("nict", COMPLETED, "K"): (TERMINATED, _, _),
    # ---- INVITE server (§17.2.1, RFC 6026 §7.1); the TU sent 100 Trying on creation
    ("ist", PROCEEDING, "INVITE"): (PROCEEDING, "180", _),      # retransmission: the last provisional again
    ("ist", PROCEEDING, "ACK"): (PROCEEDING, _, _),
    ("ist", PROCEEDING, "1xx"): (PROCEEDING, "180", _),
    ("ist", PROCEEDING, "2xx"): (ACCEPTED, "200", _),
    ("ist", PROCEEDING, "3xx-6xx"): (COMPLETED, "486", _),
    ("ist", PROCEEDING, "G"): (PROCEEDING, _, _),
    ("ist", PROCEEDING, "H"): (PROCEEDING, _, _),
    ("ist", PROCEEDING, "I"): (PROCEEDING, _, _),
    ("ist", PROCEEDING, "L"): (PROCEEDING, _, _),
    ("ist", COMPLETED, "INVITE"): (COMPLETED, "486", _),        # retransmission: the final again
    ("ist", COMPLETED, "ACK"): (CONFIRMED, _, _),
    ("ist", COMPLETED, "1xx"): (COMPLETED, _, _),
    ("ist", COMPLETED, "2xx"): (COMPLETED, _, _),
    ("ist", COMPLETED, "3xx-6xx"): (COMPLETED, _, _),
    ("ist", COMPLETED, "G"): (COMPLETED, "486", _),
    ("ist", COMPLETED, "H"): (TERMINATED, _, _),
    ("ist", COMPLETED, "I"): (COMPLETED, _, _),
    ("ist", COMPLETED, "L"): (COMPLETED, _, _),
    ("ist", CONFIRMED, "INVITE"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "ACK"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "1xx"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "2xx"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "3xx-6xx"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "G"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "H"): (CONFIRMED, _, _),
    ("ist", CONFIRMED, "I"): (TERMINATED, _, _),
    ("ist", CONFIRMED, "L"): (CONFIRMED, _, _),
    ("ist", ACCEPTED, "INVITE"): (ACCEPTED, _, _),              # RFC 6026: absorbed, not passed up, not answered
    ("ist", ACCEPTED, "ACK"): (ACCEPTED, _, "request"),         # RFC 6026: an ACK here goes to the TU
    ("ist", ACCEPTED, "1xx"): (ACCEPTED, _, _),
    ("ist", ACCEPTED, "2xx"): (ACCEPTED, "200", _),             # the TU's 2xx retransmissions go out
    ("ist", ACCEPTED, "3xx-6xx"): (ACCEPTED, _, _),
    ("ist", ACCEPTED, "G"): (ACCEPTED, _, _),
    ("ist", ACCEPTED, "H"): (ACCEPTED, _, _),
    ("ist", ACCEPTED, "I"): (ACCEPTED, _, _),
    ("ist", ACCEPTED, "L"): (TERMINATED, _, _),
    # ---- non-INVITE server (§17.2.2)
    ("nist", TRYING, "request"): (TRYING, _, _),                # absorbed: nothing to resend yet
    ("nist", TRYING, "1xx"): (PROCEEDING, "100", _),
    ("nist", TRYING, "2xx"): (COMPLETED, "200", _),
    ("nist", TRYING, "3xx-6xx"): (COMPLETED, "486", _),
    ("nist", TRYING, "J"): (TRYING, _, _),
    ("nist", PROCEEDING, "request"): (PROCEEDING, "100", _),
    ("nist", PROCEEDING, "1xx"): (PROCEEDING, "100", _),
    ("nist", PROCEEDING, "2xx"): (COMPLETED, "200", _),
    ("nist", PROCEEDING, "3xx-6xx"): (COMPLETED, "486", _),
    ("nist", PROCEEDING, "J"): (PROCEEDING, _, _),
    ("nist", COMPLETED, "request"): (COMPLETED, "200", _),      # retransmission: the final again
    ("nist", COMPLETED, "1xx"): (COMPLETED, _, _),
    ("nist", COMPLETED, "2xx"): (COMPLETED, _, _),
    ("nist", COMPLETED, "3xx-6xx"): (COMPLETED, _, _),
    ("nist", COMPLETED, "J"): (TERMINATED, _, _),
}
# a terminated transaction ignores everything
for _m, _paths in PATHS.items():
    for _ev in EVENTS[_m]:
        TABLE[(_m, TERMINATED, _ev)] = (TERMINATED, _, _)


def reach(kind, state, timers=None):
    m = Machine(kind, timers)
    if kind == "ist":
        m.respond(100)
    for ev in PATHS[kind][state]:
        m.event(ev)
    assert m.txn.state is state, (kind, state, m.txn.state)
    m.ctx.take()
    return m


def test_table_covers_every_state_and_event():
    for kind in PATHS:
        expected = set(itertools.product([kind], PATHS[kind], EVENTS[kind]))
        got = {k for k in TABLE if k[0] == kind}
        assert got == expected, sorted(expected ^ got)


@pytest.mark.parametrize("kind,state,event", sorted(TABLE, key=str), ids=lambda v: str(v))
def test_transition(kind, state, event):
    nxt, sent, tu_called = TABLE[(kind, state, event)]
    m = reach(kind, state)
    terminated_before = len(m.tu.terminated)
    got_tu = m.event(event)
    assert m.txn.state is nxt
    assert sent_summary(m.ctx) == ([sent] if sent else [])
    assert got_tu == tu_called
    # leaving for Terminated tells the TU once and empties the table
    entered = nxt is TERMINATED and state is not TERMINATED
    assert len(m.tu.terminated) - terminated_before == (1 if entered else 0)
    assert len(m.table) == (0 if nxt is TERMINATED else 1)
    if nxt is TERMINATED:
        assert armed(m.ctx, m.txn) == []


@pytest.mark.parametrize("kind,state", [(k, s) for k in PATHS for s in PATHS[k]], ids=str)
def test_timers_armed_in_each_state(kind, state):
    m = reach(kind, state)
    assert armed(m.ctx, m.txn) == ARMED[kind][state]


# ---------------------------------------------------------------------------------------------------- timer values
def drive(m, until, step=0.01):
    """Advance the wheel in small steps up to ``until`` (absolute); returns [(time, what was sent)]."""
    out = []
    k = 0
    start = m.now
    while m.now < until - 1e-9:
        k += 1
        m.now = min(start + k * step, until)
        m.ctx.wheel.advance(m.now)
        for s in sent_summary(m.ctx):
            out.append((round(m.now - T0, 3), s))
    return out


CONFIGS = [TimerConfig(), TimerConfig(t1=0.1, t2=0.4, t4=1.0), TimerConfig(t1=0.25, t2=2.0, t4=3.0)]
IDS = ["default", "t1=0.1", "t1=0.25"]


def _expected_times(first, intervals, limit):
    out = []
    t = first
    for iv in intervals:
        if t >= limit - 1e-9:
            break
        out.append(t)
        t += iv
    return out


def _close(got, expected, tol=0.02):
    """Same number of sends, and every gap within a tick or two of the expected one (the wheel fires up to one
    tick early and the next interval starts from when it fired)."""
    assert len(got) == len(expected), (got, expected)
    gaps = [b - a for a, b in zip([0.0] + got, got)]
    want = [b - a for a, b in zip([0.0] + expected, expected)]
    for g, e in zip(gaps, want):
        assert abs(g - e) <= tol, (got, expected)


@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_timer_a_doubles_without_cap_then_b_times_out_at_64_t1(tc):
    m = Machine("ict", tc)
    assert sent_summary(m.ctx) == ["INVITE"]
    log = drive(m, T0 + 64 * tc.t1 + 5)
    times = [t for t, s in log if s == "INVITE"]
    expected = _expected_times(tc.t1, [tc.t1 * 2 ** k for k in range(1, 40)], 64 * tc.t1)
    _close(times, expected)
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    assert gaps[-1] > tc.t2                     # no cap at T2
    assert [s for _, s in log] == ["INVITE"] * len(times)
    [(txn, when)] = m.tu.timeouts
    assert txn is m.txn and abs(when - T0 - 64 * tc.t1) <= 0.02
    assert m.txn.state is TERMINATED and len(m.table) == 0
    assert m.txn.last_status == 408


@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_timer_e_doubles_up_to_t2_then_f_times_out(tc):
    m = Machine("nict", tc)
    sent_summary(m.ctx)
    log = drive(m, T0 + 64 * tc.t1 + 5)
    times = [t for t, _ in log]
    intervals = [min(tc.t1 * 2 ** k, tc.t2) for k in range(1, 400)]
    _close(times, _expected_times(tc.t1, intervals, 64 * tc.t1))
    assert max(b - a for a, b in zip(times, times[1:])) <= tc.t2 + 0.02
    assert len(m.tu.timeouts) == 1 and abs(m.tu.timeouts[0][1] - T0 - 64 * tc.t1) <= 0.02
    assert len(m.table) == 0


@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_timer_e_goes_to_t2_in_proceeding(tc):
    m = Machine("nict", tc)
    sent_summary(m.ctx)
    drive(m, T0 + tc.t1 / 2)
    assert m.receive(100) is True and m.txn.state is PROCEEDING
    log = drive(m, T0 + 64 * tc.t1 + 5)
    times = [t for t, _ in log]
    # the E armed in Trying still fires at T1, then every T2 (§17.1.2.2)
    _close(times, _expected_times(tc.t1, [tc.t2] * 400, 64 * tc.t1))
    assert len(m.tu.timeouts) == 1                # F still applies in Proceeding


@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_timer_g_doubles_up_to_t2_until_h(tc):
    m = reach("ist", PROCEEDING, tc)
    m.event("3xx-6xx")
    assert sent_summary(m.ctx) == ["486"]
    log = drive(m, T0 + 64 * tc.t1 - 0.05)
    assert m.txn.state is COMPLETED               # no ACK yet: Timer H has not fired
    log += drive(m, T0 + 64 * tc.t1 + 5)
    times = [t for t, _ in log]
    intervals = [min(tc.t1 * 2 ** k, tc.t2) for k in range(1, 400)]
    _close(times, _expected_times(tc.t1, intervals, 64 * tc.t1))
    assert max(b - a for a, b in zip(times, times[1:])) <= tc.t2 + 0.02
    assert {s for _, s in log} == {"486"}
    assert m.txn.state is TERMINATED and len(m.table) == 0
    assert m.tu.terminated == [m.txn]


@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_ack_stops_g_and_timer_i_is_t4(tc):
    m = reach("ist", PROCEEDING, tc)
    m.event("3xx-6xx")
    assert sent_summary(m.ctx) == ["486"]
    assert drive(m, T0 + tc.t1 + 0.05) == [(pytest.approx(tc.t1, abs=0.02), "486")]    # one G
    m.event("ACK")
    ack_at = m.now
    assert m.txn.state is CONFIRMED
    log = drive(m, ack_at + tc.t4 - 0.05)
    assert log == [] and m.txn.state is CONFIRMED
    drive(m, ack_at + tc.t4 + 0.05)
    assert m.txn.state is TERMINATED and len(m.table) == 0


@pytest.mark.parametrize("tc", CONFIGS + [TimerConfig(t1=1.0, t2=4.0, t4=5.0)], ids=IDS + ["t1=1"])
def test_timer_d_is_at_least_32s(tc):
    assert tc.d == max(32.0, 64 * tc.t1)
    m = Machine("ict", tc)
    drive(m, T0 + 0.05)
    m.receive(486)
    assert sent_summary(m.ctx) == ["ACK"]
    at = m.now
    drive(m, at + tc.d - 0.05)
    assert m.txn.state is COMPLETED
    m.receive(486)                                 # a late retransmission is still ACKed
    assert sent_summary(m.ctx) == ["ACK"]
    drive(m, at + tc.d + 0.05)
    assert m.txn.state is TERMINATED and len(m.table) == 0 and m.tu.timeouts == []


@pytest.mark.parametrize("kind,final,timer", [("ict", 200, "m"), ("nict", 200, "k"), ("nict", 404, "k")])
@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_client_wait_timers_m_and_k(tc, kind, final, timer):
    m = Machine(kind, tc)
    drive(m, T0 + 0.05)
    m.receive(final)
    at = m.now
    wait = getattr(tc, timer)
    assert wait == (64 * tc.t1 if timer == "m" else tc.t4)
    log = drive(m, at + wait - 0.05)
    assert log == [] and m.txn.state is not TERMINATED
    drive(m, at + wait + 0.05)
    assert m.txn.state is TERMINATED and len(m.table) == 0


@pytest.mark.parametrize("kind,final,timer", [("ist", 200, "l"), ("nist", 200, "j"), ("nist", 486, "j")])
@pytest.mark.parametrize("tc", CONFIGS, ids=IDS)
def test_server_wait_timers_l_and_j(tc, kind, final, timer):
    m = reach(kind, PROCEEDING if kind == "ist" else TRYING, tc)
    m.respond(final)
    assert sent_summary(m.ctx) == [str(final)]
    at = m.now
    wait = getattr(tc, timer)
    assert wait == 64 * tc.t1
    log = drive(m, at + wait - 0.05)
    assert [s for _, s in log] == []              # nothing retransmitted on its own (RFC 6026: not even 2xx)
    m.event("INVITE" if kind == "ist" else "request")
    assert sent_summary(m.ctx) == ([] if kind == "ist" else [str(final)])
    drive(m, at + wait + 0.05)
    assert m.txn.state is TERMINATED and len(m.table) == 0


def test_timer_config_from_config_and_rfc_values():
    tc = TimerConfig.from_config(config.load(overrides={("transaction", "t1"): 0.2, ("transaction", "t2"): 2.0,
                                                        ("transaction", "t4"): 4.0}))
    assert (tc.t1, tc.t2, tc.t4) == (0.2, 2.0, 4.0)
    assert tc.b == tc.f == tc.h == tc.j == tc.l == tc.m == pytest.approx(12.8)
    assert tc.d == 32.0 and tc.i == tc.k == 4.0


# ---------------------------------------------------------------------------------------------------- late timers
@pytest.mark.parametrize("kind", ["ict", "nict", "ist", "nist"])
def test_terminated_transaction_ignores_late_timers(kind):
    m = reach(kind, {"ict": CALLING, "nict": TRYING, "ist": COMPLETED, "nist": COMPLETED}[kind])
    live = [e for slot in m.ctx.wheel.slots for e in slot if e[3] and e[2][0] is m.txn]
    assert live
    m.txn.terminate()                              # e.g. the proxy ends a branch on Timer C
    assert len(m.table) == 0 and m.tu.terminated == [m.txn]
    for e in live:                                 # a timer already taken off the wheel by another thread
        e[3] = True
    drive(m, T0 + 80)
    assert sent_summary(m.ctx) == [] and m.tu.timeouts == []
    assert m.tu.terminated == [m.txn]              # terminate() is idempotent
    assert len(m.ctx.wheel) == 0


def test_lazily_cancelled_retransmission_timer_finds_the_new_state():
    m = Machine("ict")
    sent_summary(m.ctx)
    a = m.txn.h_retx
    drive(m, T0 + 0.1)
    m.receive(200)
    assert a[3] is False                           # cancelled lazily: still on the wheel
    a[3] = True                                    # ... and fired anyway (raced with the 2xx)
    log = drive(m, T0 + 5)
    assert log == [] and m.txn.state is ACCEPTED


def test_terminated_client_passes_nothing_up():
    m = reach("ict", TERMINATED)
    for status in (100, 180, 200, 486):
        assert m.receive(status) is False
    assert sent_summary(m.ctx) == []


# ---------------------------------------------------------------------------------------------------- matching
def key(**kw):
    return server_key(request(**kw))


MATCH = [
    # (description, request A kwargs, request B kwargs, same transaction?)
    ("retransmission", {}, {}, True),
    ("ACK matches its INVITE", {}, dict(method="ACK", cseq_method="ACK", to_tag="x"), True),
    ("CANCEL is its own transaction", {}, dict(method="CANCEL"), False),
    ("other method, same branch", {}, dict(method="BYE"), False),
    ("other branch", {}, dict(branch="z9hG4bKother"), False),
    ("other sent-by host", {}, dict(sent_by="192.0.2.11:5062"), False),
    ("other sent-by port", {}, dict(sent_by="192.0.2.10:5063"), False),
    ("Call-ID does not take part with a cookie", {}, dict(call_id="other"), True),
    ("CSeq number does not take part with a cookie", {}, dict(cseq=2), True),
    # RFC 2543 fallback: no magic cookie
    ("2543 retransmission", dict(branch="1234"), dict(branch="1234"), True),
    ("2543 no branch", dict(branch=None), dict(branch=None), True),
    ("2543 ACK with To tag", dict(branch="1234"), dict(branch="1234", method="ACK", cseq_method="ACK", to_tag="x"),
     True),
    ("2543 CANCEL", dict(branch="1234"), dict(branch="1234", method="CANCEL"), False),
    ("2543 other Call-ID", dict(branch="1234"), dict(branch="1234", call_id="other"), False),
    ("2543 other CSeq", dict(branch="1234"), dict(branch="1234", cseq=2), False),
    ("2543 other From tag", dict(branch="1234"), dict(branch="1234", from_tag="x"), False),
    ("2543 other Request-URI", dict(branch="1234"), dict(branch="1234", uri="sip:carol@example.com"), False),
    ("2543 other top Via", dict(branch="1234"), dict(branch="1234", sent_by="192.0.2.11:5062"), False),
    ("cookie vs none", {}, dict(branch=BRANCH[len("z9hG4bK"):]), False),
]


@pytest.mark.parametrize("desc,a,b,same", MATCH, ids=[m[0] for m in MATCH])
def test_server_matching(desc, a, b, same):
    ka, kb = key(**a), key(**b)
    assert ka is not None and kb is not None
    assert (ka == kb) is same


@pytest.mark.parametrize("branch", [BRANCH, "1234", None])
def test_cancel_key_maps_to_its_invite(branch):
    """The proxy finds the INVITE of a CANCEL by swapping the method at the end of the key."""
    ck = key(method="CANCEL", branch=branch)
    assert ck.endswith("|CANCEL")
    assert ck[:-len("CANCEL")] + "INVITE" == key(branch=branch)


def test_client_matching_is_branch_and_cseq_method():
    assert client_key(response(200, "INVITE")) == client_key_for(BRANCH, "INVITE")
    assert client_key(response(200, "CANCEL")) == client_key_for(BRANCH, "CANCEL")
    assert client_key(response(200, "CANCEL")) != client_key(response(200, "INVITE"))
    assert client_key(response(200, "INVITE", branch="z9hG4bKother")) != client_key_for(BRANCH, "INVITE")
    # the To tag, status and CSeq number do not take part
    assert client_key(response(180, "INVITE", to_tag="a", cseq=7)) == client_key(response(486, "INVITE", to_tag="b"))
    nobranch = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5062\r\nFrom: <sip:a@x>;tag=1\r\n"
                     b"To: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert client_key(nobranch) is None


def test_table_matches_and_removes_only_its_own_entry():
    table = TransactionTable()
    timers = TimerConfig()
    inv = request()
    st = InviteServerTransaction(server_key(inv), UAC, table, timers)
    assert table.add(st) is st
    twin = InviteServerTransaction(server_key(inv), UAC, table, timers)
    assert table.add(twin) is st                   # the same request on two threads: the first one wins
    assert table.match_request(request("ACK", cseq_method="ACK", to_tag="x")) is st
    assert table.match_request(request("CANCEL")) is None
    ct = InviteClientTransaction(_raw("INVITE"), BRANCH, "INVITE", UAS, table, timers, TU(),
                                 ack_info=("sip:bob@example.com", VIA, "<sip:a@x>;tag=1", "c", 1, ()))
    table.add(ct)
    assert table.match_response(response(180)) is ct
    assert table.match_response(response(200, "CANCEL")) is None
    assert len(table) == 2
    twin.terminate()                               # a stale twin must not evict the live transaction
    assert table.get(st.key) is st and len(table) == 2
    st.terminate()
    ct.terminate()
    assert len(table) == 0 and table.match_request(inv) is None


def test_ack_built_by_the_client_transaction():
    """§17.1.1.3: the ACK of a non-2xx has the INVITE's Request-URI, top Via, From, Call-ID and CSeq number,
    the response's To (with its tag) and the INVITE's Route set."""
    ctx = FakeCtx(T0)
    routes = ("<sip:192.0.2.1:5060;lr>",)
    ct = InviteClientTransaction(_raw("INVITE"), BRANCH, "INVITE", UAS, TransactionTable(), TimerConfig(), TU(),
                                 ack_info=("sip:bob@192.0.2.20:5062", VIA, "<sip:alice@example.com>;tag=ft1",
                                           "call-1", 7, routes))
    ct.start(T0, ctx)
    ctx.take()
    ct.on_response(response(486, to_tag="uas9"), T0 + 0.1, ctx)
    [(data, addr)] = ctx.take()
    ack = parse(data)
    assert addr == UAS
    assert ack.method == "ACK" and ack.uri == "sip:bob@192.0.2.20:5062"
    assert ack.via.branch == BRANCH and ack.via.sent_by == "192.0.2.10:5062"
    assert ack.from_.tag == "ft1" and ack.to.tag == "uas9" and ack.call_id == "call-1"
    assert (ack.cseq.num, ack.cseq.method) == (7, "ACK")
    assert [r.raw for r in ack.routes] == list(routes)
