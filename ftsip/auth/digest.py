"""Server side of HTTP/SIP Digest authentication (RFC 2617, RFC 7616, RFC 8760).

Pure functions, no I/O, no clock. Text follows the project convention (docs/design.md): every ``str`` holds the
bytes the client sent, decoded latin-1, so hashing encodes with latin-1 and hashes exactly those bytes.

Algorithms: ``MD5``, ``MD5-sess``, ``SHA-256``, ``SHA-256-sess`` (matched case-insensitively; an absent
``algorithm`` parameter means MD5). qop: ``auth`` and no qop at all (RFC 2069 style, what old phones and Kamailio's
"MD5 without qop" use). ``auth-int`` is refused: SIP bodies are not hashed here. SHA-512-256 and ``userhash`` are
not supported.

HA1 values are stored per *base* algorithm (``"MD5"``, ``"SHA-256"``): for the ``-sess`` variants the session HA1
``H(HA1:nonce:cnonce)`` is derived from the stored one at verification time (RFC 2617 §3.2.2.2, RFC 7616 §3.4.2).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from ftsip.dicts import get as dget

__all__ = [
    "ALGORITHMS",
    "BASE_ALGORITHMS",
    "UnsupportedAlgorithm",
    "base_algorithm",
    "canonical_algorithm",
    "challenge_headers",
    "ha1",
    "hash_hex",
    "quote",
    "response",
    "verify",
]

# canonical name -> (hash constructor, is_session_variant, base name)
_ALGS = {
    "MD5": (hashlib.md5, False, "MD5"),
    "MD5-sess": (hashlib.md5, True, "MD5"),
    "SHA-256": (hashlib.sha256, False, "SHA-256"),
    "SHA-256-sess": (hashlib.sha256, True, "SHA-256"),
}
_BY_LOWER = {name.lower(): name for name in _ALGS}

ALGORITHMS: tuple[str, ...] = tuple(_ALGS)
"""Every algorithm name this module accepts, canonical spelling."""
BASE_ALGORITHMS: tuple[str, ...] = ("MD5", "SHA-256")
"""The algorithms an HA1 is stored for (the ``-sess`` variants reuse them)."""
HEX_LENGTH = {"MD5": 32, "SHA-256": 64}


class UnsupportedAlgorithm(ValueError):
    """An algorithm name that is not in :data:`ALGORITHMS`."""


def canonical_algorithm(name: str | None) -> str | None:
    """The canonical spelling of an algorithm token, ``"MD5"`` for None/empty, None when unsupported."""
    if not name:
        return "MD5"
    return dget(_BY_LOWER, name.lower())


def _spec(algorithm: str | None):
    canon = canonical_algorithm(algorithm)
    if canon is None:
        raise UnsupportedAlgorithm(f"unsupported digest algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    return _ALGS[canon]


def base_algorithm(algorithm: str | None) -> str:
    """``"MD5"`` for MD5 and MD5-sess, ``"SHA-256"`` for SHA-256 and SHA-256-sess (raises if unsupported)."""
    return _spec(algorithm)[2]


def hash_hex(algorithm: str | None, text: str) -> str:
    """Lower-case hex digest of ``text.encode('latin-1')`` with the algorithm's hash function."""
    return _spec(algorithm)[0](text.encode("latin-1")).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str | None = "MD5") -> str:
    """``H(username:realm:password)`` in lower-case hex: the value a user store keeps instead of the password.

    For a ``-sess`` algorithm this is still the stored (base) HA1; :func:`verify` derives the session value.
    """
    return _spec(algorithm)[0](f"{username}:{realm}:{password}".encode("latin-1")).hexdigest()


def response(params: Mapping[str, str], method: str, ha1_hex: str, algorithm: str | None = None) -> str | None:
    """The ``response`` value a client with the right password would send, or None if ``params`` cannot be answered.

    ``params``: lower-case keys, unquoted values (nonce, uri, and with qop also qop, nc, cnonce).
    ``algorithm`` defaults to ``params['algorithm']`` (absent: MD5). None is returned for an unsupported algorithm,
    a qop other than ``auth``, or a missing parameter the computation needs.
    """
    if algorithm is None:
        algorithm = dget(params, "algorithm")
    canon = canonical_algorithm(algorithm)
    if canon is None:
        return None
    hfun, sess, _base = _ALGS[canon]
    nonce = dget(params, "nonce")
    uri = dget(params, "uri")
    if nonce is None or uri is None:
        return None
    qop = dget(params, "qop")
    cnonce = dget(params, "cnonce")
    h1 = ha1_hex.lower()
    if sess:
        if not cnonce:
            return None
        h1 = hfun(f"{h1}:{nonce}:{cnonce}".encode("latin-1")).hexdigest()
    h2 = hfun(f"{method}:{uri}".encode("latin-1")).hexdigest()
    if qop is None:
        data = f"{h1}:{nonce}:{h2}"
    elif qop.lower() != "auth":  # auth-int, empty, or garbage
        return None
    else:
        nc = dget(params, "nc")
        if not nc or not cnonce:
            return None
        # The qop value as the client sent it is what it hashed (RFC 7616 §3.4.1 uses unq(qop)).
        data = f"{h1}:{nonce}:{nc}:{cnonce}:{qop}:{h2}"
    return hfun(data.encode("latin-1")).hexdigest()


def verify(credentials_params: Mapping[str, str], method: str, ha1: str, algorithm: str | None = None) -> bool:
    """True when ``credentials_params['response']`` is the digest the password behind ``ha1`` produces.

    ``credentials_params`` is what the SIP parser gives for one Authorization/Proxy-Authorization header: lower-case
    keys, unquoted values. ``ha1`` is the stored HA1 hex for the algorithm's base (see :func:`base_algorithm`).
    ``algorithm`` is the one to compute with (default: the credentials' own ``algorithm``, absent = MD5).
    The comparison is constant-time (``hmac.compare_digest``) and case-insensitive on the hex digits.
    Never raises on hostile input: anything malformed simply fails.
    """
    got = dget(credentials_params, "response")
    if not got:
        return False
    try:
        expected = response(credentials_params, method, ha1, algorithm)
    except UnicodeEncodeError:  # a str outside latin-1 did not come from the wire
        return False
    if expected is None:
        return False
    try:
        got_bytes = got.lower().encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(got_bytes, expected.encode("ascii"))


def quote(value: str) -> str:
    """A quoted-string (RFC 3261 §25.1): backslash-escape ``"`` and ``\\``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge_headers(
    realm: str,
    nonce: str,
    algorithms: Iterable[str] = ("SHA-256", "MD5"),
    qop: bool = True,
    stale: bool = False,
    opaque: str | None = None,
) -> list[str]:
    """Header VALUES for WWW-Authenticate (401) / Proxy-Authenticate (407): one challenge per algorithm.

    The order of ``algorithms`` is kept: it is the server's preference, most preferred first (RFC 8760 §2.4 asks
    for SHA-256 before MD5, which the default does). ``qop=True`` adds ``qop="auth"``; ``qop=False`` gives the
    RFC 2069 form that old phones expect (no qop, hence no nc/cnonce). ``stale=True`` tells the client that its
    digest was right but the nonce had expired, so it retries with the new nonce without asking the user.
    """
    out = []
    seen = set()
    for alg in algorithms:
        canon = canonical_algorithm(alg)
        if canon is None:
            raise UnsupportedAlgorithm(f"unsupported digest algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")
        if canon in seen:
            continue
        seen.add(canon)
        parts = [f"Digest realm={quote(realm)}", f"nonce={quote(nonce)}"]
        if opaque is not None:
            parts.append(f"opaque={quote(opaque)}")
        if stale:
            parts.append("stale=true")
        parts.append(f"algorithm={canon}")
        if qop:
            parts.append('qop="auth"')
        out.append(", ".join(parts))
    return out
