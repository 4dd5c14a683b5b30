"""The pure-Python SIP parser (twin of ``ftsip/_fast/sipparse.pyx``: same functions, same results, same errors).

Functions: ``parse_message(data)``, ``parse_uri(s)``, ``parse_vias(s)``, ``parse_name_addrs(s, kind)``,
``parse_cseq(s)``, ``parse_credentials(s)``, ``split_commas(s)``. Every error is a ``SipParseError``; the order of
the checks in ``parse_message`` is part of the contract (the twins must report the same first error).

Grammar notes (RFC 3261 §25, applied liberally where that is safe):
- lines end in CRLF or a bare LF; CR/LF before the start line are skipped; a header line that starts with SP/HT
  continues the previous one (folding becomes one SP);
- the request line has three elements separated by SPs (runs of SP are accepted: RFC 4475 lwsstart, trws; a fourth
  element is an error: lwsruri); a sip/sips Request-URI is parsed at once and must not carry headers (escruri);
- a missing blank line ends the headers at the end of the datagram (UDP);
- Content-Length: absent -> the rest of the datagram; larger than the data -> 400; smaller -> the rest is ignored.
"""
from ftsip.sip.errors import SipParseError
from ftsip.sip.model import CSeq, Credentials, NameAddr, Request, Response, Uri, Via

MAX_MESSAGE = 65535          # larger -> 513 (a UDP datagram cannot be larger anyway)
MAX_HEADERS = 256            # header fields after unfolding -> 513
MAX_LINE = 16384             # one header field (after unfolding) -> 513
MAX_URI = 4096               # Request-URI -> 414; any other URI -> 400
MAX_VIAS = 70                # Via values (Max-Forwards' usual 70 hops) -> 513

TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
HEX = frozenset("0123456789abcdefABCDEF")
DIGITS = frozenset("0123456789")
SCHEME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
SCHEME_CHARS = SCHEME_FIRST | DIGITS | frozenset("+-.")
UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")
USER_CHARS = UNRESERVED | frozenset("&=+$,;?/%")
PASSWORD_CHARS = UNRESERVED | frozenset("&=+$,%")
PARAM_CHARS = UNRESERVED | frozenset("[]/:&+$%")
URI_HEADER_CHARS = UNRESERVED | frozenset("[]/?:+$%=&")
# header-parameter values that are not quoted: token or host (so also ':' '[' ']' of IPv6)
GEN_VALUE_CHARS = TOKEN_CHARS | frozenset(":[]")
WS = " \t"
UINT32_MAX = 2**32 - 1

# compact forms (RFC 3261 §7.3.3 and the extensions' registrations)
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
    "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "r": "refer-to", "b": "referred-by",
    "o": "event", "u": "allow-events", "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}
# name-addr header kinds for parse_name_addrs
SINGLE, LIST, CONTACT = 0, 1, 2


def _err(reason, status=400):
    return SipParseError(reason, status)


def header_key(name):
    """Lower-case long name for a header field name (compact forms expanded)."""
    k = name.lower()
    return COMPACT[k] if k in COMPACT else k


def _is_token(s):
    if not s:
        return False
    for c in s:
        if c not in TOKEN_CHARS:
            return False
    return True


def _skip_ws(s, i, n):
    while i < n and (s[i] == " " or s[i] == "\t"):
        i += 1
    return i


def _quoted(s, i, n):
    """s[i] is '"': return (unquoted text, index after the closing quote)."""
    out = []
    i += 1
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(s[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    raise _err("Unterminated quoted string")


def split_commas(s):
    """Split a header value at commas that are outside quotes and <...>; each element is stripped."""
    if "," not in s:
        return [s.strip(WS)]
    out = []
    start = 0
    i = 0
    n = len(s)
    depth = 0
    while i < n:
        c = s[i]
        if c == '"':
            i += 1
            while i < n and s[i] != '"':
                if s[i] == "\\":
                    i += 1
                i += 1
        elif c == "<":
            depth = 1
        elif c == ">":
            depth = 0
        elif c == "," and depth == 0:
            out.append(s[start:i].strip(WS))
            start = i + 1
        i += 1
    out.append(s[start:].strip(WS))
    return out


# ---------------------------------------------------------------------------------------------------- URIs

def _check_escapes(s, allowed):
    n = len(s)
    i = 0
    while i < n:
        c = s[i]
        if c not in allowed:
            return False
        if c == "%":
            if i + 2 >= n or s[i + 1] not in HEX or s[i + 2] not in HEX:
                return False
            i += 3
        else:
            i += 1
    return True


def _parse_host(s, what):
    """Validate a host (hostname, IPv4 or [IPv6]) and return it lower-cased."""
    if not s:
        raise _err(f"Missing host in {what}")
    if s[0] == "[":
        if len(s) < 4 or s[-1] != "]" or s.count(":") < 2:
            raise _err(f"Bad IPv6 reference in {what}")
        for c in s[1:-1]:
            if c not in IPV6_CHARS:
                raise _err(f"Bad IPv6 reference in {what}")
        return s.lower()
    for c in s:
        if c not in HOST_CHARS:
            raise _err(f"Bad host in {what}")
    return s.lower()


def _parse_port(s, what):
    if not s or len(s) > 5:
        raise _err(f"Bad port in {what}")
    for c in s:
        if c not in DIGITS:
            raise _err(f"Bad port in {what}")
    p = int(s)
    if p > 65535:
        raise _err(f"Bad port in {what}")
    return p


def parse_uri(s):
    """Parse a URI. sip/sips are split into components; any other well-formed scheme is kept opaque."""
    n = len(s)
    if n > MAX_URI:
        raise _err("URI too long")
    colon = s.find(":")
    if colon <= 0:
        raise _err("Malformed URI")
    scheme = s[:colon]
    if scheme[0] not in SCHEME_FIRST:
        raise _err("Malformed URI scheme")
    for c in scheme:
        if c not in SCHEME_CHARS:
            raise _err("Malformed URI scheme")
    scheme = scheme.lower()
    rest = s[colon + 1:]
    for c in rest:
        if c <= " " or c == "<" or c == ">" or c == '"' or c == "\x7f":
            raise _err("Malformed URI")
    if scheme != "sip" and scheme != "sips":
        if not rest:
            raise _err("Malformed URI")
        return Uri(scheme, None, None, None, None, {}, None, s)
    at = rest.find("@")        # '?' may be in the user part (RFC 4475 intmeth); '@' never in the headers
    user = password = None
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1:]
        c = userinfo.find(":")
        if c >= 0:
            user = userinfo[:c]
            password = userinfo[c + 1:]
            if not _check_escapes(password, PASSWORD_CHARS):
                raise _err("Bad password in SIP URI")
        else:
            user = userinfo
        if not user or not _check_escapes(user, USER_CHARS):
            raise _err("Bad user part in SIP URI")
    q = rest.find("?")
    headers = None
    if q >= 0:
        headers = rest[q + 1:]
        if not _check_escapes(headers, URI_HEADER_CHARS):
            raise _err("Bad headers in SIP URI")
        rest = rest[:q]
    semi = rest.find(";")
    hostport = rest if semi < 0 else rest[:semi]
    if hostport[:1] == "[":
        rb = hostport.find("]")
        if rb < 0:
            raise _err("Bad IPv6 reference in SIP URI")
        host = hostport[:rb + 1]
        tail = hostport[rb + 1:]
    else:
        c = hostport.find(":")
        host = hostport if c < 0 else hostport[:c]
        tail = "" if c < 0 else hostport[c:]
    host = _parse_host(host, "SIP URI")
    port = None
    if tail:
        if tail[0] != ":":
            raise _err("Bad host in SIP URI")
        port = _parse_port(tail[1:], "SIP URI")
    params = {}
    if semi >= 0:
        for p in rest[semi + 1:].split(";"):
            e = p.find("=")
            name = p if e < 0 else p[:e]
            value = "" if e < 0 else p[e + 1:]
            if not name or not _check_escapes(name, PARAM_CHARS) or not _check_escapes(value, PARAM_CHARS) \
                    or (e >= 0 and not value):
                raise _err("Bad parameter in SIP URI")
            name = name.lower()
            if name not in params:
                params[name] = value
    return Uri(scheme, user, password, host, port, params, headers, s)


# ---------------------------------------------------------------------------------------------------- params

def _gen_params(s, i, n, params, what):
    """Parse ``*( SEMI name [EQUAL value] )`` from s[i]; return the index where it stopped (at ',' or the end, or
    anything else, which the caller rejects)."""
    while True:
        i = _skip_ws(s, i, n)
        if i >= n or s[i] != ";":
            return i
        i = _skip_ws(s, i + 1, n)
        j = i
        while j < n and s[j] in TOKEN_CHARS:
            j += 1
        if j == i:
            raise _err(f"Bad parameter in {what}")
        name = s[i:j].lower()
        i = _skip_ws(s, j, n)
        value = ""
        if i < n and s[i] == "=":
            i = _skip_ws(s, i + 1, n)
            if i < n and s[i] == '"':
                value, i = _quoted(s, i, n)
            else:
                j = i
                while j < n and s[j] in GEN_VALUE_CHARS:
                    j += 1
                if j == i:
                    raise _err(f"Bad parameter in {what}")
                value = s[i:j]
                i = j
        if name not in params:
            params[name] = value


# ---------------------------------------------------------------------------------------------------- Via

def parse_vias(s):
    """Parse a Via header value (one or more comma-separated via-parms)."""
    out = []
    for part in split_commas(s):
        out.append(_parse_via(part))
    return out


def _parse_via(s):
    n = len(s)
    if n == 0:
        raise _err("Malformed Via header")
    parts = []
    i = 0
    for k in range(3):
        i = _skip_ws(s, i, n)
        j = i
        while j < n and s[j] in TOKEN_CHARS:
            j += 1
        if j == i:
            raise _err("Malformed Via header")
        parts.append(s[i:j])
        i = _skip_ws(s, j, n)
        if k < 2:
            if i >= n or s[i] != "/":
                raise _err("Malformed Via header")
            i += 1
    if i == j or i >= n:   # LWS required between sent-protocol and sent-by
        raise _err("Malformed Via header")
    protocol = parts[0].upper() + "/" + parts[1] + "/" + parts[2].upper()
    if s[i] == "[":
        j = s.find("]", i)
        if j < 0:
            raise _err("Bad IPv6 reference in Via")
        j += 1
    else:
        j = i
        while j < n and s[j] in HOST_CHARS:
            j += 1
    host = _parse_host(s[i:j], "Via")
    i = _skip_ws(s, j, n)
    port = None
    if i < n and s[i] == ":":
        i = _skip_ws(s, i + 1, n)
        j = i
        while j < n and s[j] in DIGITS:
            j += 1
        port = _parse_port(s[i:j], "Via")
        i = j
    params = {}
    i = _gen_params(s, i, n, params, "Via")
    if i != n:
        raise _err("Malformed Via header")
    return Via(protocol, parts[2].upper(), host, port, params, s)


# ---------------------------------------------------------------------------------------------------- name-addr

_KIND_NAMES = ("From/To", "Route", "Contact")


def parse_name_addrs(s, kind):
    """Parse From/To (kind SINGLE), Route/Record-Route/Path (LIST) or Contact (CONTACT: ``*`` allowed)."""
    what = _KIND_NAMES[kind]
    out = []
    n = len(s)
    i = 0
    while True:
        i = _skip_ws(s, i, n)
        if i >= n:
            raise _err(f"Malformed {what} header")
        start = i
        display = None
        c = s[i]
        if c == "*" and kind == CONTACT:
            i = _skip_ws(s, i + 1, n)
            params = {}
            i = _gen_params(s, i, n, params, what)
            out.append(NameAddr(None, None, params, s[start:i].rstrip(WS)))
        else:
            if c == '"':
                display, i = _quoted(s, i, n)
                i = _skip_ws(s, i, n)
                if i >= n or s[i] != "<":
                    raise _err(f"Malformed display name in {what} header")
            elif c != "<":
                # either token display-name words before '<', or an addr-spec
                j = i
                while j < n and (s[j] in TOKEN_CHARS or s[j] == " " or s[j] == "\t"):
                    j += 1
                if j < n and s[j] == "<":
                    display = s[i:j].rstrip(WS)
                    i = j
            if i < n and s[i] == "<":
                gt = s.find(">", i + 1)
                if gt < 0:
                    raise _err(f"Missing '>' in {what} header")
                uri = parse_uri(s[i + 1:gt].strip(WS))      # "< sip:a@b >" (RFC 4475 badaspec)
                i = gt + 1
            else:
                j = i
                while j < n and s[j] not in ";, \t":
                    j += 1
                text = s[i:j]
                if "?" in text:
                    raise _err(f"URI with headers must be enclosed in <> in {what} header")
                uri = parse_uri(text)
                i = j
            params = {}
            i = _gen_params(s, i, n, params, what)
            out.append(NameAddr(display, uri, params, s[start:i].rstrip(WS)))
        i = _skip_ws(s, i, n)
        if i >= n:
            return out
        if s[i] != "," or kind == SINGLE:
            raise _err(f"Malformed {what} header")
        i += 1


# ---------------------------------------------------------------------------------------------------- others

def parse_cseq(s):
    parts = s.split()
    if len(parts) != 2:
        raise _err("Malformed CSeq header")
    num, method = parts
    if len(num) > 10 or not num.isdigit() or not num.isascii():
        raise _err("Bad CSeq number")
    value = int(num)
    if value > UINT32_MAX:
        raise _err("Bad CSeq number")
    if not _is_token(method):
        raise _err("Bad CSeq method")
    return CSeq(value, method)


def parse_credentials(s):
    """``scheme auth-param *(COMMA auth-param)``; names lower-cased, quoted values unquoted."""
    n = len(s)
    i = _skip_ws(s, 0, n)
    j = i
    while j < n and s[j] in TOKEN_CHARS:
        j += 1
    if j == i:
        raise _err("Malformed credentials")
    scheme = s[i:j]
    params = {}
    i = j
    if i < n and s[i] not in WS:
        raise _err("Malformed credentials")
    while True:
        i = _skip_ws(s, i, n)
        while i < n and s[i] == ",":
            i = _skip_ws(s, i + 1, n)
        if i >= n:
            return Credentials(scheme, params)
        j = i
        while j < n and s[j] in TOKEN_CHARS:
            j += 1
        if j == i:
            raise _err("Malformed credentials")
        name = s[i:j].lower()
        i = _skip_ws(s, j, n)
        if i >= n or s[i] != "=":
            raise _err("Malformed credentials")
        i = _skip_ws(s, i + 1, n)
        if i < n and s[i] == '"':
            value, i = _quoted(s, i, n)
        else:
            j = i
            while j < n and s[j] != "," and s[j] != " " and s[j] != "\t":
                j += 1
            value = s[i:j]
            i = j
        i = _skip_ws(s, i, n)
        if i < n and s[i] != ",":
            raise _err("Malformed credentials")
        if name not in params:
            params[name] = value


# ---------------------------------------------------------------------------------------------------- messages

def _parse_version(v):
    """'ok', 'unsupported' (SIP/x.y other than 2.0 -> 505) or 'bad'."""
    if len(v) < 7 or v[:4].upper() != "SIP/":
        return "bad"
    major, dot, minor = v[4:].partition(".")
    if not dot or not major.isdigit() or not minor.isdigit() or not major.isascii() or not minor.isascii():
        return "bad"
    if int(major) == 2 and int(minor) == 0:
        return "ok"
    return "unsupported"


def _split_lines(text):
    """Return (header lines including the start line, body text)."""
    a = text.find("\n\r\n")
    b = text.find("\n\n")
    if a < 0 and b < 0:
        head = text
        body = ""
    elif b < 0 or (0 <= a < b):
        head = text[:a]
        body = text[a + 3:]
    else:
        head = text[:b]
        body = text[b + 2:]
    lines = head.split("\n")
    for k in range(len(lines)):
        line = lines[k]
        if line[-1:] == "\r":
            lines[k] = line[:-1]
    return lines, body


def parse_message(data):
    """Parse one datagram into a Request or a Response (see the module docstring for the rules)."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError("Message Too Large", 513, False)
    text = data.decode("latin-1").lstrip("\r\n")
    if not text:
        raise SipParseError("Empty datagram", 400, False)
    lines, body = _split_lines(text)
    start = lines[0]

    # start line
    is_request = True
    start_error = None
    method = uri = version = reason = ""
    status = 0
    if start[:4].upper() == "SIP/":
        is_request = False
        sp1 = start.find(" ")
        version = start if sp1 < 0 else start[:sp1]
        code = "" if sp1 < 0 else start[sp1 + 1:sp1 + 4]
        after = "" if sp1 < 0 else start[sp1 + 4:sp1 + 5]
        reason = "" if sp1 < 0 else start[sp1 + 5:]
        vs = _parse_version(version)
        if vs != "ok":
            start_error = ("Version Not Supported", 505) if vs == "unsupported" else ("Malformed Status-Line", 400)
        elif len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] < "1" or code[0] > "6" \
                or (after and after != " "):
            start_error = ("Bad status code", 400)
        else:
            status = int(code)
    else:
        parts = [p for p in start.split(" ") if p]      # extra SPs are harmless (RFC 4475 lwsstart, trws)
        method = parts[0] if parts else ""
        if len(parts) != 3:
            start_error = ("Malformed Request-Line", 400)
        else:
            uri = parts[1]
            version = parts[2]
            vs = _parse_version(version)
            if not _is_token(method):
                start_error = ("Bad method", 400)
            elif vs == "bad":
                start_error = ("Malformed Request-Line", 400)
            elif vs == "unsupported":
                start_error = ("Version Not Supported", 505)
            elif len(uri) > MAX_URI:
                start_error = ("Request-URI Too Long", 414)
            else:
                colon = uri.find(":")
                if colon <= 0 or uri[0] not in SCHEME_FIRST:
                    start_error = ("Malformed Request-URI", 400)
                else:
                    for c in uri[:colon]:
                        if c not in SCHEME_CHARS:
                            start_error = ("Malformed Request-URI", 400)
                            break

    # header fields
    headers = []
    bad_line = None
    for k in range(1, len(lines)):
        line = lines[k]
        c0 = line[:1]
        if c0 == " " or c0 == "\t":
            if not headers:
                bad_line = bad_line or "Malformed header line"
                continue
            key, name, value, raw = headers[-1]
            cont = line.strip(WS)
            value = value + " " + cont if value and cont else value + cont
            headers[-1] = (key, name, value, raw + "\r\n" + line)
            if len(value) > MAX_LINE:
                raise SipParseError("Header field too long", 513, False)
            continue
        if not line:
            continue
        colon = line.find(":")
        name = line[:colon].rstrip(WS) if colon > 0 else ""
        if not _is_token(name):
            bad_line = bad_line or "Malformed header line"
            continue
        if len(line) > MAX_LINE:
            raise SipParseError("Header field too long", 513, False)
        headers.append((header_key(name), name, line[colon + 1:].strip(WS), line))
        if len(headers) > MAX_HEADERS:
            raise SipParseError("Too many header fields", 513, False)

    if is_request:
        msg = Request(method, uri, version or "SIP/2.0", headers, body, _MODULE)
    else:
        msg = Response(status, reason, version, headers, body, _MODULE)

    def fail(reason, code=400):
        answerable = False
        if is_request and method != "ACK":
            try:
                vias = msg.vias
                answerable = len(vias) > 0
            except SipParseError:
                answerable = False
        return SipParseError(reason, code, answerable, msg if answerable else None)

    if start_error is not None:
        raise fail(*start_error)
    if bad_line is not None:
        raise fail(bad_line)

    # Content-Length and the body
    cl = None
    n_cl = 0
    for h in headers:
        if h[0] == "content-length":
            n_cl += 1
            cl = h[2]
    if n_cl > 1:
        raise fail("Multiple Content-Length header fields")
    if cl is not None:
        if len(cl) > 10 or not cl.isdigit() or not cl.isascii():
            raise fail("Bad Content-Length")
        length = int(cl)
        if length > len(body):
            raise fail("Content-Length larger than message")
        if length < len(body):
            msg.body = body[:length]

    # mandatory header fields, each exactly once (Via may repeat)
    counts = {"via": 0, "from": 0, "to": 0, "call-id": 0, "cseq": 0, "max-forwards": 0}
    for h in headers:
        k = h[0]
        if k in counts:
            counts[k] += 1
    for k, label in (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
        if counts[k] == 0:
            raise fail(f"Missing {label} header field")
    for k, label in (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"),
                     ("max-forwards", "Max-Forwards")):
        if counts[k] > 1:
            raise fail(f"Multiple {label} header fields")
    if not msg.call_id:
        raise fail("Empty Call-ID")
    try:
        vias = msg.vias
        if len(vias) > MAX_VIAS:
            raise SipParseError("Too many Via header fields", 513)
        cseq = msg.cseq
        msg.from_
        msg.to
        if is_request:
            msg.max_forwards
    except SipParseError as e:
        raise fail(e.reason, e.status) from None
    if is_request and cseq.method != method:
        raise fail("CSeq method does not match the request method")
    if is_request and (uri[:4].lower() == "sip:" or uri[:5].lower() == "sips:"):
        try:
            ruri = msg.ruri
        except SipParseError as e:
            raise fail(e.reason, e.status) from None
        if ruri.headers is not None:
            raise fail("Request-URI must not contain headers")      # RFC 4475 escruri
    return msg


import sys as _sys  # noqa: E402  (the parser module itself rides on each message for its lazy accessors)

_MODULE = _sys.modules[__name__]
