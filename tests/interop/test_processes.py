"""Process mode (OpenSER's architecture): the same flows through N worker processes and a shared-memory segment."""
import os
import re
import signal
import time

import pytest
from support import ServerProcess, fetch_contacts, have, register_contact, sipp, sipp_counts, write_users

pytestmark = [pytest.mark.interop, pytest.mark.skipif(not have("sipp"), reason="sipp not installed")]


def segment_of(server):
    """The /dev/shm file of this server's segment (from its start-up line)."""
    m = re.search(r"shared-memory segment (ftsip-\d+)", server.log())
    assert m, server.log()
    return "/dev/shm/" + m.group(1)


def start(tmp_path, n=2, extra=""):
    users = write_users(tmp_path / "users.csv", 2000)
    cfg = tmp_path / "ftsip.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["example.com"]\nmode = "processes"\nworkers = {n}\n'
                   f'[security]\noverload_lag = 0\n'  # functional test: never shed under CI load
                   f'[auth]\nusers = ["{users}"]\n{extra}')
    s = ServerProcess("--config", str(cfg), timeout=60)
    return s


def worker_pids(server):
    return {int(w): int(p) for w, p in re.findall(r"worker (\d+) ready \(pid (\d+)\)", server.log())}


def test_registrations_shared_across_processes(tmp_path):
    s = start(tmp_path)
    seg = segment_of(s)
    try:
        assert os.path.exists(seg)
        assert len(worker_pids(s)) == 2
        inf = tmp_path / "u.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(
            f"user{i:04d};example.com;[authentication username=user{i:04d} password=pw{i:04d}];600;"
            f"127.0.0.1:{30000 + i}\n"
            for i in range(300)))
        rc, out = sipp("register.xml", s.addr, "-m", "300", "-r", "200", "-t", "un", "-max_socket", "50",
                       inf=inf, cwd=tmp_path)
        assert sipp_counts(out) == (300, 0), out[-2000:]
        # every lookup, from fresh sockets (any process), sees the bindings written by any process
        for i in range(0, 300, 37):
            assert len(fetch_contacts(s.addr, f"user{i:04d}", f"pw{i:04d}", "example.com")) == 1
    finally:
        s.stop()
    assert not os.path.exists(seg)       # the segment is removed on a normal stop


def test_worker_crash_is_restarted_and_segment_survives(tmp_path):
    s = start(tmp_path)
    seg = segment_of(s)
    try:
        assert register_contact(s.addr, "user0001", "pw0001", "example.com", "<sip:u@127.0.0.1:41001>") == 200
        pids = worker_pids(s)
        os.kill(pids[0], signal.SIGKILL)
        assert s.wait_for(r"worker 0 \(pid \d+\) killed by signal SIGKILL; restarting", 10), s.log()
        deadline = time.monotonic() + 30
        while len(re.findall(r"worker 0 ready", s.log())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(re.findall(r"worker 0 ready", s.log())) == 2, s.log()
        # the binding made before the crash is still there (asked from several sockets, so both processes answer)
        for _ in range(6):
            assert "sip:u@127.0.0.1:41001" in fetch_contacts(s.addr, "user0001", "pw0001", "example.com")
        assert register_contact(s.addr, "user0002", "pw0002", "example.com", "<sip:u@127.0.0.1:41002>") == 200
    finally:
        s.stop()
    assert not os.path.exists(seg)       # no leaked /dev/shm file after a worker was SIGKILLed


def test_full_segment_answers_503_and_says_what_to_raise(tmp_path):
    s = start(tmp_path, n=1, extra="[location]\nshm_slots = 8\n")
    try:
        statuses = [register_contact(s.addr, f"user{i:04d}", f"pw{i:04d}", "example.com",
                                     f"<sip:u@127.0.0.1:{42000 + i}>") for i in range(12)]
        assert statuses[0] == 200
        assert 503 in statuses and statuses.count(200) >= 6
        assert s.wait_for(r"shm_slots", 5)
        # the ones that got in are intact
        assert len(fetch_contacts(s.addr, "user0000", "pw0000", "example.com")) == 1
        assert s.alive()
    finally:
        s.stop()


def test_sigterm_stops_cleanly(tmp_path):
    s = start(tmp_path)
    seg = segment_of(s)
    pids = worker_pids(s)
    s.signal(signal.SIGTERM)
    s.proc.wait(10)
    assert s.proc.returncode == 0
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(seg)
