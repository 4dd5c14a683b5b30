"""Assemble and run a server from a config: the app, the workers, signals."""
import logging

from ftsip.app import App
from ftsip.ops.stats import Registry

log = logging.getLogger("ftsip")


def build_app(cfg):
    return App(cfg)


def serve(cfg, args=None):
    from ftsip.cli import Signals
    from ftsip.runtime.threads import ThreadServer
    signals = Signals()
    stats = Registry()
    app = build_app(cfg)
    signals.on_reload = getattr(app, "reload", None)
    try:
        server = ThreadServer(app, cfg, stats).start()
    except OSError as e:
        log.error("cannot listen on %s: %s (is another server using the port? change [server] listen or "
                  "--listen)", cfg.server.listen[0], e.strerror or e)
        return 1
    signals.wait()
    log.info("stopping")
    server.stop(timeout=1.0)
    log.info("stopped")
    return 0
