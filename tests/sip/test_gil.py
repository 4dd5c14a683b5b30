"""The GIL stays disabled with all of ftsip imported, and the compiled parser twin is the one in use when built.

On a free-threaded interpreter, importing an extension module that does not declare itself free-threading
compatible (Cython: ``# cython: freethreading_compatible=True``) silently turns the GIL back on for the whole
process. These tests import every module of the package (compiled ones included) and check, from a running thread,
that it is still off. ``FTSIP_REQUIRE_FAST=1`` (CI sets it) makes a missing compiled twin a failure instead of a
silent fallback to the pure one.
"""
import importlib
import os
import pkgutil
import subprocess
import sys
import sysconfig
import threading

import pytest

import ftsip

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

# run the import walk in a fresh interpreter, so modules other tests imported (or PYTHON_GIL) cannot hide anything
WALK = r"""
import importlib, pkgutil, sys, threading, json
import ftsip
names, failed = [], {}
for info in pkgutil.walk_packages(ftsip.__path__, "ftsip."):
    try:
        importlib.import_module(info.name)
        names.append(info.name)
    except Exception as e:  # reported by the test
        failed[info.name] = f"{type(e).__name__}: {e}"
seen = []
t = threading.Thread(target=lambda: seen.append(sys._is_gil_enabled()))
t.start(); t.join()
print(json.dumps({"imported": names, "failed": failed, "gil_in_thread": seen[0],
                  "gil_main": sys._is_gil_enabled()}))
"""


def all_module_names():
    return [info.name for info in pkgutil.walk_packages(ftsip.__path__, "ftsip.")]


@pytest.mark.skipif(not FREE_THREADED, reason="not a free-threaded (--disable-gil) interpreter")
def test_gil_stays_disabled_after_importing_everything():
    import json
    env = dict(os.environ)
    env.pop("PYTHON_GIL", None)          # PYTHON_GIL=0 would force the GIL off and hide an offender
    root = os.path.dirname(os.path.dirname(os.path.abspath(ftsip.__file__)))
    proc = subprocess.run([sys.executable, "-c", WALK], capture_output=True, text=True, env=env, cwd=root,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["failed"], f"modules that do not import: {result['failed']}"
    compiled = [n for n in result["imported"] if n.startswith("ftsip._fast.") and n != "ftsip._fast"]
    assert "ftsip.sip.pyparse" in result["imported"]
    assert result["gil_in_thread"] is False, (
        f"the GIL was re-enabled by an import (compiled modules: {compiled}); stderr: {proc.stderr}")
    assert result["gil_main"] is False
    # the interpreter warns when an extension re-enables the GIL: make sure it did not
    assert "GIL" not in proc.stderr, proc.stderr


@pytest.mark.skipif(not FREE_THREADED, reason="not a free-threaded (--disable-gil) interpreter")
def test_gil_disabled_in_this_process():
    for name in all_module_names():
        try:
            importlib.import_module(name)
        except Exception:   # noqa: BLE001 - the subprocess test above reports import failures
            pass
    seen = []
    t = threading.Thread(target=lambda: seen.append(sys._is_gil_enabled()))
    t.start()
    t.join()
    if os.environ.get("PYTHON_GIL") not in (None, ""):
        pytest.skip("PYTHON_GIL is set: it decides, not the imports")
    assert seen == [False]


def test_compiled_twin_in_use():
    from ftsip import _fast
    from ftsip.sip import backend
    if os.environ.get("FTSIP_REQUIRE_FAST", "") not in ("", "0"):
        assert not _fast.PURE, "FTSIP_REQUIRE_FAST=1 with FTSIP_PURE set: contradictory settings"
        assert backend.FAST is not None, (
            "FTSIP_REQUIRE_FAST=1 but ftsip._fast.sipparse is not built (python setup.py build_ext --inplace)")
    if backend.FAST is None:
        pytest.skip("the Cython twin is not built (or FTSIP_PURE=1): the pure one is in use")
    if not _fast.PURE:
        assert backend.DEFAULT is backend.FAST
        assert backend.NAME == "cython"
        import ftsip.sip.message as message
        m = message.parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1"
                          b"\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n")
        assert m._p is backend.FAST
    assert backend.FAST.__name__ == "ftsip._fast.sipparse"
    assert backend.FAST.__file__.endswith((".so", ".pyd")), backend.FAST.__file__


def test_pure_env_forces_pure_twin():
    """FTSIP_PURE=1 selects the pure twin (checked in a fresh interpreter)."""
    env = dict(os.environ, FTSIP_PURE="1")
    env.pop("FTSIP_REQUIRE_FAST", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(ftsip.__file__)))
    proc = subprocess.run([sys.executable, "-c", "from ftsip.sip import backend; print(backend.NAME)"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"
