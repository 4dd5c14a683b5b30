"""Parse, edit and build SIP messages.

``parse(data)`` -> Request | Response (raises SipParseError).
``msg.edit()`` -> Edit: deltas applied when the outgoing datagram is built; untouched header lines are copied
verbatim, the received datagram is never mutated (Kamailio's "lumps", done small).
``make_response(request, status, ...)`` -> bytes, per RFC 3261 §8.2.6.
"""
import hashlib

from ftsip.sip import backend as _backend
from ftsip.sip.errors import SipParseError
from ftsip.sip.model import Via
from ftsip.dicts import get as dget

_DEFAULT = _backend.DEFAULT

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 429: "Too Many Requests",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

SERVER = "ftsip/0.1"


def parse(data, backend_module=None, *, backend=None):
    """Parse one datagram. ``backend`` (or ``backend_module``) picks a twin: ``ftsip.sip.backend.PURE``/``FAST``."""
    b = backend or backend_module or _DEFAULT
    return b.parse_message(data)


def received_via(via, src_host, src_port):
    """RFC 3261 §18.2.1 and RFC 3581: the top Via with ``received``/``rport`` filled in for a request that came
    from (src_host, src_port), or None when nothing needs to change."""
    params = via.params
    rport = params["rport"] if "rport" in params else None
    host = via.host
    if host[:1] == "[":
        host = host[1:-1]
    if rport is None and host == src_host.lower():
        return None
    raw = via.raw
    if "received" not in params and (rport is None or (rport == "" and _bare_rport(raw))):
        # the usual case, edited as text: ";rport" -> ";rport=PORT", then ";received=HOST" (order as with_params)
        new = dict(params)
        if rport is not None:
            new["rport"] = str(src_port)
            i = _bare_rport(raw)
            raw = raw[:i] + "=" + new["rport"] + raw[i:]
        new["received"] = src_host
        return Via(via.protocol, via.transport, via.host, via.port, new, raw + ";received=" + src_host)
    changes = {"received": src_host}
    if rport is not None:
        changes["rport"] = str(src_port)
    return via.with_params(**changes)


def _bare_rport(raw):
    """The index just after the one ``;rport`` flag (no value, no spaces) in a Via value, else 0."""
    i = raw.find(";rport")
    if i < 0 or raw.find(";rport", i + 6) >= 0:
        return 0
    j = i + 6
    return j if j == len(raw) or raw[j] == ";" else 0


def response_target(via, default_port=5060):
    """Where a response to a request with top Via ``via`` goes (RFC 3261 §18.2.2, RFC 3581): received/rport over
    sent-by. Returns (host, port)."""
    host = via.received or via.host
    if host[:1] == "[":
        host = host[1:-1]
    rport = via.rport
    if rport:
        return host, int(rport)
    return host, via.port or default_port


def to_tag_for(request):
    """A To tag for a response the server itself generates: derived from the request, so a retransmitted request
    gets the same tag without keeping state (what stateless SIP elements do)."""
    try:
        branch = request.vias[0].branch
    except (SipParseError, IndexError):
        branch = ""
    seed = f"{request.call_id}|{request.get('from')}|{branch}|{request.get('cseq')}".encode("latin-1")
    return hashlib.blake2s(seed, digest_size=6).hexdigest()


def make_response(request, status, reason=None, to_tag=None, headers=(), body="", content_type=None,
                  top_via=None):
    """Build the bytes of a response to ``request`` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied, a To
    tag added to a non-100 response when the request has none (``to_tag`` or a derived one), ``headers`` (strings
    'Name: value') appended. ``top_via`` replaces the first Via value (the request's Via with received/rport)."""
    lines = [f"SIP/2.0 {status} {reason or dget(REASONS, status, 'Unknown')}"]
    via_done = top_via is None
    for key, name, value, raw in request.headers:
        if key == "via":
            if not via_done:
                via_done = True
                parts = request._p.split_commas(value)
                parts[0] = top_via
                lines.append(name + ": " + ", ".join(parts))
            else:
                lines.append(raw)
        elif key == "from" or key == "call-id" or key == "cseq":
            lines.append(raw)
        elif key == "to":
            if status > 100 and _to_tag(request) is None:
                tag = to_tag or to_tag_for(request)
                lines.append(name + ": " + value + ";tag=" + tag)
            else:
                lines.append(raw)
    lines.extend(headers)
    if body:
        if content_type:
            lines.append("Content-Type: " + content_type)
    lines.append("Server: " + SERVER)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("latin-1")


def _to_tag(request):
    try:
        return request.to.tag
    except Exception:
        return None


def hop_request(method, ruri, via, from_, to, call_id, cseq, routes):
    """The bytes of an ACK for a non-2xx final response (RFC 3261 §17.1.1.3) or of a CANCEL (§9.1): the INVITE's
    Request-URI, top Via, From, Call-ID, CSeq number and Route headers; To from the response (ACK) or the INVITE
    (CANCEL); no body."""
    lines = [f"{method} {ruri} SIP/2.0", "Via: " + via, "Max-Forwards: 70", "From: " + from_, "To: " + to,
             "Call-ID: " + call_id, f"CSeq: {cseq} {method}"]
    for r in routes:
        lines.append("Route: " + r)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Edit:
    """Deltas against a received message; ``to_bytes()`` builds the outgoing datagram.

    Requests a proxy forwards: ``set_uri``, ``push_via``, ``add_record_route``, ``pop_route``,
    ``set_max_forwards``, ``set_top_via`` (received/rport), ``push_routes``. Responses it relays: ``pop_via``. Any header:
    ``remove``, ``replace``, ``add``; the body: ``set_body``.
    """

    __slots__ = ("msg", "uri", "vias", "pop_vias", "top_via", "rrs", "routes", "pop_routes", "max_forwards",
                 "removes", "replaces", "adds", "body", "content_type")

    def __init__(self, msg):
        self.msg = msg
        self.uri = None
        self.vias = []
        self.pop_vias = 0
        self.top_via = None
        self.rrs = []
        self.routes = ()
        self.pop_routes = 0
        self.max_forwards = None
        self.removes = ()
        self.replaces = None
        self.adds = []
        self.body = None
        self.content_type = None

    def set_uri(self, uri):
        self.uri = str(uri)
        return self

    def push_via(self, value):
        """Add a Via value on top (the last pushed ends up topmost)."""
        self.vias.insert(0, str(value))
        return self

    def pop_via(self):
        self.pop_vias += 1
        return self

    def set_top_via(self, via):
        self.top_via = via.raw if isinstance(via, Via) else str(via)
        return self

    def add_record_route(self, value):
        self.rrs.insert(0, str(value))
        return self

    def push_routes(self, values):
        """Put Route values before the existing ones (e.g. a registered Path, RFC 3327)."""
        self.routes = tuple(values) + tuple(self.routes)
        return self

    def pop_route(self):
        self.pop_routes += 1
        return self

    def set_max_forwards(self, n):
        self.max_forwards = int(n)
        return self

    def remove(self, key):
        self.removes = tuple(self.removes) + (key,)
        return self

    def replace(self, key, name, value):
        if self.replaces is None:
            self.replaces = {}
        self.replaces[key] = (name, value)
        return self

    def add(self, name, value):
        self.adds.append(name + ": " + value)
        return self

    def set_body(self, body, content_type=None):
        self.body = body
        self.content_type = content_type
        return self

    def to_bytes(self):
        m = self.msg
        split = m._p.split_commas
        if m.is_request:
            lines = [m.method + " " + (self.uri or m.uri) + " " + m.version]
        else:
            lines = [m.start_line]
        for v in self.vias:
            lines.append("Via: " + v)
        pop_vias = self.pop_vias
        top_via = self.top_via
        pop_routes = self.pop_routes
        routes = self.routes
        rrs = self.rrs
        mf = self.max_forwards
        removes = self.removes
        replaces = self.replaces
        done_replace = set()
        body = m.body if self.body is None else self.body
        for h in m.headers:
            key = h[0]
            if key == "via" and (pop_vias or top_via is not None):
                parts = split(h[2])
                k = min(pop_vias, len(parts))
                parts = parts[k:]
                pop_vias -= k
                if parts and top_via is not None:
                    parts[0] = top_via
                    top_via = None
                if parts:
                    lines.append(h[1] + ": " + ", ".join(parts))
                continue
            if key == "route" and routes:
                for r in routes:
                    lines.append("Route: " + r)
                routes = ()
            if key == "route" and pop_routes:
                parts = split(h[2])
                k = min(pop_routes, len(parts))
                parts = parts[k:]
                pop_routes -= k
                if parts:
                    lines.append(h[1] + ": " + ", ".join(parts))
                continue
            if key == "record-route" and rrs:
                for rr in rrs:
                    lines.append("Record-Route: " + rr)
                rrs = ()
            if key == "max-forwards" and mf is not None:
                lines.append(h[1] + ": " + str(mf))
                mf = None
                continue
            if key in removes:
                continue
            if replaces is not None and key in replaces:
                if key not in done_replace:
                    done_replace.add(key)
                    name, value = replaces[key]
                    lines.append(name + ": " + value)
                continue
            if key == "content-length" and self.body is not None:
                continue
            if key == "content-type" and self.content_type is not None:
                continue
            lines.append(h[3])
        for r in routes:
            lines.append("Route: " + r)
        for rr in rrs:
            lines.append("Record-Route: " + rr)
        if mf is not None:
            lines.append("Max-Forwards: " + str(mf))
        if replaces is not None:
            for key, (name, value) in replaces.items():
                if key not in done_replace:
                    lines.append(name + ": " + value)
        lines.extend(self.adds)
        if self.body is not None:
            if self.content_type is not None and body:
                lines.append("Content-Type: " + self.content_type)
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("latin-1")
