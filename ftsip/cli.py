"""The ``ftsip`` command: serve, check-config (and the user, location and console tools)."""
import argparse
import logging
import signal
import sys
import threading

from ftsip import config as config_mod
from ftsip.ops import log as oplog

log = logging.getLogger("ftsip")


def _add_serve(sub):
    p = sub.add_parser("serve", help="run the SIP server")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: embedded defaults)")
    p.add_argument("--listen", metavar="HOST:PORT", action="append",
                   help="address to listen on (default 127.0.0.1:5060; [::1]:5060 for IPv6)")
    p.add_argument("--threads", type=int, metavar="N", help="worker threads (default: one per CPU)")
    p.add_argument("--domain", metavar="NAME", action="append", help="a domain this server is responsible for")
    p.add_argument("--users", metavar="FILE", action="append",
                   help="user file (CSV with a username,password header, or SQLite); repeatable")
    p.add_argument("--mode", choices=("threads", "processes"), help="threads (default) or processes")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (processes mode)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("text", "json"))
    p.set_defaults(func=cmd_serve)


# command-line option -> config key it overrides
OVERRIDES = (("listen", "server", "listen"), ("threads", "server", "threads"), ("domain", "server", "domain"),
             ("users", "auth", "users"), ("mode", "server", "mode"), ("workers", "server", "workers"),
             ("log_level", "server", "log_level"), ("log_format", "server", "log_format"))


def overrides_from_args(args):
    """{(section, key): value} for the options given on the command line."""
    o = {}
    for option, section, key in OVERRIDES:
        value = getattr(args, option, None)
        if value is not None and value != []:
            o[(section, key)] = value
    return o


def load_config(args):
    try:
        return config_mod.load(args.config, overrides_from_args(args))
    except config_mod.ConfigError as e:
        print(f"ftsip: config error: {e}", file=sys.stderr)
        sys.exit(2)


def cmd_serve(args):
    cfg = load_config(args)
    oplog.setup(cfg.server.log_level, cfg.server.log_format)
    from ftsip.runtime.serve import serve
    return serve(cfg, args)


def cmd_check_config(args):
    try:
        cfg = config_mod.load(args.file)
    except config_mod.ConfigError as e:
        print(f"ftsip: config error: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK (domains {', '.join(cfg.domains)}, realm {cfg.realm}, mode {cfg.server.mode})")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ftsip", description="A SIP proxy-registrar for free-threaded CPython.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    from ftsip.ops import opscli
    opscli.add_subcommands(sub)
    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)
    args = parser.parse_args(argv)
    return args.func(args) or 0


class Signals:
    """SIGINT/SIGTERM set ``stop``; SIGHUP runs ``on_reload`` in a thread. Install before starting workers, so a
    signal that arrives during start-up is not lost."""

    def __init__(self):
        self.stop = threading.Event()
        self.on_reload = None
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGHUP, self._hup)

    def _stop(self, signum, frame):
        self.stop.set()

    def _hup(self, signum, frame):
        if self.on_reload is not None:
            threading.Thread(target=self.on_reload, name="reload", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
