"""Call flows through the real App (proxy-registrar) on the in-memory network of ``harness``.

Each flow asserts what every UA saw, what went over the wire and the states every proxy transaction went through,
and ends with ``sim.drain()``: every transaction table empties once the timers have run out, and nothing is left
on the proxy's wheel (no leak while waiting for Timer J/K - sipgo issues 277/349).
"""
import pytest

from ftsip.sip import parse
from proxy.harness import PROXY, T0, Sim, Sink

ALICE = "192.0.2.10"
BOB = "192.0.2.20"
BOB2 = "192.0.2.21"
VM_ADDR = ("192.0.2.99", 5070)
VM = f"sip:vm@{VM_ADDR[0]}:{VM_ADDR[1]}"
FOREIGN = ("198.51.100.7", 5060)

IST = ("ist", "INVITE")
ICT = ("ict", "INVITE")
# the paths through the state machines the flows below expect (RFC 3261 §17 + RFC 6026)
ST_2XX = (*IST, "proceeding", "accepted", "terminated")                  # answered: Timer L
ST_NON2XX = (*IST, "proceeding", "completed", "confirmed", "terminated")  # rejected, ACK absorbed: Timer I
CT_2XX = (*ICT, "calling", "proceeding", "accepted", "terminated")       # 180, 200: Timer M
CT_RING_NON2XX = (*ICT, "calling", "proceeding", "completed", "terminated")   # 180, 4xx-6xx: ACK, Timer D
CT_NON2XX = (*ICT, "calling", "completed", "terminated")                  # straight to 4xx-6xx
CANCEL_CT = ("nict", "CANCEL", "trying", "completed", "terminated")       # 200 to CANCEL: Timer K
CANCEL_ST = ("nist", "CANCEL", "trying", "completed", "terminated")       # Timer J


def ladder(sim, mark=0, only=None):
    return [(s, d, w) for _, s, d, w, ok in sim.net.log[mark:] if ok and (only is None or {s, d} <= set(only))]


def sent_at(sim, src, dst, what):
    return [t for t, s, d, w, ok in sim.net.log if (s, d, w) == (src, dst, what)]


def setup(script=(), proxy=None, users=None, resolver=None, **kw):
    sim = Sim(proxy=proxy, users=users, resolver=resolver, **kw)
    alice = sim.ua("alice", ALICE)
    bob = sim.ua("bob", BOB, script=script)
    sim.register(bob)
    return sim, alice, bob


def place_call(sim, alice, target="sip:bob@example.com", limit=10):
    """INVITE ``target``, answer the proxy's 407, and run until the INVITE has its final response."""
    call = alice.call(target)
    assert sim.run_until(lambda: call.final is not None and (call.authed or call.final != 407), limit)
    return call


RING = [(0.05, 180)]
ANSWER = [(0.05, 180), (0.5, 200)]


# ---------------------------------------------------------------------------------------------------- REGISTER
def test_registration_with_auth():
    sim = Sim()
    alice = sim.ua("alice", ALICE, expires=900)
    alice.register()
    assert sim.run_until(lambda: alice.reg_final is not None, 10)
    assert alice.reg_final == 200
    assert alice.seen == ["401 REGISTER", "200 REGISTER"]
    assert ladder(sim) == [("alice", "proxy", "REGISTER"), ("proxy", "alice", "401 REGISTER"),
                           ("alice", "proxy", "REGISTER"), ("proxy", "alice", "200 REGISTER")]
    [b] = sim.app.location.lookup("alice@example.com", sim.now)
    assert b.contact == f"sip:alice@{ALICE}:5062" and b.received == (ALICE, 5062)
    assert 899 <= b.remaining(sim.now) <= 900
    assert sim.proxy.watch.items == []             # the registrar answers statelessly
    sim.drain()


def test_registration_with_a_wrong_password_fails():
    sim = Sim()
    eve = sim.ua("alice", ALICE, password="guess")
    eve.register()
    assert sim.run_until(lambda: eve.reg_final is not None, 10)
    assert eve.reg_final == 401 and eve.seen == ["401 REGISTER", "401 REGISTER"]
    assert sim.app.location.lookup("alice@example.com", sim.now) == ()
    sim.drain()
    assert sim.proxy.watch.histories() == []


# ---------------------------------------------------------------------------------------------------- the call
def test_completed_call_the_papers_flow():
    """INVITE/407/ACK/INVITE/100/180/200/ACK/BYE/407/BYE/200."""
    sim, alice, bob = setup(ANSWER)
    mark = len(sim.net.log)
    call = place_call(sim, alice)
    assert call.final == 200
    assert sim.run_until(lambda: bob.incoming[0].acked, 2)
    sim.run(1)
    alice.bye(call)
    assert sim.run_until(lambda: call.bye_final is not None, 10)
    assert call.bye_final == 200
    assert ladder(sim, mark) == [
        ("alice", "proxy", "INVITE"), ("proxy", "alice", "407 INVITE"), ("alice", "proxy", "ACK"),
        ("alice", "proxy", "INVITE"), ("proxy", "alice", "100 INVITE"), ("proxy", "bob", "INVITE"),
        ("bob", "proxy", "180 INVITE"), ("proxy", "alice", "180 INVITE"),
        ("bob", "proxy", "200 INVITE"), ("proxy", "alice", "200 INVITE"),
        ("alice", "proxy", "ACK"), ("proxy", "bob", "ACK"),
        ("alice", "proxy", "BYE"), ("proxy", "alice", "407 BYE"),
        ("alice", "proxy", "BYE"), ("proxy", "bob", "BYE"), ("bob", "proxy", "200 BYE"), ("proxy", "alice", "200 BYE"),
    ]
    assert alice.seen == ["407 INVITE", "100 INVITE", "180 INVITE", "200 INVITE", "407 BYE", "200 BYE"]
    assert bob.seen[2:] == ["INVITE", "ACK", "BYE"]
    inc = bob.incoming[0]
    assert inc.sent == [180, 200] and inc.acked and inc.bye
    # what the proxy forwarded (§16.6): its Via on top, the caller's with received/rport, Max-Forwards - 1,
    # Record-Route, the registered contact as Request-URI
    fwd = inc.req
    assert fwd.uri == f"sip:bob@{BOB}:5062"
    assert [v.sent_by for v in fwd.vias] == ["192.0.2.1:5060", f"{ALICE}:5062"]
    assert fwd.vias[1].rport == "5062" and fwd.max_forwards == 69
    assert [r.raw for r in fwd.record_routes] == ["<sip:192.0.2.1:5060;lr>"]
    assert call.route_set == ("<sip:192.0.2.1:5060;lr>",) and call.remote_target == f"sip:bob@{BOB}:5062"
    assert call.finals == [407, 200]
    sim.drain()
    # the 407s are stateless; one transaction pair for the INVITE and one for the BYE
    assert sim.proxy.watch.histories() == [
        (*IST, "proceeding", "accepted", "terminated"),
        (*ICT, "calling", "proceeding", "accepted", "terminated"),
        ("nist", "BYE", "trying", "completed", "terminated"),
        ("nict", "BYE", "trying", "completed", "terminated"),
    ]


def test_2xx_retransmissions_are_relayed_until_the_ack():
    """The ACK of the first 200 is lost: the callee retransmits the 200, the proxy relays each one, the caller
    ACKs each one (the UAS core, not the transaction, owns 2xx reliability)."""
    sim, alice, bob = setup(ANSWER)
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: call.final == 200, 10)
    orig = sim.net.send
    dropped = []

    def drop_first_ack(src, dst, data):
        if dst == (BOB, 5062) and data.startswith(b"ACK") and not dropped:
            dropped.append(data)
            return
        orig(src, dst, data)
    sim.net.send = drop_first_ack
    assert sim.run_until(lambda: bob.incoming[0].acked, 5)
    assert dropped
    assert alice.seen.count("200 INVITE") == 2 and call.acks_sent == 2
    assert [s for s, _ in call.responses].count(200) == 2 and len({t for s, t in call.responses if s == 200}) == 1
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_2XX, CT_2XX]


# ---------------------------------------------------------------------------------------------------- no target
@pytest.mark.parametrize("target,status", [("sip:carol@example.com", 480), ("sip:dave@example.com", 404)])
def test_call_to_a_user_without_binding(target, status):
    sim, alice, bob = setup()
    call = place_call(sim, alice, target)
    assert call.final == status
    assert alice.seen == ["407 INVITE", f"{status} INVITE"]
    sim.run(0.1)
    assert sim.proxy.watch.items == []             # answered statelessly
    assert sim.proxy.stats["rx.ack_absorbed"] == 2  # the ACKs of the 407 and of the 404/480 stop at the proxy
    assert ladder(sim, only={"proxy", "bob"})[-1] == ("proxy", "bob", "200 REGISTER")
    sim.drain()


def test_unknown_user_is_404_even_with_a_voicemail():
    """A voicemail takes calls for known users; a user that does not exist is still 404."""
    sim, alice, bob = setup(proxy={"proxy.voicemail": VM})
    vm = sim.ua("vm", VM_ADDR[0], port=VM_ADDR[1], script=[(0.05, 200)])
    call = place_call(sim, alice, "sip:dave@example.com")
    assert call.final == 404 and vm.seen == []
    call = place_call(sim, alice, "sip:carol@example.com")     # known, not registered: voicemail
    assert call.final == 200 and vm.seen[0] == "INVITE" and vm.incoming[0].req.uri == VM
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_2XX, (*ICT, "calling", "accepted", "terminated")]


# ---------------------------------------------------------------------------------------------------- voicemail
def test_busy_callee_fails_over_to_voicemail():
    sim, alice, bob = setup([(0.05, 486)], proxy={"proxy.voicemail": VM})
    vm = sim.ua("vm", VM_ADDR[0], port=VM_ADDR[1], script=[(0.05, 200)])
    call = place_call(sim, alice)
    assert call.final == 200
    assert sim.run_until(lambda: vm.incoming and vm.incoming[0].acked, 2)
    assert alice.seen == ["407 INVITE", "100 INVITE", "200 INVITE"]          # the 486 is not passed on
    assert bob.seen[2:] == ["INVITE", "ACK"] and bob.incoming[0].sent == [486]
    assert vm.seen == ["INVITE", "ACK"] and vm.incoming[0].req.uri == VM
    assert call.to_tag == vm.incoming[0].tag
    sim.drain()
    assert sim.proxy.watch.histories() == [
        (*IST, "proceeding", "accepted", "terminated"),
        (*ICT, "calling", "completed", "terminated"),
        (*ICT, "calling", "accepted", "terminated"),
    ]
    assert sim.proxy.stats["proxy.voicemail"] == 1


def test_voicemail_from_the_user_file():
    """A user's own voicemail (the user file's column) with no global one configured."""
    sim, alice, bob = setup([(0.05, 486)], users={"bob": {"voicemail": VM}})
    vm = sim.ua("vm", VM_ADDR[0], port=VM_ADDR[1], script=[(0.05, 200)])
    call = place_call(sim, alice)
    assert call.final == 200 and call.to_tag == vm.incoming[0].tag
    call = place_call(sim, alice, "sip:carol@example.com")        # carol has none: 480
    assert call.final == 480
    sim.drain()


def test_no_answer_goes_to_voicemail_after_ring_timeout():
    sim, alice, bob = setup(RING, proxy={"proxy.voicemail": VM, "proxy.ring_timeout": 2.0})
    vm = sim.ua("vm", VM_ADDR[0], port=VM_ADDR[1], script=[(0.05, 200)])
    call = place_call(sim, alice)
    assert call.final == 200 and call.to_tag == vm.incoming[0].tag
    [invite_at] = sent_at(sim, "proxy", "bob", "INVITE")
    [cancel_at] = sent_at(sim, "proxy", "bob", "CANCEL")
    assert 1.99 <= cancel_at - invite_at <= 2.05
    assert alice.seen == ["407 INVITE", "100 INVITE", "180 INVITE", "200 INVITE"]
    assert bob.seen[2:] == ["INVITE", "CANCEL", "ACK"] and bob.incoming[0].sent == [180, 487]
    assert sent_at(sim, "proxy", "vm", "INVITE")[0] > sent_at(sim, "bob", "proxy", "487 INVITE")[0]
    sim.drain()
    assert sim.proxy.watch.histories(kind="ict") == [
        (*ICT, "calling", "proceeding", "completed", "terminated"),
        (*ICT, "calling", "accepted", "terminated"),
    ]


# ---------------------------------------------------------------------------------------------------- CANCEL
def test_caller_cancels_before_answer():
    sim, alice, bob = setup(RING)
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: (180, bob.incoming[0].tag if bob.incoming else None) in call.responses, 5)
    alice.cancel(call)
    assert sim.run_until(lambda: call.final is not None and call.cancel_final is not None, 5)
    assert call.cancel_final == 200 and call.final == 487
    sim.run(0.1)
    assert alice.seen == ["407 INVITE", "100 INVITE", "180 INVITE", "200 CANCEL", "487 INVITE"]
    assert bob.seen[2:] == ["INVITE", "CANCEL", "ACK"]
    inc = bob.incoming[0]
    assert inc.cancelled and inc.sent == [180, 487] and inc.acks == 1
    # the caller's ACK of the 487 is absorbed by the proxy's server transaction; bob's ACK is the proxy's own
    assert sim.proxy.stats["rx.absorbed"] == 1
    assert sent_at(sim, "proxy", "bob", "ACK")[0] > sent_at(sim, "bob", "proxy", "487 INVITE")[0]
    sim.drain()
    assert sim.proxy.watch.histories() == [
        (*IST, "proceeding", "completed", "confirmed", "terminated"),
        (*ICT, "calling", "proceeding", "completed", "terminated"),
        ("nist", "CANCEL", "trying", "completed", "terminated"),
        ("nict", "CANCEL", "trying", "completed", "terminated"),
    ]


def test_cancel_waits_for_a_provisional_response_downstream():
    """§9.1: the proxy holds its CANCEL until the branch has a provisional response; the caller's CANCEL is
    answered at once."""
    sim, alice, bob = setup([(1.5, 180)])
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: call.provisional and call.authed, 5)
    sim.run(0.2)
    alice.cancel(call)
    assert sim.run_until(lambda: call.cancel_final is not None, 1)
    cancel_ok = sim.now - T0
    assert sent_at(sim, "proxy", "bob", "CANCEL") == []
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 487
    [ringing] = sent_at(sim, "bob", "proxy", "180 INVITE")
    [cancel] = sent_at(sim, "proxy", "bob", "CANCEL")
    assert ringing > cancel_ok and 0 < cancel - ringing <= 0.02
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_RING_NON2XX, CANCEL_ST, CANCEL_CT]


def test_cancel_after_only_100_trying_is_sent_downstream():
    """A 100 Trying is a provisional response too: the CANCEL goes out at once, not at Timer C."""
    sim, alice, bob = setup([(0.05, 100)])
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: sent_at(sim, "bob", "proxy", "100 INVITE"), 5)
    sim.run(0.3)
    alice.cancel(call)
    asked = sim.now
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 487 and call.cancel_final == 200
    [cancel] = sent_at(sim, "proxy", "bob", "CANCEL")
    assert cancel - (asked - T0) < 0.05
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_RING_NON2XX, CANCEL_ST, CANCEL_CT]


def test_cancel_for_an_unknown_transaction_is_481():
    sim, alice, bob = setup(RING)
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: call.provisional and call.authed, 5)
    # a CANCEL whose branch matches no INVITE at the proxy: answered 481 statelessly, nothing goes to bob
    ruri, via, from_, call_id, cseq, _ = call.invite.ack_info
    bogus = alice._build(f"CANCEL {ruri} SIP/2.0", [
        "Via: " + via.replace(call.invite.branch, "z9hG4bKnothing"), "Max-Forwards: 70", f"From: {from_}",
        f"To: {call.to}", f"Call-ID: {call_id}", f"CSeq: {cseq} CANCEL"])
    sim.net.send(alice.addr, PROXY, bogus)
    sim.run(0.1)
    assert "481 CANCEL" in alice.seen and "CANCEL" not in bob.seen
    alice.cancel(call)                                 # the real one still works
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 487 and bob.seen.count("CANCEL") == 1
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_RING_NON2XX, CANCEL_ST, CANCEL_CT]


def test_cancel_crossing_the_200():
    """The CANCEL reaches the callee after it answered: the 200 still goes up, the CANCEL gets its own 200 and no
    487; the caller has a call (and hangs up)."""
    sim, alice, bob = setup(ANSWER)
    sim.net.links[(PROXY[0], BOB)] = sim.net.links[(BOB, PROXY[0])] = 0.1
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: bob.incoming and 200 in bob.incoming[0].sent, 5)
    alice.cancel(call)                                 # the 200 is still on its way to the proxy
    assert sim.run_until(lambda: call.final is not None and call.cancel_final is not None, 5)
    assert call.cancel_final == 200 and call.final == 200
    assert sim.run_until(lambda: bob.incoming[0].acked, 5)
    assert bob.incoming[0].sent == [180, 200] and not bob.incoming[0].cancelled
    assert bob.seen[2:] == ["INVITE", "CANCEL", "ACK"]
    assert sent_at(sim, "proxy", "bob", "CANCEL")[0] < sent_at(sim, "bob", "proxy", "200 INVITE")[0] + 0.1
    alice.bye(call)
    assert sim.run_until(lambda: call.bye_final is not None, 5)
    assert call.bye_final == 200
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_2XX, CT_2XX, CANCEL_ST, CANCEL_CT,
                                            ("nist", "BYE", "trying", "completed", "terminated"),
                                            ("nict", "BYE", "trying", "completed", "terminated")]


def test_bye_to_a_dead_callee_gets_no_408_from_the_proxy():
    """RFC 4320 §4.2: a transaction-stateful element never sends 408 to a non-INVITE request (the client's own
    Timer F fires first); the proxy just ends its transactions."""
    sim, alice, bob = setup(ANSWER)
    call = place_call(sim, alice)
    assert sim.run_until(lambda: bob.incoming[0].acked, 2)
    bob.deaf = True
    alice.bye(call)
    assert sim.run_until(lambda: call.bye_final is not None, 40)
    assert call.bye_final == 408                       # alice's own timeout
    sim.run(1)
    assert sent_at(sim, "proxy", "alice", "408 BYE") == []
    assert sent_at(sim, "proxy", "bob", "BYE")         # forwarded (and retransmitted) all the same
    sim.drain()
    assert sim.proxy.watch.histories(kind="nist") == [("nist", "BYE", "trying", "terminated")]


@pytest.mark.parametrize("cancel", [False, True], ids=["completed", "cancelled"])
def test_rfc2543_caller(cancel):
    """A caller whose branches lack the magic cookie: the proxy matches its retransmissions, its CANCEL and the ACK
    of a non-2xx by the RFC 2543 rules (Request-URI, From tag, Call-ID, CSeq number, top Via)."""
    sim = Sim(seed=3, dup=0.3)                        # duplicates: every one must match its transaction
    alice = sim.ua("alice", ALICE, rfc2543=True)
    bob = sim.ua("bob", BOB, script=RING if cancel else ANSWER)
    sim.register(bob)
    call = alice.call("sip:bob@example.com")
    assert call.invite.branch[:7] != "z9hG4bK"
    if cancel:
        assert sim.run_until(lambda: call.authed and call.provisional and bob.incoming, 5)
        sim.run(0.3)
        alice.cancel(call)
    assert sim.run_until(lambda: call.final not in (None, 407), 10)
    assert call.final == (487 if cancel else 200)
    if cancel:
        assert call.cancel_final == 200 and bob.incoming[0].sent == [180, 487]
    else:
        assert sim.run_until(lambda: bob.incoming[0].acked, 5)
        alice.bye(call)
        assert sim.run_until(lambda: call.bye_final is not None, 5)
        assert call.bye_final == 200
    assert len(bob.incoming) == 1
    sim.run(0.5)
    if cancel:
        # alice's ACK of the 487 matched the proxy's INVITE transaction: what bob got is the proxy's own ACK,
        # which matches bob's INVITE transaction (never one forwarded statelessly, as a 2xx ACK would be)
        assert sim.proxy.stats["rx.absorbed"] >= 1 and "proxy.stateless" not in sim.proxy.stats
        assert bob.incoming[0].acks >= 1 and not bob.incoming[0].acked
    sim.drain()
    hist = sim.proxy.watch.histories()
    if cancel:
        assert hist == [ST_NON2XX, CT_RING_NON2XX, CANCEL_ST, CANCEL_CT]
    else:
        assert hist[:2] == [ST_2XX, CT_2XX]


def test_ack_of_a_2xx_with_the_invites_via_is_forwarded():
    """An RFC 2543 phone ACKs a 2xx with the INVITE's own Via and (calling a contact directly) Request-URI: the
    ACK matches the proxy's INVITE server transaction, now in Accepted, which must hand it to the proxy core to
    be routed rather than absorb it - else the callee never gets its ACK."""
    sim = Sim(proxy={"proxy.relay_foreign": True})
    alice = sim.ua("alice", ALICE, rfc2543=True, ack_reuses_via=True)
    bob = sim.ua("bob", BOB, script=ANSWER)
    call = place_call(sim, alice, f"sip:bob@{BOB}:5062")
    assert call.final == 200
    assert sim.run_until(lambda: bob.incoming[0].acked, 5)


# ---------------------------------------------------------------------------------------------------- forking
def fork_setup(script1, script2, q1=None, q2=None, proxy=None):
    sim = Sim(proxy=proxy)
    alice = sim.ua("alice", ALICE)
    b1 = sim.ua("bob1", BOB, user="bob", script=script1, q=q1)
    b2 = sim.ua("bob2", BOB2, user="bob", script=script2, q=q2)
    sim.register(b1, b2)
    assert len(sim.app.location.lookup("bob@example.com", sim.now)) == 2
    return sim, alice, b1, b2


def test_parallel_fork_one_answers_the_other_is_cancelled():
    sim, alice, b1, b2 = fork_setup(ANSWER, RING)
    call = place_call(sim, alice)
    assert call.final == 200
    assert sim.run_until(lambda: b2.incoming[0].sent == [180, 487] and b1.incoming[0].acked, 5)
    oks = [t for s, t in call.responses if s == 200]
    assert oks == [b1.incoming[0].tag]                   # one 200, from bob1
    assert b2.seen[2:] == ["INVITE", "CANCEL", "ACK"] and b2.incoming[0].cancelled
    assert b1.seen[2:] == ["INVITE", "ACK"]
    assert "487 INVITE" not in alice.seen
    sim.drain()
    assert sim.proxy.watch.histories() == [
        (*IST, "proceeding", "accepted", "terminated"),
        (*ICT, "calling", "proceeding", "accepted", "terminated"),
        (*ICT, "calling", "proceeding", "completed", "terminated"),
        ("nict", "CANCEL", "trying", "completed", "terminated"),
    ]


def test_every_2xx_of_a_fork_goes_up():
    """Both contacts answer at once: both 200s reach the caller (§16.7 step 5), who ACKs each dialog."""
    sim, alice, b1, b2 = fork_setup(ANSWER, ANSWER)
    call = place_call(sim, alice)
    assert call.final == 200
    assert sim.run_until(lambda: b1.incoming[0].acked and b2.incoming[0].acked, 5)
    tags = {t for s, t in call.responses if s == 200}
    assert tags == {b1.incoming[0].tag, b2.incoming[0].tag}
    assert "487 INVITE" not in alice.seen
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_2XX, CT_2XX, CT_2XX, CANCEL_CT]


def test_serial_fork_by_q():
    sim, alice, b1, b2 = fork_setup([(0.05, 486)], [(0.05, 180), (0.3, 200)], q1="1.0", q2="0.5")
    call = place_call(sim, alice)
    assert call.final == 200 and call.to_tag == b2.incoming[0].tag
    assert "486 INVITE" not in alice.seen
    order = [x for x in ladder(sim) if x[2] in ("INVITE", "486 INVITE", "ACK") and "bob" in x[0] + x[1]]
    assert order[:4] == [("proxy", "bob1", "INVITE"), ("bob1", "proxy", "486 INVITE"), ("proxy", "bob1", "ACK"),
                         ("proxy", "bob2", "INVITE")]
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_2XX, CT_NON2XX, CT_2XX]


def test_6xx_cancels_the_other_branches():
    sim, alice, b1, b2 = fork_setup([(0.05, 180), (0.4, 603)], RING)
    call = place_call(sim, alice)
    assert call.final == 603
    assert b2.seen[2:] == ["INVITE", "CANCEL", "ACK"] and b2.incoming[0].sent == [180, 487]
    assert sent_at(sim, "proxy", "bob2", "CANCEL")[0] > sent_at(sim, "bob1", "proxy", "603 INVITE")[0]
    assert "487 INVITE" not in alice.seen and alice.seen[-1] == "603 INVITE"
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_RING_NON2XX, CT_RING_NON2XX, CANCEL_CT]


def test_401_407_of_two_branches_are_merged():
    sim, alice, b1, b2 = fork_setup([(0.05, 407)], [(0.1, 401)])
    b1.challenge = 'Digest realm="one.example", nonce="n1", algorithm=MD5'
    b2.challenge = 'Digest realm="two.example", nonce="n2", algorithm=MD5'
    call = place_call(sim, alice)
    assert call.final == 401
    resp = call.msgs[-1]
    assert sorted(resp.get_all("www-authenticate") + resp.get_all("proxy-authenticate")) == sorted(
        [b1.challenge, b2.challenge])
    assert alice.seen.count("401 INVITE") == 1 and "407 INVITE" not in alice.seen[1:]
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_NON2XX, CT_NON2XX]


def test_two_407_branches_are_merged_into_one_407():
    sim, alice, b1, b2 = fork_setup([(0.05, 407)], [(0.1, 407)])
    b1.challenge = 'Digest realm="one.example", nonce="n1"'
    b2.challenge = 'Digest realm="two.example", nonce="n2"'
    call = place_call(sim, alice)
    assert call.final == 407
    assert sorted(call.msgs[-1].get_all("proxy-authenticate")) == sorted([b1.challenge, b2.challenge])
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_NON2XX, CT_NON2XX]


def test_a_challenge_is_preferred_to_busy():
    """§16.7 step 6: among 4xx, a 401/407 (which the caller can do something about) goes up before a 486."""
    sim, alice, b1, b2 = fork_setup([(0.05, 486)], [(0.1, 407)])
    b2.challenge = 'Digest realm="two.example", nonce="n2"'
    call = place_call(sim, alice)
    assert call.final == 407
    assert call.msgs[-1].get_all("proxy-authenticate") == [b2.challenge]
    assert "486 INVITE" not in alice.seen
    sim.drain()


def test_503_from_downstream_becomes_500():
    sim, alice, bob = setup([(0.05, 503)])
    call = place_call(sim, alice)
    assert call.final == 500
    assert call.msgs[-1].to.tag != bob.incoming[0].tag        # the proxy's own response
    assert "503 INVITE" not in alice.seen
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_NON2XX]


# ---------------------------------------------------------------------------------------------------- Timer C
def test_timer_c_cancels_a_ringing_branch():
    sim, alice, bob = setup(RING, proxy={"proxy.timer_c": 5.0})
    call = place_call(sim, alice, limit=10)
    assert call.final == 487
    [ringing] = sent_at(sim, "bob", "proxy", "180 INVITE")
    [cancel] = sent_at(sim, "proxy", "bob", "CANCEL")
    assert 5.0 <= cancel - ringing <= 5.05
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_RING_NON2XX, CANCEL_CT]


def test_timer_c_restarts_on_each_provisional():
    sim, alice, bob = setup([(0.05, 180), (3.0, 183)], proxy={"proxy.timer_c": 5.0})
    call = place_call(sim, alice, limit=12)
    assert call.final == 487
    [session] = sent_at(sim, "bob", "proxy", "183 INVITE")
    [cancel] = sent_at(sim, "proxy", "bob", "CANCEL")
    assert 5.0 <= cancel - session <= 5.05
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_RING_NON2XX, CANCEL_CT]


def test_timer_c_without_provisional_is_a_408():
    sim, alice, bob = setup([], proxy={"proxy.timer_c": 5.0})
    bob.deaf = True                                   # gone without a word (still registered)
    call = place_call(sim, alice, limit=10)
    assert call.final == 408
    assert "CANCEL" not in bob.seen and bob.seen.count("INVITE") >= 3       # Timer A retransmissions
    [invite] = sent_at(sim, "proxy", "bob", "INVITE")[:1]
    [final] = sent_at(sim, "proxy", "alice", "408 INVITE")
    assert 5.0 <= final - invite <= 5.05
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, (*ICT, "calling", "terminated")]


def test_timer_c_with_a_dead_callee_still_ends_the_call():
    """The callee rang, then died: Timer C sends a CANCEL nobody answers. The INVITE branch must not wait forever
    (§9.1: 64*T1 after the CANCEL it is given up) - else the caller never gets a final response and the proxy
    keeps the transactions."""
    sim, alice, bob = setup(RING, proxy={"proxy.timer_c": 5.0})
    bob.deaf_after_script = True
    call = place_call(sim, alice, limit=60)
    assert call.final == 408
    [cancel] = sent_at(sim, "proxy", "bob", "CANCEL")[:1]
    [final] = sent_at(sim, "proxy", "alice", "408 INVITE")
    assert 32.0 <= final - cancel <= 32.1
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, (*ICT, "calling", "proceeding", "terminated"),
                                            ("nict", "CANCEL", "trying", "terminated")]


def test_caller_cancel_with_a_dead_callee_still_ends_the_call():
    sim, alice, bob = setup(RING)
    bob.deaf_after_script = True
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: call.provisional and call.authed and "180 INVITE" in alice.seen, 5)
    alice.cancel(call)
    assert sim.run_until(lambda: call.final is not None, 60)
    assert call.cancel_final == 200 and call.final == 487
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, (*ICT, "calling", "proceeding", "terminated"), CANCEL_ST,
                                            ("nict", "CANCEL", "trying", "terminated")]


# ---------------------------------------------------------------------------------------------------- validation
def test_max_forwards_0_is_483():
    sim, alice, bob = setup(ANSWER)
    call = alice.call("sip:bob@example.com", max_forwards=0)
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 483 and alice.seen == ["483 INVITE"] and bob.seen[2:] == []
    sim.drain()
    assert sim.proxy.watch.histories() == []


def test_unknown_proxy_require_is_420():
    sim, alice, bob = setup(ANSWER)
    call = alice.call("sip:bob@example.com", extra=("Proxy-Require: foo, path",))
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 420 and call.msgs[-1].get("unsupported") == "foo"
    assert bob.seen[2:] == []
    sim.drain()
    assert sim.proxy.watch.histories() == []


def test_non_sip_request_uri_is_416():
    sim, alice, bob = setup(ANSWER)
    call = alice.call("tel:+15551234567")
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 416 and alice.seen == ["416 INVITE"]
    sim.drain()
    assert sim.proxy.watch.histories() == []


def test_loop_through_a_contact_pointing_back_is_482():
    """bob registered our own domain as his contact: the proxy sends the INVITE to itself, sees its own Via with
    the same loop hash and answers 482, which goes back up to the caller."""
    sim = Sim()
    alice = sim.ua("alice", ALICE)
    bob = sim.ua("bob", BOB, contact="sip:bob@example.com")
    sim.register(bob)
    call = place_call(sim, alice)
    assert call.final == 482
    assert ("proxy", "proxy", "INVITE") in ladder(sim) and ("proxy", "proxy", "482 INVITE") in ladder(sim)
    assert bob.seen[2:] == []
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, CT_NON2XX]


def test_own_forwarded_request_sent_back_is_482():
    hosts = {"other.net": FOREIGN[0]}
    sim = Sim(proxy={"proxy.relay_foreign": True}, resolver=hosts.get)
    alice = sim.ua("alice", ALICE)
    far = Sink(sim, "far", FOREIGN)
    call = alice.call("sip:carol@other.net")
    assert sim.run_until(lambda: far.got, 5)
    [fwd] = [d for d, _ in far.got if d.startswith(b"INVITE")][:1]
    assert parse(fwd).via.sent_by == "192.0.2.1:5060"
    sim.net.send(FOREIGN, PROXY, fwd)                 # the far end hands our own request back
    sim.run(0.1)
    back = [m for m in (parse(d) for d, _ in far.got) if not m.is_request]
    assert [m.status for m in back] == [482]
    assert back[0].via.branch == parse(fwd).via.branch     # answered to the Via it carried: our own
    # the far end never answers the INVITE itself: Timer B ends the branch, the caller gets 408
    assert sim.run_until(lambda: call.final not in (None, 407), 40)
    assert call.final == 408
    sim.drain()
    assert sim.proxy.watch.histories() == [ST_NON2XX, (*ICT, "calling", "terminated")]


def test_relaying_to_a_foreign_domain_is_refused():
    hosts = {"other.net": FOREIGN[0]}
    sim = Sim(resolver=hosts.get)
    alice = sim.ua("alice", ALICE)
    far = Sink(sim, "far", FOREIGN)
    call = alice.call("sip:carol@other.net")
    assert sim.run_until(lambda: call.final not in (None, 407), 5)
    assert call.final == 403
    call = alice.call(f"sip:carol@{FOREIGN[0]}")
    assert sim.run_until(lambda: call.final not in (None, 407), 5)
    assert call.final == 403
    sim.run(1)
    assert far.got == []                              # not the INVITE, nor the ACK of the 403
    sim.drain()
    assert sim.proxy.watch.histories() == []


def test_a_stray_ack_is_not_relayed():
    """An ACK that did not come along our Record-Route (no Route to us) is not forwarded to a foreign host: that
    would make the proxy an open relay for ACKs."""
    sim = Sim()
    far = Sink(sim, "far", FOREIGN)
    ack = (f"ACK sip:x@{FOREIGN[0]} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKstray\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:m@evil.example>;tag=1\r\nTo: <sip:x@other.net>;tag=2\r\n"
           "Call-ID: stray\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
    sim.net.send(("203.0.113.5", 5060), PROXY, ack)
    sim.run(0.5)
    assert far.got == [] and sim.proxy.stats["drops.ack_relay"] == 1
    sim.drain()


def test_foreign_caller_is_refused_without_a_challenge():
    sim = Sim()
    mallory = sim.ua("mallory", "203.0.113.5", domain="evil.example")
    far = Sink(sim, "far", FOREIGN)
    call = mallory.call(f"sip:carol@{FOREIGN[0]}")
    assert sim.run_until(lambda: call.final is not None, 5)
    assert call.final == 403 and mallory.seen == ["403 INVITE"]
    sim.run(1)
    assert far.got == []
    sim.drain()
    assert sim.proxy.watch.histories() == []


# ---------------------------------------------------------------------------------------------------- loss
LOSSY = dict(loss=0.10, dup=0.05, reorder=0.2)
SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_completed_call_under_loss(seed):
    sim, alice, bob = setup(ANSWER, seed=seed, **LOSSY)
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: call.final not in (None, 407), 40)
    assert call.final == 200
    inc = bob.incoming[0]
    assert sim.run_until(lambda: inc.acked, 30)     # the 2xx is retransmitted until an ACK gets through
    sim.run(1)
    alice.bye(call)
    assert sim.run_until(lambda: call.bye_final is not None, 40)
    assert call.bye_final == 200
    assert inc.sent[-1] == 200 and inc.bye and not inc.gave_up
    assert len(bob.incoming) == 1                      # duplicates and retransmissions made no second branch
    assert len({t for s, t in call.responses if s == 200}) == 1
    assert sim.net.impairments > 0
    sim.drain()
    hist = sim.proxy.watch.histories()
    assert hist[0] == ST_2XX and hist[1][-2:] == ("accepted", "terminated")   # one INVITE pair, however lossy
    assert [h[:2] for h in hist[2:]] == [("nist", "BYE"), ("nict", "BYE")]


@pytest.mark.parametrize("seed", SEEDS)
def test_cancelled_call_under_loss(seed):
    sim, alice, bob = setup(RING, seed=seed, **LOSSY)
    call = alice.call("sip:bob@example.com")
    # provisional responses are not reliable: wait for one (the proxy's 100 at least) and for bob to ring
    assert sim.run_until(lambda: call.authed and call.provisional and bob.incoming, 40)
    sim.run(0.5)
    alice.cancel(call)
    assert sim.run_until(lambda: call.final not in (None, 407) and call.cancel_final is not None, 40)
    assert call.final == 487 and call.cancel_final == 200
    inc = bob.incoming[0]
    assert inc.cancelled and inc.sent == [180, 487] and len(bob.incoming) == 1
    assert sim.net.impairments > 0
    sim.drain()
    hist = sim.proxy.watch.histories()
    # every ACK of the 487 lost: Timer H ends the server transaction without Confirmed
    assert hist[0] in (ST_NON2XX, (*IST, "proceeding", "completed", "terminated"))
    assert [h[:2] for h in hist] == [IST, ICT, ("nist", "CANCEL"), ("nict", "CANCEL")]
