"""Standalone check of the torture fixtures against the RFC text and the manifest (no ftsip code involved).

    python3 tests/sip/torture/check_fixtures.py      # Python 3.11+ (tomllib); exit status 1 on any problem

It checks that:
- every ``.sip`` file is exactly what ``build_fixtures.py`` makes from the RFC text, and the manifest and the
  files agree one to one (each file in the folder its RFC section implies: 4475 3.1.1 valid/, 3.1.2 invalid/,
  3.2-3.4 app/, 5118 ipv6/);
- the bytes match the RFCs' own archives: an RFC 4475 file has the archive file's SHA-256; an RFC 5118 file,
  turned back into its archive form (LF line ends, the printed Content-Length, no empty line after the headers
  where ``archive_unterminated``), has that file's SHA-256;
- the framing: every header line ends in CRLF (no bare CR or LF before the body), an empty line ends the header
  section (unless ``unterminated``), and for a message that parses the octets after the empty line are
  ``body_length`` (+ ``trailing_octets``) and agree with Content-Length;
- the facts a naive reader can see in the bytes (method, Request-URI, status, Call-ID, CSeq, Max-Forwards,
  Content-Length, Via and Contact counts) are the manifest's.
"""
import hashlib
import os
import re
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ftsip_torture_build", os.path.join(HERE, "build_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()

COMPACT = {"i": "call-id", "m": "contact", "l": "content-length", "c": "content-type", "f": "from", "t": "to",
           "v": "via", "s": "subject", "k": "supported", "e": "content-encoding"}
KINDS = ("request", "response")
PROBLEMS = []


def problem(name, text):
    PROBLEMS.append(f"{name}: {text}")


def folder_for(rfc):
    number, section = rfc.split(" ", 1)
    if number == "5118":
        return "ipv6"
    if section.startswith("3.1.1."):
        return "valid"
    if section.startswith("3.1.2."):
        return "invalid"
    if re.match(r"3\.[234]\.", section):
        return "app"
    raise ValueError(rfc)


def split(data):
    """(header lines without their CRLF, body octets or None when no empty line ends the headers)."""
    i = data.find(b"\r\n\r\n")
    if i < 0:
        head, body = data, None
    else:
        head, body = data[:i + 2], data[i + 4:]
    if not head.endswith(b"\r\n"):
        return None, body
    return head[:-2].split(b"\r\n"), body


def unfold(lines):
    """[(lower-case long name, value)] with continuation lines joined by one SP."""
    out = []
    for line in lines[1:]:
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t"):
            name, value = out[-1]
            out[-1] = (name, (value + " " + text.strip(" \t")).strip(" \t"))
            continue
        name, _, value = text.partition(":")
        name = name.strip(" \t").lower()
        out.append((COMPACT.get(name, name), value.strip(" \t")))
    return out


def split_commas(value):
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return [p for p in (x.strip() for x in parts) if p]


def to_archive(data, case):
    """An RFC 5118 fixture back in the form of the RFC's archive file."""
    text = data.replace(b"\r\n", b"\n")
    if "rfc_content_length" in case:
        text, n = re.subn(rb"(?m)^Content-Length: \d+$", b"Content-Length: %d" % case["rfc_content_length"], text)
        if n != 1:
            raise ValueError("Content-Length")
    if case.get("archive_unterminated"):
        if not text.endswith(b"\n\n"):
            raise ValueError("expected an empty line to remove")
        text = text[:-1]
    return text


def check_case(name, case, data):
    for key in ("file", "rfc", "kind", "parse", "server_status", "note"):
        if key not in case:
            problem(name, f"no {key}")
    if case["kind"] not in KINDS or case["parse"] not in ("ok", "error"):
        problem(name, "bad kind or parse")
    if case["file"].split("/")[0] != folder_for(case["rfc"]):
        problem(name, f"{case['file']} is not in the folder for RFC {case['rfc']}")
    ss = case["server_status"]
    if not (isinstance(ss, int) or ss in ("drop", "accept") or
            (isinstance(ss, list) and ss and all(isinstance(x, int) for x in ss))):
        problem(name, f"bad server_status {ss!r}")
    if case["kind"] == "response" and ss != "drop":
        problem(name, "a response is never answered")
    if case["parse"] == "error":
        if "answerable" not in case:
            problem(name, "an error case needs answerable")
        if case["kind"] == "request" and "status" not in case:
            problem(name, "a request error case needs status")
        if case["kind"] == "response" and case.get("answerable"):
            problem(name, "responses are never answerable")

    # the RFCs' archives
    sha = case.get("archive_sha256")
    if sha is None:
        problem(name, "no archive_sha256")
    else:
        archived = data if case["rfc"].startswith("4475") else to_archive(data, case)
        if hashlib.sha256(archived).hexdigest() != sha:
            problem(name, "differs from the RFC's archive")

    # framing
    lines, body = split(data)
    if lines is None:
        problem(name, "the header section does not end in CRLF")
        return
    for line in lines:
        if b"\r" in line or b"\n" in line:
            problem(name, f"bare CR or LF in a header line: {line[:40]!r}")
    if body is None and not case.get("unterminated"):
        problem(name, "no empty line after the header section")
    if body is not None and case.get("unterminated"):
        problem(name, "marked unterminated but has an empty line after the headers")
    body = body or b""
    headers = unfold(lines)
    values = {}
    for k, v in headers:
        values.setdefault(k, []).append(v)
    cls = values.get("content-length", [])

    if case["parse"] == "ok":
        blen = case.get("body_length")
        if blen is None:
            problem(name, "no body_length")
        elif len(body) != blen + case.get("trailing_octets", 0):
            problem(name, f"{len(body)} octets after the headers, manifest says {blen} + "
                          f"{case.get('trailing_octets', 0)}")
        if "content_length" in case:
            if cls != [str(case["content_length"])]:
                problem(name, f"Content-Length {cls} != {case['content_length']}")
            if case["content_length"] != blen:
                problem(name, "content_length != body_length")
        elif cls:
            problem(name, "the manifest misses content_length")

        # what a naive reader sees
        start = lines[0].decode("latin-1")
        if case["kind"] == "request":
            parts = start.split()
            if len(parts) != 3 or parts[2] != "SIP/2.0":
                problem(name, f"odd request line {start!r}")
            elif (parts[0], parts[1]) != (case.get("method"), case.get("request_uri")):
                problem(name, "method/request_uri differ from the request line")
        else:
            m = re.match(r"SIP/2\.0 (\d{3}) (.*)$", start, re.S)
            if not m or int(m.group(1)) != case.get("status_code"):
                problem(name, "status_code differs from the status line")
            elif m.group(2).encode("latin-1") != case.get("reason", "").encode("utf-8"):
                problem(name, "reason differs from the status line")
        if values.get("call-id") != [case.get("call_id")]:
            problem(name, f"Call-ID {values.get('call-id')} != {case.get('call_id')!r}")
        cseq = values.get("cseq", [""])[0].split()
        if len(cseq) != 2 or int(cseq[0]) != case.get("cseq_num") or cseq[1] != case.get("cseq_method"):
            problem(name, f"CSeq {cseq} != {case.get('cseq_num')} {case.get('cseq_method')}")
        mf = values.get("max-forwards")
        if ("max_forwards" in case) != bool(mf) or (mf and int(mf[0]) != case["max_forwards"]):
            problem(name, f"Max-Forwards {mf} != {case.get('max_forwards')}")
        vias = sum(len(split_commas(v)) for v in values.get("via", []))
        if vias != case.get("via_count"):
            problem(name, f"{vias} Via values, manifest says {case.get('via_count')}")
        contacts = sum(len(split_commas(v)) for v in values.get("contact", []))
        if "contact_count" in case and contacts != case["contact_count"]:
            problem(name, f"{contacts} Contact values, manifest says {case['contact_count']}")
        if "contact_uris" in case and contacts != len(case["contact_uris"]):
            problem(name, f"{contacts} Contact values, manifest lists {len(case['contact_uris'])}")
        if "body_sha256" in case and hashlib.sha256(body[:blen]).hexdigest() != case["body_sha256"]:
            problem(name, "body_sha256 differs")


def main():
    with open(os.path.join(HERE, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    built = build.build()
    for path, data in built.items():
        with open(os.path.join(HERE, path), "rb") as f:
            if f.read() != data:
                problem(path, "differs from what build_fixtures.py makes of the RFC text (run it)")
    files = {case["file"]: name for name, case in manifest.items()}
    if len(files) != len(manifest):
        problem("manifest", "two cases share a file")
    for path in sorted(set(built) ^ set(files)):
        problem(path, "in the manifest but not built from the RFC text" if path in files else "not in the manifest")
    counts = {}
    for name, case in manifest.items():
        path = os.path.join(HERE, case["file"])
        if not os.path.exists(path):
            problem(name, "missing file")
            continue
        with open(path, "rb") as f:
            check_case(name, case, f.read())
        key = (case["rfc"][:4], case["parse"])
        counts[key] = counts.get(key, 0) + 1
    print(f"{len(manifest)} fixtures: " + ", ".join(f"RFC {r} {p}: {n}" for (r, p), n in sorted(counts.items())))
    for p in PROBLEMS:
        print("PROBLEM", p)
    print("ok" if not PROBLEMS else f"{len(PROBLEMS)} problems")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
