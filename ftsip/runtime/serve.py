"""Assemble and run a server from a config: the user store, the app, the workers, signals, reloads."""
import logging
import time

from ftsip.app import App
from ftsip.auth import SqliteUserLookup, UserStore, UserStoreError
from ftsip.location import persist
from ftsip.ops.stats import Registry

log = logging.getLogger("ftsip")

USER_FILE_POLL = 2.0     # seconds between checks of the user files for changes


def load_users(cfg, quiet=False):
    """The user store the config asks for. Problems in single rows are logged; an unusable file is fatal.
    ``quiet``: log problems only (every process of the process mode loads the store)."""
    a = cfg.auth
    if a.store == "sqlite-query":
        dbs = [p for p in a.users if not p.lower().endswith(".csv")]
        if not dbs:
            raise UserStoreError('[auth] store = "sqlite-query" needs a SQLite file in [auth] users')
        log.info("user store: querying %s on every authentication (the paper's SQL baseline)", dbs[0])
        return SqliteUserLookup(dbs[0], cfg.realm)
    store = UserStore.from_files(a.users, cfg.realm) if a.users else UserStore(realm=cfg.realm)
    for p in store.problems:
        log.warning("user file: %s", p)
    if quiet:
        return store
    if a.users:
        log.info("user store: %d users from %s (realm %s)", len(store), ", ".join(a.users), cfg.realm)
    elif a.register or a.methods:
        log.warning("no users loaded: every authenticated request will be refused; give --users FILE.csv "
                    "(header username,password) or [auth] users")
    return store


def reload_users(store):
    """Re-read the user files if they changed (SIGHUP, and every USER_FILE_POLL seconds)."""
    if not hasattr(store, "reload_if_changed"):
        return
    generation = getattr(store, "generation", None)      # SqliteUserLookup: nothing cached, nothing to swap
    problems = store.reload_if_changed()
    for p in problems:
        log.warning("user file: %s", p)
    if generation is not None and store.generation != generation:
        log.info("user store: reloaded, %d users from %s", len(store), ", ".join(store.sources))


def build_app(cfg):
    from ftsip.ops.guard import Guard
    return App(cfg, users=load_users(cfg), guard=Guard(cfg))


def serve(cfg, args=None):
    if cfg.server.mode == "processes":
        from ftsip.runtime.processes import serve_processes
        return serve_processes(cfg, args)
    from ftsip.cli import Signals
    from ftsip.ops import pygc
    from ftsip.runtime.threads import ThreadServer
    pygc.monitor()                                          # GC pauses logged and counted from the start
    signals = Signals()
    stats = Registry()
    try:
        app = build_app(cfg)
    except UserStoreError as e:
        log.error("%s", e)
        return 2
    from ftsip.cli import overrides_from_args
    from ftsip.runtime.reload import reload
    path = getattr(args, "config", None)
    overrides = overrides_from_args(args) if args is not None else {}
    signals.on_reload = lambda: reload(app, path, overrides)
    store = None
    records = []
    if cfg.persistence.path:
        try:
            records, info = persist.load(cfg.persistence.path, time.time())
        except persist.PersistError as e:
            log.error("%s", e)
            return 2
        log.info("persistence: %d AORs (%d bindings) restored from %s, %d expired dropped",
                 info["records"], info["bindings"], cfg.persistence.path, info["expired_bindings"])

    def before_start(contexts):
        nonlocal store
        if cfg.persistence.path:
            persist.restore(app.location, records, contexts[0].state.loc)
            store = persist.WriteBehind(cfg.persistence.path, cfg.persistence.flush_interval,
                                        cfg.persistence.max_pending, source=app.location.record).start()
            app.location.listeners.append(store)
            stats.gauge("persistence", store.stats)

    try:
        server = ThreadServer(app, cfg, stats).start(before_start)
    except OSError as e:
        log.error("cannot listen on %s: %s (is another server using the port? change [server] listen or "
                  "--listen)", cfg.server.listen[0], e.strerror or e)
        return 1
    from ftsip.ops.metrics import start_metrics
    metrics_server = start_metrics(cfg, stats, app)         # None when [metrics] listen = ""
    next_poll = time.monotonic() + USER_FILE_POLL
    while not signals.stop.wait(0.5):
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + USER_FILE_POLL
            reload_users(app.users)
    log.info("stopping")
    if metrics_server is not None:
        metrics_server.stop()
    server.stop(timeout=1.0)
    if store is not None:
        ok = store.stop()
        log.info("persistence: final flush %s", "complete" if ok else "INCOMPLETE (see errors above)")
    log.info("stopped")
    return 0
