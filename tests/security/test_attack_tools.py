"""The real attack tools from Debian's sipvicious (svmap, svwar, svcrack) against a real `ftsip serve` on loopback
(issue 6): discovery works, enumeration finds nothing, password guessing is throttled per (user, source) without
locking the real user out from her own address."""
import os
import socket
import subprocess

import pytest
from support import ServerProcess, digest_header, free_udp_port, have

from ftsip.sip import parse

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not (have("svmap") and have("svwar") and have("svcrack")),
                                 reason="sipvicious not installed")]

USERS = {"100": "pw100secret", "101": "pw101", "205": "letmein42", "alice": "secret", "bob": "hunter2hunter2"}
LIMIT = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack")
    (d / "users.csv").write_text("username,password\n" + "".join(f"{u},{p}\n" for u, p in USERS.items()))
    (d / "ftsip.toml").write_text(
        '[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["127.0.0.1"]\nthreads = 2\n'
        '[auth]\nusers = ["users.csv"]\n'
        f'[security]\nauth_fail_limit = {LIMIT}\nauth_fail_window = 300\nauth_fail_status = 403\n')
    with ServerProcess("--config", str(d / "ftsip.toml")) as s:
        s.dir = d
        yield s


def tool(name, server, *args, timeout=60):
    """Run a sipvicious tool from its own free local port on 127.0.0.1; returns its whole output."""
    cmd = [name, "-p", str(server.port), "-P", str(free_udp_port()), "-b", "127.0.0.1", *args, "127.0.0.1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, HOME=str(server.dir)))
    return out.stdout + out.stderr


def register_from(src_ip, server, user, password, domain="127.0.0.1"):
    """REGISTER user@domain from ``src_ip`` answering the 401 like a phone; returns the final response."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src_ip, 0))
    s.settimeout(3)
    port = s.getsockname()[1]
    try:
        auth = None
        for cseq in (1, 2):
            lines = [f"REGISTER sip:{domain} SIP/2.0",
                     f"Via: SIP/2.0/UDP {src_ip}:{port};branch=z9hG4bKreal{port}{cseq};rport", "Max-Forwards: 70",
                     f"From: <sip:{user}@{domain}>;tag=r{port}", f"To: <sip:{user}@{domain}>",
                     f"Call-ID: real-{user}-{port}@{src_ip}", f"CSeq: {cseq} REGISTER",
                     f"Contact: <sip:{user}@{src_ip}:{port}>", "Expires: 600"]
            if auth:
                lines.append(auth)
            s.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), server.addr)
            r = parse(s.recvfrom(65535)[0])
            if r.status != 401:
                return r
            ch = [v for v in r.get_all("www-authenticate") if "MD5" in v][0]
            auth = digest_header(ch, user, password, "REGISTER", f"sip:{domain}")
        return r
    finally:
        s.close()


def test_svmap_discovers_the_server(server):
    out = tool("svmap", server)
    assert f"127.0.0.1:{server.port}" in out and "ftsip" in out, out


@pytest.mark.parametrize("force", [False, True])
def test_svwar_register_scan_reveals_no_extension(server, force):
    # a range holding three real users (100, 101, 205) and many that do not exist
    out = tool("svwar", server, "-e", "100-110,200-210", *(["--force"] if force else []))
    assert "found nothing" in out, out
    assert "exists" not in out and "| 100" not in out and "| 205" not in out, out


def test_svwar_options_scan_reveals_no_extension(server):
    # OPTIONS to a user is proxied: a known user without bindings and an unknown one both get 404
    out = tool("svwar", server, "-e", "100-110,200-210", "-m", "OPTIONS", "--force")
    assert "exists" not in out and "found nothing" in out, out


def test_svcrack_finds_a_password_tried_before_the_limit(server, tmp_path):
    # the control: the tool does crack ftsip's digest when the right password comes early enough
    words = tmp_path / "w.txt"
    words.write_text("guess1\nguess2\npw100secret\n")
    out = tool("svcrack", server, "-u", "100", "-d", str(words), "--maximumtime", "2")
    assert "pw100secret" in out and "found nothing" not in out, out


def test_svcrack_is_throttled_and_the_real_user_is_not_locked_out(server, tmp_path):
    words = tmp_path / "w.txt"
    wrong = [f"wrong{i}" for i in range(LIMIT + 3)]
    words.write_text("\n".join(wrong + [USERS["205"], "after1", "after2"]) + "\n")
    out = tool("svcrack", server, "-u", "205", "-d", str(words), "--maximumtime", "2")
    assert "found nothing" in out and USERS["205"] not in out, out
    assert server.wait_for(rf"auth: {LIMIT} failed authentications for '205' from 127\.0\.0\.1", 5), server.log()
    # from the attacker's address even the right password is refused now, without being checked (Retry-After)
    r = register_from("127.0.0.1", server, "205", USERS["205"])
    assert r.status == 403 and int(r.get("retry-after")) > 200
    # the real user, from her own address, registers at once
    assert register_from("127.0.0.2", server, "205", USERS["205"]).status == 200
    # and an unknown user at the attacker's address gets exactly what a known one got before the limit
    assert register_from("127.0.0.1", server, "nosuch", "x").status == 401
    assert server.alive()
