"""Differential tests: the Cython parser (``ftsip._fast.sipparse``) against the pure one (``ftsip.sip.pyparse``).

Both twins run on a corpus of realistic messages (tests/sip/fuzz.py ``SEEDS``, plus the RFC 4475/5118 torture
fixtures when present) and on thousands of seeded mutants of them, and must agree exactly: the same
``SipParseError.key()``, or a message with the same start line, headers and body, and then the same value or the
same error from every lazy accessor. The field parsers are compared directly on fuzzed strings. Any exception other
than ``SipParseError`` from either twin is a failure.

FTSIP_FUZZ_N (default 6000) and FTSIP_FUZZ_SEED (default 1) scale/vary the fuzzing.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz  # noqa: E402

from ftsip.sip import backend  # noqa: E402
from ftsip.sip.errors import SipParseError  # noqa: E402
from ftsip.sip.message import make_response, received_via  # noqa: E402

PURE = backend.PURE
FAST = backend.FAST

pytestmark = pytest.mark.skipif(
    FAST is None, reason="the Cython twin ftsip._fast.sipparse is not built "
                         "(run `python setup.py build_ext --inplace`) or FTSIP_PURE=1")

N_MUTANTS = int(os.environ.get("FTSIP_FUZZ_N", "6000"))
N_FIELDS = 4 * N_MUTANTS
FUZZ_SEED = int(os.environ.get("FTSIP_FUZZ_SEED", "1"))

COMMON = ["vias", "via", "from_", "to", "call_id", "cseq", "contacts", "routes", "record_routes", "paths",
          "authorization", "proxy_authorization", "max_forwards", "expires", "content_length", "require",
          "proxy_require", "supported", "user_agent"]
LIST_KEYS = ["via", "contact", "route", "record-route", "supported", "allow", "require", "x-custom"]


def outcome(fn, *args):
    """('ok', value) or ('err', SipParseError.key()); any other exception propagates (and fails the test)."""
    try:
        return ("ok", fn(*args))
    except SipParseError as e:
        return ("err", e.key())


def start_line(m):
    if m.is_request:
        return ("req", m.method, m.uri, m.version)
    return ("resp", m.status, m.reason, m.version)


def msg_summary(m, parser):
    """Everything observable on a parsed message, lazily computed accessors included (in a fixed order)."""
    assert m._p is parser, "the message must carry the module that parsed it"
    out = [type(m).__name__, start_line(m), m.headers, m.body]
    for name in COMMON + (["ruri"] if m.is_request else ["method"]):
        out.append((name, outcome(getattr, m, name)))
    for key in LIST_KEYS:
        out.append((key, m.get(key), m.get_all(key), m.count(key)))
    # model-level derived values on what parsed
    for name in ("contacts", "routes"):
        r = outcome(getattr, m, name)
        if r[0] == "ok":
            for na in r[1]:
                out.append((name, na.star, na.tag, outcome(getattr, na, "expires"), outcome(getattr, na, "q"),
                            None if na.uri is None else (na.uri.is_sip, na.uri.aor(), str(na.uri))))
    v = outcome(getattr, m, "via")
    if v[0] == "ok" and v[1] is not None:
        out.append(("via", v[1].branch, v[1].received, v[1].rport, v[1].maddr, v[1].ttl, v[1].sent_by))
    if m.is_request:
        r = outcome(getattr, m, "ruri")
        if r[0] == "ok":
            out.append(("ruri", r[1].aor(), str(r[1]), r[1].hostport if r[1].is_sip else None))
    return out


def edits(m):
    """What a proxy builds from a message that parsed (both twins must produce the same bytes)."""
    out = []
    try:
        if m.is_request:
            e = m.edit().push_via("SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKproxy")
            if m.max_forwards is not None:
                e.set_max_forwards(m.max_forwards - 1 if m.max_forwards else 0)
            if m.routes:
                e.pop_route()
            e.add_record_route("<sip:192.0.2.99;lr>")
            top = received_via(m.via, "198.51.100.7", 5071)
            if top is not None:
                e.set_top_via(top)
            out.append(e.to_bytes())
            out.append(make_response(m, 486, to_tag="t1"))
            out.append(make_response(m, 100))
        else:
            out.append(m.edit().pop_via().to_bytes())
    except SipParseError as e:
        out.append(("err", e.key()))
    return out


def compare(data):
    """Run both twins on one datagram and assert they agree on everything."""
    a = outcome(PURE.parse_message, data)
    b = outcome(FAST.parse_message, data)
    assert a[0] == b[0], (data, a, b)
    if a[0] == "err":
        assert a[1] == b[1], (data, a[1], b[1])
        # the partially parsed request an answerable error carries
        try:
            PURE.parse_message(data)
        except SipParseError as e:
            ea = e
        try:
            FAST.parse_message(data)
        except SipParseError as e:
            eb = e
        assert (ea.message is None) == (eb.message is None), data
        if ea.message is not None:
            assert msg_summary(ea.message, PURE) == msg_summary(eb.message, FAST), data
        return "err"
    ma, mb = a[1], b[1]
    assert type(ma) is type(mb), data
    sa, sb = msg_summary(ma, PURE), msg_summary(mb, FAST)
    assert sa == sb, (data, [x for x in zip(sa, sb) if x[0] != x[1]][:3])
    assert edits(ma) == edits(mb), data
    return "ok"


# ------------------------------------------------------------------------------------------------ the corpus

SEEDS = fuzz.SEEDS
TORTURE = fuzz.torture_seeds()


def test_seed_corpus_is_varied():
    assert len(SEEDS) >= 20
    parsed = [PURE.parse_message(s) for s in SEEDS]     # every seed is a valid message
    assert {m.method for m in parsed} >= {"INVITE", "REGISTER", "ACK", "BYE", "CANCEL", "OPTIONS", "SUBSCRIBE",
                                          "NOTIFY", "MESSAGE"}
    assert {m.status for m in parsed if not m.is_request} >= {100, 180, 200, 401, 407, 486}


@pytest.mark.parametrize("i", range(len(SEEDS)))
def test_seed(i):
    assert compare(SEEDS[i]) == "ok"


def test_seed_variants():
    """Whole-message variants of every seed: LF-only, no Content-Length, lower-case names, CRLFs in front."""
    for s in SEEDS:
        compare(s.replace(b"\r\n", b"\n"))
        compare(b"\r\n\r\n" + s)
        compare(s + b"\r\n")
        head, _, body = s.partition(b"\r\n\r\n")
        compare(head.lower() + b"\r\n\r\n" + body)
        compare(head.upper() + b"\r\n\r\n" + body)
        compare(head)
        compare(head + b"\r\n")
        for cut in range(0, len(s), 7):
            compare(s[:cut])


def test_torture_fixtures():
    if not TORTURE:
        pytest.skip("no torture fixtures (tests/sip/torture)")
    for t in TORTURE:
        compare(t)


def test_slot_fill_fallback():
    """The compiled twin builds model objects by filling their slots; calling the classes gives the same."""
    if not FAST._slot_fill():
        pytest.skip("slot filling is off (model classes changed): the classes are called")
    try:
        FAST._slot_fill(False)
        assert not FAST._slot_fill()
        for s in SEEDS + TORTURE:
            compare(s)
    finally:
        FAST._slot_fill(True)
    assert FAST._slot_fill()


def test_slot_fill_guard():
    """If a model class's __init__ does more than assign its slots, the compiled twin calls the class instead."""
    import subprocess
    code = ("from ftsip.sip import model\n"
            "def init(self, scheme, user, password, host, port, params, headers, raw):\n"
            "    self.scheme = scheme.lower(); self.user = user; self.password = password; self.host = host\n"
            "    self.port = port; self.params = params; self.headers = headers; self.raw = raw\n"
            "model.Uri.__init__ = init\n"
            "from ftsip._fast import sipparse\n"
            "print(sipparse._slot_fill())\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # FTSIP_PURE=1: importing ftsip.sip must not load the compiled twin before the class is changed
    env = dict(os.environ, FTSIP_PURE="1")
    for patched, expected in ((code, "False"), (code.replace("scheme.lower()", "scheme"), "True")):
        proc = subprocess.run([sys.executable, "-c", patched], capture_output=True, text=True, cwd=root, env=env,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected


def test_edge_inputs():
    for data in [b"", b"\r\n", b"\n\n\r\n", b" ", b"\x00", b"SIP/2.0", b"INVITE", b"INVITE sip:a SIP/2.0",
                 b"SIP/2.0 200 OK", b"x" * 65535, b"x" * 65536, b"\r\n" * 40000, b"SIP/2.0 200 OK\r\n\r\n",
                 b"A sip:b SIP/2.0\r\n:\r\n\r\n", b"A sip:b SIP/2.0\n \n\n"]:
        compare(data)
    # other argument types: bytearray parses like bytes; anything else fails like the pure twin
    m = FAST.parse_message(bytearray(SEEDS[0]))
    assert m.headers == PURE.parse_message(SEEDS[0]).headers
    for bad in ["INVITE", None, 5]:
        with pytest.raises(Exception) as ea:
            PURE.parse_message(bad)
        with pytest.raises(Exception) as eb:
            FAST.parse_message(bad)
        assert type(ea.value) is type(eb.value)


def test_numbers_and_whitespace():
    """Every numeric field with tricky numbers wrapped in tricky whitespace (str.strip()/split() whitespace is more
    than SP and HT)."""
    n = 0
    for data in fuzz.number_cases():
        compare(data)
        n += 1
    assert n > 2000


def test_limits():
    """Exactly at, under and over every limit (MAX_LINE, MAX_HEADERS, MAX_VIAS, MAX_URI, MAX_MESSAGE...)."""
    cases = fuzz.limit_cases(PURE.MAX_MESSAGE, PURE.MAX_HEADERS, PURE.MAX_LINE, PURE.MAX_URI, PURE.MAX_VIAS)
    outcomes = set()
    for data in cases:
        r = compare(data)
        outcomes.add(r)
    assert outcomes == {"ok", "err"}


# ------------------------------------------------------------------------------------------------ fuzzing


def test_fuzz_messages():
    seeds = SEEDS + TORTURE
    results = {"ok": 0, "err": 0}
    for data in fuzz.mutants(seeds, N_MUTANTS, FUZZ_SEED):
        results[compare(data)] += 1
    # the mutants must exercise both outcomes in earnest
    assert results["ok"] > N_MUTANTS // 20 and results["err"] > N_MUTANTS // 5, results


FIELD_PARSERS = [
    ("parse_uri", ()), ("parse_vias", ()), ("parse_name_addrs", (0,)), ("parse_name_addrs", (1,)),
    ("parse_name_addrs", (2,)), ("parse_cseq", ()), ("parse_credentials", ()), ("split_commas", ()),
    ("header_key", ()),
]


def test_fuzz_field_parsers():
    n_ok = 0
    for s in fuzz.field_strings(N_FIELDS, FUZZ_SEED):
        for name, extra in FIELD_PARSERS:
            a = outcome(getattr(PURE, name), s, *extra)
            b = outcome(getattr(FAST, name), s, *extra)
            assert a == b, (name, s, a, b)
            n_ok += a[0] == "ok"
    assert n_ok > N_FIELDS


def test_field_parsers_odd_arguments():
    for name, extra in FIELD_PARSERS:
        for arg in [None, b"sip:a@b", 5, "sip:€@b", "SIP/2.0/UDP h€", ""]:
            try:
                a = ("ok", getattr(PURE, name)(arg, *extra))
            except Exception as e:       # noqa: BLE001 - both twins must fail the same way
                a = ("exc", type(e).__name__, getattr(e, "key", lambda: None)())
            try:
                b = ("ok", getattr(FAST, name)(arg, *extra))
            except Exception as e:       # noqa: BLE001
                b = ("exc", type(e).__name__, getattr(e, "key", lambda: None)())
            assert a == b, (name, arg)
    for kind in [3, -1, True, "0", None]:
        a = outcome_any(PURE.parse_name_addrs, "<sip:a@b>", kind)
        b = outcome_any(FAST.parse_name_addrs, "<sip:a@b>", kind)
        assert a == b, kind


def outcome_any(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as e:       # noqa: BLE001
        return ("exc", type(e).__name__, str(e))


def test_header_keys():
    for name in ["Via", "v", "V", "VIA", "via", "Call-ID", "call-id", "i", "I", "CSeq", "Content-Length", "l",
                 "X-Custom", "x", "Max-Forwards", "WWW-Authenticate", "a", "z", "Ü", "İ", "K", ""]:
        assert FAST.header_key(name) == PURE.header_key(name), name


def test_same_constants():
    for name in ("MAX_MESSAGE", "MAX_HEADERS", "MAX_LINE", "MAX_URI", "MAX_VIAS", "SINGLE", "LIST", "CONTACT",
                 "COMPACT"):
        assert getattr(FAST, name) is getattr(PURE, name), name


def test_threads_agree():
    """Parsing from several threads at once (free-threaded: really in parallel) gives the same results."""
    import threading
    expected = [msg_summary(PURE.parse_message(s), PURE)[:4] for s in SEEDS]
    errors = []

    def work():
        try:
            for _ in range(30):
                for s, exp in zip(SEEDS, expected):
                    assert msg_summary(FAST.parse_message(s), FAST)[:4] == exp
        except BaseException as e:   # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
