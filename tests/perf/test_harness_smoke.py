"""Smoke test of the capacity harness (perf/harness): one short REGISTER-with-auth step at a low rate against ftsip
and against Kamailio (perf/kamailio/kamailio.cfg), through the same code path as `python -m perf.harness register`.
Needs sipp (and kamailio for the second case); each case takes about 8 s."""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness.step import run_series  # noqa: E402
from perf.harness.sut import FtsipSUT, KamailioSUT, SUTError  # noqa: E402
from perf.harness.users import Population, write_ftsip_csv, write_kamailio_db  # noqa: E402
from perf.harness.workloads import CallWorkload, RegisterWorkload  # noqa: E402

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed (sip-tester)")]

RATE = 100
USERS = 300


@pytest.fixture
def population(tmp_path):
    pop = Population(USERS)
    return pop, {"csv": write_ftsip_csv(pop, str(tmp_path / "users.csv")),
                 "kamailio_db": write_kamailio_db(pop, str(tmp_path / "kdb"))}


def _one_step(sut, pop, tmp_path):
    wl = RegisterWorkload(expires=900)
    wl.prepare(str(tmp_path), pop, 1)
    results, errors = run_series([sut], wl, [RATE], duration=3, warmup=1, workdir=str(tmp_path),
                                 sipp_opts={"max_socket": 20, "recv_timeout_ms": 5000}, settle=0, idle_seconds=0.5)
    assert not errors, errors
    assert not sut.alive(), "the harness must stop what it started"
    [r] = results
    assert r.failed == 0, (r.failures, r.unexpected_codes, r.notes)
    assert r.successful >= RATE * 3 * 0.9
    assert r.created >= RATE * 3 * 0.9 and r.achieved_rate >= RATE * 0.9
    assert r.server_cpu_s is not None and r.server_cpu_s > 0
    assert r.cpu_per_call_us and r.cpu_per_call_us > 0
    assert r.generators and r.generators[0]["cpu_cores"] is not None
    assert r.server_mem and r.server_mem["rss_kb"] > 0
    assert r.passed, r.verdict
    return r


def test_register_step_ftsip(population, tmp_path):
    pop, files = population
    _one_step(FtsipSUT(files["csv"], threads=2, python=sys.executable), pop, tmp_path)


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed")
def test_register_step_kamailio(population, tmp_path):
    pop, files = population
    _one_step(KamailioSUT(files["kamailio_db"], children=2, hash_size=10, shm_mb=64), pop, tmp_path)


def test_process_mode_fails_clearly_or_runs(population, tmp_path):
    """--mode processes either really forks workers or is refused with a message naming the missing mode."""
    _, files = population
    sut = FtsipSUT(files["csv"], mode="processes", threads=2, python=sys.executable)
    try:
        sut.start(timeout=20)
    except SUTError as e:
        assert "process" in str(e)
        assert not sut.alive()
    else:
        try:
            assert len(sut._pids) > 1
        finally:
            sut.stop()


def test_call_workload_is_a_clear_stub(tmp_path):
    with pytest.raises(NotImplementedError, match="proxy"):
        CallWorkload().prepare(str(tmp_path), Population(1), 1)
