"""Systems under test: start, wait until they answer SIP, measure their CPU and memory, stop.

- :class:`FtsipSUT`: ``python -m ftsip.cli serve`` from the repository, thread mode or process mode, any interpreter
  (``.venv/bin/python`` = 3.13t, ``.venv-gil/bin/python`` = a GIL build).
- :class:`KamailioSUT`: Kamailio with perf/kamailio/kamailio.cfg.
- :class:`ExternalSUT`: any SIP server on host:port; nothing is started and no CPU is measured.

CPU is ``utime + stime`` of the whole process tree (all threads, all forked children) from /proc, memory the tree's
PSS and RSS; a background sampler keeps a time series (t, cpu seconds, pss, rss) for plots.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

from . import procfs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KAMAILIO_CFG = os.path.join(ROOT, "perf", "kamailio", "kamailio.cfg")


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def toml_text(settings):
    """{"section": {"key": value}} -> TOML text (strings, numbers, booleans, lists)."""
    out = []
    for section, keys in settings.items():
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


class SUTError(RuntimeError):
    """The system under test could not be started or died; the message says why and what to do."""


def free_udp_port(host="127.0.0.1"):
    """A UDP port nobody is bound to right now (racy by nature; good enough on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sip_ping(host, port, timeout=1.0):
    """Send OPTIONS, return the status line of the answer (any status counts as alive) or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lp = s.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{tag};rport\r\n"
               f"From: <sip:harness@127.0.0.1:{lp}>;tag={tag}\r\nTo: <sip:{host}:{port}>\r\n"
               f"Call-ID: {tag}@harness\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        s.settimeout(timeout)
        try:
            s.sendto(msg.encode(), (host, port))
            while True:
                data = s.recv(65535)
                line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                if line.startswith("SIP/2.0") and " 100 " not in line:
                    return line
        except (socket.timeout, OSError):
            return None


def taskset_prefix(cpus):
    if not cpus:
        return []
    if shutil.which("taskset") is None:
        raise SUTError("CPU pinning asked for but `taskset` is missing (Debian package util-linux)")
    return ["taskset", "-c", cpus]


class _Sampler(threading.Thread):
    def __init__(self, sut, interval):
        super().__init__(name=f"sampler-{sut.label}", daemon=True)
        self.sut, self.interval = sut, interval
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(self.interval):
            self.sut.sample()


class SUT:
    """Base: a subprocess (or nothing, for ExternalSUT) on ``host:port``."""

    kind = "sut"
    measures_cpu = True

    def __init__(self, label=None, host="127.0.0.1", port=None, cpus=None, sample_interval=1.0):
        self.label = label or self.kind
        self.host = host
        self.port = port or free_udp_port(host)
        self.cpus = cpus
        self.proc = None
        self.series = []          # [(t_monotonic, cpu_seconds, pss_kb, rss_kb)]
        self.t0 = None
        self._pids = []
        self._log_lines = []
        self._sampler = None
        self._sample_interval = sample_interval
        self.workdir = None
        self.idle_cores = None

    # --- what subclasses provide
    def command(self):
        raise NotImplementedError

    def check_started(self):
        """Called once the server answers SIP; raise SUTError when it runs but not as asked."""

    def environment(self):
        """Extra environment variables for the server process."""
        return {}

    def describe(self):
        return {"kind": self.kind, "label": self.label, "host": self.host, "port": self.port, "cpus": self.cpus,
                "idle_cores": self.idle_cores}

    # --- life cycle
    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout=30.0):
        self.workdir = tempfile.mkdtemp(prefix=f"harness-{self.kind}-")
        cmd = taskset_prefix(self.cpus) + self.command()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.environment())
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                         start_new_session=True)
        except FileNotFoundError as e:
            raise SUTError(f"{self.label}: cannot run {cmd[0]!r}: {e.strerror}") from None
        self.cmd = cmd
        threading.Thread(target=self._read_log, name=f"log-{self.label}", daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise SUTError(f"{self.label} exited with status {self.proc.returncode} at start-up:\n" + tail)
            if sip_ping(self.host, self.port, 0.3):
                break
        else:
            tail = self.log_tail()
            self.stop()
            raise SUTError(f"{self.label} did not answer OPTIONS on {self.host}:{self.port} within {timeout:.0f}s:\n"
                           + tail)
        time.sleep(0.3)           # let every worker come up
        try:
            self.check_started()
        except SUTError:
            self.stop()
            raise
        self.refresh_pids()
        self.t0 = time.monotonic()
        self.sample()
        self._sampler = _Sampler(self, self._sample_interval)
        self._sampler.start()
        return self

    def _read_log(self):
        for raw in self.proc.stdout:
            self._log_lines.append(raw.decode(errors="replace"))
            if len(self._log_lines) > 2000:
                del self._log_lines[:1000]

    def log_tail(self, n=40):
        time.sleep(0.1)
        return "".join(self._log_lines[-n:])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def refresh_pids(self):
        if self.proc is not None:
            self._pids = procfs.tree(self.proc.pid)

    def stop(self, timeout=10.0):
        if self._sampler is not None:
            self._sampler.halt.set()
        if self.proc is None:
            return None
        pids = procfs.tree(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in pids[1:]:            # children that outlived the main process (by pid, never by name)
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- measurements
    def cpu_seconds(self):
        """CPU seconds used so far by the whole tree (None when not measured)."""
        if not self.measures_cpu or self.proc is None:
            return None
        return procfs.tree_cpu_seconds(self._pids)

    def memory(self):
        if not self.measures_cpu or self.proc is None:
            return None
        return procfs.tree_memory_kb(self._pids)

    def measure_idle(self, seconds=2.0):
        """CPU the server uses with no load (cores), over ``seconds``: timer ticks, housekeeping."""
        if not self.measures_cpu or self.proc is None:
            return None
        a, t = self.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        self.idle_cores = round((self.cpu_seconds() - a) / (time.monotonic() - t), 4)
        return self.idle_cores

    def sample(self):
        if not self.measures_cpu or self.proc is None:
            return
        cpu = self.cpu_seconds()
        mem = self.memory() or {}
        self.series.append((time.monotonic(), cpu, mem.get("pss_kb"), mem.get("rss_kb")))


class FtsipSUT(SUT):
    """ftsip from this repository: ``python -m ftsip.cli serve --listen 127.0.0.1:PORT --domain D --users CSV``."""

    kind = "ftsip"

    def __init__(self, users_csv, mode="threads", threads=1, python=".venv/bin/python", domain="example.com",
                 extra_args=(), qop=True, config=None, label=None, settings=None, python_args=(), env=None,
                 launcher=(), **kw):
        if mode not in ("threads", "processes"):
            raise ValueError("mode must be 'threads' or 'processes'")
        self.mode, self.threads, self.domain = mode, threads, domain
        self.python = python if os.path.isabs(python) else os.path.join(ROOT, python)
        self.users_csv, self.extra_args, self.qop, self.config = users_csv, list(extra_args), qop, config
        # settings: {"section": {"key": value}} written into a generated ftsip.toml (location table, gc, auth
        # store, [proxy] voicemail, [security] overload_lag, ...); python_args: e.g. ["-X", "perf"]; launcher: a
        # command prefix (a profiler)
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        if not qop:
            self.settings.setdefault("auth", {})["qop"] = False
        self.python_args, self.extra_env, self.launcher = list(python_args), dict(env or {}), list(launcher)
        if not os.path.exists(self.python):
            hint = " (create it with scripts/bootstrap --gil)" if "gil" in python else ""
            raise SUTError(f"no interpreter at {self.python}{hint}")
        self.interpreter = self._interpreter_info()
        self.max_cores = min(threads, procfs.ncpus())
        label = label or f"ftsip-{'t' if mode == 'threads' else 'p'}{threads}" + (
            "-gil" if self.interpreter.get("gil_enabled") else "")
        super().__init__(label=label, **kw)

    def _interpreter_info(self):
        code = ("import json, sys, sysconfig; print(json.dumps({'version': sys.version, 'executable': sys.executable,"
                " 'free_threaded_build': bool(sysconfig.get_config_var('Py_GIL_DISABLED')),"
                " 'gil_enabled': getattr(sys, '_is_gil_enabled', lambda: True)()}))")
        try:
            out = subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
            return json.loads(out.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            return {"executable": self.python, "error": str(e)}

    def command(self):
        cmd = self.launcher + [self.python, *self.python_args, "-m", "ftsip.cli", "serve",
                               "--listen", f"{self.host}:{self.port}",
                               "--domain", self.domain, "--users", os.path.abspath(self.users_csv)]
        config = self.config
        if config is None and self.settings:
            config = os.path.join(self.workdir, "ftsip-harness.toml")
            with open(config, "w") as f:
                f.write(toml_text(self.settings))
        if config:
            cmd += ["--config", config]
        if self.mode == "threads":
            cmd += ["--threads", str(self.threads)]
        else:
            cmd += ["--mode", "processes", "--workers", str(self.threads)]
        return cmd + self.extra_args

    def environment(self):
        return self.extra_env

    def check_started(self):
        if self.mode != "processes":
            return
        log = "".join(self._log_lines)
        children = procfs.descendants(self.proc.pid)
        if "worker thread(s)" in log or not children:
            said = next((ln.strip() for ln in self._log_lines if "listening" in ln), "nothing about workers")
            raise SUTError(
                f"ftsip was asked for --mode processes --workers {self.threads} but started no worker processes "
                f"({len(children)} children; its log says: {said!r}). The process mode (issue 5) is not "
                "implemented in this checkout: measure the threads mode, or land the process mode first.")

    def describe(self):
        d = super().describe()
        d.update(mode=self.mode, threads=self.threads, interpreter=self.interpreter, qop=self.qop,
                 settings=self.settings, users_file=os.path.basename(self.users_csv),
                 command=getattr(self, "cmd", None))
        return d


class KamailioSUT(SUT):
    """Kamailio with perf/kamailio/kamailio.cfg; credentials from a db_text directory (users.write_kamailio_db)."""

    kind = "kamailio"

    def __init__(self, cred_dir, children=2, hash_size=12, htable_size=16, cfg=KAMAILIO_CFG, shm_mb=256,
                 pkg_mb=128, qop=True, voicemail=None, domain="example.com", defines=(), binary="kamailio",
                 label=None, **kw):
        self.cred_dir = os.path.abspath(cred_dir)
        self.children, self.hash_size, self.htable_size = children, hash_size, htable_size
        self.cfg, self.shm_mb, self.pkg_mb, self.qop = cfg, shm_mb, pkg_mb, qop
        self.voicemail, self.domain, self.defines = voicemail, domain, list(defines)
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise SUTError("kamailio is not installed: apt-get install -y kamailio kamailio-extra-modules")
        self.version = subprocess.run([self.binary, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        self.max_cores = min(children, procfs.ncpus())
        super().__init__(label=label or f"kamailio-c{children}", **kw)

    def command(self):
        d = [f"LISTEN=udp:{self.host}:{self.port}", f"CHILDREN={self.children}", f"HASH_SIZE={self.hash_size}",
             f'CRED_DB="text://{self.cred_dir}"', f'DOMAIN="{self.domain}"',
             f'HT_CRED="cred=>size={self.htable_size};autoexpire=0;dbtable=cred;"']
        if not self.qop:
            d.append("NO_QOP")
        if self.voicemail:
            d.append(f'VOICEMAIL="{self.voicemail}"')
        d += self.defines
        cmd = [self.binary, "-f", self.cfg, "-DD", "-E", "-m", str(self.shm_mb), "-M", str(self.pkg_mb),
               "-Y", self.workdir]
        for x in d:
            cmd += ["-A", x]
        return cmd

    def describe(self):
        d = super().describe()
        d.update(children=self.children, hash_size=self.hash_size, htable_size=self.htable_size, qop=self.qop,
                 version=self.version, cfg=os.path.relpath(self.cfg, ROOT), shm_mb=self.shm_mb,
                 command=getattr(self, "cmd", None))
        return d


class ExternalSUT(SUT):
    """Any SIP server already running on host:port: nothing started, no CPU numbers."""

    kind = "external"
    measures_cpu = False

    def __init__(self, host, port, label=None, **kw):
        super().__init__(label=label or f"external-{host}:{port}", host=host, port=port, **kw)

    def start(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sip_ping(self.host, self.port, 0.5):
                self.t0 = time.monotonic()
                return self
        raise SUTError(f"nothing answers OPTIONS on {self.host}:{self.port}")

    def alive(self):
        return True

    def stop(self, timeout=0):
        return None

