"""The RFC 4475 and RFC 5118 torture messages through the parser twins.

The ground truth is ``torture/manifest.toml`` (its header documents every key); the fixtures are the RFCs'
messages, byte for byte. For a message that must parse, every accessor must work and every fact the manifest
lists must hold; for one that must not, ``SipParseError`` must come (from ``parse`` or, for a header field parsed
lazily, from its accessor) with the manifest's status and, from ``parse``, its ``answerable``.
"""
import hashlib
import importlib.util
import math
import os
import re

import pytest

from ftsip.sip import Request, Response, SipParseError, backend, parse

TORTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")

TWINS = [pytest.param("default", id="default"), pytest.param("pure", id="pure"),
         pytest.param("fast", id="cython")]

# accessors a consumer of the message may touch; for a message that parses, none may raise
COMMON_ACCESSORS = ("vias", "via", "from_", "to", "call_id", "cseq", "max_forwards", "contacts", "expires",
                    "content_length", "routes", "record_routes", "authorization", "proxy_authorization", "require",
                    "proxy_require", "supported", "user_agent")

NOT_FACTS = {"file", "rfc", "kind", "parse", "status", "answerable", "server_status", "note", "rfc_content_length",
             "trailing_octets", "unterminated", "archive_sha256", "archive_unterminated", "name", "path", "data",
             "absent"}


def _uris(values):
    return [v.uri.raw for v in values]


def _first(values):
    assert values, "no value"
    return values[0]


# fact name -> how to read it from a parsed message
GETTERS = {
    "method": lambda m: m.method,
    "request_uri": lambda m: m.uri,
    "ruri_scheme": lambda m: m.ruri.scheme.lower(),
    "ruri_user": lambda m: m.ruri.user,
    "ruri_password": lambda m: m.ruri.password,
    "ruri_host": lambda m: m.ruri.host,
    "ruri_port": lambda m: m.ruri.port,
    "ruri_params": lambda m: m.ruri.params,
    "status_code": lambda m: m.status,
    "reason": lambda m: m.reason,
    "call_id": lambda m: m.call_id,
    "cseq_num": lambda m: m.cseq.num,
    "cseq_method": lambda m: m.cseq.method,
    "max_forwards": lambda m: m.max_forwards,
    "expires": lambda m: m.expires,
    "content_length": lambda m: m.content_length,
    "user_agent": lambda m: m.user_agent,
    "via_count": lambda m: len(m.vias),
    "via_hosts": lambda m: [v.host for v in m.vias],
    "via_transports": lambda m: [v.transport for v in m.vias],
    "via_params": lambda m: [v.params for v in m.vias],
    "top_via_host": lambda m: m.via.host,
    "top_via_port": lambda m: m.via.port,
    "top_via_transport": lambda m: m.via.transport,
    "top_via_branch": lambda m: m.via.branch,
    "top_via_received": lambda m: m.via.received,
    "top_via_rport": lambda m: m.via.rport,
    "from_uri": lambda m: m.from_.uri.raw,
    "from_display": lambda m: m.from_.display,
    "from_tag": lambda m: m.from_.tag,
    "from_params": lambda m: m.from_.params,
    "to_uri": lambda m: m.to.uri.raw,
    "to_display": lambda m: m.to.display,
    "to_tag": lambda m: m.to.tag,
    "to_params": lambda m: m.to.params,
    "contact_count": lambda m: len(m.contacts),
    "contact_uris": lambda m: _uris(m.contacts),
    "contact_display": lambda m: _first(m.contacts).display,
    "contact_params": lambda m: _first(m.contacts).params,
    "contact_q": lambda m: _first(m.contacts).q,
    "route_uris": lambda m: _uris(m.routes),
    "record_route_uris": lambda m: _uris(m.record_routes),
    "require": lambda m: m.require,
    "proxy_require": lambda m: m.proxy_require,
    "authorization_scheme": lambda m: _first(m.authorization).scheme.lower(),
    "authorization_params": lambda m: _first(m.authorization).params,
    "body_length": lambda m: len(m.body),
    "body_sha256": lambda m: hashlib.sha256(m.body.encode("latin-1")).hexdigest(),
}
CASE_INSENSITIVE = {"ruri_scheme", "authorization_scheme"}


def wire(value):
    """The manifest's text as the message layer holds it: the octets sent (UTF-8) read as latin-1."""
    if isinstance(value, str):
        return value.encode("utf-8").decode("latin-1")
    if isinstance(value, list):
        return [wire(v) for v in value]
    if isinstance(value, dict):
        return {wire(k): wire(v) for k, v in value.items()}
    return value


def lws(text):
    """Header text with every run of SP, HT, CR and LF as one SP (RFC 3261 7.3.1), trimmed."""
    return None if text is None else re.sub(r"[ \t\r\n]+", " ", text).strip(" ")


def parser(twin):
    if twin == "default":
        return parse
    module = backend.PURE if twin == "pure" else backend.FAST
    if module is None:
        pytest.skip("Cython twin not built")
    return lambda data: parse(data, backend=module)


def touch(msg, kind):
    """Read everything a proxy-registrar may read; lazily parsed header fields raise here."""
    for name in COMMON_ACCESSORS:
        getattr(msg, name)
    if kind == "request":
        msg.ruri
    for contact in msg.contacts:
        if not contact.star:
            contact.expires
            contact.q


def outcome(parse_fn, case):
    """(message, None, None) or (None, SipParseError, raised_by_parse)."""
    try:
        msg = parse_fn(case["data"])
    except SipParseError as e:
        return None, e, True
    try:
        touch(msg, case["kind"])
    except SipParseError as e:
        return msg, e, False
    return msg, None, None


def fact_mismatches(msg, case):
    bad = []
    for key, expected in case.items():
        if key in NOT_FACTS:
            continue
        if key == "headers":
            for name, value in expected.items():
                got = msg.get(wire(name))
                if lws(got) != lws(wire(value)):
                    bad.append(f"header {name!r}: {got!r} != {wire(value)!r}")
            continue
        if key not in GETTERS:
            bad.append(f"unknown fact {key!r} in the manifest")
            continue
        try:
            got = GETTERS[key](msg)
        except Exception as e:  # report every fact, not just the first failure
            bad.append(f"{key}: {type(e).__name__}: {e}")
            continue
        want = wire(expected)
        if key in CASE_INSENSITIVE and isinstance(got, str):
            want = want.lower()
        if isinstance(want, float):
            ok = isinstance(got, (int, float)) and math.isclose(got, want)
        else:
            ok = got == want
        if not ok:
            bad.append(f"{key}: {got!r} != {want!r}")
    for key in case.get("absent", ()):
        try:
            got = GETTERS[key](msg)
        except Exception as e:
            bad.append(f"{key}: {type(e).__name__}: {e}")
            continue
        if got is not None:
            bad.append(f"{key}: {got!r}, expected absent (None)")
    return bad


@pytest.mark.parametrize("twin", TWINS)
def test_torture(torture_case, twin):
    case = torture_case
    msg, err, at_parse = outcome(parser(twin), case)
    if case["parse"] == "ok":
        if err is not None:
            where = "parse()" if at_parse else "an accessor"
            pytest.fail(f"{case['name']} must parse ({case['rfc']}), but {where} raised {err!r}")
        assert isinstance(msg, Request if case["kind"] == "request" else Response)
        bad = fact_mismatches(msg, case)
        assert not bad, f"{case['name']} ({case['rfc']}):\n  " + "\n  ".join(bad)
        return
    if err is None:
        pytest.fail(f"{case['name']} must not parse ({case['rfc']}: {case['note']})")
    if "status" in case:
        allowed = case["status"] if isinstance(case["status"], list) else [case["status"]]
        assert err.status in allowed, f"{case['name']}: status {err.status} ({err.reason}), expected {allowed}"
    if at_parse:
        assert err.answerable == case["answerable"], \
            f"{case['name']}: answerable {err.answerable} ({err.reason}), expected {case['answerable']}"
        if err.answerable:
            assert err.message is not None, f"{case['name']}: answerable but no partial message to answer from"
    else:
        # only a request that parsed can fail later, and such a request can be answered
        assert case["kind"] == "request" and case["answerable"], \
            f"{case['name']}: must fail in parse() itself ({err!r} came from an accessor)"


def _summary(msg, err, case):
    if err is not None:
        return ("error", err.status, err.reason, err.answerable if msg is None else None)
    return ("ok", tuple(sorted((k, repr(GETTERS[k](msg))) for k in case if k in GETTERS)))


def test_twins_agree(torture_case):
    if backend.FAST is None:
        pytest.skip("Cython twin not built")
    pure = _summary(*outcome(parser("pure"), torture_case)[:2], torture_case)
    fast = _summary(*outcome(parser("fast"), torture_case)[:2], torture_case)
    assert pure == fast


def test_fixtures_are_the_rfc_bytes():
    """The fixtures are what the RFC text gives, match the RFCs' archives, and agree with the manifest."""
    path = os.path.join(TORTURE_DIR, "check_fixtures.py")
    spec = importlib.util.spec_from_file_location("ftsip_torture_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.main() == 0, "\n".join(check.PROBLEMS)
