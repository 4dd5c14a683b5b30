"""What a call keeps while its transactions wait out their timers (up to 64*T1 = 32 s after the final response).

At 700 calls/s that is ~75,000 waiting transactions, and every collection of the cyclic GC - which stops all
worker threads on 3.13t - scans every object they keep. Once the final response is out and every branch has its
own, a call must keep no parsed message (request or response) and only a handful of small objects.
"""
import gc

from ftsip.proxy.proxy import Call
from ftsip.sip.model import Message
from ftsip.transaction.base import Transaction
from proxy.harness import Sim
from proxy.test_flows import ANSWER, RING, VM, VM_ADDR, place_call, setup

def kept_by(txns):
    """The GC-tracked objects reachable from ``txns`` that belong to them (not shared with the rest of the App:
    the walk does not enter App-wide objects - the table, the timer settings, the worker context)."""
    per_call = (Call, Transaction, tuple, list)
    seen = {id(t) for t in txns}
    todo = list(txns)
    found = list(txns)
    while todo:
        o = todo.pop()
        for r in gc.get_referents(o):
            if id(r) in seen or not gc.is_tracked(r):
                continue
            seen.add(id(r))
            if isinstance(r, Message) or isinstance(r, per_call) or type(r).__module__.startswith("ftsip.proxy"):
                found.append(r)
                todo.append(r)
    return found


def live_proxy_txns(sim):
    return [t for t in (item[3]() for item in sim.proxy.watch.items) if t is not None and not t.terminated]


def check_settled(sim, max_objects):
    txns = live_proxy_txns(sim)
    assert txns, "the transactions should still be waiting"
    kept = kept_by(txns)
    messages = [o for o in kept if isinstance(o, Message)]
    assert messages == [], f"waiting transactions keep parsed messages: {messages}"
    calls = {id(t.tu): t.tu for t in txns if isinstance(t.tu, Call)}
    assert all(c.req is None for c in calls.values())
    assert len(kept) <= max_objects, sorted(type(o).__name__ for o in kept)
    return len(kept)            # not the objects: the drain checks that nothing holds the transactions


def test_an_answered_call_waits_with_a_few_objects():
    sim, alice, bob = setup(ANSWER)
    call = place_call(sim, alice)
    assert call.final == 200
    assert sim.run_until(lambda: bob.incoming[0].acked, 2)
    sim.run(1)
    n = check_settled(sim, 16)                     # IST + ICT (Accepted, Timers L and M) and their call
    # a 2xx retransmission from the callee is still relayed upstream, with the caller's Via
    before = alice.seen.count("200 INVITE")
    bob._respond(bob.incoming[0], 200)
    sim.run(0.5)
    assert alice.seen.count("200 INVITE") == before + 1
    alice.bye(call)
    assert sim.run_until(lambda: call.bye_final is not None, 10) and call.bye_final == 200
    sim.run(0.5)
    check_settled(sim, n + 16)                 # + NIST/NICT of the BYE
    sim.drain()


def test_a_failed_over_call_waits_without_the_busy_response():
    sim, alice, bob = setup([(0.05, 486)], proxy={"proxy.voicemail": VM})
    vm = sim.ua("vm", VM_ADDR[0], port=VM_ADDR[1], script=[(0.05, 200)])
    call = place_call(sim, alice)
    assert call.final == 200
    assert sim.run_until(lambda: vm.incoming and vm.incoming[0].acked, 2)
    sim.run(1)
    check_settled(sim, 22)
    sim.drain()


def test_a_cancelled_call_waits_without_its_messages():
    sim, alice, bob = setup(RING)
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: (180, bob.incoming[0].tag if bob.incoming else None) in call.responses, 5)
    alice.cancel(call)
    assert sim.run_until(lambda: call.final == 487 and call.cancel_final == 200, 5)
    sim.run(0.5)
    check_settled(sim, 22)
    sim.drain()


def test_a_call_is_not_settled_while_a_branch_is_pending():
    """Forked: one branch answers, the other is being CANCELled - the request is still needed (the CANCEL
    copies its To)."""
    sim = Sim()
    alice = sim.ua("alice", "192.0.2.10")
    bob1 = sim.ua("bob", "192.0.2.20", script=[(0.05, 180), (0.3, 200)])
    bob2 = sim.ua("bob", "192.0.2.21", script=[(1.0, 180)])
    sim.register(bob1, bob2)
    call = alice.call("sip:bob@example.com")
    assert sim.run_until(lambda: call.final == 200, 5)
    [c] = {id(t.tu): t.tu for t in live_proxy_txns(sim)
           if isinstance(t.tu, Call) and t.tu.method == "INVITE"}.values()
    assert c.req is not None and c.pending()           # bob2 has not answered: its CANCEL waits for a 180
    assert sim.run_until(lambda: bob2.incoming and bob2.incoming[0].cancelled, 5)
    sim.run(1)
    assert c.req is None and not c.pending()
    del c
    sim.drain()
