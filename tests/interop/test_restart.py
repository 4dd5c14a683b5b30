"""Registrations survive restarts: thousands of SIPp users, a graceful stop or kill -9, a restart, every lookup."""
import os
import re
import signal
import time

import pytest
from support import ServerProcess, fetch_contacts, have, sipp, sipp_counts, write_users

pytestmark = [pytest.mark.interop, pytest.mark.skipif(not have("sipp"), reason="sipp not installed")]

N = 2000


def config(tmp_path, mode, port):
    users = write_users(tmp_path / "users.csv", N)
    cfg = tmp_path / "ftsip.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\ndomain = ["example.com"]\nmode = "{mode}"\n'
                   f'workers = 2\nthreads = 2\n[auth]\nusers = ["{users}"]\n[security]\noverload_lag = 0\n'
                   f'[persistence]\npath = "{tmp_path / "reg.db"}"\nflush_interval = 0.2\n')
    return cfg


def register_all(server, tmp_path):
    inf = tmp_path / "u.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(
        f"user{i:04d};example.com;[authentication username=user{i:04d} password=pw{i:04d}];3600;"
        f"127.0.0.1:{20000 + i}\n" for i in range(N)))
    rc, out = sipp("register.xml", server.addr, "-m", str(N), "-r", "500", "-t", "un", "-max_socket", "100",
                   "-timeout", "60", inf=inf, cwd=tmp_path)
    assert sipp_counts(out) == (N, 0), out[-2000:]


def all_there(server):
    missing = [i for i in range(N)
               if f"sip:user{i:04d}@127.0.0.1:{20000 + i}" not in
               fetch_contacts(server.addr, f"user{i:04d}", f"pw{i:04d}", "example.com")]
    assert missing == [], f"{len(missing)} bindings lost, e.g. user{missing[0]:04d}"


@pytest.mark.parametrize("mode", ["threads", "processes"])
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_registrations_survive_a_restart(tmp_path, mode, how):
    first = ServerProcess("--config", str(config(tmp_path, mode, 0)), timeout=60)
    port = first.port
    try:
        register_all(first, tmp_path)
        if how == "sigterm":
            first.signal(signal.SIGTERM)
            first.proc.wait(10)
        else:
            time.sleep(0.2 + 0.5)          # flush_interval plus a margin: the bound we promise
            pids = [int(p) for p in re.findall(r"worker \d+ ready \(pid (\d+)\)", first.log())]
            first.proc.kill()              # processes mode: the supervisor only; its workers must follow it
            first.proc.wait(10)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
                time.sleep(0.1)
            assert pids == [], "workers outlived their supervisor"
    finally:
        first.stop()
    cfg = config(tmp_path, mode, port)
    with ServerProcess("--config", str(cfg), timeout=60) as second:
        assert second.wait_for(rf"{N} AORs", 5), second.log()
        if mode == "processes":         # the killed supervisor's segment is gone: the new one reclaimed it
            stale = f"/dev/shm/ftsip-{first.proc.pid}"
            assert not os.path.exists(stale), second.log()
            if how == "sigkill":
                assert f"removed the shared-memory segment ftsip-{first.proc.pid} left by" in second.log()
        all_there(second)
