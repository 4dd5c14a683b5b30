"""Smoke test of the capacity harness (perf/harness): one short REGISTER-with-auth step at a low rate, and one short
step of the paper's call mix (completed / voicemail / cancelled, authenticated, through callee UASs), against ftsip
and against Kamailio (perf/kamailio/kamailio.cfg), through the same code paths as `python -m perf.harness register`
and `calls`. Needs sipp (and kamailio for its cases); each case takes about 8-12 s."""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness.callmix import CallMix  # noqa: E402
from perf.harness.step import run_series  # noqa: E402
from perf.harness.sut import FtsipSUT, KamailioSUT, SUTError  # noqa: E402
from perf.harness.users import Population, write_ftsip_csv, write_kamailio_db  # noqa: E402
from perf.harness.workloads import CallWorkload, RegisterWorkload, UsersWorkload  # noqa: E402

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


# --- the call mix: short holds (compression 600: completed 0.5 s, voicemail 0.05 s), fast ringing
CALL_RATE = 20
CALL_USERS = 200


def _tiny_mix():
    return CallMix(compression=600, hold_cap=2.0, ring_min_ms=50, ring_max_ms=200)


def _call_step(make_sut, tmp_path, workload):
    pop = Population(CALL_USERS)
    files = {"csv": write_ftsip_csv(pop, str(tmp_path / "users.csv")),
             "kamailio_db": write_kamailio_db(pop, str(tmp_path / "kdb"))}
    workload.prepare(str(tmp_path), pop, 1)
    sut = make_sut(files, workload.sut_options()["voicemail"])
    level = CALL_RATE if workload.level_unit == "/s" else CALL_USERS
    results, errors = run_series([sut], workload, [level], duration=3, warmup=1, workdir=str(tmp_path),
                                 sipp_opts={"max_socket": 20, "recv_timeout_ms": 5000}, settle=0, idle_seconds=0.5)
    assert not errors, errors
    assert not sut.alive(), "the harness must stop what it started"
    assert not workload.peers(), "the callee UASs must be stopped"
    [r] = results
    assert r.failed == 0 and r.peer_failed == 0, (r.failures, r.unexpected_codes, r.notes)
    return r


def _check_mix(r, kinds):
    assert set(r.kinds) == set(kinds), r.kinds
    for k in ("completed", "voicemail", "cancelled"):
        assert r.kinds[k]["created"] > 0 and r.kinds[k]["failed"] == 0, (k, r.kinds[k])
    assert r.passed, (r.verdict, r.notes)
    assert r.server_cpu_s and r.cpu_per_tx_us and r.cpu_per_tx_us > 0
    assert any(g.get("peer") for g in r.generators), "UAS CPU is measured"


def _ftsip(files, vm):
    return FtsipSUT(files["csv"], threads=2, python=sys.executable,
                    settings={"proxy": {"voicemail": vm}, "security": {"overload_lag": 0}})


def _kamailio(files, vm):
    return KamailioSUT(files["kamailio_db"], children=2, hash_size=10, shm_mb=64, voicemail=vm)


def test_call_mix_step_ftsip(tmp_path):
    r = _call_step(_ftsip, tmp_path, CallWorkload(_tiny_mix(), register_rate=500))
    _check_mix(r, {"completed", "voicemail", "cancelled"})
    # completed and voicemail calls: 4 transactions, cancelled 3
    assert 3.0 < r.transactions / max(1, r.successful) <= 4.0


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed")
def test_call_mix_step_kamailio(tmp_path):
    r = _call_step(_kamailio, tmp_path, CallWorkload(_tiny_mix(), register_rate=500))
    _check_mix(r, {"completed", "voicemail", "cancelled"})


def test_users_step_ftsip(tmp_path):
    """The users workload: 200 users all registered, REGISTER refreshes + the call mix at 600x compression."""
    wl = UsersWorkload(_tiny_mix(), register_rate=500)
    r = _call_step(_ftsip, tmp_path, wl)
    _check_mix(r, {"register", "completed", "voicemail", "cancelled"})
    assert wl.registered and max(wl.registered.values()) == CALL_USERS
    assert abs(r.offered_rate - (CALL_USERS * 600 / 600 + CALL_USERS * 600 / 3600)) < 0.01
