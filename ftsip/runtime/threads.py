"""Thread mode: one worker thread per core, each blocking on its own SO_REUSEPORT socket, all sharing the heap."""
import logging
import os
import socket
import threading
import time

from ftsip.config import split_hostport
from ftsip.runtime import worker
from ftsip.runtime.sockets import udp_socket

log = logging.getLogger("ftsip")


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class ThreadServer:
    def __init__(self, app, config, stats):
        self.app = app
        self.cfg = config
        self.stats = stats
        self.threads = []
        self.sockets = []
        self.running = False
        self.host = None
        self.port = None

    def start(self, before_start=None):
        """Bind the sockets; start the workers, each building its own copy of the core and its context; call
        ``before_start(contexts)`` once all are ready (it restores state before any datagram is handled); then
        let them run."""
        cfg = self.cfg.server
        host, port = split_hostport(cfg.listen[0], 5060)
        n = cfg.threads or default_threads()
        for _ in range(n):
            sock, granted = udp_socket(host, port, rcvbuf=cfg.rcvbuf, sndbuf=cfg.sndbuf, recv_timeout=cfg.tick)
            if port == 0:    # an ephemeral port: the other workers join the one the kernel gave the first
                port = sock.getsockname()[1]
            self.sockets.append(sock)
        self.host, self.port = host, port
        adv_host, adv_port = (split_hostport(cfg.advertise, port) if cfg.advertise else (host, port))
        self.app.bind(adv_host, adv_port)
        self.running = True
        contexts = [None] * n
        ready = threading.Barrier(n + 1)
        go = threading.Event()

        def work(i, sock):
            # Each worker builds its own core, context and counters, so that it owns them (free-threaded CPython:
            # see App.for_worker); only the shared stores are touched by several threads.
            try:
                now = time.time()
                core = self.app.for_worker()
                ctx = worker.Context(i, sock, self.stats.new_worker(i), adv_host, adv_port, now, cfg.tick)
                core.attach(ctx, now)
                contexts[i] = ctx
            except BaseException:
                log.exception("worker %d could not start", i)
                ready.abort()
                raise
            ready.wait()
            go.wait()
            if self.running:
                worker.run(core, ctx, self._keep_running, cfg.tick)

        for i, sock in enumerate(self.sockets):
            t = threading.Thread(target=work, args=(i, sock), name=f"worker-{i}", daemon=True)
            self.threads.append(t)
            t.start()
        try:
            ready.wait(30)
        except threading.BrokenBarrierError:
            self.running = False
            go.set()
            raise RuntimeError("a worker thread could not start (see the log above)") from None
        try:
            if before_start is not None:
                before_start(contexts)     # e.g. restore registrations, before any datagram is handled
        finally:
            go.set()
        log.info("listening on udp %s with %d worker thread(s) (SO_REUSEPORT), SO_RCVBUF granted %d bytes "
                 "(asked %d), GIL %s", _fmt(host, port), n, granted, cfg.rcvbuf,
                 "enabled" if _gil_enabled() else "disabled")
        return self

    def _keep_running(self):
        return self.running

    def stop(self, timeout=1.0):
        """Stop the workers (they wake within one tick) and close the sockets."""
        self.running = False
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for s in self.sockets:
            s.close()
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            log.warning("workers still running after %.1fs: %s", timeout, ", ".join(alive))
        return not alive


def _fmt(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gil_enabled():
    import sys
    f = getattr(sys, "_is_gil_enabled", None)
    return True if f is None else f()


__all__ = ["ThreadServer", "default_threads", "socket"]
