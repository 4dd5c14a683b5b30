"""Stateless digest nonces, and optional nonce-count replay tracking.

A nonce is ``urlsafe_b64(timestamp_ms(8 bytes) | salt(8 bytes) | HMAC-SHA256(secret, tag|realm|ts|salt)[:16])``
without padding: 43 characters from ``A-Za-z0-9-_`` (no quote, comma or backslash). Nothing is stored per nonce:
any thread or process holding the same secret can tell a nonce it issued (VALID), one it issued more than
``lifetime`` seconds ago (STALE: answer with ``stale=true`` so the phone retries silently) and anything else
(INVALID: forged, garbled, another realm, another secret, or dated in the future).

Sans-I/O: ``now`` is always an argument (wall-clock seconds). The salt comes from ``os.urandom`` unless given.

:class:`NonceCounter` remembers the last nonce-count (``nc``) accepted per nonce so that a captured request cannot be
replayed within the nonce lifetime (only possible with qop; qop-less digests carry no count). It is lock-striped:
a nonce hashes to one of ``shards`` shards, each with its own lock and its own bounded ``OrderedDict``.
"""

from __future__ import annotations

import binascii
import enum
import hmac
import os
import random
import struct
import threading
from collections import OrderedDict

from ftsip.dicts import get as dget

__all__ = ["NonceCounter", "NonceFactory", "NonceStatus"]

_TAG = b"ftsip-nonce-v1\x00"
_HEAD = struct.Struct(">Q8s")  # timestamp in ms, salt
_MAC_LEN = 16
_RAW_LEN = _HEAD.size + _MAC_LEN  # 32 bytes -> 43 base64 chars
NONCE_LENGTH = 43
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")


class NonceStatus(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # authentic, but older than the lifetime
    INVALID = "invalid"  # not ours: forged, garbled, other realm/secret, or from the future


class NonceFactory:
    """Makes and checks stateless nonces.

    ``secret``: at least 16 bytes, shared by every worker (thread or process) that must accept the nonces.
    ``lifetime``: seconds a nonce stays VALID. ``old_secrets``: secrets still accepted when checking (rotation).
    ``max_skew``: seconds a nonce may be dated in the future (clock differences between processes) before it is
    INVALID.
    """

    __slots__ = ("_secret", "_all_secrets", "lifetime", "max_skew", "_rand")

    def __init__(self, secret: bytes, lifetime: float = 300.0, *, old_secrets=(), max_skew: float = 5.0):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes (use os.urandom(32))")
        if lifetime <= 0:
            raise ValueError("nonce lifetime must be positive")
        self._secret = bytes(secret)
        self._all_secrets = (self._secret, *(bytes(s) for s in old_secrets))
        self.lifetime = float(lifetime)
        self.max_skew = float(max_skew)
        self._rand = random.Random(os.urandom(16))

    @staticmethod
    def _mac(secret: bytes, realm: str, head: bytes) -> bytes:
        return hmac.digest(secret, _TAG + realm.encode("latin-1") + b"\x00" + head, "sha256")[:_MAC_LEN]

    def make(self, now: float, realm: str, salt: bytes | None = None) -> str:
        """A new nonce for ``realm`` issued at ``now``."""
        if salt is None:     # unique, not secret: the HMAC is what makes a nonce unforgeable (no syscall here)
            salt = self._rand.getrandbits(64).to_bytes(8, "little")
        elif len(salt) != 8:
            raise ValueError("salt must be 8 bytes")
        head = _HEAD.pack(max(0, int(now * 1000)), salt)
        raw = head + self._mac(self._secret, realm, head)
        # base64.urlsafe_b64encode, without its Python-level layers (this runs for every challenge)
        return binascii.b2a_base64(raw, newline=False).translate(_STD_TO_URL).rstrip(b"=").decode("ascii")

    def issued_at(self, nonce: str) -> float | None:
        """The (unauthenticated) issue time written in a nonce, or None if it cannot be decoded."""
        raw = _decode(nonce)
        if raw is None:
            return None
        return _HEAD.unpack_from(raw)[0] / 1000.0

    def check(self, nonce: str, now: float, realm: str) -> NonceStatus:
        """VALID, STALE or INVALID (see the module docstring). Never raises on hostile input."""
        raw = _decode(nonce)
        if raw is None:
            return NonceStatus.INVALID
        head, mac = raw[: _HEAD.size], raw[_HEAD.size :]
        try:
            for secret in self._all_secrets:
                if hmac.compare_digest(mac, self._mac(secret, realm, head)):
                    break
            else:
                return NonceStatus.INVALID
        except UnicodeEncodeError:  # a realm outside latin-1 cannot be one we issued
            return NonceStatus.INVALID
        age = now - _HEAD.unpack(head)[0] / 1000.0
        if age < -self.max_skew:
            return NonceStatus.INVALID
        if age > self.lifetime:
            return NonceStatus.STALE
        return NonceStatus.VALID


def _decode(nonce: str) -> bytes | None:
    if not isinstance(nonce, str) or len(nonce) != NONCE_LENGTH:
        return None
    try:
        raw = binascii.a2b_base64(nonce.encode("ascii").translate(_URL_TO_STD) + b"=")
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != _RAW_LEN:
        return None
    return raw


class _Shard:
    __slots__ = ("lock", "entries")

    def __init__(self):
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, list] = OrderedDict()  # nonce -> [last_nc, first_seen]; oldest first


class NonceCounter:
    """Last accepted nonce-count per nonce, bounded in memory and safe for many threads.

    ``check_and_update(nonce, nc, now)`` accepts (True) and records ``nc`` only if it is greater than the last
    count accepted for that nonce; a first sighting is accepted. Entries are dropped ``lifetime`` seconds after
    they were first seen (use at least the nonce lifetime: an older nonce is STALE anyway) and, when a shard
    is full, oldest first. A nonce dropped early for lack of room starts counting again, so size ``max_entries``
    for (nonces issued per second) x (lifetime).
    """

    __slots__ = ("lifetime", "_shards", "_mask", "_per_shard")

    def __init__(self, max_entries: int = 100_000, lifetime: float = 300.0, shards: int = 64):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if shards < 1 or shards & (shards - 1):
            raise ValueError("shards must be a power of two")
        # keep shards big enough (>= 64 entries) that hash imbalance does not evict early
        while shards > 1 and max_entries // shards < 64:
            shards //= 2
        self.lifetime = float(lifetime)
        self._shards = tuple(_Shard() for _ in range(shards))
        self._mask = shards - 1
        self._per_shard = -(-max_entries // shards)  # ceil: total capacity >= max_entries

    @property
    def max_entries(self) -> int:
        """The real bound: ``max_entries`` rounded up to a multiple of the shard count."""
        return self._per_shard * len(self._shards)

    def check_and_update(self, nonce: str, nc: int, now: float) -> bool:
        shard = self._shards[hash(nonce) & self._mask]
        entries = shard.entries
        with shard.lock:
            # expire from the oldest end: insertion order is first-seen order
            horizon = now - self.lifetime
            while entries:
                first = next(iter(entries.values()))
                if first[1] >= horizon:
                    break
                entries.popitem(last=False)
            entry = dget(entries, nonce)
            if entry is None:
                if len(entries) >= self._per_shard:
                    entries.popitem(last=False)
                entries[nonce] = [nc, now]
                return True
            if nc <= entry[0]:
                return False
            entry[0] = nc
            return True

    def __len__(self) -> int:
        return sum(len(s.entries) for s in self._shards)
