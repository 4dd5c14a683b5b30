"""Two real softphones (baresip, headless) register to ftsip and call each other through it."""
import subprocess
import time

import pytest
from support import ServerProcess, fetch_contacts, free_udp_port, have, write_users

pytestmark = [pytest.mark.interop, pytest.mark.skipif(not have("baresip"), reason="baresip not installed")]

CONFIG = """poll_method\tepoll
sip_listen\t127.0.0.1:{port}
sip_trans_def\tudp
dns_server\t127.0.0.1:53
audio_player\taubridge,nil
audio_source\taubridge,nil
audio_alert\taubridge,nil
module_path\t/usr/lib/baresip/modules
module\tstdio.so
module\tg711.so
module\taubridge.so
module_app\taccount.so
module_app\tmenu.so
"""
# baresip 1.0 notes: dns_server must be set or registration fails with ENOSYS on this closed network; its TLS
# listener takes port+1, so the two phones need ports further apart; aubridge is a null audio device.


def phone(d, user, port, proxy_port):
    d.mkdir()
    (d / "config").write_text(CONFIG.format(port=port))
    (d / "accounts").write_text(f'<sip:{user}@example.com>;auth_user={user};auth_pass=pw{user[-4:]};'
                                f'outbound="sip:127.0.0.1:{proxy_port}";answermode=auto;regint=600;'
                                f'audio_codecs=PCMU\n')
    return d


def test_two_softphones_call_through_ftsip(tmp_path):
    users = write_users(tmp_path / "users.csv", 10)
    with ServerProcess("--domain", "example.com", "--users", str(users)) as s:
        pa, pb = free_udp_port(), free_udp_port() + 10
        a = phone(tmp_path / "a", "user0001", pa, s.port)
        b = phone(tmp_path / "b", "user0002", pb, s.port)
        callee = subprocess.Popen(["baresip", "-f", str(b), "-t", "15"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not fetch_contacts(s.addr, "user0002", "pw0002", "example.com"):
                assert time.monotonic() < deadline, "the callee never registered"
                time.sleep(0.2)
            caller = subprocess.Popen(["baresip", "-f", str(a)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
            for cmd, pause in (("/dial sip:user0002@example.com", 4), ("/hangup", 2), ("/quit", 1)):
                time.sleep(1 if cmd.startswith("/dial") else 0)
                caller.stdin.write((cmd + "\n").encode())
                caller.stdin.flush()
                time.sleep(pause)
            out_a = caller.communicate(timeout=10)[0].decode(errors="replace")
        finally:
            callee.terminate()
            out_b = callee.communicate(timeout=10)[0].decode(errors="replace")
        log = s.log()
    assert "Call established: sip:user0002@example.com" in out_a, out_a[-3000:]
    assert "Call established: sip:user0001@example.com" in out_b, out_b[-3000:]
    assert "Call with sip:user0002@example.com terminated" in out_a
    assert "Call with sip:user0001@example.com terminated" in out_b     # the BYE reached the callee
    assert "Traceback" not in log
