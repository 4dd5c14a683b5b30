"""Digest computation against published vectors, and the challenge header values."""

import hashlib

import pytest

from ftsip.auth.digest import (
    UnsupportedAlgorithm,
    base_algorithm,
    canonical_algorithm,
    challenge_headers,
    ha1,
    response,
    verify,
)

from .helpers import client_response

# RFC 2617 §3.5 (the example request; password "Circle Of Life" with a capital O, method GET)
RFC2617 = {
    "username": "Mufasa",
    "realm": "testrealm@host.com",
    "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
    "uri": "/dir/index.html",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "0a4f113b",
    "response": "6629fae49393a05397450978507c4ef1",
    "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
}
RFC2617_PASSWORD = "Circle Of Life"

# RFC 7616 §3.9.1 (password "Circle of Life", lower-case o, per erratum 4495)
RFC7616 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "qop": "auth",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
}
RFC7616_PASSWORD = "Circle of Life"
RFC7616_MD5 = "8ca523f5e9506fed4657c9700eebdbec"
RFC7616_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"

# draft-smith-sipping-auth-examples-01 (SIP INVITE examples): §3.1 no qop, §3.2 qop=auth
SMITH = {
    "username": "bob",
    "realm": "biloxi.com",
    "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
    "uri": "sip:bob@biloxi.com",
    "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
}
SMITH_HA1 = "12af60467a33e8518da5c68bbff12b11"
SMITH_NOQOP = "bf57e4e0d0bffc0fbaedce64d59add5e"
SMITH_QOP = "89eb0059246c02b2f6ee02c7961d5ea3"


def test_rfc2617_example():
    h = ha1("Mufasa", "testrealm@host.com", RFC2617_PASSWORD, "MD5")
    assert response(RFC2617, "GET", h) == RFC2617["response"]
    assert verify(RFC2617, "GET", h, "MD5")
    assert verify(RFC2617, "GET", h)  # algorithm absent -> MD5


def test_rfc2617_wrong_inputs_fail():
    h = ha1("Mufasa", "testrealm@host.com", RFC2617_PASSWORD, "MD5")
    assert not verify(RFC2617, "POST", h, "MD5")
    assert not verify({**RFC2617, "nc": "00000002"}, "GET", h, "MD5")
    assert not verify({**RFC2617, "uri": "/dir/index.htm"}, "GET", h, "MD5")
    assert not verify(RFC2617, "GET", ha1("Mufasa", "testrealm@host.com", "Circle of Life", "MD5"), "MD5")
    assert not verify(RFC2617, "GET", h, "SHA-256")


def test_rfc7616_md5_example():
    h = ha1("Mufasa", RFC7616["realm"], RFC7616_PASSWORD, "MD5")
    params = {**RFC7616, "algorithm": "MD5", "response": RFC7616_MD5}
    assert response(params, "GET", h) == RFC7616_MD5
    assert verify(params, "GET", h)


def test_rfc7616_sha256_example():
    h = ha1("Mufasa", RFC7616["realm"], RFC7616_PASSWORD, "SHA-256")
    assert len(h) == 64
    params = {**RFC7616, "algorithm": "SHA-256", "response": RFC7616_SHA256}
    assert response(params, "GET", h) == RFC7616_SHA256
    assert verify(params, "GET", h)
    assert verify(params, "GET", h, "SHA-256")
    # the MD5 HA1 cannot answer a SHA-256 digest
    assert not verify(params, "GET", ha1("Mufasa", RFC7616["realm"], RFC7616_PASSWORD, "MD5"))


def test_sip_example_without_qop():
    assert ha1("bob", "biloxi.com", "zanzibar", "MD5") == SMITH_HA1
    params = {**SMITH, "response": SMITH_NOQOP}
    assert response(params, "INVITE", SMITH_HA1) == SMITH_NOQOP
    assert verify(params, "INVITE", SMITH_HA1, "MD5")
    assert not verify(params, "REGISTER", SMITH_HA1, "MD5")


def test_sip_example_with_qop():
    params = {**SMITH, "qop": "auth", "nc": "00000001", "cnonce": "0a4f113b", "response": SMITH_QOP}
    assert verify(params, "INVITE", SMITH_HA1)
    # the same response without the qop fields is a different digest
    bare = {k: v for k, v in params.items() if k not in ("qop", "nc", "cnonce")}
    assert not verify(bare, "INVITE", SMITH_HA1)


def test_response_hex_case_insensitive():
    params = {**SMITH, "response": SMITH_NOQOP.upper()}
    assert verify(params, "INVITE", SMITH_HA1)
    assert verify(params, "INVITE", SMITH_HA1.upper())


@pytest.mark.parametrize("alg", ["MD5-sess", "SHA-256-sess"])
def test_sess_variants(alg):
    base = alg.removesuffix("-sess")
    h = ha1("alice", "example.com", "s3cret", base)
    p = {"username": "alice", "realm": "example.com", "nonce": "abc", "uri": "sip:example.com", "qop": "auth",
         "nc": "0000000a", "cnonce": "xyz", "algorithm": alg}
    p["response"] = client_response(alg, "alice", "example.com", "s3cret", "REGISTER", "sip:example.com", "abc",
                                    "auth", "0000000a", "xyz")
    assert verify(p, "REGISTER", h)
    # sess without cnonce cannot be computed
    assert not verify({**p, "cnonce": ""}, "REGISTER", h)
    # the plain algorithm gives a different answer
    assert not verify({**p, "algorithm": base}, "REGISTER", h)


def test_hostile_inputs_fail_without_raising():
    h = SMITH_HA1
    good = {**SMITH, "qop": "auth", "nc": "00000001", "cnonce": "0a4f113b", "response": SMITH_QOP}
    assert verify(good, "INVITE", h)
    assert not verify({**good, "qop": "auth-int"}, "INVITE", h)
    assert not verify({**good, "qop": ""}, "INVITE", h)
    assert not verify({k: v for k, v in good.items() if k != "cnonce"}, "INVITE", h)
    assert not verify({k: v for k, v in good.items() if k != "nc"}, "INVITE", h)
    assert not verify({k: v for k, v in good.items() if k != "nonce"}, "INVITE", h)
    assert not verify({k: v for k, v in good.items() if k != "uri"}, "INVITE", h)
    assert not verify({k: v for k, v in good.items() if k != "response"}, "INVITE", h)
    assert not verify({**good, "response": ""}, "INVITE", h)
    assert not verify({**good, "response": "\u20ac" * 32}, "INVITE", h)  # not latin-1: not from the wire
    assert not verify({**good, "uri": "sip:\u20ac"}, "INVITE", h)
    assert not verify({**good, "algorithm": "SHA-512-256"}, "INVITE", h)
    assert not verify({**good, "algorithm": "AKAv1-MD5"}, "INVITE", h)


def test_latin1_convention_hashes_the_wire_bytes():
    # "jörg" sent as UTF-8 arrives as latin-1-decoded bytes: the hash is over the UTF-8 bytes
    wire_user = "jörg".encode("utf-8").decode("latin-1")
    assert ha1(wire_user, "r", "pw") == hashlib.md5("jörg:r:pw".encode("utf-8")).hexdigest()
    assert ha1("x", "r", "pw", "SHA-256") == hashlib.sha256(b"x:r:pw").hexdigest()


def test_algorithm_names():
    assert canonical_algorithm(None) == "MD5"
    assert canonical_algorithm("") == "MD5"
    assert canonical_algorithm("md5") == "MD5"
    assert canonical_algorithm("sha-256") == "SHA-256"
    assert canonical_algorithm("md5-SESS") == "MD5-sess"
    assert canonical_algorithm("SHA-512-256") is None
    assert base_algorithm("SHA-256-sess") == "SHA-256"
    with pytest.raises(UnsupportedAlgorithm):
        ha1("a", "b", "c", "SHA-1")


def test_challenge_headers_default_order_and_form():
    values = challenge_headers("example.com", "N0nce")
    assert values == [
        'Digest realm="example.com", nonce="N0nce", algorithm=SHA-256, qop="auth"',
        'Digest realm="example.com", nonce="N0nce", algorithm=MD5, qop="auth"',
    ]


def test_challenge_headers_old_phones_stale_opaque():
    assert challenge_headers("r", "n", ("MD5",), qop=False) == ['Digest realm="r", nonce="n", algorithm=MD5']
    v = challenge_headers("r", "n", ("md5", "MD5"), qop=True, stale=True, opaque="op")
    assert v == ['Digest realm="r", nonce="n", opaque="op", stale=true, algorithm=MD5, qop="auth"']


def test_challenge_headers_quotes_realm_and_rejects_unknown_algorithm():
    assert challenge_headers('a"b\\c', "n", ("MD5",), qop=False) == ['Digest realm="a\\"b\\\\c", nonce="n", '
                                                                       'algorithm=MD5']
    with pytest.raises(UnsupportedAlgorithm):
        challenge_headers("r", "n", ("SHA-1",))
