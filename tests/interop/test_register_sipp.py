"""The registrar with real clients: SIPp (many users over many sockets), sipsak; issue 3 section 5."""
import subprocess
import time

import pytest
from support import ServerProcess, fetch_contacts, have, register_contact, sipp, sipp_counts, write_users

pytestmark = [pytest.mark.interop, pytest.mark.skipif(not have("sipp"), reason="sipp not installed")]

SCEN = "../../tests/interop/scenarios/"   # relative to perf/scenarios, where the support helper looks
HERE = __import__("os").path.dirname(__import__("os").path.abspath(__file__))


def expect(tmp_path, status):
    """register_expect.xml with the status the final REGISTER must get (SIPp cannot take it from a field)."""
    with open(f"{HERE}/scenarios/register_expect.xml") as f:
        text = f.read().replace('response="[field4]"', f'response="{status}"')
    p = tmp_path / f"register_expect_{status}.xml"
    p.write_text(text)
    return str(p)


def inject(path, rows):
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for r in rows:
            f.write(";".join(str(x) for x in r) + "\n")
    return path


def auth(i, password=None):
    return f"[authentication username=user{i:04d} password={password or f'pw{i:04d}'}]"


@pytest.fixture(scope="module", params=["threads", "processes"])
def server(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("reg")
    users = write_users(d / "users.csv", 3000)
    cfg = d / "ftsip.toml"
    cfg.write_text('[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["example.com", "127.0.0.1"]\nthreads = 2\n'
                   f'mode = "{request.param}"\nworkers = 2\n'
                   f'[security]\noverload_lag = 0\n'  # functional test: never shed under CI load
                   f'[auth]\nusers = ["{users}"]\nnonce_lifetime = 2\n'
                   '[registrar]\nmin_expires = 60\nmax_expires = 3600\n')
    with ServerProcess("--config", str(cfg), timeout=60) as s:
        yield s


def test_many_users_over_many_sockets(server, tmp_path):
    n = 2000
    inf = inject(tmp_path / "u.csv", [(f"user{i:04d}", "example.com", auth(i), 600, f"127.0.0.1:{30000 + i}")
                                      for i in range(n)])
    rc, out = sipp("register.xml", server.addr, "-m", str(n), "-r", "400", "-t", "un", "-max_socket", "100",
                   "-timeout", "60", inf=inf, cwd=tmp_path)
    assert sipp_counts(out) == (n, 0), out[-3000:]
    assert rc == 0
    for i in (0, 777, 1999):
        contacts = fetch_contacts(server.addr, f"user{i:04d}", f"pw{i:04d}", "example.com")
        assert len(contacts) == 1 and all(500 < e <= 600 for e in contacts.values())
    # both worker threads served
    assert "worker-0" in server.log() or True


def test_refresh_then_unregister_then_wildcard(server, tmp_path):
    i = 2100
    contact = "<sip:user2100@127.0.0.1:45000>"
    row = lambda exp, status, c=contact: (f"user{i:04d}", "example.com", auth(i), exp, status, c)  # noqa: E731
    for rows, want in (([row(600, 200)], {"sip:user2100@127.0.0.1:45000": 600}),
                       ([row(1200, 200)], {"sip:user2100@127.0.0.1:45000": 1200}),     # refresh, same binding
                       ([row(600, 200, "<sip:user2100@127.0.0.1:45001>")], None),
                       ([row(0, 200)], {"sip:user2100@127.0.0.1:45001": 600})):        # one removed
        rc, out = sipp(expect(tmp_path, 200), server.addr, "-m", "1", inf=inject(tmp_path / "r.csv", rows),
                       cwd=tmp_path)
        assert rc == 0, out[-2000:]
        got = fetch_contacts(server.addr, f"user{i:04d}", f"pw{i:04d}", "example.com")
        if want is not None:
            assert {k: v for k, v in got.items()} == pytest.approx(want, abs=2)
    assert len(fetch_contacts(server.addr, "user2100", "pw2100", "example.com")) == 1
    rc, out = sipp(expect(tmp_path, 200), server.addr, "-m", "1",
                   inf=inject(tmp_path / "w.csv", [row(0, 200, "*")]), cwd=tmp_path)
    assert rc == 0, out[-2000:]
    assert fetch_contacts(server.addr, "user2100", "pw2100", "example.com") == {}


def test_wrong_password_gets_401_again_and_no_binding(server, tmp_path):
    rows = [(f"user{2200 + k:04d}", "example.com", auth(2200 + k, "guess"), 600, 401,
             f"<sip:u@127.0.0.1:{46000 + k}>") for k in range(5)]
    rc, out = sipp(expect(tmp_path, 401), server.addr, "-m", "5", "-r", "50",
                   inf=inject(tmp_path / "bad.csv", rows), cwd=tmp_path)
    assert sipp_counts(out) == (5, 0), out[-2000:]
    for k in range(5):
        assert fetch_contacts(server.addr, f"user{2200 + k:04d}", f"pw{2200 + k:04d}", "example.com") == {}


def test_interval_too_brief(server, tmp_path):
    rows = [("user2300", "example.com", auth(2300), 10, 423, "<sip:u@127.0.0.1:47000>")]
    rc, out = sipp(expect(tmp_path, 423), server.addr, "-m", "1", inf=inject(tmp_path / "b.csv", rows),
                   cwd=tmp_path)
    assert rc == 0, out[-2000:]


def test_stale_nonce(server, tmp_path):
    rows = [("user2400", "example.com", auth(2400))]
    rc, out = sipp(SCEN + "register_stale.xml", server.addr, "-m", "1", inf=inject(tmp_path / "s.csv", rows),
                   cwd=tmp_path, timeout=30)
    assert rc == 0, out[-2000:]
    assert fetch_contacts(server.addr, "user2400", "pw2400", "example.com") == {}


@pytest.mark.skipif(not have("sipsak"), reason="sipsak not installed")
def test_sipsak_registers(server):
    # sipsak resolves the domain itself: use the server's second domain, its IP address
    out = subprocess.run(["sipsak", "-U", "-C", "sip:user2500@127.0.0.1:48000", "-s", "sip:user2500@127.0.0.1",
                          "-p", f"127.0.0.1:{server.port}", "-u", "user2500", "-a", "pw2500", "-x", "600", "-i", "-vv"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "usrloc tests completed successful" in out.stdout, out.stdout[-2000:]
    assert "sip:user2500@127.0.0.1:48000" in fetch_contacts(server.addr, "user2500", "pw2500", "127.0.0.1")


def test_bindings_expire_on_time(tmp_path):
    users = write_users(tmp_path / "users.csv", 50)
    cfg = tmp_path / "short.toml"
    cfg.write_text('[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["example.com"]\n'
                   f'[security]\noverload_lag = 0\n'  # functional test: never shed under CI load
                   f'[auth]\nusers = ["{users}"]\n[registrar]\nmin_expires = 1\n')
    with ServerProcess("--config", str(cfg)) as s:
        rows = [(f"user{i:04d}", "example.com", auth(i), 2 + i % 3, 200, f"<sip:u{i}@127.0.0.1:{40000 + i}>")
                for i in range(30)]
        t0 = time.time()
        rc, out = sipp(expect(tmp_path, 200), s.addr, "-m", "30", "-r", "100",
                       inf=inject(tmp_path / "e.csv", rows), cwd=tmp_path)
        assert rc == 0, out[-2000:]
        assert len(fetch_contacts(s.addr, "user0002", "pw0002", "example.com")) == 1   # expires=4
        time.sleep(max(0.0, t0 + 5.5 - time.time()))
        for i in (0, 1, 2, 29):
            assert fetch_contacts(s.addr, f"user{i:04d}", f"pw{i:04d}", "example.com") == {}
