"""Configuration: a TOML file (``configs/ftsip.toml`` documents every key), embedded defaults, CLI overrides.

Every key is declared once in ``SCHEMA`` with its type, default and a check; an unknown section or key, or a bad
value, raises ``ConfigError`` naming the file, the key and the expected form. The loaded config is a tree of
read-only namespaces: ``cfg.server.threads``, ``cfg.auth.realm``...
"""
import os
import tomllib
from types import MappingProxyType


class ConfigError(Exception):
    """A configuration problem: the message names the file, the key and the fix."""


def _hostport(v):
    host, port = split_hostport(v, 5060)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(v, default_port):
    """'host:port', '[v6]:port', 'host' -> (host, port). Raises ValueError."""
    v = v.strip()
    if not v:
        raise ValueError("empty address")
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, rest = v[1:end], v[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ']'")
        port = int(rest[1:]) if rest else default_port
    elif v.count(":") == 1:
        host, p = v.split(":")
        port = int(p)
    elif v.count(":") > 1:
        host, port = v, default_port  # bare IPv6
    else:
        host, port = v, default_port
    if not (0 <= port <= 65535):
        raise ValueError("port out of range")
    if not host:
        raise ValueError("empty host")
    return host, port


class Key:
    __slots__ = ("type", "default", "check", "form", "reload")

    def __init__(self, type_, default, form, check=None, reload=False):
        self.type = type_
        self.default = default
        self.form = form
        self.check = check
        self.reload = reload   # may change on SIGHUP without a restart


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _one_of(*choices):
    def check(v):
        return v in choices
    return check


def _list_of(check):
    def run(v):
        return isinstance(v, list) and all(check(x) for x in v)
    return run


def _is_str(v):
    return isinstance(v, str)


def _addr_list(v):
    if not isinstance(v, list) or not v:
        return False
    for x in v:
        try:
            _hostport(x)
        except (ValueError, AttributeError):
            return False
    return True


def _addr_or_empty(v):
    if v == "":
        return True
    try:
        _hostport(v)
        return True
    except ValueError:
        return False


def _algorithms(v):
    return isinstance(v, list) and v and all(x in ("MD5", "SHA-256") for x in v)


def _methods(v):
    return isinstance(v, list) and all(isinstance(x, str) and x.isalpha() and x.isupper() for x in v)


SCHEMA = {
    "server": {
        "listen": Key(list, ["127.0.0.1:5060"], 'a list of "HOST:PORT" strings, e.g. ["127.0.0.1:5060"] or '
                      '["[::1]:5060"]', _addr_list),
        "advertise": Key(str, "", '"HOST:PORT" put in Via and Record-Route, or "" for the listen address',
                         _addr_or_empty),
        "mode": Key(str, "threads", '"threads" or "processes"', _one_of("threads", "processes")),
        "threads": Key(int, 0, "an integer >= 0 (0: one per CPU)", _non_negative),
        "workers": Key(int, 0, "an integer >= 0 (0: one per CPU; processes mode)", _non_negative),
        "domain": Key(list, [], 'a list of domain names this server is responsible for, e.g. ["example.com"] '
                      '(empty: the listen host)', _list_of(_is_str)),
        "rcvbuf": Key(int, 4 * 1024 * 1024, "bytes, an integer >= 0 (0: kernel default)", _non_negative),
        "sndbuf": Key(int, 1024 * 1024, "bytes, an integer >= 0 (0: kernel default)", _non_negative),
        "tick": Key(float, 0.01, "seconds between timer ticks, > 0 and <= 0.1", lambda v: 0 < v <= 0.1),
        "log_level": Key(str, "info", '"debug", "info", "warning" or "error"',
                         _one_of("debug", "info", "warning", "error"), reload=True),
        "log_format": Key(str, "text", '"text" or "json"', _one_of("text", "json"), reload=True),
    },
    "registrar": {
        "default_expires": Key(int, 3600, "seconds, > 0", _positive, reload=True),
        "min_expires": Key(int, 60, "seconds, >= 0", _non_negative, reload=True),
        "max_expires": Key(int, 7200, "seconds, > 0", _positive, reload=True),
        "max_contacts": Key(int, 10, "contacts per address-of-record, > 0", _positive, reload=True),
        "expires_jitter": Key(int, 0, "percent 0-50 by which a granted expiry may be shortened at random",
                              lambda v: 0 <= v <= 50, reload=True),
        "allow_third_party": Key(bool, False, "true or false (may a user register another user's AOR)",
                                 reload=True),
    },
    "auth": {
        "realm": Key(str, "", 'a realm string ("" : the first domain)'),
        "users": Key(list, [], 'a list of user files (.csv with a "username,password" header, or .sqlite/.db)',
                     _list_of(_is_str), reload=True),
        "store": Key(str, "memory", '"memory" (the in-memory map) or "sqlite-query" (query SQLite on every '
                     'authentication, the paper\'s baseline)', _one_of("memory", "sqlite-query")),
        "register": Key(bool, True, "true or false (challenge REGISTER)", reload=True),
        "methods": Key(list, ["INVITE", "BYE"], 'a list of methods the proxy challenges, e.g. ["INVITE", "BYE"]',
                       _methods, reload=True),
        "algorithms": Key(list, ["MD5"], 'a list from "MD5", "SHA-256" (offered in that order)',
                          _algorithms, reload=True),
        "qop": Key(bool, True, "true or false (qop=auth; false: RFC 2069 MD5 for old phones)", reload=True),
        "nonce_lifetime": Key(int, 300, "seconds, > 0", _positive, reload=True),
        "nonce_count": Key(bool, False, "true or false (track nonce-counts and reject replays)", reload=True),
        "check_uri": Key(bool, False, "true or false (require the digest uri to equal the Request-URI; SIPp "
                         "does not, see the docs)", reload=True),
        "secret": Key(str, "", 'the nonce secret ("" : random at start)'),
        "match_from": Key(bool, True, "true or false (the authenticated user must be the From user)",
                          reload=True),
    },
    "location": {
        "table": Key(str, "linear", '"linear" (self-growing) or "fixed" (the paper\'s baseline)',
                     _one_of("linear", "fixed")),
        "hash_width": Key(int, 512, "buckets of the fixed table, a power of two", lambda v: v > 0 and v & (v - 1) == 0),
        "gc": Key(str, "incremental", '"incremental" (budgeted) or "sweep" (full sweep, the paper\'s baseline)',
                  _one_of("incremental", "sweep")),
        "sweep_interval": Key(int, 60, "seconds between full sweeps (gc = \"sweep\")", _positive),
        "gc_budget": Key(int, 32, "AORs examined per collector step (bounds the step: ~3.5 us each), > 0", _positive),
        "shm_slots": Key(int, 65536, "records the shared-memory segment holds (processes mode), > 0", _positive),
        "shm_slot_size": Key(int, 1024, "bytes per record slot in the segment (processes mode), >= 256",
                             lambda v: v >= 256),
    },
    "proxy": {
        "record_route": Key(bool, True, "true or false", reload=True),
        "relay_foreign": Key(bool, False, "true or false (forward requests for other domains: open relay!)",
                             reload=True),
        "voicemail": Key(str, "", 'a SIP URI calls fail over to on busy/no answer ("" : none)', reload=True),
        "ring_timeout": Key(float, 0.0, "seconds before an unanswered call goes to voicemail (0: never)",
                            _non_negative, reload=True),
        "timer_c": Key(float, 180.0, "seconds, > 180 per RFC 3261 (INVITE branch timeout)",
                       lambda v: v >= 1, reload=True),
    },
    "security": {
        "pike_rate": Key(int, 0, "requests per second one source address may send before it is banned (0: off; "
                         "Kamailio's pike)", _non_negative, reload=True),
        "pike_ban": Key(float, 60.0, "seconds a flooding source stays banned, > 0", _positive, reload=True),
        "auth_fail_limit": Key(int, 10, "failed authentications per source (and per user from one source) "
                               "within auth_fail_window before further attempts are refused (0: off)",
                               _non_negative, reload=True),
        "auth_fail_source_limit": Key(int, 0, "failed authentications from one source across all users before it "
                                      "is refused (0: 5 x auth_fail_limit, so phones behind one NAT do not lock "
                                      "each other out)", _non_negative, reload=True),
        "auth_fail_window": Key(float, 300.0, "seconds, > 0", _positive, reload=True),
        "auth_fail_status": Key(int, 403, "the answer to a throttled authentication: 403 or 429",
                                lambda v: v in (403, 429), reload=True),
        "scanner_user_agents": Key(list, [], 'User-Agent substrings to refuse, e.g. ["friendly-scanner", '
                                   '"sipvicious", "sipcli"] (empty: off)', _list_of(_is_str), reload=True),
        "pike_exempt": Key(list, [], 'source addresses never rate-limited, e.g. ["127.0.0.1"]', _list_of(_is_str),
                           reload=True),
        "overload_hold": Key(float, 1.0, "seconds the queueing delay must stay above overload_lag before shedding "
                             "starts, >= 0", _non_negative, reload=True),
        "overload_lag": Key(float, 0.5, "seconds of queueing delay above which new INVITE/REGISTER get 503 "
                            "(0: never shed)", _non_negative, reload=True),
        "retry_after": Key(int, 5, "seconds in the Retry-After of a 503 when shedding load, > 0", _positive,
                           reload=True),
    },
    "metrics": {
        "listen": Key(str, "", '"HOST:PORT" of the Prometheus/JSON metrics endpoint, e.g. "127.0.0.1:9060" '
                      '("" : off)', _addr_or_empty),
    },
    "persistence": {
        "path": Key(str, "", 'a SQLite file for registrations, e.g. "/var/lib/ftsip/registrations.db" ("" : off)'),
        "flush_interval": Key(float, 0.2, "seconds between write-behind flushes, > 0 (at most this much is lost "
                              "on kill -9)", _positive),
        "max_pending": Key(int, 100000, "changed AORs that start a flush early, > 0", _positive),
    },
    "transaction": {
        "t1": Key(float, 0.5, "seconds, > 0", _positive),
        "t2": Key(float, 4.0, "seconds, > 0", _positive),
        "t4": Key(float, 5.0, "seconds, > 0", _positive),
    },
}


class Section:
    """A read-only view of one config section. The values are plain instance attributes (read on every request:
    no ``__getattr__`` detour)."""

    def __init__(self, name, values):
        d = self.__dict__
        d.update(values)
        d["_name"] = name
        d["_values"] = MappingProxyType(dict(values))

    def __getattr__(self, key):       # only reached for a key that does not exist
        raise AttributeError(f"config section [{self._name}] has no key {key!r}")

    def __setattr__(self, key, value):
        raise AttributeError("config is read-only")

    def as_dict(self):
        return dict(self._values)


class Config:
    def __init__(self, sections, path=None):
        self.path = path
        self.sections = {name: Section(name, values) for name, values in sections.items()}
        for name, sec in self.sections.items():
            setattr(self, name, sec)

    def as_dict(self):
        return {name: sec.as_dict() for name, sec in self.sections.items()}

    @property
    def domains(self):
        """The domains we are responsible for (lower-case), never empty."""
        d = [x.lower() for x in self.server.domain]
        if not d:
            host, _ = split_hostport(self.server.listen[0], 5060)
            d = [host.lower()]
        return d

    @property
    def realm(self):
        return self.auth.realm or self.domains[0]


def _coerce(type_, value):
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _validate(where, section, key, value):
    spec = SCHEMA[section][key]
    value = _coerce(spec.type, value)
    ok = isinstance(value, spec.type) and not (spec.type is int and isinstance(value, bool))
    if ok and spec.check is not None:
        try:
            ok = bool(spec.check(value))
        except Exception:
            ok = False
    if not ok:
        raise ConfigError(f"{where}: [{section}] {key} = {value!r} is not valid; expected {spec.form}")
    return value


def load(path=None, overrides=None, base=None):
    """Load ``path`` (TOML) over the embedded defaults (or over ``base``, a dict), then apply ``overrides``
    ({(section, key): value}, from the command line). Raises ConfigError."""
    values = {s: {k: spec.default for k, spec in keys.items()} for s, keys in SCHEMA.items()}
    if base is not None:
        for s, kv in base.items():
            values[s].update(kv)
    where = str(path) if path else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file (give an existing file to --config)") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        for section, table in data.items():
            if section not in SCHEMA:
                raise ConfigError(f"{path}: unknown section [{section}]; known sections: "
                                  + ", ".join(f"[{s}]" for s in SCHEMA))
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {section} must be a table ([{section}])")
            for key, value in table.items():
                if key not in SCHEMA[section]:
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}]; known keys: "
                                      + ", ".join(SCHEMA[section]))
                values[section][key] = _validate(path, section, key, value)
        base_dir = os.path.dirname(os.path.abspath(path))
        values["auth"]["users"] = [u if os.path.isabs(u) else os.path.join(base_dir, u)
                                   for u in values["auth"]["users"]]
    for (section, key), value in (overrides or {}).items():
        values[section][key] = _validate("command line", section, key, value)
    s = values["registrar"]
    if s["min_expires"] > s["max_expires"]:
        raise ConfigError(f"{where}: [registrar] min_expires ({s['min_expires']}) is larger than max_expires "
                          f"({s['max_expires']}); lower min_expires or raise max_expires")
    return Config(values, path)


def reloadable_changes(old, new):
    """The (section, key) pairs that differ between two configs, split into (reloadable, needs_restart)."""
    ok, restart = [], []
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if getattr(old.sections[section], key) != getattr(new.sections[section], key):
                (ok if spec.reload else restart).append((section, key))
    return ok, restart
