"""The real server process, talked to over UDP by real SIP tools."""
import signal
import subprocess
import time

import pytest
from support import ServerProcess, have, options, udp_exchange

from ftsip.sip import parse


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--threads", "2") as s:
        yield s


def test_options_ping(server):
    [data] = udp_exchange(server.addr, options(server.addr))
    assert parse(data).status == 200


@pytest.mark.skipif(not have("sipsak"), reason="sipsak not installed")
def test_sipsak_options(server):
    # sipsak 0.9.8 truncates a 5-digit port in the Request-URI: address the domain, send via -p
    out = subprocess.run(["sipsak", "-s", f"sip:{server.host}", "-p", f"{server.host}:{server.port}", "-vv"],
                         capture_output=True, text=True, timeout=20)
    assert "SIP/2.0 200 OK" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0


@pytest.mark.skipif(not have("sipp"), reason="sipp not installed")
def test_sipp_options_many_sockets(server, tmp_path):
    scen = tmp_path / "options.xml"
    scen.write_text("""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options">
  <send retrans="500"><![CDATA[
OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:probe@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
To: <sip:[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
""")
    out = subprocess.run(["sipp", "-sf", str(scen), "-m", "400", "-r", "200", "-t", "un", "-max_socket", "20",
                          "-i", "127.0.0.1", "-p", "0", "-nostdin", "-bg" if False else "-trace_err",
                          "-timeout", "30", f"{server.host}:{server.port}"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_graceful_stop_within_a_second():
    s = ServerProcess("--threads", "2")
    assert s.alive()
    t = time.monotonic()
    s.signal(signal.SIGTERM)
    s.proc.wait(5)
    assert time.monotonic() - t < 1.5
    assert s.proc.returncode == 0
    assert "stopped" in s.log()


def test_ipv6_listen():
    s = ServerProcess("--threads", "1", host="::1")
    try:
        [data] = udp_exchange(s.addr, options(s.addr))
        assert parse(data).status == 200
    finally:
        s.stop()


def test_bad_config_is_refused_with_file_and_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[server]\nthreads = -2\n")
    out = subprocess.run([__import__("sys").executable, "-m", "ftsip.cli", "serve", "--config", str(p)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert str(p) in out.stderr and "threads" in out.stderr
