"""The sans-I/O core without a network."""
from support import FakeCtx, options

from ftsip import config
from ftsip.app import App
from ftsip.sip import parse


def app():
    a = App(config.load(overrides={("server", "domain"): ["example.com"]}))
    a.bind("127.0.0.1", 5060)
    return a


def test_options_to_us_gets_200_with_allow():
    a, ctx = app(), FakeCtx()
    a.on_datagram(options(("127.0.0.1", 5060)), ("127.0.0.1", 40000), 1000.0, ctx)
    [(data, addr)] = ctx.take()
    r = parse(data)
    assert r.status == 200 and "REGISTER" in r.get("allow")
    assert addr == ("127.0.0.1", 40000)          # rport: back to the source port
    assert r.via.received == "127.0.0.1" and r.via.rport == "40000"


def test_unknown_request_to_the_server_gets_501_and_ack_nothing():
    a, ctx = app(), FakeCtx()
    data = options(("127.0.0.1", 5060)).replace(b"OPTIONS", b"SUBSCRIBE")
    a.on_datagram(data, ("127.0.0.1", 40000), 1000.0, ctx)
    assert parse(ctx.take()[0][0]).status == 501
    a.on_datagram(options(("127.0.0.1", 5060)).replace(b"OPTIONS", b"ACK"), ("127.0.0.1", 40000), 1000.0, ctx)
    assert ctx.take() == []


def test_bad_request_answered_with_reason_and_garbage_dropped():
    a, ctx = app(), FakeCtx()
    bad = options(("127.0.0.1", 5060)).replace(b"Max-Forwards: 70", b"Max-Forwards: 700")
    a.on_datagram(bad, ("127.0.0.1", 40000), 1000.0, ctx)
    r = parse(ctx.take()[0][0])
    assert r.status == 400 and "Max-Forwards" in r.reason
    a.on_datagram(b"\x00\xffgarbage", ("127.0.0.1", 40000), 1000.0, ctx)
    a.on_datagram(b"\r\n\r\n", ("127.0.0.1", 40000), 1000.0, ctx)
    assert ctx.take() == []
    assert ctx.stats.counters["drops.unparseable"] == 1
    assert ctx.stats.counters["rx.keepalive"] == 1
