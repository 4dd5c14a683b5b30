"""`ftsip top`, `ftsip locations`, `ftsip users` (through opscli.add_subcommands, as cli.py wires them)."""
import io
import json
import os
import subprocess
import sys
import time

import pytest
from rich.console import Console

from ftsip.ops import metrics, top
from ftsip.ops.stats import Registry

from .helpers import run_ops
from .test_metrics import make_location, two_workers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def live():
    loc = make_location(time.time())
    reg = two_workers()
    sources = {"location": metrics.location_source(loc), "transactions": lambda: {"active": 12},
               "locations": loc}
    m = metrics.MetricsServer(reg, "127.0.0.1", 0, sources).start()
    m.reg = reg
    yield m
    m.stop()


def test_top_once_renders_against_a_live_server(live, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert run_ops(["top", "--once", "--url", live.url]) == 0
    out = capsys.readouterr().out
    for text in ("Workers", "INVITE", "REGISTER", "486", "drops.refused.503", "auth.fail.stale", "transactions",
                 "AORs", "bindings", "GC backlog", "RcvbufErrors", "average since start"):
        assert text in out, text
    assert max(len(line) for line in out.splitlines()) <= 80


def test_top_rates_between_two_samples(live):
    a = top.fetch(live.url)
    w = live.reg.workers[0]
    w.inc("rx.request.INVITE", 50)
    w.busy += 0.25
    w.datagrams += 500
    time.sleep(0.5)
    b = top.fetch(live.url)
    r = top.Rates(b, a)
    dt = b["time"] - a["time"]
    assert r.live and r.counter("rx.request.INVITE") == pytest.approx(50 / dt)
    assert r.worker(0, "busy") == pytest.approx(0.25 / dt)
    assert r.worker(1, "busy") == 0
    buf = io.StringIO()
    Console(file=buf, width=80).print(top.render(b, a, live.url))
    text = buf.getvalue()
    assert "last sample" in text and max(len(line) for line in text.splitlines()) <= 80
    assert top.Rates(a, b).live is False          # samples out of order: no rates, averages instead


def test_top_unreachable(capsys):
    assert run_ops(["top", "--once", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9/stats.json" in capsys.readouterr().err


@pytest.mark.skipif("opscli" not in open(os.path.join(ROOT, "ftsip", "cli.py")).read(),
                    reason="ftsip/cli.py does not call opscli.add_subcommands yet")
def test_ftsip_top_once_command(live):
    out = subprocess.run([sys.executable, "-m", "ftsip.cli", "top", "--once", "--url", live.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=30, env=dict(os.environ, COLUMNS="80"))
    assert out.returncode == 0, out.stderr
    assert "Workers" in out.stdout and "INVITE" in out.stdout


def test_locations_command(live, capsys):
    assert run_ops(["locations", "alice@example.com", "--url", live.url]) == 0
    out = capsys.readouterr().out
    assert "sip:alice@192.0.2.10:5062" in out and "192.0.2.10:5062" in out and "phone/1.0" in out
    assert run_ops(["locations", "--url", live.url]) == 0
    out = capsys.readouterr().out
    assert "2 AORs, 3 bindings" in out and "bob@example.com" in out
    assert run_ops(["locations", "sip:bob@example.com", "--json", "--url", live.url]) == 0
    assert json.loads(capsys.readouterr().out)["bindings"][0]["contact"] == "sip:bob@192.0.2.20"
    assert run_ops(["locations", "nobody@example.com", "--url", live.url]) == 1
    assert "no bindings for nobody@example.com" in capsys.readouterr().err
    assert run_ops(["locations", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_users_round_trip(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "users.db")
    assert run_ops(["users", "add", "--db", db, "alice", "--password", "s3cret", "--voicemail",
                    "sip:vm@example.com"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))          # not a terminal: one line
    assert run_ops(["users", "add", "bob", "--db", db]) == 0
    assert run_ops(["users", "add", "--db", db, "carol", "--ha1", "0" * 32]) == 0
    capsys.readouterr()
    assert run_ops(["users", "add", "--db", db, "alice", "--password", "x"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and db in err and "--replace" in err
    assert run_ops(["users", "disable", "--db", db, "bob"]) == 0
    capsys.readouterr()
    assert run_ops(["users", "list", "--db", db, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [u["username"] for u in listing] == ["alice", "bob", "carol"]
    assert [u["enabled"] for u in listing] == [True, False, True]
    assert listing[2]["ha1"] == ["MD5"] and not listing[2]["has_password"]
    assert run_ops(["users", "remove", "--db", db, "alice"]) == 0
    assert run_ops(["users", "remove", "--db", db, "alice"]) == 1
    assert "no user 'alice'" in capsys.readouterr().err
    assert run_ops(["users", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "bob" in out and "alice" not in out and "NO" in out


def test_users_import_names_the_bad_line(tmp_path, capsys):
    db = str(tmp_path / "users.db")
    csv = tmp_path / "users.csv"
    csv.write_text("username,password\ndave,pw1\nerin,\nfrank,pw3\n")
    assert run_ops(["users", "import", "--db", db, str(csv)]) == 1            # partly done: exit 1
    cap = capsys.readouterr()
    assert "imported 2 user(s)" in cap.out
    assert f"{csv}:3:" in cap.err and "erin" in cap.err and "fix:" in cap.err
    assert run_ops(["users", "list", "--db", db, "--json"]) == 0
    assert [u["username"] for u in json.loads(capsys.readouterr().out)] == ["dave", "frank"]
    csv.write_text("username,password\ngail,pw\n")
    assert run_ops(["users", "import", "--db", db, str(csv)]) == 0


def test_users_errors(tmp_path, capsys):
    assert run_ops(["users", "list"]) == 2                                     # no database named
    assert "give --db FILE" in capsys.readouterr().err
    assert run_ops(["users", "import", "--db", str(tmp_path / "u.db"), str(tmp_path / "none.csv")]) == 1
    assert "none.csv: no such file" in capsys.readouterr().err
    assert run_ops(["users", "list", "--db", str(tmp_path / "missing-dir" / "u.db")]) == 1
    err = capsys.readouterr().err
    assert "cannot open the SQLite user database" in err and "fix:" in err
    assert run_ops(["users", "add", "--db", str(tmp_path / "u.db"), "x", "--ha1", "nothex"]) == 1
    assert "32 hex digits" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_ops(["users", "add", "--db", "x.db", "y", "--password", "a", "--ha1", "0" * 32])
    assert e.value.code == 2
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[auth]\nusers = ["{tmp_path / "from-config.db"}"]\n')
    assert run_ops(["users", "add", "--config", str(cfg), "zoe", "--password", "pw"]) == 0
    assert (tmp_path / "from-config.db").exists()


def test_empty_registry_renders():
    m = metrics.MetricsServer(Registry(), "127.0.0.1", 0, {}).start()
    try:
        buf = io.StringIO()
        Console(file=buf, width=80).print(top.render(top.fetch(m.url), None, m.url))
        assert "none" in buf.getvalue()            # no failures
    finally:
        m.stop()
