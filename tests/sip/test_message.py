"""Editing, response building and the lazy accessors (both parser twins)."""
import pytest

from ftsip.sip import SipParseError, backend, make_response, parse, received_via, response_target

TWINS = [pytest.param(backend.PURE, id="pure"),
         pytest.param(backend.FAST, id="cython",
                      marks=pytest.mark.skipif(backend.FAST is None, reason="Cython twin not built"))]

INVITE = (
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "v: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK0\r\n"
    "Via: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK00\r\n"
    "Max-Forwards: 70\r\n"
    "Route: <sip:proxy.example.com;lr>, <sip:other.example.net;lr>\r\n"
    "f: \"Alice \\\"A\\\"\" <sip:alice@example.com>;tag=a1\r\n"
    "t: <sip:bob@example.com>\r\n"
    "i: call-1@x\r\n"
    "CSeq: 10 INVITE\r\n"
    "X-Folded: one\r\n two\r\n\tthree\r\n"
    "m: <sip:alice@192.0.2.1:5070>;expires=60;q=0.5\r\n"
    "Content-Type: application/sdp\r\n"
    "l: 5\r\n"
    "\r\n"
    "v=0\r\nEXTRA"
).encode()


@pytest.fixture(params=TWINS)
def p(request):
    return request.param


def test_accessors(p):
    m = parse(INVITE, backend=p)
    assert [v.host for v in m.vias] == ["192.0.2.1", "10.0.0.9", "[2001:db8::1]"]
    assert m.via.rport == "" and m.via.port == 5070 and m.via.transport == "UDP"
    assert m.from_.display == 'Alice "A"' and m.from_.tag == "a1"
    assert m.to.tag is None and m.call_id == "call-1@x"
    assert (m.cseq.num, m.cseq.method) == (10, "INVITE")
    assert m.get("x-folded") == "one two three"
    assert m.contacts[0].expires == 60 and m.contacts[0].q == 0.5
    assert [r.uri.host for r in m.routes] == ["proxy.example.com", "other.example.net"]
    assert m.content_length == 5 and m.body == "v=0\r\n"
    assert m.ruri.aor() == "bob@example.com"


def test_edit_proxy_forward(p):
    m = parse(INVITE, backend=p)
    top = received_via(m.via, "198.51.100.7", 5071)
    out = (m.edit().set_top_via(top).push_via("SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKnew")
           .set_max_forwards(m.max_forwards - 1).pop_route().add_record_route("<sip:10.1.1.1;lr>")
           .set_uri("sip:bob@192.0.2.99:5062").to_bytes())
    f = parse(out, backend=p)
    assert f.uri == "sip:bob@192.0.2.99:5062"
    assert [v.branch for v in f.vias] == ["z9hG4bKnew", "z9hG4bK1", "z9hG4bK0", "z9hG4bK00"]
    assert f.vias[1].received == "198.51.100.7" and f.vias[1].rport == "5071"
    assert f.max_forwards == 69
    assert [r.uri.host for r in f.routes] == ["other.example.net"]
    assert [r.uri.host for r in f.record_routes] == ["10.1.1.1"]
    assert f.body == "v=0\r\n"
    # untouched header lines are copied verbatim (the folded one keeps its folding)
    assert b"X-Folded: one\r\n two\r\n\tthree\r\n" in out
    assert b'f: "Alice \\"A\\"" <sip:alice@example.com>;tag=a1\r\n' in out


def test_edit_response_pop_via(p):
    resp = ("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKnew, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
            "From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n").encode()
    m = parse(resp, backend=p)
    out = parse(m.edit().pop_via().to_bytes(), backend=p)
    assert [v.branch for v in out.vias] == ["z9hG4bK1"]
    assert out.status == 180 and out.reason == "Ringing"


def test_make_response_copies_and_tags(p):
    m = parse(INVITE, backend=p)
    top = received_via(m.via, "198.51.100.7", 5071)
    r = parse(make_response(m, 486, top_via=top.raw, headers=("Retry-After: 5",)), backend=p)
    assert r.status == 486 and r.reason == "Busy Here"
    assert [v.branch for v in r.vias] == ["z9hG4bK1", "z9hG4bK0", "z9hG4bK00"]
    assert r.vias[0].received == "198.51.100.7"
    assert r.from_.tag == "a1" and r.to.tag  # a To tag was added
    assert r.call_id == "call-1@x" and r.cseq.num == 10
    assert r.get("retry-after") == "5"
    # the same request gets the same To tag (a retransmission must see the same response)
    r2 = parse(make_response(m, 486, top_via=top.raw), backend=p)
    assert r2.to.tag == r.to.tag
    # 100 Trying gets no To tag
    assert parse(make_response(m, 100), backend=p).to.tag is None
    assert response_target(top) == ("198.51.100.7", 5071)


def test_response_target_without_rport(p):
    m = parse(INVITE.replace(b";rport", b""), backend=p)
    top = received_via(m.via, "198.51.100.7", 40000)
    assert top.received == "198.51.100.7" and top.rport is None
    assert response_target(top) == ("198.51.100.7", 5070)
    same = received_via(m.via, "192.0.2.1", 5070)
    assert same is None  # sent-by matches the source: nothing to add


@pytest.mark.parametrize("data, status, answerable, reason", [
    (INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: 10 BYE"), 400, True, "CSeq method"),
    (INVITE.replace(b"l: 5", b"l: 50"), 400, True, "Content-Length larger"),
    (INVITE.replace(b"i: call-1@x\r\n", b""), 400, True, "Missing Call-ID"),
    (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, True, "Version"),
    (INVITE.replace(b" SIP/2.0\r\n", b" extra SIP/2.0\r\n", 1), 400, True, "Request-Line"),
    (INVITE.replace(b"INVITE sip:bob@example.com ", b"ACK sip:bob@example.com extra ", 1), 400, False,
     "Request-Line"),
    (INVITE.replace(b"INVITE sip:bob@example.com", b"INVITE sip:bob@example.com?Route=x", 1), 400, True,
     "headers"),
    (INVITE.replace(b"v: SIP/2.0/UDP 192.0.2.1:5070", b"v: SIP/2.0/UDP 192.0.2.1:5070:9"), 400, False, "Via"),
    (b"\r\n\r\n", 400, False, "Empty"),
    (b"x" * 70000, 513, False, "Too Large"),
])
def test_errors(p, data, status, answerable, reason):
    with pytest.raises(SipParseError) as e:
        parse(data, backend=p)
    assert e.value.status == status
    assert e.value.answerable is answerable
    assert reason in e.value.reason
    if answerable:
        assert e.value.message is not None and e.value.message.via is not None


def test_lazy_error_surfaces_on_access(p):
    m = parse(INVITE.replace(b"expires=60", b"expires=soon"), backend=p)
    with pytest.raises(SipParseError, match="expires"):
        m.contacts[0].expires


def test_too_many_headers(p):
    data = INVITE.replace(b"CSeq: 10 INVITE\r\n", b"CSeq: 10 INVITE\r\n" + b"X-A: 1\r\n" * 300)
    with pytest.raises(SipParseError) as e:
        parse(data, backend=p)
    assert e.value.status == 513
