"""Systems under test named on the command line, one compact spec each (``--systems``, comma-separated):

    ftsip:t2            ftsip, threads mode, 2 threads, on .venv/bin/python (3.13t)
    ftsip:p2            ftsip, process mode, 2 worker processes
    ftsip-gil:t1        the same on .venv-gil/bin/python (a GIL build; scripts/bootstrap --gil)
    ftsip@/path/python:t2   any interpreter
    ftsip:t2+table=fixed+hash_width=512+gc=sweep+store=sqlite-query
                        with ftsip settings ([location] table/hash_width/gc/sweep_interval, [auth] store,
                        [security] overload_lag; or SECTION.KEY=VALUE for any other key)
    kamailio:c2         Kamailio with perf/kamailio/kamailio.cfg, 2 children
    external:HOST:PORT  any SIP server already running (nothing started, no CPU numbers)
"""
from __future__ import annotations

import math

from .sut import ExternalSUT, FtsipSUT, KamailioSUT
from .users import kamailio_htable_size

SHORT_KEYS = {"table": "location", "hash_width": "location", "gc": "location", "sweep_interval": "location",
              "gc_budget": "location", "shm_slots": "location", "store": "auth", "overload_lag": "security",
              "voicemail": "proxy", "ring_timeout": "proxy", "qop": "auth"}
INTERPRETERS = {"ftsip": ".venv/bin/python", "ftsip-gil": ".venv-gil/bin/python"}


def _value(v):
    if v in ("true", "false"):
        return v == "true"
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def parse_system(spec):
    """A spec string -> {'kind', 'python', 'mode', 'n', 'settings', 'label', 'target'}."""
    spec = spec.strip()
    if spec.startswith("external:"):
        host, _, port = spec[len("external:"):].rpartition(":")
        return {"kind": "external", "target": (host.strip("[]"), int(port)), "spec": spec}
    head, *opts = spec.split("+")
    name, _, shape = head.partition(":")
    if name.startswith("ftsip@"):
        kind, python = "ftsip", name[len("ftsip@"):]
    elif name in INTERPRETERS:
        kind, python = "ftsip", INTERPRETERS[name]
    elif name == "kamailio":
        kind, python = "kamailio", None
    else:
        raise ValueError(f"unknown system {spec!r}: ftsip[-gil]:tN|pN, kamailio:cN, external:HOST:PORT")
    shape = shape or ("c2" if kind == "kamailio" else "t1")
    letter, num = shape[0], shape[1:]
    if not num.isdigit() or letter not in ("t", "p", "c"):
        raise ValueError(f"{spec!r}: expected tN (threads), pN (processes) or cN (Kamailio children)")
    mode = {"t": "threads", "p": "processes", "c": "children"}[letter]
    if (kind == "kamailio") != (mode == "children"):
        raise ValueError(f"{spec!r}: ftsip takes tN/pN, kamailio takes cN")
    settings = {}
    for o in opts:
        k, _, v = o.partition("=")
        section, _, key = k.rpartition(".")
        section = section or SHORT_KEYS.get(key)
        if not section:
            raise ValueError(f"{spec!r}: unknown setting {k!r} (use SECTION.KEY=VALUE)")
        settings.setdefault(section, {})[key] = _value(v)
    return {"kind": kind, "python": python, "mode": mode, "n": int(num), "settings": settings, "spec": spec,
            "label": None}


def config_label(settings):
    """A short name for a matrix configuration: fixed512-sqlite-sweep, linear-memory-incr ..."""
    loc, auth = settings.get("location", {}), settings.get("auth", {})
    table = loc.get("table", "linear")
    if table == "fixed":
        w = loc.get("hash_width", 512)
        table = f"fixed2^{int(math.log2(w))}" if w & (w - 1) == 0 else f"fixed{w}"
    store = {"sqlite-query": "sqlite", "memory": "memory"}.get(auth.get("store", "memory"), auth.get("store"))
    gc = loc.get("gc", "incremental")
    gc = f"sweep{loc.get('sweep_interval', 60)}s" if gc == "sweep" else "incr"
    return f"{table}-{store}-{gc}"


def build_sut(sys_spec, files, users, domain="example.com", qop=True, cpus=None, workload_options=None,
              overload_lag=0.0, label=None, hash_size=None, **extra):
    """A SUT object (not started) for a parsed spec. ``files``: {'csv', 'sqlite', 'kamailio_db'}."""
    wo = workload_options or {}
    if sys_spec["kind"] == "external":
        return ExternalSUT(*sys_spec["target"])
    if sys_spec["kind"] == "kamailio":
        hs = hash_size or max(10, min(16, (max(users, 2) - 1).bit_length()))
        return KamailioSUT(files["kamailio_db"], children=sys_spec["n"], hash_size=hs,
                           htable_size=kamailio_htable_size(users), qop=qop, domain=domain, cpus=cpus,
                           voicemail=wo.get("voicemail"), label=label, **extra)
    settings = {k: dict(v) for k, v in sys_spec["settings"].items()}
    # capacity runs: no overload shedding unless asked (Kamailio sheds nothing either; see perf/README.md)
    if overload_lag is not None:
        settings.setdefault("security", {}).setdefault("overload_lag", overload_lag)
    if wo.get("voicemail"):
        settings.setdefault("proxy", {}).setdefault("voicemail", wo["voicemail"])
    if sys_spec["mode"] == "processes":
        # the process mode's fixed shared-memory segment must hold the whole population
        slots = 1 << max(16, math.ceil(math.log2(max(users, 1) * 1.5)))
        settings.setdefault("location", {}).setdefault("shm_slots", slots)
    users_file = files["sqlite"] if settings.get("auth", {}).get("store") == "sqlite-query" else files["csv"]
    sut = FtsipSUT(users_file, mode=sys_spec["mode"], threads=sys_spec["n"], python=sys_spec["python"],
                   domain=domain, qop=qop, cpus=cpus, settings=settings, label=label, **extra)
    if label is None and (any(k in sys_spec["settings"].get("location", {}) for k in ("table", "gc"))
                          or "store" in sys_spec["settings"].get("auth", {})):
        sut.label += "-" + config_label(settings)
    return sut


def unique_labels(suts):
    """Make labels unique (the same spec twice gets #2, #3 ...)."""
    seen = {}
    for s in suts:
        n = seen.get(s.label, 0) + 1
        seen[s.label] = n
        if n > 1:
            s.label = f"{s.label}#{n}"
    return suts
