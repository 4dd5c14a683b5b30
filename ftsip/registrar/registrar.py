"""The registrar (RFC 3261 §10.3; Path per RFC 3327; +sip.instance/reg-id per RFC 5626), sans-I/O.

``Registrar.handle(req, src, now, st)`` returns a ``Reply`` (status, reason, header lines); it never sends. The
binding update runs inside the location table's atomic ``compute``, so two REGISTERs for the same AOR on two
threads serialize on that AOR's bucket and an out-of-order refresh can never overwrite newer state.
"""
import email.utils
import logging

from ftsip.location.records import Binding, LocationStoreError, Record, uri_key
from ftsip.ops import log as oplog
from ftsip.sip import unescape
from ftsip.dicts import get as dget

SUPPORTED = frozenset(("path",))


class Reply:
    __slots__ = ("status", "reason", "headers")

    def __init__(self, status, reason=None, headers=()):
        self.status = status
        self.reason = reason
        self.headers = headers

    def __repr__(self):
        return f"Reply({self.status}, {self.reason!r})"


class Abort(Exception):
    """Raised inside the atomic update to refuse the whole request; nothing is changed."""

    def __init__(self, status, reason=None, headers=()):
        Exception.__init__(self, status, reason)
        self.reply = Reply(status, reason, headers)


class _DateCache:
    """RFC 3261 §10.3 step 8: a Date header in the 200; formatted once a second."""

    __slots__ = ("sec", "value")

    def __init__(self):
        self.sec = -1
        self.value = ""

    def get(self, now):
        sec = int(now)
        if sec != self.sec:
            self.value = email.utils.formatdate(sec, usegmt=True)
            self.sec = sec
        return self.value


class Registrar:
    def __init__(self, cfg, location, authenticator, domains, rng=None, app=None):
        self.cfg = cfg
        self.location = location
        self.auth = authenticator
        self.app = app
        self.domains = frozenset(domains)
        self.rng = rng
        self.date = _DateCache()

    def handle(self, req, src, now, st, ctx=None):
        """One REGISTER whose Request-URI is ours. Returns a Reply."""
        reg = self.cfg.registrar
        unsupported = [t for t in req.require if t not in SUPPORTED]
        if unsupported:
            return Reply(420, None, ("Unsupported: " + ", ".join(unsupported),))
        username = None
        if self.cfg.auth.register:
            if self.app is not None and ctx is not None:
                res, refusal = self.app.authenticate(req, req.authorization, src, now, ctx)
                if refusal is not None:
                    return Reply(*refusal)
            else:
                res = self.auth.check(req.authorization, "REGISTER", req.uri, now)
            if not res.ok:
                return Reply(401, None, tuple("WWW-Authenticate: " + v
                                              for v in self.auth.challenge(now, stale=res.stale)))
            username = res.username
        to_uri = req.to.uri
        if not to_uri.is_sip:      # the AOR must be a SIP or SIPS URI (RFC 4475 unksm2)
            return Reply(400, "Bad Request - the To header field must hold a SIP or SIPS URI")
        if to_uri.host not in self.domains or to_uri.user is None:
            return Reply(404, "Not Found - the address-of-record is not in a domain served here")
        aor = to_uri.aor()
        if username is not None and not reg.allow_third_party and unescape(to_uri.user) != username:
            return Reply(403, "Forbidden - the authenticated user may not register this address-of-record")

        contacts = req.contacts
        if not contacts:
            rec = self.location.record(aor)
            return self._ok(req, rec.live(now) if rec is not None else (), now)
        call_id = req.call_id
        cseq = req.cseq.num
        if any(c.star for c in contacts):
            if len(contacts) != 1 or req.expires != 0:
                return Reply(400, "Bad Request - Contact: * needs Expires: 0 and no other Contact")
            fn = self._remove_all(call_id, cseq)
        else:
            items = []
            header_expires = req.expires
            for c in contacts:
                e = c.expires
                if e is None:
                    e = header_expires if header_expires is not None else reg.default_expires
                if e and e < reg.min_expires:
                    return Reply(423, None, (f"Min-Expires: {reg.min_expires}",))
                if e > reg.max_expires:
                    e = reg.max_expires
                if e and reg.expires_jitter and self.rng is not None:
                    e = max(reg.min_expires, e - self.rng.randint(0, e * reg.expires_jitter // 100), 1)
                instance = dget(c.params, "+sip.instance")
                reg_id = dget(c.params, "reg-id")
                key = f"instance:{instance}:{reg_id}" if instance else uri_key(c.uri)
                q = c.q
                items.append((key, c.uri.raw, e, 1.0 if q is None else q, instance, reg_id))
            via = req.via
            path = tuple(p.raw for p in req.paths)
            fn = self._apply(items, call_id, cseq, now, (src[0], src[1]), via.transport.lower(), path,
                             req.user_agent, aor, reg.max_contacts)
        try:
            rec = self.location.update(aor, fn, st)
        except Abort as a:
            return a.reply
        except LocationStoreError as e:     # e.g. the process mode's fixed segment is full: say what to raise
            oplog.event(logging.ERROR, "location-full", "REGISTER for %s refused: %s", aor, e)
            if ctx is not None:
                ctx.stats.inc("registrar.store_full")
            return Reply(503, "Service Unavailable - location store full", ("Retry-After: 60",))
        return self._ok(req, rec.bindings if rec is not None else (), now)

    @staticmethod
    def _apply(items, call_id, cseq, now, received, transport, path, user_agent, aor, max_contacts):
        def fn(old):
            current = {}
            if old is not None:
                for b in old.bindings:
                    if b.expires_at > now:
                        current[b.key] = b
            for key, contact, e, q, instance, reg_id in items:
                b = current.get(key)
                if b is not None and b.call_id == call_id:
                    if cseq < b.cseq:
                        raise Abort(500, "Server Internal Error - out-of-order REGISTER (CSeq lower than the "
                                    "binding's)")
                    if cseq == b.cseq:
                        continue        # a retransmission: the binding already reflects it
                if e == 0:
                    current.pop(key, None)
                else:
                    current[key] = Binding(contact, key, now + e, q, call_id, cseq, received, transport, path,
                                           instance, reg_id, user_agent, now)
            if len(current) > max_contacts:
                raise Abort(503, f"Service Unavailable - too many registered contacts (max {max_contacts})")
            return Record(aor, tuple(current.values())) if current else None
        return fn

    @staticmethod
    def _remove_all(call_id, cseq):
        def fn(old):
            if old is None:
                return None
            for b in old.bindings:
                if b.call_id == call_id and cseq < b.cseq:
                    raise Abort(500, "Server Internal Error - out-of-order REGISTER (CSeq lower than the "
                                "binding's)")
            return None
        return fn

    def _ok(self, req, bindings, now):
        headers = []
        for b in bindings:
            h = f"Contact: <{b.contact}>;expires={b.remaining(now)}"
            if b.q != 1.0:
                h += f";q={b.q:g}"
            if b.instance is not None:
                h += f';+sip.instance="{b.instance}"'
                if b.reg_id is not None:
                    h += f";reg-id={b.reg_id}"
            headers.append(h)
        if "path" in req.supported:
            for p in req.paths:         # RFC 3327 §5.3: the Path of this REGISTER goes back to the UA
                headers.append("Path: " + p.raw)
        headers.append("Date: " + self.date.get(now))
        return Reply(200, None, tuple(headers))
