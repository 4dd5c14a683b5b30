"""SIP message model: URIs, header values, requests and responses.

Both parser twins (``ftsip.sip.pyparse`` and ``ftsip._fast.sipparse``) build these classes, so everything above the
parser sees one API. Header values are parsed lazily: the first access to ``msg.vias`` calls the parser module that
parsed the message (``msg._p``) and caches the result; a header that does not parse raises ``SipParseError`` at that
point, which the core answers with a 400 like any other parse error.

Text is ``str`` decoded as latin-1 (see docs/design.md), so values round-trip byte for byte.

Construction: the compiled parser allocates these objects and fills their ``__slots__`` directly, without running
``__init__``, as long as each class's ``__init__`` only assigns its slots (checked when ``ftsip._fast.sipparse`` is
imported: arguments, slots, and the attribute names the code touches); an ``__init__`` that does more makes it call
the class instead. Keep ``__init__`` a plain slot assignment, or check ``sipparse._slot_fill()`` after a change.
"""
from ftsip.sip.errors import SipParseError

_UNSET = object()
MAX_EXPIRES = 2**32 - 1


def unescape(s):
    """Undo %HH escapes (RFC 3261 §19.1.2) in a URI component; malformed escapes are kept as they are."""
    if "%" not in s:
        return s
    out = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "%" and i + 2 < n and _is_hex(s[i + 1]) and _is_hex(s[i + 2]):
            out.append(chr(int(s[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _is_hex(c):
    return c in "0123456789abcdefABCDEF"


def _params_text(params):
    return "".join(";" + k if v == "" else ";" + k + "=" + v for k, v in params.items())


def _param(name, doc=None):
    """A read-only property: the header parameter ``name`` or None (not ``params.get``: see ftsip/dicts.py)."""
    def get(self):
        p = self.params
        return p[name] if name in p else None
    return property(get, doc=doc or f"The {name} parameter, or None.")


class Uri:
    """A URI. For sip/sips every component is split out; other schemes keep only ``scheme`` and ``raw``.

    ``user``/``password`` are as written (escaped); ``host`` is lower-case (IPv6 references keep their brackets);
    ``port`` is an int or None; ``params`` maps lower-case names to values ('' for a flag like ``lr``);
    ``headers`` is the raw text after '?' or None.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "raw")

    def __init__(self, scheme, user, password, host, port, params, headers, raw):
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers
        self.raw = raw

    @property
    def is_sip(self):
        return self.scheme == "sip" or self.scheme == "sips"

    @property
    def hostport(self):
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def aor(self):
        """The address-of-record key: unescaped user '@' lower-case host (``host`` alone without a user)."""
        if self.user is None:
            return self.host or self.raw
        return unescape(self.user) + "@" + self.host

    def with_params(self, **changes):
        """A copy with some uri-parameters changed (a value of None removes it)."""
        params = dict(self.params)
        for k, v in changes.items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = v
        u = Uri(self.scheme, self.user, self.password, self.host, self.port, params, self.headers, None)
        u.raw = str(u)
        return u

    def __str__(self):
        if not self.is_sip:
            return self.raw
        s = self.scheme + ":"
        if self.user is not None:
            s += self.user
            if self.password is not None:
                s += ":" + self.password
            s += "@"
        s += self.hostport + _params_text(self.params)
        if self.headers is not None:
            s += "?" + self.headers
        return s

    def _key(self):
        return (self.scheme, self.user, self.password, self.host, self.port, self.params, self.headers, self.raw)

    def __eq__(self, other):
        return type(other) is Uri and self._key() == other._key()

    def __hash__(self):
        return hash(self.raw)

    def __repr__(self):
        return f"Uri({self.raw!r})"


class Via:
    """One Via value: ``protocol`` ('SIP/2.0/UDP' normalised without spaces), ``transport`` (upper-case), ``host``
    (lower-case), ``port`` (int or None), ``params`` (lower-case names; '' for a flag such as a bare ``rport``)."""

    __slots__ = ("protocol", "transport", "host", "port", "params", "raw")

    def __init__(self, protocol, transport, host, port, params, raw):
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.raw = raw

    branch = _param("branch")
    received = _param("received")
    rport = _param("rport", "None when absent, '' when present without a value, else the value.")
    maddr = _param("maddr")
    ttl = _param("ttl")

    @property
    def sent_by(self):
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, **changes):
        """A copy with some parameters set (None removes one); ``raw`` is rebuilt."""
        params = dict(self.params)
        for k, v in changes.items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = v
        return Via(self.protocol, self.transport, self.host, self.port, params,
                   self.protocol + " " + self.sent_by + _params_text(params))

    def __str__(self):
        return self.raw

    def _key(self):
        return (self.protocol, self.transport, self.host, self.port, self.params, self.raw)

    def __eq__(self, other):
        return type(other) is Via and self._key() == other._key()

    __hash__ = None

    def __repr__(self):
        return f"Via({self.raw!r})"


class NameAddr:
    """From/To/Contact/Route/Record-Route value: ``display`` (unquoted, or None), ``uri`` (Uri; None for Contact
    ``*``), ``params`` (header parameters, lower-case names, unquoted values, '' for a flag), ``raw``."""

    __slots__ = ("display", "uri", "params", "raw")

    def __init__(self, display, uri, params, raw):
        self.display = display
        self.uri = uri
        self.params = params
        self.raw = raw

    @property
    def star(self):
        return self.uri is None

    tag = _param("tag")

    @property
    def expires(self):
        """The expires parameter as an int (saturated at 2**32-1), None when absent; 400 when not a number."""
        p = self.params
        v = p["expires"] if "expires" in p else None
        if v is None:
            return None
        return parse_delta(v, "Contact expires parameter")

    @property
    def q(self):
        """The q parameter as a float in [0, 1], None when absent; 400 when malformed."""
        p = self.params
        v = p["q"] if "q" in p else None
        if v is None:
            return None
        try:
            f = float(v)
        except ValueError:
            raise SipParseError("Bad q parameter") from None
        if not (0.0 <= f <= 1.0) or not v[:1].isdigit():
            raise SipParseError("Bad q parameter")
        return f

    def __str__(self):
        return self.raw

    def _key(self):
        return (self.display, self.uri, self.params, self.raw)

    def __eq__(self, other):
        return type(other) is NameAddr and self._key() == other._key()

    __hash__ = None

    def __repr__(self):
        return f"NameAddr({self.raw!r})"


class CSeq:
    __slots__ = ("num", "method")

    def __init__(self, num, method):
        self.num = num
        self.method = method

    def __eq__(self, other):
        return type(other) is CSeq and self.num == other.num and self.method == other.method

    __hash__ = None

    def __str__(self):
        return f"{self.num} {self.method}"

    def __repr__(self):
        return f"CSeq({self.num}, {self.method!r})"


class Credentials:
    """An Authorization/Proxy-Authorization value: ``scheme`` ('Digest') and ``params`` (lower-case names,
    unquoted values)."""

    __slots__ = ("scheme", "params")

    def __init__(self, scheme, params):
        self.scheme = scheme
        self.params = params

    def __eq__(self, other):
        return type(other) is Credentials and self.scheme == other.scheme and self.params == other.params

    __hash__ = None

    def __repr__(self):
        return f"Credentials({self.scheme!r}, {self.params!r})"


def parse_delta(v, what):
    """delta-seconds: digits only; values above 2**32-1 saturate (RFC 4475 §3.1.2.4 lets us treat them so)."""
    v = v.strip()
    if not v or not v.isdigit() or not v.isascii():
        raise SipParseError(f"Bad {what}")
    if len(v) > 10:
        return MAX_EXPIRES
    n = int(v)
    return n if n <= MAX_EXPIRES else MAX_EXPIRES


# Header keys whose values are comma-separated lists (RFC 3261 §7.3.1); Authorization-like headers are not.
LIST_HEADERS = frozenset((
    "via", "contact", "route", "record-route", "path", "service-route", "require", "proxy-require", "supported",
    "unsupported", "allow", "accept", "accept-encoding", "accept-language", "allow-events", "content-encoding",
    "in-reply-to", "reply-to", "alert-info", "call-info", "error-info", "warning",
))


_EDIT = []


def _edit_class():
    """ftsip.sip.message.Edit (imported on first use: message.py imports this module)."""
    if not _EDIT:
        from ftsip.sip.message import Edit
        _EDIT.append(Edit)
    return _EDIT[0]


# what the cached accessors compute, once per message: compute(msg, arg)
def _max_forwards(msg, _):
    v = msg.get("max-forwards")
    if v is None:
        return None
    v = v.strip()
    if not v.isdigit() or not v.isascii() or len(v) > 10 or int(v) > 255:   # 0068 is fine
        raise SipParseError("Bad Max-Forwards")
    return int(v)


def _delta_header(msg, arg):
    key, what = arg
    v = msg.get(key)
    return None if v is None else parse_delta(v, what)


def _name_addrs(msg, arg):
    key, kind = arg
    out = []
    p = msg._p
    for h in msg.headers:
        if h[0] == key:
            out.extend(p.parse_name_addrs(h[2], kind))
    return out


def _credentials(msg, key):
    p = msg._p
    return [p.parse_credentials(h[2]) for h in msg.headers if h[0] == key]


def _tokens(msg, key):
    return [t.lower() for t in msg.get_all(key) if t]


class Message:
    """Common part of Request and Response. ``headers`` is a list of ``(key, raw_name, value, raw_line)``."""

    __slots__ = ("version", "headers", "body", "_p", "_vias", "_from", "_to", "_cseq", "_cache")

    def get(self, key):
        """The first value of header ``key`` (lower-case long name), or None."""
        for h in self.headers:
            if h[0] == key:
                return h[2]
        return None

    def get_all(self, key):
        """Every value of header ``key``; list headers are split at top-level commas."""
        out = []
        split = key in LIST_HEADERS
        for h in self.headers:
            if h[0] == key:
                if split:
                    out.extend(self._p.split_commas(h[2]))
                else:
                    out.append(h[2])
        return out

    def count(self, key):
        n = 0
        for h in self.headers:
            if h[0] == key:
                n += 1
        return n

    def _cached(self, name, compute, arg=None):
        """``compute(self, arg)`` once per message (module-level functions: no closure built per access)."""
        c = self._cache
        if c is None:
            c = self._cache = {}
        elif name in c:
            return c[name]
        v = c[name] = compute(self, arg)
        return v

    @property
    def vias(self):
        v = self._vias
        if v is None:
            v = []
            p = self._p
            for h in self.headers:
                if h[0] == "via":
                    v.extend(p.parse_vias(h[2]))
            self._vias = v
        return v

    @property
    def via(self):
        v = self.vias
        return v[0] if v else None

    def _single_name_addr(self, key, what):
        value = self.get(key)
        if value is None:
            raise SipParseError(f"Missing {what} header")
        return self._p.parse_name_addrs(value, 0)[0]

    @property
    def from_(self):
        v = self._from
        if v is None:
            v = self._from = self._single_name_addr("from", "From")
        return v

    @property
    def to(self):
        v = self._to
        if v is None:
            v = self._to = self._single_name_addr("to", "To")
        return v

    @property
    def call_id(self):
        return self.get("call-id")

    @property
    def cseq(self):
        v = self._cseq
        if v is None:
            value = self.get("cseq")
            if value is None:
                raise SipParseError("Missing CSeq header")
            v = self._cseq = self._p.parse_cseq(value)
        return v

    @property
    def max_forwards(self):
        return self._cached("max-forwards", _max_forwards)

    @property
    def content_length(self):
        return self._cached("content-length", _delta_header, ("content-length", "Content-Length"))

    @property
    def expires(self):
        return self._cached("expires", _delta_header, ("expires", "Expires"))

    @property
    def contacts(self):
        """Contact values; a ``*`` is a NameAddr whose ``star`` is True."""
        return self._cached("contact", _name_addrs, ("contact", 2))

    @property
    def routes(self):
        return self._cached("route", _name_addrs, ("route", 1))

    @property
    def record_routes(self):
        return self._cached("record-route", _name_addrs, ("record-route", 1))

    @property
    def paths(self):
        return self._cached("path", _name_addrs, ("path", 1))

    @property
    def authorization(self):
        return self._cached("authorization", _credentials, "authorization")

    @property
    def proxy_authorization(self):
        return self._cached("proxy-authorization", _credentials, "proxy-authorization")

    @property
    def require(self):
        return self._cached("require", _tokens, "require")

    @property
    def proxy_require(self):
        return self._cached("proxy-require", _tokens, "proxy-require")

    @property
    def supported(self):
        return self._cached("supported", _tokens, "supported")

    @property
    def user_agent(self):
        return self.get("user-agent")

    def edit(self):
        return _edit_class()(self)


class Request(Message):
    __slots__ = ("method", "uri", "_ruri")

    def __init__(self, method, uri, version, headers, body, parser):
        self.method = method
        self.uri = uri
        self.version = version
        self.headers = headers
        self.body = body
        self._p = parser
        self._ruri = self._vias = self._from = self._to = self._cseq = self._cache = None

    is_request = True

    @property
    def ruri(self):
        v = self._ruri
        if v is None:
            v = self._ruri = self._p.parse_uri(self.uri)
        return v

    @property
    def start_line(self):
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self):
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(self, status, reason, version, headers, body, parser):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.body = body
        self._p = parser
        self._vias = self._from = self._to = self._cseq = self._cache = None

    is_request = False

    @property
    def method(self):
        """The method of the transaction this response belongs to (from CSeq)."""
        return self.cseq.method

    @property
    def start_line(self):
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self):
        return f"<Response {self.status} {self.reason}>"
