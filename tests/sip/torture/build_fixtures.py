"""Build the torture fixtures (``<folder>/<name>.sip``) from the RFC text in ``rfc4475-messages.txt`` and
``rfc5118-messages.txt``.

    python3 tests/sip/torture/build_fixtures.py          # (re)write the .sip files
    python3 tests/sip/torture/build_fixtures.py --check  # exit 1 if a .sip file differs from what the text gives

The text files hold the messages as the RFCs print them, with RFC 4475 section 2's conventions:

- ``<allOneLine>`` .. ``</allOneLine>``: the lines in between are one line, joined directly (no separator;
  whitespace at a fold point is at the start of the next line);
- ``<hex>`` .. ``</hex>``: raw octets given in hex (whitespace and line breaks inside are ignored);
- ``<repeat count=N>`` .. ``</repeat>``: N copies of the text in between.

Every line ends in CRLF on the wire (the RFC text has LF). For RFC 5118 only, the Content-Length of a message
with a body is set to the length of its CRLF body (see the header of rfc5118-messages.txt). Standard library
only; runs on any Python 3.8+.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("rfc4475-messages.txt", "rfc5118-messages.txt")

_HEX = re.compile(r"<hex>(.*?)</hex>", re.S)
_REPEAT = re.compile(r"<repeat count=(\d+)>(.*?)</repeat>", re.S)


def read_source(filename):
    """[(folder, name, text)] from one source file; ``text`` is the message as printed (LF line ends)."""
    out = []
    current = None
    with open(os.path.join(HERE, filename), encoding="ascii", newline="") as f:
        for line in f:
            if line.startswith("@@"):
                spec = line[2:].strip()
                current = None
                if re.fullmatch(r"[a-z0-9]+/[A-Za-z0-9.-]+", spec):
                    folder, name = spec.split("/")
                    current = [folder, name, []]
                    out.append(current)
                continue
            if current is None:
                raise ValueError(f"{filename}: text outside a message: {line!r}")
            current[2].append(line)
    return [(folder, name, "".join(lines)) for folder, name, lines in out]


def expand(text):
    """RFC-notation text (LF) -> wire bytes (CRLF)."""
    # 1. a <hex> block may span lines: drop the whitespace inside it first
    text = _HEX.sub(lambda m: "<hex>" + "".join(m.group(1).split()) + "</hex>", text)
    # 2. <allOneLine> blocks: join their lines directly
    lines = text.split("\n")
    joined = []
    block = None
    for line in lines:
        if line == "<allOneLine>":
            if block is not None:
                raise ValueError("nested <allOneLine>")
            block = []
        elif line == "</allOneLine>":
            joined.append("".join(block))
            block = None
        elif block is not None:
            block.append(line)
        else:
            joined.append(line)
    if block is not None:
        raise ValueError("unterminated <allOneLine>")
    text = "\n".join(joined)
    # 3. <repeat count=N>
    text = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
    if "<repeat" in text or "allOneLine>" in text:
        raise ValueError("stray marker")
    # 4. CRLF line ends, then the raw octets of the <hex> blocks
    text = text.replace("\n", "\r\n")
    out = bytearray()
    pos = 0
    for m in _HEX.finditer(text):
        out += text[pos:m.start()].encode("ascii")
        out += bytes.fromhex(m.group(1))
        pos = m.end()
    out += text[pos:].encode("ascii")
    return bytes(out)


def fix_content_length(data):
    """RFC 5118: Content-Length := length of the (CRLF) body, when there is a body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not body:
        return data
    new, n = re.subn(rb"(?m)^(Content-Length: *)\d+(?=\r?$)", lambda m: m.group(1) + str(len(body)).encode(),
                     head)
    if n != 1:
        raise ValueError("expected one Content-Length header")
    return new + sep + body


def build():
    """{relative path: bytes} for every fixture."""
    files = {}
    for source in SOURCES:
        for folder, name, text in read_source(source):
            data = expand(text)
            if source.startswith("rfc5118"):
                data = fix_content_length(data)
            path = f"{folder}/{name}.sip"
            if path in files:
                raise ValueError(f"duplicate {path}")
            files[path] = data
    return files


def main(argv):
    check = "--check" in argv
    bad = 0
    for path, data in sorted(build().items()):
        full = os.path.join(HERE, path)
        old = None
        if os.path.exists(full):
            with open(full, "rb") as f:
                old = f.read()
        if old == data:
            continue
        if check:
            print(f"differs: {path}")
            bad += 1
        else:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
            print(f"wrote {path} ({len(data)} octets)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
