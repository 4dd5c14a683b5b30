"""Unit tests of the capacity harness's pure parts (no SIPp, no server): the user model's compression mapping, the
capped hold distributions, system specs, stack collapsing and the flame graph."""
import math
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from perf.harness.callmix import CallMix, HoldModel  # noqa: E402
from perf.harness.profile import collapse_perf_script, collapse_pyspy_raw, flamegraph_svg, top_functions  # noqa
from perf.harness.search import nice  # noqa: E402
from perf.harness.systems import config_label, parse_system  # noqa: E402
from perf.harness.workloads import callee_class  # noqa: E402


def test_compression_mapping():
    m = CallMix(compression=60)
    assert m.register_rate(6000) == pytest.approx(600.0)       # 6000 * 60 / 600
    assert m.call_rate(6000) == pytest.approx(100.0)           # 6000 * 60 / 3600
    h = m.holds()
    assert h["completed"].mean_ms == pytest.approx(5000.0)     # 300 s / 60
    assert h["voicemail"].mean_ms == pytest.approx(500.0)      # 30 s / 60
    assert m.tx_per_call() == pytest.approx(0.65 * 4 + 0.30 * 4 + 0.05 * 3)
    assert "360,000 real-time users" in m.describe_users(6000)


@pytest.mark.parametrize("model", [HoldModel("lognormal", 5000, 20000, 1.0), HoldModel("lognormal", 300, 900, 0.5),
                                   HoldModel("exponential", 500, 2000)])
def test_capped_holds_keep_the_mean(model):
    """The distribution's parameter is solved so that the CAPPED samples have the target mean."""
    p = model.params()
    rnd = random.Random(1)
    n = 200_000
    if model.distribution == "lognormal":
        xs = [min(model.cap_ms, math.exp(rnd.gauss(p["mean"], p["stdev"]))) for _ in range(n)]
    else:
        xs = [min(model.cap_ms, rnd.expovariate(1 / p["mean"])) for _ in range(n)]
    assert sum(xs) / n == pytest.approx(model.mean_ms, rel=0.02)
    assert 0 < model.capped_fraction() < 0.1


def test_callee_classes_follow_the_mix():
    counts = {}
    for i in range(2000):
        counts[callee_class(i)] = counts.get(callee_class(i), 0) + 1
    assert counts == {"answer": 1300, "busy": 600, "ring": 100}


def test_system_specs():
    s = parse_system("ftsip-gil:p2+table=fixed+hash_width=131072+gc=sweep+store=sqlite-query")
    assert (s["kind"], s["mode"], s["n"]) == ("ftsip", "processes", 2)
    assert s["python"].endswith(".venv-gil/bin/python")
    assert config_label(s["settings"]) == "fixed2^17-sqlite-sweep60s"
    assert parse_system("kamailio:c4")["n"] == 4
    assert parse_system("external:127.0.0.1:5070")["target"] == ("127.0.0.1", 5070)
    with pytest.raises(ValueError):
        parse_system("kamailio:t2")
    assert nice(1234, "users") == 1240 and nice(1500, "/s") == 1500


PERF_SCRIPT = """python 1234
\t  87a1f _PyEval_EvalFrameDefault (/x/bin/python3.13t)
\t     85 py::verify:/work/main/ftsip/auth/digest.py (/tmp/jitted-1-1.so)
\t 2e42b9 py_trampoline_evaluator (/x/bin/python3.13t)
\t     85 py::handle:/work/main/ftsip/app.py (/tmp/jitted-1-2.so)

python 1234
\t  11111 md5_block (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)
\t     85 py::verify:/work/main/ftsip/auth/digest.py (/tmp/jitted-1-1.so)
\t     85 py::handle:/work/main/ftsip/app.py (/tmp/jitted-1-2.so)
"""


def test_collapse_and_flamegraph():
    st = collapse_perf_script(PERF_SCRIPT.replace("/work/main", ROOT))
    assert st == {"handle (ftsip/app.py);verify (ftsip/auth/digest.py);_PyEval_EvalFrameDefault": 1,
                  "handle (ftsip/app.py);verify (ftsip/auth/digest.py);md5_block (libcrypto.so.3)": 1}
    selfs, incl = top_functions(st)
    assert incl[0][0] in ("handle (ftsip/app.py)", "verify (ftsip/auth/digest.py)") and incl[0][2] == 1.0
    raw = 'process 9:"python -m ftsip.cli";main (ftsip/cli.py:1);run (ftsip/runtime/threads.py:5) 7\n'
    assert collapse_pyspy_raw(raw) == {"main (cli.py);run (threads.py)": 7}
    svg = flamegraph_svg(st, "t")
    assert svg.startswith("<svg") and "verify" in svg and svg.count("<rect") >= 4
