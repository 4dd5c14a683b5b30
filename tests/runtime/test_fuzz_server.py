"""The mutation fuzzer against the running server: thousands of broken datagrams, a liveness probe every few hundred,
no worker ever dies or wedges, every datagram is answered or counted as dropped."""
import socket
import time

import pytest
from sip.fuzz import SEEDS, mutants, torture_seeds
from support import ServerProcess, options, udp_exchange

from ftsip.sip import parse

COUNT = 3000
PROBE_EVERY = 500


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_fuzzed_datagrams_never_kill_or_wedge_a_worker(tmp_path, mode):
    cfg = tmp_path / "f.toml"
    cfg.write_text('[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["example.com", "atlanta.example.com", '
                   f'"biloxi.example.com"]\nmode = "{mode}"\nworkers = 2\nthreads = 2\n'
                   '[security]\noverload_lag = 0\n')
    seeds = [s if isinstance(s, bytes) else s.encode("latin-1") for s in list(SEEDS) + list(torture_seeds())]
    with ServerProcess("--config", str(cfg), timeout=60) as server:
        senders = []
        for _ in range(16):          # many source ports: the datagrams spread over every worker
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            senders.append(s)
        sent = 0
        for i, data in enumerate(mutants(seeds, COUNT, seed=20261126)):
            try:
                senders[i % len(senders)].sendto(data[:65507], server.addr)
                sent += 1
            except OSError:
                pass                 # e.g. EMSGSIZE: nothing reached the server
            if i % PROBE_EVERY == PROBE_EVERY - 1:
                for s in senders:    # drain the answers so our own buffers never drop the probe's
                    try:
                        while True:
                            s.recv(65535)
                    except OSError:
                        pass
                for _ in range(3):   # liveness: every worker still answers (probes from fresh ports)
                    [pong] = udp_exchange(server.addr, options(server.addr, branch=f"z9hG4bKprobe{i}"), 2.0)
                    assert parse(pong).status == 200
                time.sleep(0.05)
        assert sent > COUNT * 0.9
        assert server.alive()
        log = server.log(0.3)
    assert "Traceback" not in log, log[-3000:]
    assert "error handling a datagram" not in log and "error in timer tick" not in log, log[-3000:]
