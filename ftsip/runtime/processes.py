"""Process mode: OpenSER's architecture, kept as a working comparison (and multicore on GIL interpreters).

A supervisor creates a FIXED-SIZE shared-memory segment holding a fixed-width hash table of bindings (its size and
width are configuration the administrator must get right: `[location] shm_slots`, `shm_slot_size`, `hash_width`),
then starts N single-threaded worker processes running the same sans-I/O core as the thread mode.

Each worker owns two UDP sockets:
- a SO_REUSEPORT socket on the shared SIP address: new requests arrive here, spread by the kernel's 4-tuple hash,
  so everything one client socket sends (retransmissions, CANCEL, the ACK of a non-2xx) reaches the process that
  holds the INVITE's server transaction; responses to those requests leave from it;
- a socket on a port of its own, written into the Via of every request it forwards: the responses to those requests
  come back to the process that owns the client transaction.
Record-Route carries the shared address, so in-dialog requests (ACK for 2xx, BYE) may land on any worker: they are
new transactions. Transaction state never crosses processes; location state lives in the segment (per-bucket
robust cross-process locks); the user store is loaded by every process; nonces are stateless (one secret, handed
down by the supervisor), so any process verifies any nonce. Expiry: the supervisor runs the budgeted collector over
the segment (a resumable scan, `gc_budget` AORs a step, a step every millisecond while a pass is under way), or the full sweep when `gc = "sweep"`.

The supervisor restarts a worker that dies (and logs why), forwards SIGHUP, stops everything on SIGTERM/SIGINT and
removes the segment on exit (also when a worker was SIGKILLed). Only a SIGKILL of the supervisor itself can leave
the segment behind in /dev/shm (named ftsip-<supervisor pid>); the next supervisor to start removes every such
segment whose supervisor is gone (and logs it), so they never pile up.
"""
import logging
import multiprocessing
import os
import select
import signal
import socket
import time

from ftsip import config as config_mod
from ftsip.config import split_hostport
from ftsip.ops import log as oplog
from ftsip.ops.stats import Registry
from ftsip.runtime.sockets import udp_socket
from ftsip.runtime.worker import GC_TICK, Context, handle, next_tick, numeric_host, run_tick, smoothed_lag

log = logging.getLogger("ftsip")

RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0)


def segment_name():
    return f"ftsip-{os.getpid()}"


def reclaim_stale_segments():
    """Remove /dev/shm/ftsip-<pid> segments left by a supervisor that was SIGKILLed (no process <pid> any more).
    A segment whose pid is alive is left alone (another ftsip, or a reused pid: conservative). Returns the names."""
    from ftsip.location.shm import SHM_DIR, unlink_segment
    gone = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return gone
    for name in names:
        pid = name[6:] if name.startswith("ftsip-") else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                     # alive (or not ours to signal): keep
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if unlink_segment(name):
            log.warning("removed the shared-memory segment %s left by a supervisor that was killed (pid %s)",
                        name, pid)
            gone.append(name)
    return gone


def create_segment(cfg, name):
    from ftsip.location.shm import ShmTable
    loc = cfg.location
    return ShmTable.create(name, loc.hash_width, loc.shm_slots, loc.shm_slot_size)


def shm_location(table, gc):
    from ftsip.location.service import LocationService
    from ftsip.location.shm import ShmLocationTable
    return LocationService(ShmLocationTable(table), gc=gc)


class ProcContext(Context):
    """A worker context with two sockets: responses leave from the shared one, forwarded requests from the private
    one (whose port is in our Via)."""

    __slots__ = ("_send_private",)

    def __init__(self, wid, shared, private, stats, host, port, now, tick):
        Context.__init__(self, wid, shared, stats, host, port, now, tick)
        self._send_private = private.sendto

    def send(self, data, addr):
        if not numeric_host(addr[0]):     # no DNS in workers (see worker.Context.send)
            self.stats.inc("drops.unresolved_destination")
            return
        try:
            if data[:4] == b"SIP/":
                self._sendto(data, addr)
            else:
                self._send_private(data, addr)
        except OSError as e:
            self.stats.inc("drops.send_error")
            oplog.event(logging.WARNING, "send-error", "send to %s failed: %s", addr, e)


def run_sockets(app, ctx, socks, keep_running, tick):
    """The single-threaded worker loop over several non-blocking sockets. ``ctx.lag`` is measured as in
    ``worker.run``: one datagram in 16 is read with ``recvmsg`` for its kernel arrival time (SO_TIMESTAMPNS),
    lag = now - arrival, smoothed (EWMA 1/4); a poll that times out (every queue empty) sets it to 0."""
    import errno
    poller = select.poll()
    by_fd = {}
    sample_mask = 15
    for s in socks:
        s.setblocking(False)
        poller.register(s.fileno(), select.POLLIN)
        by_fd[s.fileno()] = (s.recvfrom, s.recvmsg)
        try:
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMPNS", 35), 1)
        except (OSError, AttributeError):
            sample_mask = -1       # no kernel timestamps: never sample
    n = 0
    lag = 0.0
    on_datagram = app.on_datagram
    stats = ctx.stats
    due = 0.0
    wait_ms = int(tick * 1000) or 1
    clock = time.time
    perf = time.perf_counter
    while keep_running():
        try:
            events = poller.poll(wait_ms)
        except InterruptedError:
            continue
        if not events and lag:
            ctx.lag = lag = 0.0
        t0 = perf()
        for fd, _ in events:
            recv, recvmsg = by_fd[fd]
            for _ in range(64):
                n += 1
                try:
                    if n & sample_mask:
                        data, addr = recv(65535)
                        anc = None
                    else:
                        data, anc, _, addr = recvmsg(65535, 64)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno not in (errno.ECONNREFUSED, errno.EINTR):
                        stats.inc("errors.recv")
                    break
                stats.datagrams += 1
                now = clock()
                if anc:
                    ctx.lag = lag = smoothed_lag(lag, anc, now)
                handle(on_datagram, data, addr, now, ctx)
        now = clock()
        if now >= due:
            behind = run_tick(app.on_tick, now, ctx)
            due = next_tick(now, tick, behind)
            wait_ms = max(1, int((due - now) * 1000))
        stats.busy += perf() - t0


def start_persistence(cfg, location):
    """A write-behind store for this process's changes to the segment, or None. Every process writes the same
    SQLite file (WAL); each flush reads the AOR's current record from the segment (``source``), so the order in
    which processes flush does not matter."""
    if not cfg.persistence.path:
        return None
    from ftsip.location import persist
    p = cfg.persistence
    store = persist.WriteBehind(p.path, p.flush_interval, p.max_pending, source=location.record).start()
    location.listeners.append(store)
    return store


def _die_with_parent(parent):
    """Ask the kernel for SIGTERM when the supervisor dies (even by SIGKILL): an orphaned worker would go on
    serving the shared port beside the next instance."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:      # it died before we asked
        raise SystemExit(0)


def worker_main(cfg_dict, wid, seg, secret, host, port, queue, path=None, overrides=None, parent=None):
    """Entry point of a worker process (spawned: it imports everything afresh)."""
    if parent is not None:
        _die_with_parent(parent)
    running = [True]
    cfg = config_mod.load(base=cfg_dict)
    oplog.setup(cfg.server.log_level, cfg.server.log_format)
    import threading
    threading.current_thread().name = f"worker-{wid}"
    signal.signal(signal.SIGTERM, lambda *a: running.__setitem__(0, False))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from ftsip.app import App
        from ftsip.location.shm import ShmTable
        from ftsip.runtime.serve import load_users
        table = ShmTable.attach(seg)
        from ftsip.ops.guard import Guard
        app = App(cfg, users=load_users(cfg, quiet=wid != 0), location=shm_location(table, "none"),
                  secret=secret, guard=Guard(cfg))
        from ftsip.runtime.reload import reload
        signal.signal(signal.SIGHUP, lambda *a: reload(app, path, overrides or {}))
        shared, _ = udp_socket(host, port, rcvbuf=cfg.server.rcvbuf, sndbuf=cfg.server.sndbuf)
        private, _ = udp_socket(host, 0, reuseport=False, rcvbuf=cfg.server.rcvbuf, sndbuf=cfg.server.sndbuf)
    except Exception as e:
        queue.put(("error", wid, f"{type(e).__name__}: {e}"))
        raise SystemExit(2)
    private_port = private.getsockname()[1]
    app.bind(host, port)
    app.via_port = private_port
    now = time.time()
    registry = Registry()
    ctx = ProcContext(wid, shared, private, registry.new_worker(wid), host, port, now, cfg.server.tick)
    app.attach(ctx, now)
    store = start_persistence(cfg, app.location)
    from ftsip.ops import metrics, pygc
    pygc.monitor()                       # GC pauses logged and counted in this process
    snapshots = metrics.start_worker_snapshots(cfg, registry, wid, app, seg)   # None when metrics are off
    queue.put(("ready", wid, os.getpid()))
    run_sockets(app, ctx, (shared, private), lambda: running[0], cfg.server.tick)
    if snapshots is not None:
        snapshots.stop()
    if store is not None:
        store.stop()
    table.close()


class Supervisor:
    def __init__(self, cfg, path=None, overrides=None):
        self.cfg = cfg
        self.metrics = None
        self.path = path                 # the config file and command-line overrides, for SIGHUP reloads
        self.overrides = overrides or {}
        self.mp = multiprocessing.get_context("spawn")
        self.queue = self.mp.Queue()
        self.procs = {}          # wid -> Process
        self.restarts = {}       # wid -> count
        self.seg = segment_name()
        self.table = None
        self.secret = cfg.auth.secret.encode() if cfg.auth.secret else os.urandom(32)

    def spawn(self, wid):
        p = self.mp.Process(target=worker_main, name=f"ftsip-worker-{wid}",
                            args=(self.cfg_dict, wid, self.seg, self.secret, self.host, self.port, self.queue,
                                  self.path, self.overrides, os.getpid()))
        p.start()
        self.procs[wid] = p
        return p

    def run(self, signals):
        cfg = self.cfg
        host, port = split_hostport(cfg.server.listen[0], 5060)
        if port == 0:             # an ephemeral port for all workers: ask the kernel for one first
            probe, _ = udp_socket(host, 0, reuseport=False)
            port = probe.getsockname()[1]
            probe.close()
        self.host, self.port = host, port
        n = cfg.server.workers or len(os.sched_getaffinity(0))
        self.cfg_dict = cfg.as_dict()
        reclaim_stale_segments()
        try:
            self.table = create_segment(cfg, self.seg)
        except Exception as e:
            log.error("cannot create the shared-memory segment %s: %s", self.seg, e)
            return 2
        try:
            return self._serve(signals, n)
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            self._stop_all()
            from ftsip.location.shm import ShmTable
            try:
                self.table.close()
            finally:
                ShmTable.unlink(self.seg)
                log.info("removed the shared-memory segment %s", self.seg)

    def _serve(self, signals, n):
        cfg = self.cfg
        location = shm_location(self.table, "scan" if cfg.location.gc == "incremental" else "sweep")
        if cfg.persistence.path:
            from ftsip.location import persist
            records, info = persist.load(cfg.persistence.path, time.time())
            for rec in records:
                location.table.put(rec.aor, rec)
            log.info("persistence: %d AORs restored into the segment from %s", info["records"],
                     cfg.persistence.path)
        from ftsip.ops import metrics
        self.metrics = metrics.start_process_metrics(cfg, location, self.seg)   # before workers: see metrics.py
        for wid in range(n):
            self.spawn(wid)
        ready = 0
        deadline = time.monotonic() + 30
        while ready < n:
            try:
                kind, wid, detail = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                log.error("workers did not start within 30 s")
                return 1
            if kind == "error":
                log.error("worker %d could not start: %s", wid, detail)
                return 1
            log.info("worker %d ready (pid %d)", wid, detail)
            ready += 1
        log.info("listening on udp %s with %d worker process(es) (SO_REUSEPORT + a private port each), "
                 "shared-memory segment %s: %d buckets, %d slots of %d bytes", _fmt(self.host, self.port), n,
                 self.seg, cfg.location.hash_width, cfg.location.shm_slots, cfg.location.shm_slot_size)
        signals.on_reload = self._forward_hup
        st = location.local_state(time.time())
        store = start_persistence(cfg, location)      # the collector's removals
        tick = max(cfg.server.tick, 0.01)
        from multiprocessing.connection import wait
        while not signals.stop.is_set():
            sentinels = {p.sentinel: wid for wid, p in self.procs.items()}
            done = wait(list(sentinels), timeout=GC_TICK if st.behind else tick)
            for s in done:
                self._restart(sentinels[s])
            while not self.queue.empty():          # restarted workers report in
                try:
                    kind, wid, detail = self.queue.get_nowait()
                except Exception:
                    break
                if kind == "ready":
                    log.info("worker %d ready (pid %d)", wid, detail)
                else:
                    log.error("worker %d could not start: %s", wid, detail)
            location.tick(time.time(), st, 0)
        if store is not None:
            store.stop()
        return 0

    def _restart(self, wid):
        p = self.procs[wid]
        p.join(2.0)           # the sentinel closes just before the kernel makes the exit status available
        code = p.exitcode
        why = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else \
            f"exited with code {code}"
        count = self.restarts.get(wid, 0)
        self.restarts[wid] = count + 1
        delay = RESTART_BACKOFF[min(count, len(RESTART_BACKOFF) - 1)]
        log.warning("worker %d (pid %s) %s; restarting it%s", wid, p.pid, why,
                    f" in {delay:.1f}s" if delay else "")
        if delay:
            time.sleep(delay)
        self.spawn(wid)

    def _forward_hup(self):
        for p in self.procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    def _stop_all(self):
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 2.0
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)


def _fmt(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_processes(cfg, args=None):
    from ftsip.cli import Signals, overrides_from_args
    signals = Signals()
    path = getattr(args, "config", None)
    rc = Supervisor(cfg, path, overrides_from_args(args) if args is not None else {}).run(signals)
    log.info("stopped")
    return rc
