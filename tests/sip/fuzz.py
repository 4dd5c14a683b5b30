"""A seeded, bounded mutation fuzzer for SIP datagrams and header-field strings (standard library only).

``SEEDS`` is a corpus of realistic messages; ``mutants(seeds, count, seed)`` yields ``count`` mutated datagrams and
``field_strings(count, seed)`` header-field strings for the field parsers. Everything is deterministic for a given
seed: ``random.Random(seed)`` drives every choice, and the sizes are bounded (a mutant is at most a little over
``pyparse.MAX_MESSAGE`` bytes, so the size limit itself is exercised).

    python tests/sip/fuzz.py [count] [seed]     # print a few mutants (to look at them)
"""
import os
import random

CRLF = "\r\n"


def _msg(*lines, body="", cl=True, sep=CRLF):
    """A datagram from its lines; Content-Length (of the encoded body) appended unless cl is False."""
    raw_body = body.encode("utf-8") if isinstance(body, str) else body
    lines = list(lines)
    if cl:
        lines.append(f"Content-Length: {len(raw_body)}")
    return (sep.join(lines) + sep + sep).encode("utf-8") + raw_body


SDP = ("v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n"
       "c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
SDP6 = "v=0\r\no=bob 1 1 IN IP6 2001:db8::9\r\ns=-\r\nc=IN IP6 2001:db8::9\r\nt=0 0\r\nm=audio 3456 RTP/AVP 0\r\n"
AUTH = ('Digest username="alice", realm="atlanta.example.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", '
        'uri="sip:atlanta.example.com", response="dfe56131d1958046689d83306477ecc", algorithm=MD5, '
        'opaque="", qop=auth, nc=00000001, cnonce="0a4f113b"')

SEEDS = [
    # INVITE with SDP
    _msg("INVITE sip:bob@biloxi.example.com SIP/2.0",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
         "Max-Forwards: 70",
         "To: Bob <sip:bob@biloxi.example.com>",
         'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 INVITE",
         "Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>",
         "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE",
         "Supported: replaces, timer",
         "User-Agent: ftsip-fuzz/1.0",
         "Content-Type: application/sdp", body=SDP),
    # REGISTER with Authorization
    _msg("REGISTER sip:atlanta.example.com SIP/2.0",
         "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bKnashds7;rport",
         "Max-Forwards: 70",
         "To: Alice <sip:alice@atlanta.example.com>",
         "From: Alice <sip:alice@atlanta.example.com>;tag=456248",
         "Call-ID: 843817637684230@998sdasdh09",
         "CSeq: 1827 REGISTER",
         "Contact: <sip:alice@192.0.2.101:5060>;expires=3600;q=0.7, <sip:alice@198.51.100.3>;expires=60",
         "Authorization: " + AUTH,
         "Expires: 7200",
         "Supported: path, gruu"),
    # 200 OK with Record-Route
    _msg("SIP/2.0 200 OK",
         "Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bK4b43c2ff8.1;received=192.0.2.3",
         "Via: SIP/2.0/UDP bigbox3.site3.atlanta.example.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;received=192.0.2.1",
         "Record-Route: <sip:server10.biloxi.example.com;lr>, <sip:bigbox3.site3.atlanta.example.com;lr>",
         "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 INVITE",
         "Contact: <sip:bob@192.0.2.4>",
         "Content-Type: application/sdp", body=SDP),
    # ACK
    _msg("ACK sip:bob@192.0.2.4 SIP/2.0",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds9",
         "Route: <sip:bigbox3.site3.atlanta.example.com;lr>",
         "Max-Forwards: 70",
         "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 ACK"),
    # BYE
    _msg("BYE sip:alice@pc33.atlanta.example.com SIP/2.0",
         "Via: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKnashds10",
         "Max-Forwards: 69",
         "From: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
         "To: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 231 BYE"),
    # CANCEL
    _msg("CANCEL sip:bob@biloxi.example.com SIP/2.0",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
         "Max-Forwards: 70",
         "To: Bob <sip:bob@biloxi.example.com>",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 CANCEL"),
    # OPTIONS, minimal, no Content-Length
    _msg("OPTIONS sip:carol@chicago.example.com SIP/2.0",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877",
         "Max-Forwards: 70",
         "To: <sip:carol@chicago.example.com>",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710",
         "CSeq: 63104 OPTIONS",
         "Accept: application/sdp", cl=False),
    # SUBSCRIBE
    _msg("SUBSCRIBE sip:presentity@example.com SIP/2.0",
         "Via: SIP/2.0/TCP watcherhost.example.com;branch=z9hG4bKnashds7",
         "To: <sip:presentity@example.com>",
         "From: <sip:watcher@example.com>;tag=xfg9",
         "Call-ID: 2010@watcherhost.example.com",
         "CSeq: 17766 SUBSCRIBE",
         "Max-Forwards: 70",
         "Event: presence",
         "Accept: application/pidf+xml",
         "Contact: <sip:user@watcherhost.example.com>",
         "Expires: 600"),
    # NOTIFY with a body
    _msg("NOTIFY sip:user@watcherhost.example.com SIP/2.0",
         "Via: SIP/2.0/TCP server.example.com;branch=z9hG4bKna998sk",
         "From: <sip:presentity@example.com>;tag=ffd2",
         "To: <sip:watcher@example.com>;tag=xfg9",
         "Call-ID: 2010@watcherhost.example.com",
         "Event: presence",
         "Subscription-State: active;expires=599",
         "Max-Forwards: 70",
         "CSeq: 8775 NOTIFY",
         "Contact: <sip:server.example.com>",
         "Content-Type: application/pidf+xml",
         body='<?xml version="1.0"?>\n<presence entity="pres:presentity@example.com"><tuple id="1">'
              "<status><basic>open</basic></status></tuple></presence>\n"),
    # MESSAGE with a UTF-8 body and a UTF-8 display name
    _msg("MESSAGE sip:user2@domain.com SIP/2.0",
         "Via: SIP/2.0/TCP user1pc.domain.com;branch=z9hG4bK776sgdkse",
         "Max-Forwards: 70",
         'From: "Zoë Ångström" <sip:user1@domain.com>;tag=49583',
         "To: sip:user2@domain.com",
         "Call-ID: asd88asd77a@1.2.3.4",
         "CSeq: 1 MESSAGE",
         "Content-Type: text/plain;charset=utf-8",
         body="Grüße aus Köln – ☎ 日本語テキスト\r\n"),
    # 100 Trying
    _msg("SIP/2.0 100 Trying",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1",
         "To: Bob <sip:bob@biloxi.example.com>",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 INVITE"),
    # 180 Ringing
    _msg("SIP/2.0 180 Ringing",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=5062",
         "Record-Route: <sip:ss1.example.com;lr>",
         "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "Contact: <sip:bob@192.0.2.4>",
         "CSeq: 314159 INVITE"),
    # 401 with WWW-Authenticate
    _msg("SIP/2.0 401 Unauthorized",
         "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bKnashds7;received=192.0.2.101;rport=5060",
         "From: Alice <sip:alice@atlanta.example.com>;tag=456248",
         "To: Alice <sip:alice@atlanta.example.com>;tag=2493k59kd",
         "Call-ID: 843817637684230@998sdasdh09",
         "CSeq: 1826 REGISTER",
         'WWW-Authenticate: Digest realm="atlanta.example.com", qop="auth", '
         'nonce="ea9c8e88df84f1cec4341ae6cbe5a359", opaque="", stale=FALSE, algorithm=MD5'),
    # 407 with Proxy-Authenticate
    _msg("SIP/2.0 407 Proxy Authentication Required",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1",
         "To: Bob <sip:bob@biloxi.example.com>;tag=3flal12sf",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 INVITE",
         'Proxy-Authenticate: Digest realm="atlanta.example.com", qop="auth", nonce="f84f1cec41e6cbe5aea9c8e88d359"'),
    # 486
    _msg("SIP/2.0 486 Busy Here",
         "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1",
         "To: Bob <sip:bob@biloxi.example.com>;tag=314159",
         "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
         "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
         "CSeq: 314159 INVITE",
         "Retry-After: 3600"),
    # IPv6 everywhere
    _msg("INVITE sip:[2001:db8::10]:5070;transport=udp SIP/2.0",
         "Via: SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bKas3-111;rport",
         "Via: SIP/2.0/UDP [2001:DB8::9:255];branch=z9hG4bKas3-000;received=[2001:db8::9:255]",
         "Max-Forwards: 70",
         "From: <sip:alice@[2001:db8::9:1]>;tag=81x2",
         "To: <sip:bob@[2001:db8::10]>",
         "Call-ID: SSG9559905523997077@hlau_4100",
         "Contact: \"Caller\" <sip:caller@[2001:db8::9:1]:5060>",
         "CSeq: 8612 INVITE",
         "Content-Type: application/sdp", body=SDP6),
    # compact forms
    _msg("INVITE sip:bob@biloxi.example.com SIP/2.0",
         "v: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport",
         "f: Alice <sip:alice@atlanta.example.com>;tag=a1",
         "t: sip:bob@biloxi.example.com",
         "i: compact-1@192.0.2.1",
         "CSeq: 10 INVITE",
         "m: <sip:alice@192.0.2.1:5070>",
         "k: timer",
         "s: Lunch?",
         "c: application/sdp",
         "Max-Forwards: 70",
         "l: " + str(len(SDP)), body=SDP, cl=False),
    # folded lines and odd whitespace
    _msg("OPTIONS sip:user@example.com SIP/2.0",
         "Via  :  SIP / 2.0 / UDP host.example.com ; branch = z9hG4bKfold ;rport",
         "To: <sip:user@example.com>",
         "From: Caller\r\n <sip:caller@example.com>;tag=fold1",
         "Call-ID: fold-1@example.com",
         "CSeq: 1\r\n\tOPTIONS",
         "Subject: I know you're there,\r\n pick up the phone\r\n   and talk to me!",
         "Max-Forwards:\t70"),
    # LF-only line ends
    _msg("BYE sip:bob@192.0.2.4 SIP/2.0",
         "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKlf",
         "Max-Forwards: 70",
         "From: <sip:alice@example.com>;tag=lf1",
         "To: <sip:bob@example.com>;tag=lf2",
         "Call-ID: lf-only@example.com",
         "CSeq: 2 BYE", sep="\n"),
    # several Vias in one line, and over several lines
    _msg("INFO sip:bob@192.0.2.4 SIP/2.0",
         "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP p2.example.com;branch=z9hG4bK2,"
         "SIP/2.0/TCP p3.example.com:5061;branch=z9hG4bK3",
         "Via: SIP/2.0/TLS p4.example.com;branch=z9hG4bK4;received=10.0.0.4, SIP/2.0/SCTP p5;branch=z9hG4bK5",
         "Max-Forwards: 66",
         "From: <sip:alice@example.com>;tag=v1",
         "To: <sip:bob@example.com>;tag=v2",
         "Call-ID: multi-via@example.com",
         "CSeq: 5 INFO"),
    # quoted display names with escapes, a token display name, params with quotes
    _msg("INVITE sips:bob@example.com SIP/2.0",
         "Via: SIP/2.0/TLS client.example.com:5061;branch=z9hG4bKesc",
         'From: "J. \\"Alice\\" Doe\\\\" <sips:alice@example.com>;tag=esc1',
         'To: "Bob \\\\ <the builder>, Jr." <sips:bob@example.com>',
         'Contact: Alice Smith <sips:alice@client.example.com>;+sip.instance="<urn:uuid:f81d4fae>";reg-id=1',
         "Call-ID: esc@example.com",
         "CSeq: 7 INVITE",
         "Max-Forwards: 70"),
    # REGISTER: Contact *, Expires 0
    _msg("REGISTER sip:example.com SIP/2.0",
         "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKstar;rport",
         "Max-Forwards: 70",
         "To: <sip:carol@example.com>",
         "From: <sip:carol@example.com>;tag=star",
         "Call-ID: star@192.0.2.7",
         "CSeq: 3 REGISTER",
         "Contact: *",
         "Expires: 0"),
    # INVITE through proxies: Route set, Proxy-Authorization, Require/Proxy-Require
    _msg("INVITE sip:bob@biloxi.example.com;user=phone SIP/2.0",
         "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9;rport",
         "Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr;transport=tcp>",
         "Route: <sip:p3.example.com:5070;lr>",
         "Max-Forwards: 70",
         "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl",
         "To: Bob <sip:bob@biloxi.example.com>",
         "Call-ID: 3848276298220188511@atlanta.example.com",
         "CSeq: 2 INVITE",
         "Proxy-Authorization: " + AUTH.replace("uri=\"sip:atlanta.example.com\"", "uri=\"sip:bob@biloxi.example.com\""),
         "Require: 100rel",
         "Proxy-Require: foo, bar",
         "Supported: Timer, 100REL",
         "Contact: <sip:alice@192.0.2.101>"),
    # response with a body and no Content-Length
    _msg("SIP/2.0 183 Session Progress",
         "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9;rport=5060;received=192.0.2.101",
         "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl",
         "To: Bob <sip:bob@biloxi.example.com>;tag=8321234356",
         "Call-ID: 3848276298220188511@atlanta.example.com",
         "CSeq: 2 INVITE",
         "Content-Type: application/sdp", body=SDP, cl=False),
    # tel: and other schemes, URI with parameters and headers
    _msg("INVITE tel:+1-212-555-1212;phone-context=example.com SIP/2.0",
         "Via: SIP/2.0/UDP gw.example.com;branch=z9hG4bKtel",
         "Max-Forwards: 70",
         "From: <tel:+12125551000>;tag=t1",
         "To: <sip:+12125551212@example.com;user=phone>",
         "Call-ID: tel@gw.example.com",
         "CSeq: 1 INVITE",
         "Contact: <sip:gw.example.com?Subject=hi&Priority=urgent>",
         "Record-Route: <sip:rr.example.com;lr>",
         "Path: <sip:edge.example.com;lr>"),
    # PUBLISH with a password in a URI, escaped user, maddr/ttl
    _msg("PUBLISH sip:pres%40ence:secret@example.com:5060;maddr=239.255.255.1;ttl=15 SIP/2.0",
         "Via: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKpub;maddr=239.255.255.1;ttl=15",
         "Max-Forwards: 70",
         "From: <sip:%61lice@example.com>;tag=p1",
         "To: <sip:%61lice@example.com>",
         "Call-ID: pub@10.1.1.1",
         "CSeq: 11 PUBLISH",
         "Event: presence",
         "SIP-If-Match: dx200xyz",
         "Expires: 3600"),
    # a response from the far end (3xx) with several contacts
    _msg("SIP/2.0 302 Moved Temporarily",
         "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9",
         "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl",
         "To: Bob <sip:bob@biloxi.example.com>;tag=r1",
         "Call-ID: 3848276298220188511@atlanta.example.com",
         "CSeq: 2 INVITE",
         "Contact: <sip:bob@192.0.2.4>;q=0.9, <sip:bob@192.0.2.5>;q=0.1;expires=30",
         "Contact: sip:bob@192.0.2.6;q=0"),
]


def torture_seeds():
    """The RFC 4475/5118 torture fixtures under tests/sip/torture (when present) as extra seeds."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")
    out = []
    if os.path.isdir(here):
        for folder in sorted(os.listdir(here)):
            d = os.path.join(here, folder)
            if not os.path.isdir(d):
                continue
            for name in sorted(os.listdir(d)):
                if name.endswith(".sip"):
                    with open(os.path.join(d, name), "rb") as f:
                        out.append(f.read())
    return out


# ------------------------------------------------------------------------------------------------ mutations

MAX_MESSAGE = 65535
INSERTS = [b"\r\n", b"\n", b"\r", b"\x00", b'"', b"\\", b"<", b">", b",", b";", b":", b"=", b"@", b"?", b"[", b"]",
           b" ", b"\t", b"\r\n ", b"\r\n\t", b"%", b"%4", b"%zz", b"*", b"/", b"\x7f", b"\xff", b"\xc3\x28",
           b"\xe2\x82", b"\x80", b"\xa0", b"\x85", b"\x1c", b"\x0b", b"\xb2", b";lr", b";tag=", b"=\"\"", b"<>",
           b"sip:", b"sips:", b"tel:", b"SIP/2.0", b"\r\n\r\n", b"\n\n", b"\n\r\n"]
NUMBERS = [b"", b"0", b"00", b"-1", b"+1", b"1.5", b"70", b"255", b"256", b"999", b"1000", b"65535", b"65536",
           b"4294967295", b"4294967296", b"99999999999", b"0x10", b"\xb2", b"1 2", b"007", b" 5 ", b"1\x0b",
           b"18446744073709551616"]
HEADER_NAMES = [b"Via", b"v", b"V", b"VIA", b"From", b"f", b"To", b"t", b"Call-ID", b"i", b"CSeq", b"cseq",
                b"Max-Forwards", b"Content-Length", b"l", b"Contact", b"m", b"Route", b"Record-Route",
                b"Authorization", b"Proxy-Authorization", b"Expires", b"Require", b"Supported", b"k", b"X-Custom",
                b"Bad Name", b"", b" Via", b"Via ", b"\xffVia", b"Path"]


def _lines(data):
    return data.split(b"\n")


def m_truncate(rng, data):
    return data[:rng.randrange(len(data) + 1)]


def m_flip(rng, data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if b:
            i = rng.randrange(len(b))
            b[i] = b[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.6 else rng.randrange(256)
    return bytes(b)


def m_dup_line(rng, data):
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"\n".join(lines)


def m_del_line(rng, data):
    lines = _lines(data)
    if len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def m_swap_lines(rng, data):
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def m_del_crlf(rng, data):
    which = rng.choice([b"\r", b"\n"])
    idx = [i for i in range(len(data)) if data[i:i + 1] == which]
    if not idx:
        return data
    if rng.random() < 0.2:   # all of them
        return data.replace(which, b"")
    i = rng.choice(idx)
    return data[:i] + data[i + 1:]


def m_lf_only(rng, data):
    return data.replace(b"\r\n", b"\n")


def m_insert(rng, data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice(INSERTS) + data[i:]


def m_insert_near(rng, data):
    """Insert a special byte next to an existing delimiter (where parsers branch)."""
    pos = [i for i, c in enumerate(data) if c in b"<>\";,:@=[]/\\ "]
    if not pos:
        return m_insert(rng, data)
    i = rng.choice(pos) + rng.randint(0, 1)
    return data[:i] + rng.choice(INSERTS) + data[i:]


def m_delete_range(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 8):]


def _header_value_span(rng, data):
    """(start, end) of the value of a random header line, or None."""
    spans = []
    start = 0
    for line in _lines(data):
        c = line.find(b":")
        if c > 0 and not line[:1].isspace():
            spans.append((start + c + 1, start + len(line.rstrip(b"\r"))))
        start += len(line) + 1
        if not line.strip(b"\r"):
            break
    return rng.choice(spans) if spans else None


def m_huge_value(rng, data):
    span = _header_value_span(rng, data)
    if span is None:
        return data
    size = rng.choice([100, 4097, 16385, 20000, 70000])
    filler = rng.choice([b"a", b"x;", b"%41", b",", b" ", b"9"])
    blob = (filler * (size // len(filler) + 1))[:size]
    return data[:span[0]] + b" " + blob + data[span[1]:]


def m_bad_number(rng, data):
    targets = [b"CSeq:", b"Max-Forwards:", b"Content-Length:", b"Expires:", b"l:", b"SIP/2.0 ", b":5060",
               b"expires=", b"q=", b"rport=", b"ttl="]
    t = rng.choice(targets)
    i = data.find(t)
    if i < 0:
        return m_insert(rng, data)
    i += len(t)
    j = i
    while j < len(data) and data[j:j + 1] in (b" ", b"\t"):
        j += 1
    k = j
    while k < len(data) and data[k:k + 1].isdigit():
        k += 1
    return data[:j] + rng.choice(NUMBERS) + data[k:]


def m_invalid_utf8(rng, data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc",
                                  b"\xc0\xaf", b"\xed\xa0\x80"]) + data[i:]


def m_wrong_cl(rng, data):
    i = data.find(b"Content-Length:")
    new = b"Content-Length: " + rng.choice([b"0", b"1", b"5", b"99999", b"142", b"", b"x", b"4294967296",
                                            str(rng.randrange(400)).encode()])
    if i < 0:
        sep = data.find(b"\r\n\r\n")
        if sep < 0:
            return data + b"\r\n" + new
        return data[:sep] + b"\r\n" + new + data[sep:]
    j = data.find(b"\r\n", i)
    j = len(data) if j < 0 else j
    return data[:i] + new + data[j:]


def m_header(rng, data):
    """Add a header line with a random (maybe compact, maybe odd) name and a value taken from elsewhere."""
    lines = _lines(data)
    name = rng.choice(HEADER_NAMES)
    other = rng.choice(lines[1:] or lines)
    value = other.split(b":", 1)[-1].strip()
    lines.insert(rng.randint(1, max(1, len(lines) - 1)), name + b": " + value + b"\r")
    return b"\n".join(lines)


def m_rename(rng, data):
    lines = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    c = lines[i].find(b":")
    if c <= 0:
        return data
    lines[i] = rng.choice(HEADER_NAMES) + lines[i][c:]
    return b"\n".join(lines)


def m_fold(rng, data):
    """Break a header line at a space into a folded continuation (or unfold / add a stray continuation)."""
    lines = _lines(data)
    i = rng.randrange(len(lines))
    line = lines[i]
    sp = [k for k, c in enumerate(line) if c == 32]
    if sp and rng.random() < 0.7:
        k = rng.choice(sp)
        lines[i] = line[:k] + b"\r\n" + rng.choice([b" ", b"\t", b"  "]) + line[k + 1:]
    else:
        lines.insert(i, rng.choice([b" stray", b"\tstray\r", b" ", b"\t\r"]))
    return b"\n".join(lines)


def m_start_line(rng, data):
    first, sep, rest = data.partition(b"\r\n")
    choices = [
        lambda f: f.replace(b" ", b"  ", 1), lambda f: f.replace(b" ", b"\t", 1), lambda f: f + b" ",
        lambda f: b" " + f, lambda f: f.replace(b"SIP/2.0", rng.choice([b"SIP/2.1", b"sip/2.0", b"SIP/3.0",
                                                                       b"SIP/02.00", b"SIP/2", b"SIP/2.0.1",
                                                                       b"SIP/a.b", b"SIP/2.\xb2", b"HTTP/1.1"])),
        lambda f: f.lower(), lambda f: f.replace(b"sip:", b"si p:", 1), lambda f: f.replace(b"sip:", b":", 1),
        lambda f: f.replace(b" ", b"", 1), lambda f: b"\r\n\r\n" + f, lambda f: f[: rng.randrange(len(f) + 1)],
        lambda f: f.replace(b"sip:", b"sip:" + b"x" * 4100, 1), lambda f: f.replace(b"200", b"2000", 1),
        lambda f: f.replace(b"200", b"099", 1), lambda f: f.replace(b"200", b"700", 1),
        lambda f: f.replace(b" 200 ", b" 200", 1), lambda f: b"INV\xffITE" + f[f.find(b" "):],
    ]
    return rng.choice(choices)(first) + sep + rest


def m_many(rng, data):
    """Push a limit: many header fields, many Vias, a datagram over MAX_MESSAGE."""
    kind = rng.randrange(4)
    head, sep, body = data.partition(b"\r\n\r\n")
    if kind == 0:
        extra = b"".join(b"\r\nX-H%d: v" % k for k in range(rng.choice([200, 250, 256, 257, 300])))
    elif kind == 1:
        n = rng.choice([68, 69, 70, 71, 80])
        extra = b"\r\nVia: " + b", ".join(b"SIP/2.0/UDP h%d;branch=z9hG4bK%d" % (k, k) for k in range(n))
    elif kind == 2:
        extra = b"\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKx" * rng.choice([35, 69, 70, 71])
    else:
        return data + b"x" * (MAX_MESSAGE - len(data) + rng.choice([-1, 0, 1, 100]))
    return head + extra + sep + body


MUTATORS = [m_truncate, m_flip, m_dup_line, m_del_line, m_swap_lines, m_del_crlf, m_lf_only, m_insert, m_insert_near,
            m_insert_near, m_delete_range, m_huge_value, m_bad_number, m_bad_number, m_invalid_utf8, m_wrong_cl,
            m_header, m_rename, m_fold, m_start_line, m_start_line, m_many]


def mutate(rng, data, max_ops=3):
    """1..max_ops random mutations of ``data``; the result stays under MAX_MESSAGE + 1 KiB."""
    for _ in range(rng.randint(1, max_ops)):
        data = rng.choice(MUTATORS)(rng, data)
        if len(data) > MAX_MESSAGE + 1024:
            data = data[:MAX_MESSAGE + rng.choice([-10, 0, 1, 500])]
    return data


def mutants(seeds, count, seed=0):
    """``count`` mutated datagrams from ``seeds`` (deterministic for a given seed)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield mutate(rng, rng.choice(seeds))


# ------------------------------------------------------------------------------------------------ directed cases

WHITESPACE = [b"", b" ", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\x85", b"\xa0", b"\r", b"\x00"]
TRICKY_NUMBERS = [b"0", b"00", b"000", b"0000", b"1", b"70", b"255", b"256", b"999", b"1000", b"65535", b"65536",
                  b"99999", b"100000", b"4294967295", b"4294967296", b"9999999999", b"09999999999", b"-1", b"+1",
                  b"", b"1.0", b"\xb2", b"\xb9", b"1e3", b"0x1", b"1 2"]

BASE = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKbase;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:alice@example.com>;tag=f1\r\n"
        b"To: <sip:bob@example.com>\r\n"
        b"Call-ID: base@example.com\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:alice@192.0.2.1:5060>;expires=60;q=0.5\r\n"
        b"Expires: 60\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
        b"body")

# (what is replaced in BASE, a template for the new text with {} for the value)
NUMBER_SLOTS = [
    (b"Max-Forwards: 70", b"Max-Forwards:{}"), (b"CSeq: 1 INVITE", b"CSeq:{} INVITE"),
    (b"Content-Length: 4", b"Content-Length:{}"), (b"Expires: 60", b"Expires:{}"),
    (b"host.example.com:5060", b"host.example.com:{}"), (b"sip:bob@example.com SIP", b"sip:bob@example.com:{} SIP"),
    (b"192.0.2.1:5060", b"192.0.2.1:{}"), (b"expires=60", b"expires={}"), (b"q=0.5", b"q={}"),
    (b";rport", b";rport={}"), (b"SIP/2.0\r\nVia", b"SIP/2.{}\r\nVia"),
]


def number_cases():
    """Every numeric field of BASE set to tricky numbers, each wrapped in tricky whitespace."""
    for old, template in NUMBER_SLOTS:
        assert old in BASE, old
        for num in TRICKY_NUMBERS:
            for ws in WHITESPACE:
                for value in (ws + num, num + ws, ws + num + ws):
                    yield BASE.replace(old, template.replace(b"{}", value), 1)


def _with_line(line, where=b"Call-ID:"):
    i = BASE.find(where)
    return BASE[:i] + line + b"\r\n" + BASE[i:]


def limit_cases(max_message=65535, max_headers=256, max_line=16384, max_uri=4096, max_vias=70):
    """Datagrams exactly at, just under and just over each limit of the parser."""
    out = []
    for delta in (-1, 0, 1):
        # one header line of exactly max_line + delta characters (and a folded one)
        name = b"X-Long: "
        out.append(_with_line(name + b"a" * (max_line + delta - len(name))))
        # (a folded field's limit is on its unfolded value: "a" * 10 + " " + "b" * ...)
        out.append(_with_line(name + b"a" * 10 + b"\r\n " + b"b" * (max_line + delta - 11)))
        out.append(_with_line(b"Subject:" + b"a" * 8000 + b"\r\n\t" + b"b" * (max_line + delta - 8001)))
        # header fields: BASE has 9
        out.append(_with_line(b"\r\n".join(b"X-H%d: v" % k for k in range(max_headers + delta - 9))))
        # Via values: one list, or one per line, or split over two lines
        n = max_vias + delta - 1
        vias = [b"SIP/2.0/UDP h%d;branch=z9hG4bK%d" % (k, k) for k in range(n)]
        out.append(_with_line(b"Via: " + b", ".join(vias), b"Max-Forwards"))
        out.append(_with_line(b"\r\n".join(b"Via: " + v for v in vias), b"Max-Forwards"))
        out.append(_with_line(b"Via: " + b",".join(vias[:n // 2]) + b"\r\nv: " + b",".join(vias[n // 2:]),
                              b"Max-Forwards"))
        # the Request-URI and other URIs
        for size in (max_uri + delta,):
            user = b"u" * (size - len(b"sip:@example.com"))
            uri = b"sip:" + user + b"@example.com"
            out.append(BASE.replace(b"sip:bob@example.com SIP", uri + b" SIP", 1))
            out.append(BASE.replace(b"To: <sip:bob@example.com>", b"To: <" + uri + b">", 1))
            out.append(BASE.replace(b"Contact: <sip:alice@192.0.2.1:5060>", b"Contact: <" + uri + b">", 1))
        # the datagram size
        pad = max_message + delta - len(BASE)
        big = BASE.replace(b"Content-Length: 4", b"Content-Length: %d" % (4 + pad)) + b"x" * pad
        big = big[:max_message + delta]      # the longer Content-Length value took some of the padding
        out.append(big.replace(b"Content-Length: %d" % (4 + pad), b"Content-Length: %d" % (4 + pad - (
            len(str(4 + pad)) - 1))))
        out.append(BASE.replace(b"Content-Length: 4\r\n", b"") + b"x" * (pad + len(b"Content-Length: 4\r\n")))
        # CSeq, Max-Forwards and Content-Length digit counts
        out.append(BASE.replace(b"CSeq: 1 ", b"CSeq: " + b"1" * (10 + delta) + b" ", 1))
        out.append(BASE.replace(b"Content-Length: 4", b"Content-Length: " + b"0" * (10 + delta - 1) + b"4"))
        out.append(BASE.replace(b"Max-Forwards: 70", b"Max-Forwards: " + b"0" * (3 + delta - 2) + b"70"))
    # many lines (more than the compiled twin remembers line ends for): folds, bad lines, headers after them
    out.append(_with_line(b"X-Fold: a" + b"\r\n x" * 700 + b"\r\nVia: SIP/2.0/UDP late;branch=z9hG4bKlate"))
    out.append(_with_line(b"X-Fold: a" + b"\n\tx" * 1500 + b"\r\nv: SIP/2.0/UDP late;branch=z9hG4bKlate"))
    out.append(_with_line(b"@bad\r\n" * 600 + b"X-Long: " + b"a" * max_line))
    out.append(_with_line(b"\r\n".join(b"X-H%d: v\r\n \r\n\t" % k for k in range(max_headers - 12))
                          + b"\r\nVia: SIP/2.0/UDP late;branch=z9hG4bKlate"))
    out.append(_with_line(b"\r\n".join(b"X-H%d: v\r\n \r\n\t" % k for k in range(max_headers - 8))))
    return out


# ------------------------------------------------------------------------------------------------ field strings

FIELD_SAMPLES = [
    "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
    "SIP / 2.0 / UDP host.example.com ; branch = z9hG4bKfold ;rport, SIP/2.0/TCP [2001:db8::1]:5061;received=1.2.3.4",
    'SIP/2.0/UDP h;branch="quoted;value";x="a\\"b",SIP/2.0/TLS h2:5;maddr=[::1];ttl=1',
    '"J. \\"Alice\\" Doe" <sips:alice@example.com;transport=tls>;tag=esc1',
    "Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "sip:bob@192.0.2.6;q=0, <sip:bob@192.0.2.5>;q=0.1;expires=30",
    "*", "* ;expires=0", "<sip:p1.example.com;lr>,<sip:p2.example.com;lr;transport=tcp>",
    "<sip:gw.example.com?Subject=hi&Priority=urgent>", "<tel:+1-212-555-1212;phone-context=example.com>",
    "sip:pres%40ence:secret@example.com:5060;maddr=239.255.255.1;ttl=15",
    "sips:[2001:db8::10]:5070;transport=udp?h=v", "sip:user@host:65535", "sip:host;lr;user=phone",
    "mailto:someone@example.com", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    "314159 INVITE", " 1  REGISTER ", "4294967295 ACK", "4294967296 ACK", "1 2 3", "\x0b7\x1cBYE\xa0",
    AUTH, 'Digest username="bob",realm=biloxi.com,,nonce="", uri="sip:x", response=abc',
    'Basic abc=def', 'Digest  realm="a\\"b"', "Via, From, To", 'a, "b, c", <d, e>, f',
]
FIELD_INSERTS = [" ", "\t", ";", ",", '"', "\\", "<", ">", "[", "]", ":", "@", "?", "=", "%", "%4", "%4G", "*", "/",
                 "\x00", "\x7f", "\xff", "\xa0", "\x85", "\x1c", "\xb2", "\xe9", "€", "\u2028", "lr", "tag=",
                 "sip:", "SIP/2.0/UDP", "0", "65536", "99999999999", "\r", "\n"]


def field_strings(count, seed=0):
    """``count`` header-field strings: the samples, then mutants of them (some with code points >= 256)."""
    rng = random.Random(seed)
    yield from FIELD_SAMPLES
    for _ in range(count):
        s = rng.choice(FIELD_SAMPLES)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            i = rng.randrange(len(s) + 1)
            if op <= 1:
                s = s[:i] + rng.choice(FIELD_INSERTS) + s[i:]
            elif op == 2:
                s = s[:i] + s[i + rng.randint(1, 6):]
            elif op == 3:
                s = s[:i]
            else:
                s = s[:i] + chr(rng.randrange(256)) + s[i + 1:]
        yield s


if __name__ == "__main__":
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    for m in mutants(SEEDS, n, seed):
        print(repr(m[:400]))
