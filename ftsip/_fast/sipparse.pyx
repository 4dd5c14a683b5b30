# cython: freethreading_compatible=True
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Cython SIP parser, twin of ``ftsip/sip/pyparse.py`` (the reference): same functions, same results, same errors,
the same checks in the same order.

Functions: ``parse_message(data)``, ``parse_uri(s)``, ``parse_vias(s)``, ``parse_name_addrs(s, kind)``,
``parse_cseq(s)``, ``parse_credentials(s)``, ``split_commas(s)``, ``header_key(name)``.

How it is fast:
- the datagram is scanned as ``const unsigned char*``; only the pieces that end up in the message become ``str``
  (latin-1 decoding of a byte range, so code points are the original bytes, as in the pure twin);
- the field parsers work on the ``Py_UCS1`` buffer of their (latin-1, i.e. 1-byte kind) ``str`` argument and make
  substrings only for the parts they return; a ``str`` that is not 1-byte kind, or an argument of another type, is
  handed to the pure twin (so the result, or the exception, is the pure one's by construction);
- the character classes are 256-entry tables built at import from pyparse's sets (one definition);
- known header names (compact forms expanded), parameter names, methods and Via protocols map to interned ``str``
  objects, so the common ones allocate nothing;
- the model objects (``Uri``, ``Via``, ``NameAddr``, ``CSeq``, ``Credentials``, ``Request``, ``Response``, whose
  ``__init__`` only assigns their ``__slots__``) are allocated without running the Python ``__init__``: the instance
  is allocated like ``object.__new__`` does and its slots (found at import from the classes' member descriptors) are
  filled in C. When a class's slots, or its ``__init__``'s arguments and the names it touches, are not exactly the
  expected ones (model.py changed), the classes are simply called (``_slot_fill()`` tells which).

The module keeps no mutable state after import (but for the ``_slot_fill`` test hook), so it is safe to call from
any number of threads (free-threaded CPython: ``freethreading_compatible`` keeps the GIL disabled when imported).
"""
from cpython.object cimport PyObject
from cpython.dict cimport PyDict_SetDefault
from cpython.list cimport PyList_Append, PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memchr, memcmp

import sys as _sys
import types as _types

from ftsip.sip import pyparse as _pure
from ftsip.sip.errors import SipParseError
from ftsip.sip.model import CSeq, Credentials, NameAddr, Request, Response, Uri, Via
# one definition of the limits and tables: the pure twin's
from ftsip.sip.pyparse import (  # noqa: F401  (re-exported: same module surface as pyparse)
    COMPACT, CONTACT, LIST, MAX_HEADERS, MAX_LINE, MAX_MESSAGE, MAX_URI, MAX_VIAS, SINGLE, UINT32_MAX, WS,
)

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int Py_T_OBJECT_EX
    int Py_READONLY
    object PyUnicode_DecodeLatin1(const char* s, Py_ssize_t size, const char* errors)
    object PyUnicode_Substring(object s, Py_ssize_t start, Py_ssize_t end)
    object PyUnicode_New(Py_ssize_t size, unsigned int maxchar)
    unsigned char* PyUnicode_1BYTE_DATA(object o)
    unsigned int PyUnicode_KIND(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    object PyLong_FromUnsignedLongLong(unsigned long long v)
    object PyLong_FromLong(long v)

cdef extern from *:
    """
    #ifndef Py_T_OBJECT_EX   /* before 3.12 */
    #include "structmember.h"
    #define Py_T_OBJECT_EX T_OBJECT_EX
    #define Py_READONLY READONLY
    #endif
    """

cdef extern from *:
    """
    /* Allocate an instance the way object.__new__ does (no __init__), and fill its __slots__ by offset. Only used
       on objects this thread has just allocated and not yet published. */
    static inline PyObject* ftsip_alloc(PyObject* tp) {
        return PyType_GenericAlloc((PyTypeObject*)tp, 0);
    }
    static inline void ftsip_put(PyObject* o, Py_ssize_t off, PyObject* v) {
        Py_INCREF(v);
        *(PyObject**)((char*)o + off) = v;
    }
    static inline void ftsip_replace(PyObject* o, Py_ssize_t off, PyObject* v) {
        PyObject** p = (PyObject**)((char*)o + off);
        PyObject* old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    """
    object ftsip_alloc(object tp)
    void ftsip_put(object o, Py_ssize_t off, object v)
    void ftsip_replace(object o, Py_ssize_t off, object v)

ctypedef const unsigned char* cbuf

# the parser module itself rides on each message for its lazy accessors
cdef object _MODULE = _sys.modules[__name__]
cdef dict _COMPACT = dict(COMPACT)
cdef object _Uri = Uri
cdef object _Via = Via
cdef object _NameAddr = NameAddr
cdef object _CSeq = CSeq
cdef object _Credentials = Credentials
cdef object _Request = Request
cdef object _Response = Response
cdef object _SipParseError = SipParseError

# ------------------------------------------------------------------------------------------------ character classes

cdef enum:
    F_TOKEN = 1 << 0
    F_HOST = 1 << 1
    F_IPV6 = 1 << 2
    F_HEX = 1 << 3
    F_DIGIT = 1 << 4
    F_SCHEME_FIRST = 1 << 5
    F_SCHEME = 1 << 6
    F_USER = 1 << 7
    F_PASSWORD = 1 << 8
    F_PARAM = 1 << 9
    F_URIHDR = 1 << 10
    F_GENVAL = 1 << 11
    F_WS = 1 << 12            # SP / HT (pyparse.WS)
    F_PYSPACE = 1 << 13       # str.isspace()
    F_URIBAD = 1 << 14        # not allowed anywhere after the scheme: c <= ' ', < > " DEL
    F_NAVALUE_END = 1 << 15   # ; , SP HT (end of an addr-spec outside <>)

cdef unsigned int CC[256]
cdef unsigned char LOWER[256]

cdef void _set_class(chars, unsigned int flag) except *:
    for ch in chars:
        CC[ord(ch)] |= flag

cdef void _init_classes() except *:
    cdef int c
    for c in range(256):
        CC[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
        if chr(c).isspace():
            CC[c] |= F_PYSPACE
        if c <= 32 or c == 127 or chr(c) in '<>"':
            CC[c] |= F_URIBAD
    _set_class(_pure.TOKEN_CHARS, F_TOKEN)
    _set_class(_pure.HOST_CHARS, F_HOST)
    _set_class(_pure.IPV6_CHARS, F_IPV6)
    _set_class(_pure.HEX, F_HEX)
    _set_class(_pure.DIGITS, F_DIGIT)
    _set_class(_pure.SCHEME_FIRST, F_SCHEME_FIRST)
    _set_class(_pure.SCHEME_CHARS, F_SCHEME)
    _set_class(_pure.USER_CHARS, F_USER)
    _set_class(_pure.PASSWORD_CHARS, F_PASSWORD)
    _set_class(_pure.PARAM_CHARS, F_PARAM)
    _set_class(_pure.URI_HEADER_CHARS, F_URIHDR)
    _set_class(_pure.GEN_VALUE_CHARS, F_GENVAL)
    _set_class(_pure.WS, F_WS)
    _set_class(";, \t", F_NAVALUE_END)

_init_classes()

# ------------------------------------------------------------------------------------------------ interned words

cdef enum:
    H_OTHER = 0
    H_VIA = 1
    H_FROM = 2
    H_TO = 3
    H_CALLID = 4
    H_CSEQ = 5
    H_MAXFWD = 6
    H_CLEN = 7
    N_HID = 8

cdef enum:
    WORD_MAX = 31
    HDR_CAP = 128
    SMALL_CAP = 64

cdef struct Word:
    int len
    unsigned char low[32]      # lower-case spelling (case-insensitive match)
    unsigned char canon[32]    # canonical spelling (exact match)
    PyObject* key              # the str to return for a case-insensitive match
    PyObject* canon_obj        # the str of the canonical spelling
    PyObject* extra            # TRANSPORTS: the interned protocol 'SIP/2.0/<transport>'
    int id

cdef struct Table:
    int n
    int start[33]              # entries sorted by length: start[len] .. start[len+1]
    Word w[HDR_CAP]

cdef Table HDRS        # header names: key = header_key(name), canon_obj = the usual spelling
cdef Table PARAMS      # parameter names: key = lower-case name
cdef Table METHODS     # method names (exact match only)
cdef Table TRANSPORTS  # Via transports: key = upper-case

_KEEP = []             # strong references to every str the tables point at


cdef void _fill_table(Table* t, list entries) except *:
    """entries: (canonical spelling, key, id); sorted here by length."""
    cdef int i, k, L
    cdef bytes b
    entries = sorted(entries, key=lambda e: len(e[0]))
    if len(entries) > HDR_CAP:
        raise ImportError("sipparse: word table too large")
    t.n = len(entries)
    for L in range(33):
        t.start[L] = t.n
    for i in range(t.n - 1, -1, -1):
        canon, key, ident = entries[i]
        b = canon.encode("ascii")
        L = len(b)
        if L > WORD_MAX:
            raise ImportError("sipparse: word too long")
        t.w[i].len = L
        for k in range(L):
            t.w[i].canon[k] = b[k]
            t.w[i].low[k] = LOWER[b[k]]
        canon = _sys.intern(canon)
        key = _sys.intern(key)
        _KEEP.append(canon)
        _KEEP.append(key)
        t.w[i].canon_obj = <PyObject*>canon
        t.w[i].key = <PyObject*>key
        t.w[i].id = ident
        t.w[i].extra = NULL
        t.start[L] = i
    # lengths without entries point at the next length's start
    for L in range(31, -1, -1):
        if t.start[L] > t.start[L + 1]:
            t.start[L] = t.start[L + 1]


cdef inline int _lookup_ci(Table* t, cbuf p, Py_ssize_t n) noexcept nogil:
    """Index of the entry equal to p[:n] ignoring ASCII case, or -1."""
    cdef int i, k
    cdef unsigned char c0
    if n <= 0 or n > WORD_MAX:
        return -1
    c0 = LOWER[p[0]]
    for i in range(t.start[n], t.start[n + 1]):
        if t.w[i].low[0] != c0:
            continue
        k = 1
        while k < n and LOWER[p[k]] == t.w[i].low[k]:
            k += 1
        if k == n:
            return i
    return -1


cdef inline int _lookup_exact(Table* t, cbuf p, Py_ssize_t n) noexcept nogil:
    cdef int i
    if n <= 0 or n > WORD_MAX:
        return -1
    for i in range(t.start[n], t.start[n + 1]):
        if memcmp(p, t.w[i].canon, n) == 0:
            return i
    return -1


_HEADER_NAMES = [
    ("Via", H_VIA), ("From", H_FROM), ("To", H_TO), ("Call-ID", H_CALLID), ("CSeq", H_CSEQ),
    ("Max-Forwards", H_MAXFWD), ("Content-Length", H_CLEN), ("Contact", 0), ("Content-Type", 0), ("Route", 0),
    ("Record-Route", 0), ("Authorization", 0), ("Proxy-Authorization", 0), ("WWW-Authenticate", 0),
    ("Proxy-Authenticate", 0), ("Authentication-Info", 0), ("Expires", 0), ("Min-Expires", 0), ("Allow", 0),
    ("Supported", 0), ("Require", 0), ("Proxy-Require", 0), ("Unsupported", 0), ("User-Agent", 0), ("Server", 0),
    ("Accept", 0), ("Accept-Encoding", 0), ("Accept-Language", 0), ("Allow-Events", 0), ("Event", 0),
    ("Subscription-State", 0), ("Date", 0), ("Timestamp", 0), ("Organization", 0), ("Path", 0),
    ("Service-Route", 0), ("P-Asserted-Identity", 0), ("P-Preferred-Identity", 0), ("Privacy", 0), ("Reason", 0),
    ("Session-Expires", 0), ("Min-SE", 0), ("Subject", 0), ("Content-Disposition", 0), ("Content-Encoding", 0),
    ("Content-Language", 0), ("MIME-Version", 0), ("Warning", 0), ("Retry-After", 0), ("Refer-To", 0),
    ("Referred-By", 0), ("Replaces", 0), ("RSeq", 0), ("RAck", 0), ("Call-Info", 0), ("Alert-Info", 0),
    ("Error-Info", 0), ("In-Reply-To", 0), ("Reply-To", 0), ("Priority", 0), ("Accept-Contact", 0),
    ("Reject-Contact", 0), ("Request-Disposition", 0), ("Identity", 0), ("Identity-Info", 0), ("SIP-ETag", 0),
    ("SIP-If-Match", 0), ("X-Forwarded-For", 0),
]
_PARAM_NAMES = [
    "branch", "rport", "received", "tag", "lr", "transport", "maddr", "ttl", "user", "method", "expires", "q", "ob",
    "comp", "gr", "reg-id", "+sip.instance", "username", "realm", "nonce", "uri", "response", "algorithm", "cnonce",
    "opaque", "qop", "nc", "stale", "domain", "alias", "keep", "sigcomp-id", "phone", "ip",
]
_METHOD_NAMES = ["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "MESSAGE", "INFO",
                 "PRACK", "UPDATE", "REFER", "PUBLISH"]
_TRANSPORT_NAMES = ["UDP", "TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"]


cdef void _init_tables() except *:
    entries = []
    ids = {}
    for name, ident in _HEADER_NAMES:
        entries.append((name, _pure.header_key(name), ident))
        ids[_pure.header_key(name)] = ident
    for letter, key in COMPACT.items():
        entries.append((letter, _pure.header_key(letter), ids.get(key, 0)))
    _fill_table(&HDRS, entries)
    _fill_table(&PARAMS, [(p, p, 0) for p in _PARAM_NAMES])
    _fill_table(&METHODS, [(m, m, 0) for m in _METHOD_NAMES])
    _fill_table(&TRANSPORTS, [(t, t, 0) for t in _TRANSPORT_NAMES])
    cdef int i
    for i in range(TRANSPORTS.n):
        proto = _sys.intern("SIP/2.0/" + <object>TRANSPORTS.w[i].key)
        _KEEP.append(proto)
        TRANSPORTS.w[i].extra = <PyObject*>proto

_init_tables()


cdef str S_EMPTY = ""
cdef str S_SIP = _sys.intern("sip")
cdef str S_SIPS = _sys.intern("sips")
cdef str S_VERSION = _sys.intern("SIP/2.0")
cdef str S_ACK = _sys.intern("ACK")
cdef str W_VIA = "Via"
cdef str W_URI = "SIP URI"
cdef tuple KIND_NAMES = ("From/To", "Route", "Contact")

cdef Py_ssize_t C_MAX_MESSAGE = MAX_MESSAGE
cdef Py_ssize_t C_MAX_HEADERS = MAX_HEADERS
cdef Py_ssize_t C_MAX_LINE = MAX_LINE
cdef Py_ssize_t C_MAX_URI = MAX_URI
cdef Py_ssize_t C_MAX_VIAS = MAX_VIAS
cdef unsigned long long C_UINT32_MAX = UINT32_MAX

cdef enum:
    HID_CAP = 1024
    LF_CAP = 512
if not (0 < MAX_HEADERS < HID_CAP - 2):
    raise ImportError("sipparse: MAX_HEADERS out of range")

# ------------------------------------------------------------------------------------------------ model objects

cdef Py_ssize_t OFF_URI[8]     # scheme, user, password, host, port, params, headers, raw
cdef Py_ssize_t OFF_VIA[6]     # protocol, transport, host, port, params, raw
cdef Py_ssize_t OFF_NA[4]      # display, uri, params, raw
cdef Py_ssize_t OFF_CSEQ[2]    # num, method
cdef Py_ssize_t OFF_CRED[2]    # scheme, params
cdef Py_ssize_t OFF_REQ[12]    # method, uri, version, headers, body, _p, _ruri, _vias, _from, _to, _cseq, _cache
cdef Py_ssize_t OFF_RESP[11]   # status, reason, version, headers, body, _p, _vias, _from, _to, _cseq, _cache
cdef bint SLOTFILL = False     # True when every class above passed the checks in _find_slots

cdef tuple N_URI = ("scheme", "user", "password", "host", "port", "params", "headers", "raw")
cdef tuple N_VIA = ("protocol", "transport", "host", "port", "params", "raw")
cdef tuple N_NA = ("display", "uri", "params", "raw")
cdef tuple N_CSEQ = ("num", "method")
cdef tuple N_CRED = ("scheme", "params")
cdef tuple N_REQ = ("method", "uri", "version", "headers", "body", "_p", "_ruri", "_vias", "_from", "_to", "_cseq",
                    "_cache")
cdef tuple N_RESP = ("status", "reason", "version", "headers", "body", "_p", "_vias", "_from", "_to", "_cseq",
                     "_cache")
# the slots parse_message fills after construction (indices into N_REQ / N_RESP)
cdef enum:
    RQ_VIAS = 7
    RQ_FROM = 8
    RQ_TO = 9
    RQ_CSEQ = 10
    RQ_CACHE = 11
    RS_VIAS = 6
    RS_FROM = 7
    RS_TO = 8
    RS_CSEQ = 9
    RS_CACHE = 10


cdef bint _find_slots(cls, tuple names, tuple args, Py_ssize_t* offs) except -1:
    """Offsets of the ``__slots__`` ``names`` of ``cls`` when these are exactly all its slots (over the MRO), all
    plain writable object slots of a heap type whose instances have no ``__dict__``, and its ``__init__`` takes
    ``args`` and touches no attribute but those slots (i.e. it only assigns them); else False."""
    cdef Py_ssize_t i
    cdef PyMemberDef* m
    if not isinstance(cls, type) or cls.__flags__ & (1 << 9) == 0:   # Py_TPFLAGS_HEAPTYPE
        return False
    if cls.__new__ is not object.__new__:
        return False
    code = getattr(cls.__init__, "__code__", None)
    if code is None or code.co_varnames[1:code.co_argcount] != args or code.co_kwonlyargcount \
            or not set(code.co_names) <= set(names):
        return False
    if cls.__itemsize__ != 0 or cls.__dictoffset__ != 0:
        return False
    slots = set()
    for k in cls.__mro__:
        sl = k.__dict__.get("__slots__", ())
        if isinstance(sl, str):
            sl = (sl,)
        slots.update(sl)
    if slots != set(names) or len(names) != len(slots):
        return False
    for i in range(len(names)):
        dsc = getattr(cls, names[i])
        if type(dsc) is not _types.MemberDescriptorType:
            return False
        m = (<PyMemberDescrObject*><PyObject*>dsc).d_member
        if m.type != Py_T_OBJECT_EX or (m.flags & Py_READONLY) or m.offset <= 0:
            return False
        offs[i] = m.offset
    return True


cdef void _init_slots() except *:
    global SLOTFILL
    msg_args = ("headers", "body", "parser")
    SLOTFILL = bool(
        _find_slots(Uri, N_URI, N_URI, OFF_URI) and _find_slots(Via, N_VIA, N_VIA, OFF_VIA)
        and _find_slots(NameAddr, N_NA, N_NA, OFF_NA) and _find_slots(CSeq, N_CSEQ, N_CSEQ, OFF_CSEQ)
        and _find_slots(Credentials, N_CRED, N_CRED, OFF_CRED)
        and _find_slots(Request, N_REQ, ("method", "uri", "version") + msg_args, OFF_REQ)
        and _find_slots(Response, N_RESP, ("status", "reason", "version") + msg_args, OFF_RESP))

_init_slots()
cdef bint SLOTFILL_OK = SLOTFILL


def _slot_fill(enabled=None):
    """Test hook: whether model objects are built by filling their slots (True) or by calling the classes. With an
    argument, switch (only to False, or back to True when the checks at import passed). Not for production use:
    switch only while no other thread parses."""
    global SLOTFILL
    if enabled is not None:
        SLOTFILL = bool(enabled) and SLOTFILL_OK
    return SLOTFILL


cdef inline object _mk_uri(scheme, user, password, host, port, params, headers, raw):
    if not SLOTFILL:
        return _Uri(scheme, user, password, host, port, params, headers, raw)
    o = ftsip_alloc(_Uri)
    ftsip_put(o, OFF_URI[0], scheme)
    ftsip_put(o, OFF_URI[1], user)
    ftsip_put(o, OFF_URI[2], password)
    ftsip_put(o, OFF_URI[3], host)
    ftsip_put(o, OFF_URI[4], port)
    ftsip_put(o, OFF_URI[5], params)
    ftsip_put(o, OFF_URI[6], headers)
    ftsip_put(o, OFF_URI[7], raw)
    return o


cdef inline object _mk_via(protocol, transport, host, port, params, raw):
    if not SLOTFILL:
        return _Via(protocol, transport, host, port, params, raw)
    o = ftsip_alloc(_Via)
    ftsip_put(o, OFF_VIA[0], protocol)
    ftsip_put(o, OFF_VIA[1], transport)
    ftsip_put(o, OFF_VIA[2], host)
    ftsip_put(o, OFF_VIA[3], port)
    ftsip_put(o, OFF_VIA[4], params)
    ftsip_put(o, OFF_VIA[5], raw)
    return o


cdef inline object _mk_na(display, uri, params, raw):
    if not SLOTFILL:
        return _NameAddr(display, uri, params, raw)
    o = ftsip_alloc(_NameAddr)
    ftsip_put(o, OFF_NA[0], display)
    ftsip_put(o, OFF_NA[1], uri)
    ftsip_put(o, OFF_NA[2], params)
    ftsip_put(o, OFF_NA[3], raw)
    return o


cdef inline object _mk_cseq(num, method):
    if not SLOTFILL:
        return _CSeq(num, method)
    o = ftsip_alloc(_CSeq)
    ftsip_put(o, OFF_CSEQ[0], num)
    ftsip_put(o, OFF_CSEQ[1], method)
    return o


cdef inline object _mk_cred(scheme, params):
    if not SLOTFILL:
        return _Credentials(scheme, params)
    o = ftsip_alloc(_Credentials)
    ftsip_put(o, OFF_CRED[0], scheme)
    ftsip_put(o, OFF_CRED[1], params)
    return o


cdef object _mk_request(method, uri, version, headers, body):
    cdef int k
    if not SLOTFILL:
        return _Request(method, uri, version, headers, body, _MODULE)
    o = ftsip_alloc(_Request)
    ftsip_put(o, OFF_REQ[0], method)
    ftsip_put(o, OFF_REQ[1], uri)
    ftsip_put(o, OFF_REQ[2], version)
    ftsip_put(o, OFF_REQ[3], headers)
    ftsip_put(o, OFF_REQ[4], body)
    ftsip_put(o, OFF_REQ[5], _MODULE)
    for k in range(6, 12):
        ftsip_put(o, OFF_REQ[k], None)
    return o


cdef object _mk_response(status, reason, version, headers, body):
    cdef int k
    if not SLOTFILL:
        return _Response(status, reason, version, headers, body, _MODULE)
    o = ftsip_alloc(_Response)
    ftsip_put(o, OFF_RESP[0], status)
    ftsip_put(o, OFF_RESP[1], reason)
    ftsip_put(o, OFF_RESP[2], version)
    ftsip_put(o, OFF_RESP[3], headers)
    ftsip_put(o, OFF_RESP[4], body)
    ftsip_put(o, OFF_RESP[5], _MODULE)
    for k in range(6, 11):
        ftsip_put(o, OFF_RESP[k], None)
    return o


cdef inline void _set_msg(object msg, bint is_request, int rq_index, int rs_index, str name, object value) except *:
    """Set a cache slot of a message this call built (and has not published yet)."""
    if SLOTFILL:
        ftsip_replace(msg, OFF_REQ[rq_index] if is_request else OFF_RESP[rs_index], value)
    else:
        setattr(msg, name, value)

# ------------------------------------------------------------------------------------------------ small helpers

cdef inline object _err(str reason):
    return SipParseError(reason)


cdef inline Py_ssize_t _skip_ws(cbuf d, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (d[i] == 32 or d[i] == 9):
        i += 1
    return i


cdef inline Py_ssize_t _rstrip_ws(cbuf d, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b > a and (d[b - 1] == 32 or d[b - 1] == 9):
        b -= 1
    return b


cdef inline Py_ssize_t _find(cbuf d, Py_ssize_t i, Py_ssize_t n, unsigned char c) noexcept nogil:
    """Index of the first c in d[i:n], or -1."""
    cdef const void* p
    if i >= n:
        return -1
    if n - i <= 24:
        while i < n:
            if d[i] == c:
                return i
            i += 1
        return -1
    p = memchr(d + i, c, <size_t>(n - i))
    if p == NULL:
        return -1
    return <cbuf>p - d


cdef inline bint _all(cbuf d, Py_ssize_t a, Py_ssize_t b, unsigned int flag) noexcept nogil:
    while a < b:
        if not (CC[d[a]] & flag):
            return False
        a += 1
    return True


cdef inline bint _is_token(cbuf d, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return b > a and _all(d, a, b, F_TOKEN)


cdef inline object _ss(str s, Py_ssize_t a, Py_ssize_t b):
    """s[a:b] (0 <= a <= b <= len(s))."""
    return PyUnicode_Substring(s, a, b)


cdef inline object _bs(cbuf buf, Py_ssize_t a, Py_ssize_t b):
    """The latin-1 str of buf[a:b]."""
    return PyUnicode_DecodeLatin1(<const char*>buf + a, b - a, NULL)


cdef object _case(str s, cbuf d, Py_ssize_t a, Py_ssize_t b, bint upper):
    """s[a:b].lower() (or .upper()); ASCII fast path, str methods for anything else."""
    cdef Py_ssize_t k
    cdef unsigned char c
    cdef bint change = False
    cdef unsigned char* w
    for k in range(a, b):
        c = d[k]
        if c >= 128:
            return _ss(s, a, b).upper() if upper else _ss(s, a, b).lower()
        if (97 <= c <= 122) if upper else (65 <= c <= 90):
            change = True
    if not change:
        return _ss(s, a, b)
    r = PyUnicode_New(b - a, 127)
    w = PyUnicode_1BYTE_DATA(r)
    for k in range(a, b):
        c = d[k]
        if upper:
            w[k - a] = c - 32 if 97 <= c <= 122 else c
        else:
            w[k - a] = c + 32 if 65 <= c <= 90 else c
    return r


cdef inline object _param_name(str s, cbuf d, Py_ssize_t a, Py_ssize_t b):
    """s[a:b].lower(), interned for the usual parameter names."""
    cdef int i = _lookup_ci(&PARAMS, d + a, b - a)
    if i >= 0:
        return <object>PARAMS.w[i].key
    return _case(s, d, a, b, False)


cdef object _quoted(str s, cbuf d, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* end):
    """d[i] is '"': the unquoted text; *end = the index after the closing quote."""
    cdef Py_ssize_t j = i + 1
    cdef Py_ssize_t k, m
    cdef bint esc = False
    cdef unsigned char* tmp
    while j < n:
        if d[j] == 34:
            break
        if d[j] == 92:
            if j + 1 >= n:
                raise _err("Unterminated quoted string")
            esc = True
            j += 2
        else:
            j += 1
    if j >= n:
        raise _err("Unterminated quoted string")
    end[0] = j + 1
    if not esc:
        return _ss(s, i + 1, j)
    tmp = <unsigned char*>PyMem_Malloc(<size_t>(j - i))
    if tmp == NULL:
        raise MemoryError()
    try:
        m = 0
        k = i + 1
        while k < j:
            if d[k] == 92:
                k += 1
            tmp[m] = d[k]
            m += 1
            k += 1
        return PyUnicode_DecodeLatin1(<const char*>tmp, m, NULL)
    finally:
        PyMem_Free(tmp)


cdef inline Py_ssize_t _next_comma(cbuf d, Py_ssize_t i, Py_ssize_t n, int* depth) noexcept nogil:
    """pyparse.split_commas' scan from i: the index of the next splitting comma, or n."""
    cdef unsigned char c
    while i < n:
        c = d[i]
        if c == 34:
            i += 1
            while i < n and d[i] != 34:
                if d[i] == 92:
                    i += 1
                i += 1
        elif c == 60:
            depth[0] = 1
        elif c == 62:
            depth[0] = 0
        elif c == 44 and depth[0] == 0:
            return i
        i += 1
    return n


cdef inline bint _latin1(s):
    return type(s) is str and PyUnicode_KIND(s) == 1

# ------------------------------------------------------------------------------------------------ split / header_key


def split_commas(s):
    """Split a header value at commas that are outside quotes and <...>; each element is stripped."""
    cdef Py_ssize_t n, start, e, a, b
    cdef int depth = 0
    cdef cbuf d
    if not _latin1(s):
        return _pure.split_commas(s)
    d = PyUnicode_1BYTE_DATA(s)
    n = PyUnicode_GET_LENGTH(s)
    out = []
    start = 0
    while True:
        e = _next_comma(d, start, n, &depth)
        a = _skip_ws(d, start, e)
        b = _rstrip_ws(d, a, e)
        PyList_Append(out, _ss(s, a, b))
        if e >= n:
            return out
        start = e + 1


def header_key(name):
    """Lower-case long name for a header field name (compact forms expanded)."""
    cdef int i
    if _latin1(name):
        i = _lookup_ci(&HDRS, PyUnicode_1BYTE_DATA(name), PyUnicode_GET_LENGTH(name))
        if i >= 0:
            return <object>HDRS.w[i].key
    k = name.lower()
    return COMPACT.get(k, k)

# ------------------------------------------------------------------------------------------------ URIs


cdef inline bint _check_escapes(cbuf d, Py_ssize_t i, Py_ssize_t n, unsigned int allowed) noexcept nogil:
    cdef unsigned char c
    while i < n:
        c = d[i]
        if not (CC[c] & allowed):
            return False
        if c == 37:
            if i + 2 >= n or not (CC[d[i + 1]] & F_HEX) or not (CC[d[i + 2]] & F_HEX):
                return False
            i += 3
        else:
            i += 1
    return True


cdef object _parse_host(str s, cbuf d, Py_ssize_t a, Py_ssize_t b, str what):
    """Validate a host (hostname, IPv4 or [IPv6]) and return it lower-cased."""
    cdef Py_ssize_t k, colons
    if a >= b:
        raise _err("Missing host in " + what)
    if d[a] == 91:
        colons = 0
        for k in range(a, b):
            if d[k] == 58:
                colons += 1
        if b - a < 4 or d[b - 1] != 93 or colons < 2:
            raise _err("Bad IPv6 reference in " + what)
        if not _all(d, a + 1, b - 1, F_IPV6):
            raise _err("Bad IPv6 reference in " + what)
        return _case(s, d, a, b, False)
    if not _all(d, a, b, F_HOST):
        raise _err("Bad host in " + what)
    return _case(s, d, a, b, False)


cdef long _parse_port(cbuf d, Py_ssize_t a, Py_ssize_t b, str what) except -1:
    cdef long p = 0
    cdef Py_ssize_t k
    if a >= b or b - a > 5:
        raise _err("Bad port in " + what)
    for k in range(a, b):
        if not (CC[d[k]] & F_DIGIT):
            raise _err("Bad port in " + what)
        p = p * 10 + (d[k] - 48)
    if p > 65535:
        raise _err("Bad port in " + what)
    return p


cdef object _parse_uri(str s, cbuf d, Py_ssize_t a, Py_ssize_t b):
    """pyparse.parse_uri(s[a:b])."""
    cdef Py_ssize_t colon, k, rs, re, q, at, c, semi, hp_e, rb, hs, he, ts, te, ps, pe, eq, ns, ne, vs, ve
    cdef Py_ssize_t us, ue, pws, pwe
    cdef bint sips
    if b - a > C_MAX_URI:
        raise _err("URI too long")
    colon = _find(d, a, b, 58)
    if colon <= a:
        raise _err("Malformed URI")
    if not (CC[d[a]] & F_SCHEME_FIRST):
        raise _err("Malformed URI scheme")
    if not _all(d, a, colon, F_SCHEME):
        raise _err("Malformed URI scheme")
    for k in range(colon + 1, b):
        if CC[d[k]] & F_URIBAD:
            raise _err("Malformed URI")
    raw = _ss(s, a, b)
    if colon - a == 3 and LOWER[d[a]] == 115 and LOWER[d[a + 1]] == 105 and LOWER[d[a + 2]] == 112:
        scheme = S_SIP
    elif colon - a == 4 and LOWER[d[a]] == 115 and LOWER[d[a + 1]] == 105 and LOWER[d[a + 2]] == 112 \
            and LOWER[d[a + 3]] == 115:
        scheme = S_SIPS
    else:
        scheme = _case(s, d, a, colon, False)
        if colon + 1 >= b:
            raise _err("Malformed URI")
        return _mk_uri(scheme, None, None, None, None, {}, None, raw)
    rs = colon + 1
    re = b
    headers = None
    user = None
    password = None
    at = _find(d, rs, re, 64)
    if at >= 0:
        us = rs
        ue = at
        rs = at + 1
        c = _find(d, us, ue, 58)
        if c >= 0:
            pws = c + 1
            pwe = ue
            ue = c
            if not _check_escapes(d, pws, pwe, F_PASSWORD):
                raise _err("Bad password in SIP URI")
            password = _ss(s, pws, pwe)
        if ue <= us or not _check_escapes(d, us, ue, F_USER):
            raise _err("Bad user part in SIP URI")
        user = _ss(s, us, ue)
    q = _find(d, rs, re, 63)
    if q >= 0:
        if not _check_escapes(d, q + 1, re, F_URIHDR):
            raise _err("Bad headers in SIP URI")
        headers = _ss(s, q + 1, re)
        re = q
    semi = _find(d, rs, re, 59)
    hp_e = re if semi < 0 else semi
    if hp_e > rs and d[rs] == 91:
        rb = _find(d, rs, hp_e, 93)
        if rb < 0:
            raise _err("Bad IPv6 reference in SIP URI")
        hs = rs
        he = rb + 1
        ts = rb + 1
        te = hp_e
    else:
        c = _find(d, rs, hp_e, 58)
        hs = rs
        if c < 0:
            he = hp_e
            ts = te = hp_e
        else:
            he = c
            ts = c
            te = hp_e
    host = _parse_host(s, d, hs, he, W_URI)
    port = None
    if ts < te:
        if d[ts] != 58:
            raise _err("Bad host in SIP URI")
        port = PyLong_FromLong(_parse_port(d, ts + 1, te, W_URI))
    params = {}
    if semi >= 0:
        ps = semi + 1
        while True:
            pe = _find(d, ps, re, 59)
            if pe < 0:
                pe = re
            eq = _find(d, ps, pe, 61)
            ns = ps
            if eq < 0:
                ne = pe
                vs = ve = pe
            else:
                ne = eq
                vs = eq + 1
                ve = pe
            if ne <= ns or not _check_escapes(d, ns, ne, F_PARAM) or not _check_escapes(d, vs, ve, F_PARAM) \
                    or (eq >= 0 and ve <= vs):
                raise _err("Bad parameter in SIP URI")
            PyDict_SetDefault(params, _param_name(s, d, ns, ne), _ss(s, vs, ve))
            if pe >= re:
                break
            ps = pe + 1
    return _mk_uri(scheme, user, password, host, port, params, headers, raw)


def parse_uri(s):
    """Parse a URI. sip/sips are split into components; any other well-formed scheme is kept opaque."""
    if not _latin1(s):
        return _pure.parse_uri(s)
    return _parse_uri(s, PyUnicode_1BYTE_DATA(s), 0, PyUnicode_GET_LENGTH(s))

# ------------------------------------------------------------------------------------------------ params


cdef Py_ssize_t _gen_params(str s, cbuf d, Py_ssize_t i, Py_ssize_t n, dict params, str what) except -1:
    """``*( SEMI name [EQUAL value] )`` from d[i]; the index where it stopped."""
    cdef Py_ssize_t j
    while True:
        i = _skip_ws(d, i, n)
        if i >= n or d[i] != 59:
            return i
        i = _skip_ws(d, i + 1, n)
        j = i
        while j < n and (CC[d[j]] & F_TOKEN):
            j += 1
        if j == i:
            raise _err("Bad parameter in " + what)
        name = _param_name(s, d, i, j)
        i = _skip_ws(d, j, n)
        value = S_EMPTY
        if i < n and d[i] == 61:
            i = _skip_ws(d, i + 1, n)
            if i < n and d[i] == 34:
                value = _quoted(s, d, i, n, &i)
            else:
                j = i
                while j < n and (CC[d[j]] & F_GENVAL):
                    j += 1
                if j == i:
                    raise _err("Bad parameter in " + what)
                value = _ss(s, i, j)
                i = j
        PyDict_SetDefault(params, name, value)

# ------------------------------------------------------------------------------------------------ Via


cdef object _parse_via(str s, cbuf d, Py_ssize_t a, Py_ssize_t n):
    """pyparse._parse_via(s[a:n])."""
    cdef Py_ssize_t i, j, k
    cdef Py_ssize_t ps[3]
    cdef Py_ssize_t pe[3]
    cdef int t
    if n == a:
        raise _err("Malformed Via header")
    i = a
    j = a
    for k in range(3):
        i = _skip_ws(d, i, n)
        j = i
        while j < n and (CC[d[j]] & F_TOKEN):
            j += 1
        if j == i:
            raise _err("Malformed Via header")
        ps[k] = i
        pe[k] = j
        i = _skip_ws(d, j, n)
        if k < 2:
            if i >= n or d[i] != 47:
                raise _err("Malformed Via header")
            i += 1
    if i == j or i >= n:
        raise _err("Malformed Via header")
    t = _lookup_ci(&TRANSPORTS, d + ps[2], pe[2] - ps[2])
    transport = <object>TRANSPORTS.w[t].key if t >= 0 else _case(s, d, ps[2], pe[2], True)
    if t >= 0 and pe[0] - ps[0] == 3 and LOWER[d[ps[0]]] == 115 and LOWER[d[ps[0] + 1]] == 105 \
            and LOWER[d[ps[0] + 2]] == 112 and pe[1] - ps[1] == 3 and d[ps[1]] == 50 and d[ps[1] + 1] == 46 \
            and d[ps[1] + 2] == 48:
        protocol = <object>TRANSPORTS.w[t].extra
    else:
        protocol = _case(s, d, ps[0], pe[0], True) + "/" + _ss(s, ps[1], pe[1]) + "/" + transport
    if d[i] == 91:
        j = _find(d, i, n, 93)
        if j < 0:
            raise _err("Bad IPv6 reference in Via")
        j += 1
    else:
        j = i
        while j < n and (CC[d[j]] & F_HOST):
            j += 1
    host = _parse_host(s, d, i, j, W_VIA)
    i = _skip_ws(d, j, n)
    port = None
    if i < n and d[i] == 58:
        i = _skip_ws(d, i + 1, n)
        j = i
        while j < n and (CC[d[j]] & F_DIGIT):
            j += 1
        port = PyLong_FromLong(_parse_port(d, i, j, W_VIA))
        i = j
    params = {}
    i = _gen_params(s, d, i, n, params, W_VIA)
    if i != n:
        raise _err("Malformed Via header")
    return _mk_via(protocol, transport, host, port, params, _ss(s, a, n))


cdef int _vias_into(list out, str s) except -1:
    """out.extend(pyparse.parse_vias(s)) for a latin-1 str."""
    cdef cbuf d = PyUnicode_1BYTE_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    cdef Py_ssize_t start = 0, e, a, b
    cdef int depth = 0
    cdef bint commas = n > 0 and memchr(d, 44, <size_t>n) != NULL
    while True:
        e = _next_comma(d, start, n, &depth) if commas else n
        a = _skip_ws(d, start, e)
        b = _rstrip_ws(d, a, e)
        PyList_Append(out, _parse_via(s, d, a, b))
        if e >= n:
            return 0
        start = e + 1


def parse_vias(s):
    """Parse a Via header value (one or more comma-separated via-parms)."""
    if not _latin1(s):
        return _pure.parse_vias(s)
    out = []
    _vias_into(out, s)
    return out

# ------------------------------------------------------------------------------------------------ name-addr


cdef object _name_addrs(str s, int kind, list out):
    """pyparse.parse_name_addrs(s, kind) appending to ``out`` (or, when out is None, for SINGLE: the one value)."""
    cdef cbuf d = PyUnicode_1BYTE_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    cdef Py_ssize_t i = 0, j, start, gt, k
    cdef unsigned char c
    cdef str what = KIND_NAMES[kind]
    na = None
    while True:
        i = _skip_ws(d, i, n)
        if i >= n:
            raise _err("Malformed " + what + " header")
        start = i
        display = None
        c = d[i]
        if c == 42 and kind == CONTACT:
            i = _skip_ws(d, i + 1, n)
            params = {}
            i = _gen_params(s, d, i, n, params, what)
            na = _mk_na(None, None, params, _ss(s, start, _rstrip_ws(d, start, i)))
        else:
            if c == 34:
                display = _quoted(s, d, i, n, &i)
                i = _skip_ws(d, i, n)
                if i >= n or d[i] != 60:
                    raise _err("Malformed display name in " + what + " header")
            elif c != 60:
                j = i
                while j < n and (CC[d[j]] & (F_TOKEN | F_WS)):
                    j += 1
                if j < n and d[j] == 60:
                    display = _ss(s, i, _rstrip_ws(d, i, j))
                    i = j
            if i < n and d[i] == 60:
                gt = _find(d, i + 1, n, 62)
                if gt < 0:
                    raise _err("Missing '>' in " + what + " header")
                j = i + 1
                while j < gt and (d[j] == 32 or d[j] == 9):
                    j += 1
                uri = _parse_uri(s, d, j, _rstrip_ws(d, j, gt))
                i = gt + 1
            else:
                j = i
                while j < n and not (CC[d[j]] & F_NAVALUE_END):
                    j += 1
                if _find(d, i, j, 63) >= 0:
                    raise _err("URI with headers must be enclosed in <> in " + what + " header")
                uri = _parse_uri(s, d, i, j)
                i = j
            params = {}
            i = _gen_params(s, d, i, n, params, what)
            na = _mk_na(display, uri, params, _ss(s, start, _rstrip_ws(d, start, i)))
        if out is not None:
            PyList_Append(out, na)
        i = _skip_ws(d, i, n)
        if i >= n:
            return na
        if d[i] != 44 or kind == SINGLE:
            raise _err("Malformed " + what + " header")
        i += 1


def parse_name_addrs(s, kind):
    """Parse From/To (kind SINGLE), Route/Record-Route/Path (LIST) or Contact (CONTACT: ``*`` allowed)."""
    if not _latin1(s) or type(kind) is not int or not (0 <= kind <= 2):
        return _pure.parse_name_addrs(s, kind)
    out = []
    _name_addrs(s, kind, out)
    return out

# ------------------------------------------------------------------------------------------------ others


cdef object _parse_cseq(str s):
    cdef cbuf d = PyUnicode_1BYTE_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    cdef Py_ssize_t i = 0, a1, b1, a2, b2, k
    cdef unsigned long long v = 0
    cdef int m
    while i < n and (CC[d[i]] & F_PYSPACE):
        i += 1
    a1 = i
    while i < n and not (CC[d[i]] & F_PYSPACE):
        i += 1
    b1 = i
    while i < n and (CC[d[i]] & F_PYSPACE):
        i += 1
    a2 = i
    while i < n and not (CC[d[i]] & F_PYSPACE):
        i += 1
    b2 = i
    while i < n and (CC[d[i]] & F_PYSPACE):
        i += 1
    if b1 == a1 or b2 == a2 or i != n:
        raise _err("Malformed CSeq header")
    if b1 - a1 > 10 or not _all(d, a1, b1, F_DIGIT):
        raise _err("Bad CSeq number")
    for k in range(a1, b1):
        v = v * 10 + (d[k] - 48)
    if v > C_UINT32_MAX:
        raise _err("Bad CSeq number")
    if not _is_token(d, a2, b2):
        raise _err("Bad CSeq method")
    m = _lookup_exact(&METHODS, d + a2, b2 - a2)
    return _mk_cseq(PyLong_FromUnsignedLongLong(v), <object>METHODS.w[m].key if m >= 0 else _ss(s, a2, b2))


def parse_cseq(s):
    if not _latin1(s):
        return _pure.parse_cseq(s)
    return _parse_cseq(s)


cdef object _parse_credentials(str s):
    cdef cbuf d = PyUnicode_1BYTE_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    cdef Py_ssize_t i, j
    i = _skip_ws(d, 0, n)
    j = i
    while j < n and (CC[d[j]] & F_TOKEN):
        j += 1
    if j == i:
        raise _err("Malformed credentials")
    scheme = _ss(s, i, j)
    params = {}
    i = j
    if i < n and not (CC[d[i]] & F_WS):
        raise _err("Malformed credentials")
    while True:
        i = _skip_ws(d, i, n)
        while i < n and d[i] == 44:
            i = _skip_ws(d, i + 1, n)
        if i >= n:
            return _mk_cred(scheme, params)
        j = i
        while j < n and (CC[d[j]] & F_TOKEN):
            j += 1
        if j == i:
            raise _err("Malformed credentials")
        name = _param_name(s, d, i, j)
        i = _skip_ws(d, j, n)
        if i >= n or d[i] != 61:
            raise _err("Malformed credentials")
        i = _skip_ws(d, i + 1, n)
        if i < n and d[i] == 34:
            value = _quoted(s, d, i, n, &i)
        else:
            j = i
            while j < n and d[j] != 44 and d[j] != 32 and d[j] != 9:
                j += 1
            value = _ss(s, i, j)
            i = j
        i = _skip_ws(d, i, n)
        if i < n and d[i] != 44:
            raise _err("Malformed credentials")
        PyDict_SetDefault(params, name, value)


def parse_credentials(s):
    """``scheme auth-param *(COMMA auth-param)``; names lower-cased, quoted values unquoted."""
    if not _latin1(s):
        return _pure.parse_credentials(s)
    return _parse_credentials(s)

# ------------------------------------------------------------------------------------------------ messages

cdef enum:
    V_OK = 0
    V_UNSUPPORTED = 1
    V_BAD = 2


cdef inline bint _digits(cbuf p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Non-empty and ASCII digits only (str.isdigit() and str.isascii())."""
    return b > a and _all(p, a, b, F_DIGIT)


cdef int _version(cbuf p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """pyparse._parse_version(p[a:b])."""
    cdef Py_ssize_t dot, k
    if b - a < 7 or LOWER[p[a]] != 115 or LOWER[p[a + 1]] != 105 or LOWER[p[a + 2]] != 112 or p[a + 3] != 47:
        return V_BAD
    dot = _find(p, a + 4, b, 46)
    if dot < 0 or not _digits(p, a + 4, dot) or not _digits(p, dot + 1, b):
        return V_BAD
    # int(major) == 2 and int(minor) == 0
    k = a + 4
    while k < dot - 1 and p[k] == 48:
        k += 1
    if k != dot - 1 or p[k] != 50:
        return V_UNSUPPORTED
    for k in range(dot + 1, b):
        if p[k] != 48:
            return V_UNSUPPORTED
    return V_OK


cdef object _fail(object msg, bint is_request, object method, object reason, int code):
    answerable = False
    if is_request and method != S_ACK:
        try:
            vias = msg.vias
            answerable = len(vias) > 0
        except SipParseError:
            answerable = False
    return SipParseError(reason, code, answerable, msg if answerable else None)


cdef object _fold(list headers, Py_ssize_t idx, cbuf buf, Py_ssize_t ls, Py_ssize_t le):
    """A continuation line buf[ls:le] of header ``idx``: the pure twin's unfolding, on str."""
    key, name, value, raw = headers[idx]
    line = _bs(buf, ls, le)
    cont = line.strip(WS)
    value = value + " " + cont if value and cont else value + cont
    headers[idx] = (key, name, value, raw + "\r\n" + line)
    if len(value) > C_MAX_LINE:
        raise SipParseError("Header field too long", 513, False)


cdef object _max_forwards(str v):
    """Message.max_forwards' computation on the first Max-Forwards value."""
    cdef cbuf d = PyUnicode_1BYTE_DATA(v)
    cdef Py_ssize_t a = 0, b = PyUnicode_GET_LENGTH(v), k
    cdef long x = 0
    while a < b and (CC[d[a]] & F_PYSPACE):
        a += 1
    while b > a and (CC[d[b - 1]] & F_PYSPACE):
        b -= 1
    if not _digits(d, a, b) or b - a > 10:
        raise SipParseError("Bad Max-Forwards")
    for k in range(a, b):
        x = x * 10 + (d[k] - 48)
    if x > 255:
        raise SipParseError("Bad Max-Forwards")
    return PyLong_FromLong(x)


cdef object _parse_message(bytes data):
    cdef cbuf buf = <cbuf>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t p0, k, head_end, body_start, pos, e, ls, le, ss, se, sp1, sp2, nsp, colon, ne, vs, ve
    cdef Py_ssize_t code_s, code_e, after_s, after_e, rsn_s, nh, body_len, length, ci, cap, nlf, j
    cdef Py_ssize_t ntok, ts, t0s, t0e, t1s, t1e, t2s, t2e
    cdef Py_ssize_t lfs[LF_CAP]
    cdef const void* q
    cdef bint is_request
    cdef int vstat, start_code = 0, m, i, hid
    cdef long status = 0
    cdef unsigned char hids[HID_CAP]
    cdef Py_ssize_t counts[N_HID]
    cdef Py_ssize_t first[N_HID]
    cdef Py_ssize_t last[N_HID]
    cdef cbuf cd

    if n > C_MAX_MESSAGE:
        raise SipParseError("Message Too Large", 513, False)
    p0 = 0
    while p0 < n and (buf[p0] == 13 or buf[p0] == 10):
        p0 += 1
    if p0 >= n:
        raise SipParseError("Empty datagram", 400, False)

    # the end of the header section: the first LF that starts LF LF or LF CR LF
    # (the LFs before it end the lines of the header section: the first LF_CAP of them are remembered)
    head_end = n
    body_start = n
    nlf = 0
    k = p0
    while k < n:
        q = memchr(buf + k, 10, <size_t>(n - k))
        if q == NULL:
            break
        k = <cbuf>q - buf
        if k + 1 < n:
            if buf[k + 1] == 10:
                head_end = k
                body_start = k + 2
                break
            if buf[k + 1] == 13 and k + 2 < n and buf[k + 2] == 10:
                head_end = k
                body_start = k + 3
                break
        if nlf < LF_CAP:
            lfs[nlf] = k
        nlf += 1
        k += 1

    # start line (line 0; lines 1..nlf follow)
    ss = p0
    se = lfs[0] if nlf > 0 else head_end
    pos = se + 1
    if se > ss and buf[se - 1] == 13:
        se -= 1

    start_error = None
    method = S_EMPTY
    uri = S_EMPTY
    version = S_EMPTY
    reason = S_EMPTY
    if se - ss >= 4 and LOWER[buf[ss]] == 115 and LOWER[buf[ss + 1]] == 105 and LOWER[buf[ss + 2]] == 112 \
            and buf[ss + 3] == 47:
        is_request = False
        sp1 = _find(buf, ss, se, 32)
        if sp1 < 0:
            vstat = _version(buf, ss, se)
            version = S_VERSION if vstat == V_OK and se - ss == 7 and memcmp(buf + ss, b"SIP/2.0", 7) == 0 \
                else _bs(buf, ss, se)
            code_s = code_e = after_s = after_e = rsn_s = se
        else:
            vstat = _version(buf, ss, sp1)
            version = S_VERSION if sp1 - ss == 7 and memcmp(buf + ss, b"SIP/2.0", 7) == 0 else _bs(buf, ss, sp1)
            code_s = min(sp1 + 1, se)
            code_e = min(sp1 + 4, se)
            after_s = code_e
            after_e = min(sp1 + 5, se)
            rsn_s = after_e
            reason = _bs(buf, rsn_s, se)
        if vstat != V_OK:
            if vstat == V_UNSUPPORTED:
                start_error = "Version Not Supported"
                start_code = 505
            else:
                start_error = "Malformed Status-Line"
                start_code = 400
        elif code_e - code_s != 3 or not _digits(buf, code_s, code_e) or buf[code_s] < 49 or buf[code_s] > 54 \
                or (after_e > after_s and buf[after_s] != 32):
            start_error = "Bad status code"
            start_code = 400
        else:
            status = (buf[code_s] - 48) * 100 + (buf[code_s + 1] - 48) * 10 + (buf[code_s + 2] - 48)
    else:
        is_request = True
        # three elements separated by runs of SP (RFC 4475 lwsstart, trws); like [p for p in split(" ") if p]
        ntok = 0
        t0s = t0e = t1s = t1e = t2s = t2e = ss
        k = ss
        while True:
            while k < se and buf[k] == 32:
                k += 1
            if k >= se:
                break
            ts = k
            while k < se and buf[k] != 32:
                k += 1
            if ntok == 0:
                t0s = ts
                t0e = k
            elif ntok == 1:
                t1s = ts
                t1e = k
            elif ntok == 2:
                t2s = ts
                t2e = k
            ntok += 1
        m = _lookup_exact(&METHODS, buf + t0s, t0e - t0s)
        method = <object>METHODS.w[m].key if m >= 0 else _bs(buf, t0s, t0e)
        if ntok != 3:
            start_error = "Malformed Request-Line"
            start_code = 400
        else:
            uri = _bs(buf, t1s, t1e)
            if t2e - t2s == 7 and memcmp(buf + t2s, b"SIP/2.0", 7) == 0:
                version = S_VERSION
            else:
                version = _bs(buf, t2s, t2e)
            vstat = _version(buf, t2s, t2e)
            if not _is_token(buf, t0s, t0e):
                start_error = "Bad method"
                start_code = 400
            elif vstat == V_BAD:
                start_error = "Malformed Request-Line"
                start_code = 400
            elif vstat == V_UNSUPPORTED:
                start_error = "Version Not Supported"
                start_code = 505
            elif t1e - t1s > C_MAX_URI:
                start_error = "Request-URI Too Long"
                start_code = 414
            else:
                colon = _find(buf, t1s, t1e, 58)
                if colon <= t1s or not (CC[buf[t1s]] & F_SCHEME_FIRST) \
                        or not _all(buf, t1s, colon, F_SCHEME):
                    start_error = "Malformed Request-URI"
                    start_code = 400

    # header fields: the list is allocated for the number of lines (at most MAX_HEADERS + 1) and cut at the end
    cap = nlf if nlf <= C_MAX_HEADERS else C_MAX_HEADERS + 1
    headers = PyList_New(cap)
    nh = 0
    bad_line = None
    for i in range(N_HID):
        counts[i] = 0
        first[i] = -1
        last[i] = -1
    for j in range(1, nlf + 1):
        ls = pos
        if j < nlf:
            le = lfs[j] if j < LF_CAP else _find(buf, ls, head_end, 10)
        else:
            le = head_end
        pos = le + 1
        if le > ls and buf[le - 1] == 13:
            le -= 1
        if le > ls and (buf[ls] == 32 or buf[ls] == 9):
            if nh == 0:
                if bad_line is None:
                    bad_line = "Malformed header line"
                continue
            _fold(headers, nh - 1, buf, ls, le)
            continue
        if le == ls:
            continue
        colon = ls
        while colon < le and buf[colon] != 58:
            colon += 1
        ne = _rstrip_ws(buf, ls, colon) if le > colon > ls else ls
        if not _is_token(buf, ls, ne):
            if bad_line is None:
                bad_line = "Malformed header line"
            continue
        if le - ls > C_MAX_LINE:
            raise SipParseError("Header field too long", 513, False)
        m = _lookup_ci(&HDRS, buf + ls, ne - ls)
        if m >= 0:
            key = <object>HDRS.w[m].key
            hid = HDRS.w[m].id
            if memcmp(buf + ls, HDRS.w[m].canon, ne - ls) == 0:
                name = <object>HDRS.w[m].canon_obj
            else:
                name = _bs(buf, ls, ne)
        else:
            hid = H_OTHER
            name = _bs(buf, ls, ne)
            key = name.lower()
            key = _COMPACT.get(key, key)
        vs = _skip_ws(buf, colon + 1, le)
        ve = _rstrip_ws(buf, vs, le)
        raw = _bs(buf, ls, le)
        tup = (key, name, PyUnicode_Substring(raw, vs - ls, ve - ls), raw)
        Py_INCREF(tup)
        PyList_SET_ITEM(headers, nh, tup)
        hids[nh] = hid
        counts[hid] += 1
        if first[hid] < 0:
            first[hid] = nh
        last[hid] = nh
        nh += 1
        if nh > C_MAX_HEADERS:
            raise SipParseError("Too many header fields", 513, False)

    if nh < cap:
        del headers[nh:]

    # Content-Length (decided before the message exists: it only truncates the body when all is well so far)
    body_len = n - body_start
    length = -1
    cl_error = None
    if start_error is None and bad_line is None:
        if counts[H_CLEN] > 1:
            cl_error = "Multiple Content-Length header fields"
        elif counts[H_CLEN] == 1:
            cl = headers[last[H_CLEN]][2]
            cd = PyUnicode_1BYTE_DATA(cl)
            ci = PyUnicode_GET_LENGTH(cl)
            if ci > 10 or not _digits(cd, 0, ci):
                cl_error = "Bad Content-Length"
            else:
                length = 0
                for k in range(ci):
                    length = length * 10 + (cd[k] - 48)
                if length > body_len:
                    cl_error = "Content-Length larger than message"
    if cl_error is None and 0 <= length < body_len:
        body = _bs(buf, body_start, body_start + length)
    else:
        body = _bs(buf, body_start, n)

    if is_request:
        msg = _mk_request(method, uri, version if version else S_VERSION, headers, body)
    else:
        msg = _mk_response(PyLong_FromLong(status), reason, version, headers, body)

    if start_error is not None:
        raise _fail(msg, is_request, method, start_error, start_code)
    if bad_line is not None:
        raise _fail(msg, is_request, method, bad_line, 400)
    if cl_error is not None:
        raise _fail(msg, is_request, method, cl_error, 400)

    # mandatory header fields, each exactly once (Via may repeat)
    if counts[H_VIA] == 0:
        raise _fail(msg, is_request, method, "Missing Via header field", 400)
    if counts[H_FROM] == 0:
        raise _fail(msg, is_request, method, "Missing From header field", 400)
    if counts[H_TO] == 0:
        raise _fail(msg, is_request, method, "Missing To header field", 400)
    if counts[H_CALLID] == 0:
        raise _fail(msg, is_request, method, "Missing Call-ID header field", 400)
    if counts[H_CSEQ] == 0:
        raise _fail(msg, is_request, method, "Missing CSeq header field", 400)
    if counts[H_FROM] > 1:
        raise _fail(msg, is_request, method, "Multiple From header fields", 400)
    if counts[H_TO] > 1:
        raise _fail(msg, is_request, method, "Multiple To header fields", 400)
    if counts[H_CALLID] > 1:
        raise _fail(msg, is_request, method, "Multiple Call-ID header fields", 400)
    if counts[H_CSEQ] > 1:
        raise _fail(msg, is_request, method, "Multiple CSeq header fields", 400)
    if counts[H_MAXFWD] > 1:
        raise _fail(msg, is_request, method, "Multiple Max-Forwards header fields", 400)
    if not headers[first[H_CALLID]][2]:
        raise _fail(msg, is_request, method, "Empty Call-ID", 400)
    try:
        vias = []
        for k in range(nh):
            if hids[k] == H_VIA:
                _vias_into(vias, headers[k][2])
        _set_msg(msg, is_request, RQ_VIAS, RS_VIAS, "_vias", vias)
        if len(vias) > C_MAX_VIAS:
            raise SipParseError("Too many Via header fields", 513)
        cseq = _parse_cseq(headers[first[H_CSEQ]][2])
        _set_msg(msg, is_request, RQ_CSEQ, RS_CSEQ, "_cseq", cseq)
        _set_msg(msg, is_request, RQ_FROM, RS_FROM, "_from", _name_addrs(headers[first[H_FROM]][2], SINGLE, None))
        _set_msg(msg, is_request, RQ_TO, RS_TO, "_to", _name_addrs(headers[first[H_TO]][2], SINGLE, None))
        if is_request:
            cache = {}
            _set_msg(msg, True, RQ_CACHE, RS_CACHE, "_cache", cache)
            cache["max-forwards"] = None if first[H_MAXFWD] < 0 else _max_forwards(headers[first[H_MAXFWD]][2])
    except SipParseError as exc:
        raise _fail(msg, is_request, method, exc.reason, exc.status) from None
    if is_request and (<object>cseq).method != method:
        raise _fail(msg, is_request, method, "CSeq method does not match the request method", 400)
    if is_request and (uri[:4].lower() == "sip:" or uri[:5].lower() == "sips:"):
        try:
            ruri = msg.ruri
        except SipParseError as exc:
            raise _fail(msg, is_request, method, exc.reason, exc.status) from None
        if ruri.headers is not None:
            raise _fail(msg, is_request, method, "Request-URI must not contain headers", 400)
    return msg


def parse_message(data):
    """Parse one datagram into a Request or a Response (see pyparse's docstring for the rules)."""
    if type(data) is not bytes:
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        else:
            return _pure.parse_message(data)
    return _parse_message(data)

