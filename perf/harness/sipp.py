"""Running SIPp (Debian ``sip-tester``, 3.6.1) as a load generator and reading what it measured.

One :class:`SippRun` is one SIPp process: a scenario, a rate, a number of calls, many sockets (``-t un``), statistics
every second in a CSV (``-trace_stat -fd 1 -stf FILE``), unexpected messages in an error file, optionally every
response time (``-trace_rtt``). Its own CPU is read from /proc so a result can be flagged generator-bound.

What counts (all from SIPp's cumulative counters, differenced between two rows):
- ``created``: calls started (OutgoingCall); ``successful``/``failed``: calls that ended so (FailedCall includes
  timeouts on receive, exhausted retransmissions, unexpected messages, regexp checks that failed, ...);
- ``retransmissions``, ``out_of_call``/``dead_call`` messages, SIPp's watchdog counts (its own timing errors: the
  main loop was late, so the offered load was not what was asked);
- the response-time histogram (ResponseTimeRepartition, milliseconds: SIPp's clock has 1 ms resolution).
"""
from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from . import procfs
from .sut import taskset_prefix

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = os.path.join(os.path.dirname(HERE), "scenarios")     # perf/scenarios


_RECEIVED = re.compile(r"received '(SIP/2\.0 \d{3}[^\r\n']*|[A-Z]+ [^ \r\n']+ SIP/2\.0)")

_CSEQ = re.compile(r"(?im)^CSeq:\s*([^\r\n]*)")


class SippError(RuntimeError):
    pass


def sipp_binary():
    path = shutil.which("sipp")
    if path is None:
        raise SippError("sipp is not installed: apt-get install -y sip-tester")
    return path


def sipp_version():
    try:
        out = subprocess.run([sipp_binary(), "-v"], capture_output=True, text=True, timeout=10)
    except (SippError, OSError, subprocess.TimeoutExpired):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "SIPp v" in line:
            return line.strip()
    return None


@dataclass
class SippConfig:
    scenario: str
    host: str
    port: int
    rate: float
    calls: int
    injection: str | None = None
    transport: str = "un"          # one socket per call, up to max_socket: many source ports for SO_REUSEPORT
    max_socket: int = 100
    recv_timeout_ms: int = 10000
    call_limit: int | None = None  # -l; default: 5 s worth of calls, at least 1000
    local_ip: str = "127.0.0.1"
    trace_rtt: bool = False
    cpus: str | None = None        # taskset -c LIST
    extra: list = field(default_factory=list)
    kind: str = "call"             # what this generator offers (register, completed, voicemail, cancelled, ...)
    tx_per_call: float = 1.0       # SIP transactions one of its calls makes (for per-transaction numbers)
    # Call-IDs unique to this run: SIPp matches answers to calls by Call-ID only, and its default "N-PID@ip"
    # repeats across runs (PIDs recycle), so a late answer meant for another test on this shared loopback could
    # otherwise abort one of our calls as "unexpected".
    call_id_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def argv(self, stat_file, error_file, screen_file):
        limit = self.call_limit or max(1000, int(self.rate * 5))
        if self.calls <= 0 or self.rate <= 0:
            raise ValueError(f"generator {self.kind}: nothing to send (rate {self.rate}, calls {self.calls})")
        rate = f"{self.rate:g}"
        a = [sipp_binary(), f"{self.host}:{self.port}", "-sf", self.scenario,
             "-r", rate, "-rp", "1000", "-m", str(self.calls), "-l", str(limit),
             "-t", self.transport, "-max_socket", str(self.max_socket),
             "-i", self.local_ip, "-p", "0", "-nostdin", "-cid_str", f"%u-%p-{self.call_id_tag}@%s",
             "-recv_timeout", str(self.recv_timeout_ms),
             "-trace_stat", "-fd", "1", "-stf", stat_file,
             "-trace_err", "-error_file", error_file,
             "-trace_screen", "-screen_file", screen_file]
        if self.injection:
            a += ["-inf", self.injection]
        if self.trace_rtt:
            a += ["-trace_rtt", "-rtt_freq", "1000"]
        return taskset_prefix(self.cpus) + a + list(self.extra)


def _epoch(field_value):
    """SIPp time fields look like 'YYYY-MM-DD<TAB>HH:MM:SS.ffffff<TAB>EPOCH.ffffff'."""
    return float(field_value.split("\t")[-1])


def _duration(v):
    """'HH:MM:SS:uuuuuu' -> seconds."""
    try:
        h, m, s, us = v.split(":")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(us) / 1e6
    except ValueError:
        return None


FAIL_KINDS = ("FailedCannotSendMessage", "FailedMaxUDPRetrans", "FailedUnexpectedMessage", "FailedCallRejected",
              "FailedCmdNotSent", "FailedRegexpDoesntMatch", "FailedRegexpShouldntMatch", "FailedRegexpHdrNotFound",
              "FailedOutboundCongestion", "FailedTimeoutOnRecv", "FailedTimeoutOnSend", "FailedTestDoesntMatch",
              "FailedTestShouldntMatch", "FailedStrcmpDoesntMatch", "FailedStrcmpShouldntMatch")


class StatRow:
    """One line of SIPp's -trace_stat CSV."""

    def __init__(self, header, values):
        self.raw = dict(zip(header, values))
        self.t = _epoch(self.raw["CurrentTime"])
        self.buckets = [(h, values[i]) for i, h in enumerate(header) if h.startswith("ResponseTimeRepartition1_")]

    def c(self, name):
        """A cumulative counter (column 'name(C)')."""
        v = self.raw.get(f"{name}(C)", "0")
        return int(v) if v.strip().lstrip("-").isdigit() else 0

    def p(self, name):
        v = self.raw.get(f"{name}(P)", "0")
        try:
            return float(v)
        except ValueError:
            return 0.0

    def histogram(self):
        """[(upper_bound_ms or None for the open bucket, cumulative count)]."""
        out = []
        for h, v in self.buckets:
            b = h.split("_", 1)[1]
            bound = None if b.startswith(">=") else float(b.lstrip("<"))
            out.append((bound, int(v or 0)))
        return out

    @property
    def current_calls(self):
        return int(self.raw.get("CurrentCall", "0") or 0)


def read_stats(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if not rows:
        return []
    header = rows[0]
    out = []
    for r in rows[1:]:
        if len(r) < len(header) - 1:
            continue          # a line being written
        try:
            out.append(StatRow(header, r + [""] * (len(header) - len(r))))
        except (KeyError, ValueError):
            continue
    return out


def percentiles_from_histogram(hist, qs=(50, 90, 99, 99.9)):
    """Upper bounds (ms) of the histogram buckets holding the given percentiles; None for the open bucket."""
    total = sum(c for _, c in hist)
    out = {}
    for q in qs:
        if total == 0:
            out[f"p{q:g}"] = None
            continue
        need, acc = total * q / 100.0, 0
        val = None
        for bound, c in hist:
            acc += c
            if acc >= need:
                val = bound if bound is not None else float("inf")
                break
        out[f"p{q:g}"] = val
    return out


@dataclass
class Window:
    """Counters of one SIPp run between two instants (from the rows nearest to them)."""
    seconds: float = 0.0
    created: int = 0
    successful: int = 0
    failed: int = 0
    failures: dict = field(default_factory=dict)
    retransmissions: int = 0
    out_of_call: int = 0
    dead_call: int = 0
    watchdog_major: int = 0
    watchdog_minor: int = 0
    warnings: int = 0
    fatal: int = 0
    histogram: list = field(default_factory=list)
    mean_response_s: float | None = None
    in_flight_start: int = 0
    in_flight_end: int = 0


def window(rows, t_start, t_end=None):
    """Counts from the row nearest ``t_start`` to the row nearest ``t_end`` (creation) and to the last row
    (outcomes: calls created in the window may end after it)."""
    if not rows:
        return Window()
    a = min(rows, key=lambda r: abs(r.t - t_start))
    b = rows[-1] if t_end is None else min(rows, key=lambda r: abs(r.t - t_end))
    last = rows[-1]
    w = Window()
    w.seconds = max(0.0, b.t - a.t)
    w.created = b.c("OutgoingCall") - a.c("OutgoingCall")
    w.in_flight_start, w.in_flight_end = a.current_calls, b.current_calls
    w.successful = last.c("SuccessfulCall") - a.c("SuccessfulCall")
    w.failed = last.c("FailedCall") - a.c("FailedCall")
    w.failures = {k: last.c(k) - a.c(k) for k in FAIL_KINDS if last.c(k) - a.c(k)}
    w.retransmissions = last.c("Retransmissions") - a.c("Retransmissions")
    w.out_of_call = last.c("OutOfCallMsgs") - a.c("OutOfCallMsgs")
    w.dead_call = last.c("DeadCallMsgs") - a.c("DeadCallMsgs")
    w.watchdog_major = last.c("WatchdogMajor") - a.c("WatchdogMajor")
    w.watchdog_minor = last.c("WatchdogMinor") - a.c("WatchdogMinor")
    w.warnings = last.c("Warnings") - a.c("Warnings")
    w.fatal = last.c("FatalErrors") - a.c("FatalErrors")
    ha, hb = a.histogram(), last.histogram()
    if ha and hb and len(ha) == len(hb):
        w.histogram = [(bound, cb - ca) for (bound, ca), (_, cb) in zip(ha, hb)]
    # mean response time over the window, from the periodic means weighted by successful calls
    num = den = 0.0
    for r in rows:
        if a.t < r.t:
            m = _duration(r.raw.get("ResponseTime1(P)", ""))
            n = r.p("SuccessfulCall")
            if m is not None and n:
                num += m * n
                den += n
    w.mean_response_s = num / den if den else None
    return w


def merge_windows(ws):
    out = Window()
    for w in ws:
        out.seconds = max(out.seconds, w.seconds)
        for k in ("created", "successful", "failed", "retransmissions", "out_of_call", "dead_call",
                  "watchdog_major", "watchdog_minor", "warnings", "fatal", "in_flight_start", "in_flight_end"):
            setattr(out, k, getattr(out, k) + getattr(w, k))
        for k, v in w.failures.items():
            out.failures[k] = out.failures.get(k, 0) + v
        if w.histogram:
            if not out.histogram:
                out.histogram = list(w.histogram)
            else:
                out.histogram = [(b, c1 + c2) for (b, c1), (_, c2) in zip(out.histogram, w.histogram)]
    means = [(w.mean_response_s, w.successful) for w in ws if w.mean_response_s is not None and w.successful]
    if means:
        out.mean_response_s = sum(m * n for m, n in means) / sum(n for _, n in means)
    return out


class SippRun:
    """One SIPp process. ``start()``, then ``rows()`` while it runs, ``wait()``, ``stop()``."""

    def __init__(self, cfg: SippConfig, workdir: str, name: str = "sipp"):
        self.cfg, self.workdir, self.name = cfg, workdir, name
        os.makedirs(workdir, exist_ok=True)
        self.stat_file = os.path.join(workdir, f"{name}_stat.csv")
        self.error_file = os.path.join(workdir, f"{name}_errors.log")
        self.screen_file = os.path.join(workdir, f"{name}_screen.log")
        self.proc = None
        self.started = None

    def start(self):
        argv = self.cfg.argv(self.stat_file, self.error_file, self.screen_file)
        self.argv = argv
        self._out = open(os.path.join(self.workdir, f"{self.name}.out"), "wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.workdir, start_new_session=True)
        self.started = time.monotonic()
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self):
        c = procfs.proc_cpu_seconds(self.proc.pid) if self.proc else None
        if c is not None:
            self._last_cpu = c
        return c if c is not None else getattr(self, "_last_cpu", None)

    def rows(self):
        return read_stats(self.stat_file)

    def wait(self, timeout):
        """Wait for SIPp to finish; past ``timeout`` ask it to stop (SIGUSR1 = quit after calls end), then kill."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.proc.send_signal(signal.SIGUSR1)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "_out", None):
            self._out.close()

    def output_tail(self, n=2000):
        try:
            with open(os.path.join(self.workdir, f"{self.name}.out"), "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace")
        except OSError:
            return ""

    def unexpected_codes(self, limit_bytes=20_000_000):
        """{first line of each unexpected message (+ its CSeq): count}, from the error file. A 401 to CSeq 1 while
        SIPp waits for the 200 is a late answer to a retransmitted first REGISTER (the server was slower than
        T1 = 500 ms); a 401 to CSeq 2 means the credentials were refused."""
        out = {}
        try:
            with open(self.error_file, errors="replace") as f:
                text = f.read(limit_bytes)
        except OSError:
            return out
        for m in _RECEIVED.finditer(text):
            key = m.group(1).strip()[:60]
            c = _CSEQ.search(text, m.end(), m.end() + 2000)
            if c:
                key += f" (CSeq {c.group(1).strip()})"
            out[key] = out.get(key, 0) + 1
        return out

    def rtt_values_ms(self):
        """Per-call response times (ms, warm-up included) from -trace_rtt, if enabled."""
        files = glob.glob(os.path.join(self.workdir, "*_rtt.csv"))
        vals = []
        for path in files:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.strip().split(";")
                    if len(parts) >= 2:
                        try:
                            vals.append(float(parts[1]))
                        except ValueError:
                            pass
        return vals


@dataclass
class PeerConfig:
    """A SIPp UAS (server mode) on a fixed port: a callee class or the voicemail server. ``pause_ms`` is ``-d``."""
    scenario: str
    port: int
    kind: str = "peer"
    local_ip: str = "127.0.0.1"
    pause_ms: int | None = None
    cpus: str | None = None
    extra: list = field(default_factory=list)

    def argv(self, stat_file, error_file, screen_file):
        a = [sipp_binary(), "-sf", self.scenario, "-i", self.local_ip, "-p", str(self.port), "-t", "u1", "-nostdin",
             "-trace_stat", "-fd", "1", "-stf", stat_file, "-trace_err", "-error_file", error_file,
             "-trace_screen", "-screen_file", screen_file]
        if self.pause_ms is not None:
            a += ["-d", str(int(self.pause_ms))]
        return taskset_prefix(self.cpus) + a + list(self.extra)


class SippPeer(SippRun):
    """A background SIPp UAS; same statistics as a generator (IncomingCall instead of OutgoingCall)."""

    def __init__(self, cfg: PeerConfig, workdir: str, name: str):
        super().__init__(cfg, workdir, name)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_out", None):
            self._out.close()


def peer_window(rows, t_start, t_end):
    """(successful, failed, failures by kind) of a UAS between two instants (calls that ended in between)."""
    if not rows:
        return 0, 0, {}
    a = min(rows, key=lambda r: abs(r.t - t_start))
    b = min(rows, key=lambda r: abs(r.t - t_end))
    fails = {k: b.c(k) - a.c(k) for k in FAIL_KINDS if b.c(k) - a.c(k)}
    return (b.c("SuccessfulCall") - a.c("SuccessfulCall"), b.c("FailedCall") - a.c("FailedCall"), fails)


# --- scenario variants: per-call random pauses (SIPp's <sample> action; needs a SIPp built with GSL) -------------

_GSL_CHECKED = {}


def sipp_has_gsl():
    """True when this SIPp draws samples from non-uniform distributions (built with GSL, as Debian's 3.6.1 is)."""
    path = sipp_binary()
    if path not in _GSL_CHECKED:
        try:
            out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=10).stdout
            _GSL_CHECKED[path] = "libgsl" in out
        except (OSError, subprocess.TimeoutExpired):
            _GSL_CHECKED[path] = False
    return _GSL_CHECKED[path]


def sampled_pause_xml(var, distribution, cap_ms=None, **params):
    """SIPp actions drawing ``var`` (ms) per call from a distribution, capped at ``cap_ms``, then pausing that long.
    ``distribution``: 'lognormal' (mean/stdev of ln(ms)), 'exponential' (mean ms), 'uniform' (min/max ms)."""
    attrs = " ".join(f'{k}="{v:.6g}"' if isinstance(v, float) else f'{k}="{v}"' for k, v in params.items())
    out = [f'  <nop><action><sample assign_to="{var}" distribution="{distribution}" {attrs}/>']
    if cap_ms is not None:
        out[0] += f'<test assign_to="{var}_cap" variable="{var}" compare="greater_than" value="{int(cap_ms)}"/>'
    out[0] += "</action></nop>"
    if cap_ms is not None:
        out.append(f'  <nop condexec="{var}_cap"><action><assign assign_to="{var}" value="{int(cap_ms)}"/>'
                   "</action></nop>")
    out.append(f'  <pause variable="{var}"/>')
    return "\n".join(out)


def scenario_variant(src, dst, pause_xml=None, replace=None):
    """Copy a scenario from perf/scenarios, replacing its bare ``<pause/>`` (the -d pause) by ``pause_xml``."""
    with open(src if os.path.isabs(src) else os.path.join(SCENARIOS, src)) as f:
        text = f.read()
    if pause_xml is not None:
        if text.count("<pause/>") != 1:
            raise ValueError(f"{src}: expected exactly one <pause/> to replace")
        text = text.replace("<pause/>", pause_xml.strip(), 1)
    for a, b in (replace or {}).items():
        text = text.replace(a, b)
    with open(dst, "w") as f:
        f.write(text)
    return dst
