"""SIGHUP: reload the user store and the reloadable parts of the config, in either mode.

A config file that does not load is refused with a log line naming the file, key and fix, and the running config is
kept. Keys that need a restart keep their running values and are named in a warning."""
import logging

from ftsip import config as config_mod
from ftsip.ops import log as oplog

log = logging.getLogger("ftsip")


def merged(old, new):
    """``old`` with every reloadable key taken from ``new``; returns (config, applied, ignored)."""
    ok, restart = config_mod.reloadable_changes(old, new)
    values = old.as_dict()
    for section, key in ok:
        values[section][key] = getattr(new.sections[section], key)
    return config_mod.load(base=values), ok, restart


def reload(app, path, overrides):
    """Reload ``path`` (or only the users when there is no config file); returns the config now in force."""
    from ftsip.runtime.serve import reload_users
    old = app.cfg
    if path is not None:
        try:
            new = config_mod.load(path, overrides)
        except config_mod.ConfigError as e:
            log.error("reload refused, still running the previous config: %s", e)
            reload_users(app.users)
            return old
        cfg, applied, ignored = merged(old, new)
        if ignored:
            log.warning("reload: %s changed but need a restart; still running the old values",
                        ", ".join(f"[{s}] {k}" for s, k in ignored))
        if applied:
            app.reconfigure(cfg)
            oplog.setup(cfg.server.log_level, cfg.server.log_format)
            log.info("reload: applied %s", ", ".join(f"[{s}] {k}" for s, k in applied))
        else:
            log.info("reload: config unchanged")
    reload_users(app.users)
    return app.cfg
