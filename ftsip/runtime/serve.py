"""Assemble and run a server from a config: the app, the workers, signals."""
import logging

from ftsip.app import App
from ftsip.ops.stats import Registry

log = logging.getLogger("ftsip")


def build_app(cfg):
    return App(cfg)


def serve(cfg, args=None):
    from ftsip.cli import wait_for_signals
    from ftsip.runtime.threads import ThreadServer
    stats = Registry()
    app = build_app(cfg)
    try:
        server = ThreadServer(app, cfg, stats).start()
    except OSError as e:
        log.error("cannot listen on %s: %s (is another server using the port? change [server] listen or "
                  "--listen)", cfg.server.listen[0], e.strerror or e)
        return 1

    def stop():
        log.info("stopping")
        server.stop(timeout=1.0)
        log.info("stopped")

    wait_for_signals(stop, getattr(app, "reload", None))
    return 0
