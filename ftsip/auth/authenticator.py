"""The facade the registrar and the proxy use: check credentials, build challenges.

Sans-I/O: ``now`` is an argument. Thread-safe: it only reads the user store (lock-free) and the nonce factory
(immutable); the optional NonceCounter is lock-striped.

No user enumeration: an unknown or disabled user, a user without an HA1 for the chosen algorithm and a wrong
password all give ``ok=False, stale=False`` (so the caller sends the same status and the same fresh challenge),
and each of them computes one full digest (against a dummy HA1 when there is no real one), so they cost the same.
Only ``reason`` differs, for logs and metrics.

Order of checks: credentials for our realm -> algorithm offered -> parameters present -> qop policy -> nonce
authentic (INVALID stops here: no hash is computed, nothing user-dependent is revealed) -> Request-URI (only with
``check_uri``) -> digest -> nonce age (a right digest on an expired nonce gives ``stale=True``) -> nonce-count
replay (only with qop and a NonceCounter; a replay also answers ``stale=True`` so an honest client recovers
silently with a fresh nonce).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftsip.dicts import get as dget

from .digest import canonical_algorithm, challenge_headers, hash_hex, verify
from .nonce import NonceStatus

__all__ = ["AuthResult", "Authenticator", "REASONS"]

REASONS = (
    "ok",
    "no-credentials",  # no Authorization/Proxy-Authorization at all (first request: just challenge)
    "unknown-realm",  # credentials, but none of them Digest for our realm
    "bad-algorithm",  # an algorithm we did not offer
    "malformed",  # a required parameter is missing or garbled (nc not 8 hex digits, ...)
    "bad-qop",  # auth-int, or no qop while qop is required
    "bad-nonce",  # a nonce we did not issue (forged, garbled, other secret/realm, future)
    "uri-mismatch",  # uri parameter differs from the Request-URI (check_uri only)
    "unknown-user",
    "disabled-user",
    "no-ha1",  # the user has no HA1 for the chosen algorithm (e.g. only ha1_md5, client answered SHA-256)
    "bad-response",  # wrong password (or a digest computed over other values)
    "stale-nonce",  # right digest, expired nonce: challenge again with stale=true
    "replay",  # nonce-count not above the last one accepted for this nonce
)


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    username: str | None
    stale: bool
    reason: str
    algorithm: str | None = None
    user: object | None = None  # the User on success (voicemail, extra)


_HEX = "0123456789abcdefABCDEF"
_MARK = "\x00"      # stands for the nonce in a cached challenge (nonces are base64url: never a NUL)
_NO_CREDENTIALS = AuthResult(False, None, False, "no-credentials")
_UNKNOWN_REALM = AuthResult(False, None, False, "unknown-realm")


class Authenticator:
    """Digest authentication against a user store (anything with ``get(username) -> User | None``).

    ``algorithms``: offered in this order (first = preferred, RFC 8760: SHA-256 before MD5); credentials using
    another algorithm are refused. ``qop=True`` requires qop=auth; ``qop=False`` challenges without qop (old
    phones) and also accepts qop=auth answers. ``check_uri`` (off by default: SIPp sends uri=sip:host:port, see
    docs) requires the ``uri`` parameter to equal the Request-URI exactly. ``opaque`` is sent in challenges and,
    when set, must come back unchanged.
    """

    __slots__ = ("store", "nonces", "realm", "algorithms", "qop", "counter", "check_uri", "opaque", "_dummy",
                 "_templates")

    def __init__(self, user_store, nonce_factory, realm: str, algorithms=("SHA-256", "MD5"), qop: bool = True,
                 nonce_counter=None, check_uri: bool = False, opaque: str | None = None):
        canon = []
        for a in algorithms:
            c = canonical_algorithm(a)
            if c is None:
                raise ValueError(f"unsupported digest algorithm {a!r}")
            if c not in canon:
                canon.append(c)
        if not canon:
            raise ValueError("at least one digest algorithm is needed")
        self.store = user_store
        self.nonces = nonce_factory
        self.realm = realm
        self.algorithms = tuple(canon)
        self.qop = bool(qop)
        self.counter = nonce_counter
        self.check_uri = check_uri
        self.opaque = opaque
        seed = os.urandom(16).hex()
        # per-algorithm dummy HA1 for unknown users: same length, same work
        self._dummy = {alg: hash_hex(alg, seed) for alg in ("MD5", "SHA-256")}
        self._templates = {}

    def challenge(self, now: float, stale: bool = False, realm: str | None = None) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values with a fresh nonce (one per algorithm)."""
        realm = realm or self.realm
        key = (realm, stale)
        parts = dget(self._templates, key)
        if parts is None:        # the values are fixed but for the nonce: format them once, fill the nonce in
            parts = self._templates[key] = [
                tuple(v.split(_MARK)) for v in
                challenge_headers(realm, _MARK, self.algorithms, self.qop, stale, self.opaque)]
        nonce = self.nonces.make(now, realm)
        return [a + nonce + b for a, b in parts]

    def _pick(self, credentials_list, realm):
        """The Digest credentials for ``realm``; prefer ones whose algorithm we offer."""
        fallback = None
        for cred in credentials_list:
            if cred.scheme.lower() != "digest":
                continue
            params = cred.params
            if dget(params, "realm") != realm:
                continue
            if canonical_algorithm(dget(params, "algorithm")) in self.algorithms:
                return params
            if fallback is None:
                fallback = params
        return fallback

    def check(self, credentials_list, method: str, request_uri: str, now: float,
              expected_realm: str | None = None) -> AuthResult:
        if not credentials_list:
            return _NO_CREDENTIALS
        realm = expected_realm or self.realm
        params = self._pick(credentials_list, realm)
        if params is None:
            return _UNKNOWN_REALM
        algorithm = canonical_algorithm(dget(params, "algorithm"))
        username = dget(params, "username")
        if algorithm not in self.algorithms:
            return AuthResult(False, username, False, "bad-algorithm", algorithm)
        nonce = dget(params, "nonce")
        if not username or not nonce or dget(params, "uri") is None or not dget(params, "response"):
            return AuthResult(False, username, False, "malformed", algorithm)
        qop = dget(params, "qop")
        nc_value = None
        if qop is None:
            if self.qop:
                return AuthResult(False, username, False, "bad-qop", algorithm)
        else:
            if qop.lower() != "auth":
                return AuthResult(False, username, False, "bad-qop", algorithm)
            nc = dget(params, "nc", "")
            if len(nc) != 8 or not dget(params, "cnonce") or nc.strip(_HEX):
                return AuthResult(False, username, False, "malformed", algorithm)
            nc_value = int(nc, 16)
        if algorithm.endswith("-sess") and not dget(params, "cnonce"):
            return AuthResult(False, username, False, "malformed", algorithm)
        if self.opaque is not None and dget(params, "opaque") != self.opaque:
            return AuthResult(False, username, False, "malformed", algorithm)
        status = self.nonces.check(nonce, now, realm)
        if status is NonceStatus.INVALID:
            return AuthResult(False, username, False, "bad-nonce", algorithm)
        if self.check_uri and dget(params, "uri") != request_uri:
            return AuthResult(False, username, False, "uri-mismatch", algorithm)

        base = "SHA-256" if algorithm.startswith("SHA-256") else "MD5"
        user = self.store.get(username)
        reason = None
        if user is None:
            reason = "unknown-user"
        elif not user.enabled:
            reason = "disabled-user"
        ha1 = dget(user.ha1, base) if user is not None else None
        if ha1 is None and reason is None:
            reason = "no-ha1"
        if reason is not None:
            verify(params, method, self._dummy[base], algorithm)  # same cost as a real check
            return AuthResult(False, username, False, reason, algorithm)
        if not verify(params, method, ha1, algorithm):
            return AuthResult(False, username, False, "bad-response", algorithm)
        if status is NonceStatus.STALE:
            return AuthResult(False, username, True, "stale-nonce", algorithm)
        if nc_value is not None and self.counter is not None:
            if not self.counter.check_and_update(nonce, nc_value, now):
                return AuthResult(False, username, True, "replay", algorithm)
        return AuthResult(True, username, False, "ok", algorithm, user)
