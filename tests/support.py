"""Test helpers: an in-memory worker context, and a real `ftsip serve` process on an ephemeral port."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ftsip.ops.stats import Registry
from ftsip.timers import TimerWheel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


class FakeCtx:
    """A worker context that records what the core sends."""

    def __init__(self, now=1000.0, wid=0, host="127.0.0.1", port=5060, registry=None):
        self.wid = wid
        self.host = host
        self.port = port
        self.sent = []
        self.wheel = TimerWheel(now, 0.01)
        self.stats = (registry or Registry()).new_worker(wid)
        self.sock = None
        self.state = None
        self.lag = 0.0

    def send(self, data, addr):
        self.sent.append((data, addr))

    def take(self):
        out, self.sent = self.sent, []
        return out


def have(tool):
    return shutil.which(tool) is not None


class ServerProcess:
    """`ftsip serve` in a subprocess on 127.0.0.1:<ephemeral>; ``port`` is read from its start-up log line."""

    def __init__(self, *args, env=None, host="127.0.0.1", timeout=20.0, cwd=None, python=None):
        e = dict(os.environ)
        e.update(env or {})
        e.setdefault("PYTHONUNBUFFERED", "1")
        hp = f"[{host}]:0" if ":" in host else f"{host}:0"
        listen = [] if "--listen" in args or "--config" in args else ["--listen", hp]
        self.cmd = [python or PYTHON, "-m", "ftsip.cli", "serve", *listen, *args]
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e,
                                     cwd=cwd or ROOT)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.host = host
        self.port = None
        pat = re.compile(r"listening on udp (\S+):(\d+)")
        if not self.wait_for(pat, timeout):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        self.port = int(pat.search(self.log()).group(2))

    def _read(self):
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern, timeout=10.0):
        """Wait until the log matches ``pattern`` (a regex or compiled pattern); returns the match or None."""
        pat = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = pat.search("".join(self.lines))
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    @property
    def addr(self):
        return (self.host, self.port)

    def log(self, wait=0.0):
        """Everything the server has logged so far (after waiting ``wait`` seconds)."""
        if wait:
            time.sleep(wait)
        with self._cond:
            return "".join(self.lines)

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=5.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2.0)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def udp_exchange(addr, data, timeout=2.0, expect=1):
    """Send one datagram from a fresh socket; return the datagrams received within ``timeout``."""
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr[0], 0))
    s.settimeout(timeout)
    s.sendto(data, addr)
    out = []
    try:
        while len(out) < expect:
            out.append(s.recvfrom(65535)[0])
    except socket.timeout:
        pass
    finally:
        s.close()
    return out


def options(addr, uri=None, branch="z9hG4bKprobe", extra=""):
    host, port = addr
    host = f"[{host}]" if ":" in host else host
    uri = uri or f"sip:{host}:{port}"
    return (f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:9;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=1\r\nTo: <{uri}>\r\n"
            f"Call-ID: probe-{branch}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def digest_header(challenge_value, user, password, method, uri, nc=1, cnonce="c0ffee", name="Authorization",
                  **override):
    """An Authorization/Proxy-Authorization header line answering one challenge value (a phone's answer)."""
    from auth.helpers import answer
    cred = answer(challenge_value, user, password, method=method, uri=uri, nc=nc, cnonce=cnonce, **override)
    parts = []
    for k, v in cred.params.items():
        parts.append(f"{k}={v}" if k in ("nc", "qop", "algorithm") else f'{k}="{v}"')
    return f"{name}: Digest " + ", ".join(parts)


class InMemoryUA:
    """Builds requests as a UA would, for driving the App without a network."""

    def __init__(self, user, domain="example.com", host="192.0.2.10", port=5062, password="secret"):
        self.user = user
        self.domain = domain
        self.host = host
        self.port = port
        self.password = password
        self.cseq = 0
        self.call_id = f"reg-{user}@{host}"
        self.n = 0

    @property
    def addr(self):
        return (self.host, self.port)

    def register(self, contact=None, expires=None, contact_params="", extra=(), to_user=None, cseq=None,
                 call_id=None, auth=None):
        self.n += 1
        self.cseq = cseq if cseq is not None else self.cseq + 1
        to_user = to_user or self.user
        lines = [f"REGISTER sip:{self.domain} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{self.user}{self.n}x;rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{self.domain}>;tag=f{self.user}",
                 f"To: <sip:{to_user}@{self.domain}>",
                 f"Call-ID: {call_id or self.call_id}",
                 f"CSeq: {self.cseq} REGISTER"]
        if contact != "none":
            c = contact or f"<sip:{self.user}@{self.host}:{self.port}>"
            lines.append(f"Contact: {c}{contact_params}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if auth:
            lines.append(auth)
        lines.extend(extra)
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def register_contact(server, user, password, domain, contact, expires=600, call_id=None, timeout=3.0,
                     full=False):
    """REGISTER ``contact`` for user@domain over UDP (no Contact at all when ``contact`` is None: a fetch),
    answering the 401 like a phone. Returns the final status (the final response when ``full``)."""
    from ftsip.sip import parse
    fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((server[0], 0))
    s.settimeout(timeout)
    port = s.getsockname()[1]
    call_id = call_id or f"reg-{user}-{port}"
    try:
        auth = None
        for cseq in (1, 2):
            lines = [f"REGISTER sip:{domain} SIP/2.0",
                     f"Via: SIP/2.0/UDP {server[0]}:{port};branch=z9hG4bKreg{port}{cseq};rport",
                     "Max-Forwards: 70", f"From: <sip:{user}@{domain}>;tag=r{port}", f"To: <sip:{user}@{domain}>",
                     f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER"]
            if contact is not None:
                lines += [f"Contact: {contact}", f"Expires: {expires}"]
            if auth:
                lines.append(auth)
            s.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), server)
            r = parse(s.recvfrom(65535)[0])
            if r.status != 401:
                return r if full else r.status
            ch = [v for v in r.get_all("www-authenticate") if "MD5" in v][0]
            auth = digest_header(ch, user, password, "REGISTER", f"sip:{domain}")
        return r if full else r.status
    finally:
        s.close()


def fetch_contacts(server, user, password, domain):
    """The contacts the registrar holds for user@domain ({uri: expires}), asked over SIP (REGISTER without
    Contact)."""
    r = register_contact(server, user, password, domain, None, full=True)
    assert r.status == 200, r.status
    return {c.uri.raw: c.expires for c in r.contacts}


def write_users(path, n, prefix="user", password="pw"):
    """A user file for `ftsip serve --users`: user0000..,pw0000.."""
    with open(path, "w") as f:
        f.write("username,password\n")
        for i in range(n):
            f.write(f"{prefix}{i:04d},{password}{i:04d}\n")
    return path


def sipp(scenario, target, *args, timeout=120, cwd=None, inf=None):
    """Run SIPp (client mode) with a scenario from perf/scenarios; returns (returncode, stdout+stderr)."""
    cmd = ["sipp", "-sf", os.path.join(ROOT, "perf", "scenarios", scenario), "-i", "127.0.0.1", "-nostdin",
           "-trace_err"]
    if inf:
        cmd += ["-inf", str(inf)]
    cmd += list(args) + [f"{target[0]}:{target[1]}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    text = out.stdout + out.stderr
    if cwd:
        for name in os.listdir(cwd):
            if name.endswith("_errors.log"):
                with open(os.path.join(cwd, name)) as f:
                    text += "\n--- " + name + "\n" + f.read()[-3000:]
    return out.returncode, text


def sipp_counts(text):
    """(successful, failed) calls from the cumulative column of SIPp's final statistics screen."""
    ok = failed = None
    for line in text.splitlines():
        if "Successful call" in line:
            ok = int(line.split("|")[-1].strip())
        elif "Failed call" in line:
            failed = int(line.split("|")[-1].strip())
    return ok, failed


class SippServer:
    """A SIPp UAS (server mode) on a fixed port, in the background."""

    def __init__(self, scenario, port, *args, cwd=None):
        self.port = port
        self.cwd = cwd
        cmd = ["sipp", "-sf", os.path.join(ROOT, "perf", "scenarios", scenario), "-i", "127.0.0.1", "-p",
               str(port), "-nostdin", "-trace_err", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
        time.sleep(0.3)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
