"""The stateful proxy with real SIP peers: SIPp callers and callees through ftsip's registrar and proxy (issue 4)."""
import os
import subprocess
import time

import pytest
from support import ROOT, ServerProcess, free_udp_port, have, register_contact, sipp, sipp_counts

pytestmark = [pytest.mark.interop, pytest.mark.skipif(not have("sipp"), reason="sipp not installed")]

DOMAIN = "example.com"


def calls(path, pairs):
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for caller, callee in pairs:
            f.write(f"user{caller:04d};{DOMAIN};[authentication username=user{caller:04d} "
                    f"password=pw{caller:04d}];{callee}\n")
    return path


def uas(scenario, port, n, *args, cwd):
    """A SIPp callee that handles ``n`` calls and exits (0 when all succeeded)."""
    cmd = ["sipp", "-sf", os.path.join(ROOT, "perf", "scenarios", scenario), "-i", "127.0.0.1", "-p", str(port),
           "-m", str(n), "-nostdin", "-trace_err", "-timeout", "60", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    time.sleep(0.3)
    return p


def finish(p, timeout=30):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return p.returncode, out.decode(errors="replace")


def failing(tmp_path, status):
    with open(os.path.join(ROOT, "perf", "scenarios", "uac_fail.xml")) as f:
        text = f.read().replace("FINAL_STATUS", str(status))
    p = tmp_path / f"uac_fail_{status}.xml"
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module", params=["threads", "processes"])
def env(tmp_path_factory, request):
    """The server in both architectures: 2 threads, or 2 worker processes and a shared-memory segment (there, a
    REGISTER and the INVITE that looks the binding up are often handled by different processes)."""
    d = tmp_path_factory.mktemp("calls")
    vm_port = free_udp_port()
    users = d / "users.csv"
    with open(users, "w") as f:          # users 1100-1199 have a voicemail box (the user file's voicemail column)
        f.write("username,password,voicemail\n")
        for i in range(2000):
            vm = f"sip:vm@127.0.0.1:{vm_port}" if 1100 <= i < 1200 else ""
            f.write(f"user{i:04d},pw{i:04d},{vm}\n")
    cfg = d / "ftsip.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["{DOMAIN}"]\nthreads = 2\n'
                   f'mode = "{request.param}"\nworkers = 2\n'
                   f'[security]\noverload_lag = 0\n'  # functional test: never shed under CI load
                   f'[auth]\nusers = ["{users}"]\n')
    with ServerProcess("--config", str(cfg), timeout=60) as s:
        yield s, vm_port, d


def register(server, user, port, call_id=None):
    assert register_contact(server.addr, f"user{user:04d}", f"pw{user:04d}", DOMAIN,
                            f"<sip:user{user:04d}@127.0.0.1:{port}>", call_id=call_id) == 200


def test_completed_calls_many_sockets(env, tmp_path):
    server, _, _ = env
    port = free_udp_port()
    for callee in range(1000, 1020):
        register(server, callee, port)
    n = 100
    callee_proc = uas("uas_answer.xml", port, n, "-d", "0", cwd=tmp_path)
    inf = calls(tmp_path / "c.csv", [(i, f"user{1000 + i % 20:04d}") for i in range(n)])
    rc, out = sipp("uac_call.xml", server.addr, "-m", str(n), "-r", "40", "-t", "un", "-max_socket", "50",
                   "-d", "200", "-timeout", "60", inf=inf, cwd=tmp_path)
    assert sipp_counts(out) == (n, 0), out[-3000:]
    urc, uout = finish(callee_proc)
    assert urc == 0, uout[-2000:]


def test_unregistered_and_unknown_users(env, tmp_path):
    server, _, _ = env
    inf = calls(tmp_path / "c.csv", [(1, "user1900")])          # a user with no binding: 480
    rc, out = sipp(failing(tmp_path, 480), server.addr, "-m", "1", inf=inf, cwd=tmp_path)
    assert rc == 0, out[-2000:]
    inf = calls(tmp_path / "d.csv", [(1, "nobody")])            # nobody by that name: 404
    rc, out = sipp(failing(tmp_path, 404), server.addr, "-m", "1", inf=inf, cwd=tmp_path)
    assert rc == 0, out[-2000:]


def test_busy_callee_fails_over_to_voicemail(env, tmp_path):
    server, vm_port, _ = env
    busy_port = free_udp_port()
    register(server, 1100, busy_port)
    busy = uas("uas_busy.xml", busy_port, 3, cwd=tmp_path)
    vm = uas("uas_answer.xml", vm_port, 3, "-d", "0", cwd=tmp_path)
    inf = calls(tmp_path / "c.csv", [(i, "user1100") for i in range(3)])
    rc, out = sipp("uac_call.xml", server.addr, "-m", "3", "-r", "5", "-d", "100", inf=inf, cwd=tmp_path)
    assert sipp_counts(out) == (3, 0), out[-3000:]
    assert finish(busy)[0] == 0        # the callee said busy three times
    assert finish(vm)[0] == 0          # and voicemail took the three calls


def test_caller_cancels_before_answer(env, tmp_path):
    server, _, _ = env
    port = free_udp_port()
    register(server, 1200, port)
    ring = uas("uas_ring.xml", port, 5, cwd=tmp_path)
    inf = calls(tmp_path / "c.csv", [(i, "user1200") for i in range(5)])
    rc, out = sipp("uac_cancel.xml", server.addr, "-m", "5", "-r", "10", "-d", "200", inf=inf, cwd=tmp_path)
    assert sipp_counts(out) == (5, 0), out[-3000:]
    rrc, rout = finish(ring)
    assert rrc == 0, rout[-2000:]


def test_forking_to_two_contacts(env, tmp_path):
    server, _, _ = env
    answer_port, ring_port = free_udp_port(), free_udp_port()
    register(server, 1300, answer_port, call_id="phone-a")
    register(server, 1300, ring_port, call_id="phone-b")
    answering = uas("uas_answer.xml", answer_port, 2, "-d", "300", cwd=tmp_path)
    ringing = uas("uas_ring.xml", ring_port, 2, cwd=tmp_path)
    inf = calls(tmp_path / "c.csv", [(i, "user1300") for i in range(2)])
    rc, out = sipp("uac_call.xml", server.addr, "-m", "2", "-r", "2", "-d", "100", inf=inf, cwd=tmp_path)
    assert sipp_counts(out) == (2, 0), out[-3000:]
    assert finish(answering)[0] == 0     # one phone answered each call
    rrc, rout = finish(ringing)
    assert rrc == 0, rout[-2000:]        # the other was cancelled (CANCEL, 200, 487, ACK)


def test_calls_complete_under_packet_loss(env, tmp_path):
    server, _, _ = env
    port = free_udp_port()
    for callee in range(1400, 1410):
        register(server, callee, port)
    n = 40
    callee_proc = uas("uas_answer.xml", port, n, "-d", "0", "-lost", "5", cwd=tmp_path)
    inf = calls(tmp_path / "c.csv", [(i, f"user{1400 + i % 10:04d}") for i in range(n)])
    rc, out = sipp("uac_call.xml", server.addr, "-m", str(n), "-r", "10", "-t", "un", "-max_socket", "20",
                   "-d", "100", "-lost", "5", "-timeout", "90", inf=inf, cwd=tmp_path, timeout=150)
    ok, failed = sipp_counts(out)
    finish(callee_proc, timeout=5)
    # 5% loss each way at both SIPps: retransmissions recover; SIPp itself gives up on a call whose final ACK is
    # lost (it does not answer a retransmitted 200 once it has moved on), so allow that few
    assert ok >= n * 0.9, out[-3000:]
