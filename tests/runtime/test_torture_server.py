"""Every RFC 4475 / RFC 5118 torture message against the server: the answer the manifest expects (in memory, where
every datagram the core sends is visible), and the real server over UDP staying alive through all of them."""
import socket

import pytest
from sip.conftest import load_torture_cases
from support import FakeCtx, ServerProcess, options, udp_exchange

from ftsip import config
from ftsip.app import App
from ftsip.auth import UserStore
from ftsip.sip import parse

CASES = load_torture_cases()
REJECTIONS = (400, 505, 513)


def app():
    cfg = config.load(overrides={("server", "domain"): ["example.com"], ("auth", "register"): False,
                                 ("auth", "methods"): []})
    a = App(cfg, users=UserStore(realm="example.com"), secret=b"t" * 32)
    a.bind("127.0.0.1", 5060)
    return a


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_server_answers_as_the_manifest_says(case):
    a, ctx = app(), FakeCtx()
    a.attach(ctx, 1000.0)
    a.on_datagram(case["data"], ("192.0.2.200", 5060), 1000.0, ctx)
    finals = []
    for data, _addr in ctx.take():
        if data.startswith(b"SIP/2.0 "):
            status = int(data[8:11])
            if status >= 200:
                finals.append(status)
    want = case["server_status"]
    if want == "drop":
        assert finals == []
    elif want == "accept":
        assert not any(s in REJECTIONS for s in finals), finals
    elif isinstance(want, list):
        assert len(finals) == 1 and finals[0] in want, finals
    else:
        assert finals == [want]
    assert ctx.stats.counters.get("errors.core", 0) == 0


def test_real_server_survives_every_torture_message(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["example.com"]\n'
                   '[auth]\nregister = false\nmethods = []\n')
    with ServerProcess("--config", str(cfg)) as s:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for case in CASES:
            sock.sendto(case["data"], s.addr)
        sock.close()
        [pong] = udp_exchange(s.addr, options(s.addr))
        assert parse(pong).status == 200
        assert s.alive()
        log = s.log(0.2)
    assert "Traceback" not in log and "error handling a datagram" not in log
