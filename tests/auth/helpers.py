"""A minimal digest *client*, written independently of ftsip.auth.digest, to drive the server side in tests."""

import hashlib
import re
from typing import NamedTuple

_H = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class Credentials(NamedTuple):
    """What the SIP parser hands over: scheme and lower-case-keyed, unquoted params."""

    scheme: str
    params: dict


def client_response(alg, user, realm, password, method, uri, nonce, qop=None, nc=None, cnonce=None):
    hfun = _H[alg.removesuffix("-sess")]

    def h(s):
        return hfun(s.encode("latin-1")).hexdigest()

    a1 = h(f"{user}:{realm}:{password}")
    if alg.endswith("-sess"):
        a1 = h(f"{a1}:{nonce}:{cnonce}")
    a2 = h(f"{method}:{uri}")
    if qop:
        return h(f"{a1}:{nonce}:{nc}:{cnonce}:{qop}:{a2}")
    return h(f"{a1}:{nonce}:{a2}")


def parse_challenge(value):
    """'Digest realm="x", nonce="y", algorithm=MD5, qop="auth"' -> dict (enough for these tests)."""
    assert value.startswith("Digest ")
    out = {}
    for m in re.finditer(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', value[7:]):
        out[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return out


def answer(challenge_value, user, password, method="REGISTER", uri="sip:example.com", nc=1, cnonce="0a4f113b",
           **override):
    """Credentials answering one challenge value, as a phone would."""
    ch = parse_challenge(challenge_value)
    alg = ch.get("algorithm", "MD5")
    qop = "auth" if ch.get("qop") else None
    params = {"username": user, "realm": ch["realm"], "nonce": ch["nonce"], "uri": uri, "algorithm": alg}
    if qop:
        params.update(qop=qop, nc=f"{nc:08x}", cnonce=cnonce)
    if "opaque" in ch:
        params["opaque"] = ch["opaque"]
    params["response"] = client_response(alg, user, ch["realm"], password, method, uri, ch["nonce"], qop,
                                         params.get("nc"), params.get("cnonce"))
    params.update(override)
    return Credentials("Digest", params)
