"""Location records: an address-of-record (AOR) and its contact bindings (Kamailio's usrloc urecord/ucontact).

Both are immutable: a registration builds a new ``Record`` and swaps it in with the table's atomic ``compute``, so
lookups read a consistent snapshot without taking any lock.
"""

from ftsip.dicts import get as dget
from ftsip.sip.model import unescape


class LocationStoreError(Exception):
    """The location store refused a change and left everything as it was (e.g. a full shared-memory segment); the
    message says which setting to raise."""


class Binding:
    """One contact bound to an AOR.

    ``contact`` the Contact URI as registered; ``key`` what identifies the binding (RFC 3261 §19.1.4 URI equality, or
    ``+sip.instance``/``reg-id`` per RFC 5626); ``expires_at`` absolute wall-clock seconds; ``q`` priority (1.0 when
    absent); ``call_id``/``cseq`` for request ordering; ``received`` the (host, port) the REGISTER came from;
    ``path`` the Path header values (RFC 3327); ``instance`` the +sip.instance value; ``user_agent``.
    """

    __slots__ = ("contact", "key", "expires_at", "q", "call_id", "cseq", "received", "transport", "path",
                 "instance", "reg_id", "user_agent", "registered_at")

    def __init__(self, contact, key, expires_at, q, call_id, cseq, received=None, transport="udp", path=(),
                 instance=None, reg_id=None, user_agent=None, registered_at=0.0):
        self.contact = contact
        self.key = key
        self.expires_at = expires_at
        self.q = q
        self.call_id = call_id
        self.cseq = cseq
        self.received = received
        self.transport = transport
        self.path = path
        self.instance = instance
        self.reg_id = reg_id
        self.user_agent = user_agent
        self.registered_at = registered_at

    def remaining(self, now):
        """Whole seconds left (at least 0)."""
        r = int(self.expires_at - now + 0.5)
        return r if r > 0 else 0

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        if d.get("received") is not None:
            d["received"] = tuple(d["received"])
        d["path"] = tuple(d.get("path") or ())
        return cls(**d)

    def __eq__(self, other):
        return type(other) is Binding and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None

    def __repr__(self):
        return f"Binding({self.contact!r}, expires_at={self.expires_at:.0f}, q={self.q})"


class Record:
    """An AOR and its bindings (a tuple, never empty in the table: an empty record is deleted)."""

    __slots__ = ("aor", "bindings")

    def __init__(self, aor, bindings):
        self.aor = aor
        self.bindings = bindings

    def live(self, now):
        """The bindings that have not expired at ``now``."""
        for b in self.bindings:
            if b.expires_at <= now:
                return tuple(b for b in self.bindings if b.expires_at > now)
        return self.bindings

    def purged(self, now):
        """This record without its expired bindings: ``self`` if none expired, None if none is left."""
        live = self.live(now)
        if live is self.bindings:
            return self
        return Record(self.aor, live) if live else None

    def next_expiry(self):
        return min(b.expires_at for b in self.bindings)

    def __repr__(self):
        return f"Record({self.aor!r}, {len(self.bindings)} bindings)"


def uri_key(uri):
    """A string equal for two SIP URIs that RFC 3261 §19.1.4 calls equal (the parameters that take part in the
    comparison when present on either side are included; unknown ones are ignored, which errs towards a match)."""
    if not uri.is_sip:
        return uri.raw.lower()
    user = "" if uri.user is None else unescape(uri.user)
    pw = "" if uri.password is None else ":" + unescape(uri.password)
    p = uri.params
    extra = ""
    for name in ("transport", "user", "ttl", "method", "maddr"):
        v = dget(p, name)
        if v is not None:
            extra += f";{name}={v.lower()}"
    port = "" if uri.port is None else f":{uri.port}"
    return f"{uri.scheme}:{user}{pw}@{uri.host}{port}{extra}"
