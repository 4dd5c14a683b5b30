"""Helpers for the ops tests: a strict little Prometheus text-format parser, HTTP GET, the ops CLI without cli.py."""
import argparse
import re
import urllib.error
import urllib.request

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? (\S+)$")
LABELS = re.compile(rf'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_prometheus(text):
    """Parse exposition format 0.0.4 strictly: every sample line is ``name{labels} value``, every family has one
    HELP and one TYPE before its samples, samples of a family are contiguous, no series appears twice, counters
    are >= 0. Returns {family: {"type", "help", "samples": {labels_tuple: value}}}; raises AssertionError."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    fams = {}
    current = None
    closed = set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        assert line, f"line {n}: empty line"
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name), f"line {n}: bad metric name {name!r}"
            assert name not in fams, f"line {n}: second HELP for {name}"
            assert help_, f"line {n}: empty HELP for {name}"
            if current is not None:
                closed.add(current)
            fams[name] = {"help": help_, "type": None, "samples": {}}
            current = name
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current, f"line {n}: TYPE {name} not right after its HELP"
            assert fams[name]["type"] is None, f"line {n}: second TYPE for {name}"
            assert kind in TYPES, f"line {n}: unknown type {kind!r}"
            fams[name]["type"] = kind
            continue
        assert not line.startswith("#"), f"line {n}: unexpected comment {line!r}"
        m = SAMPLE.match(line)
        assert m, f"line {n}: not 'name{{labels}} value': {line!r}"
        name, labels, value = m.groups()
        assert name in fams, f"line {n}: sample of {name} without HELP/TYPE"
        assert name not in closed and name == current, f"line {n}: samples of {name} are not contiguous"
        assert fams[name]["type"] is not None, f"line {n}: sample of {name} before its TYPE"
        key = tuple(LABELS.findall(labels or ""))
        assert len({k for k, _ in key}) == len(key), f"line {n}: a label appears twice"
        v = float(value)        # raises on junk; accepts NaN/+Inf
        if fams[name]["type"] == "counter":
            assert v >= 0, f"line {n}: negative counter"
        assert key not in fams[name]["samples"], f"line {n}: duplicate series {name}{labels or ''}"
        fams[name]["samples"][key] = v
    for name, f in fams.items():
        assert f["type"] is not None, f"{name}: HELP without TYPE"
    return fams


def get(url, timeout=5.0):
    """(status, content-type, body text) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def run_ops(argv):
    """Run an ops subcommand as `ftsip` would once cli.py calls opscli.add_subcommands; returns the exit code."""
    from ftsip.ops import opscli
    p = argparse.ArgumentParser(prog="ftsip")
    sub = p.add_subparsers(dest="command", required=True)
    opscli.add_subcommands(sub)
    args = p.parse_args(argv)
    return args.func(args) or 0
