"""Fixtures for the SIP message-layer tests: the RFC 4475 / RFC 5118 torture messages and their ground truth.

``torture_cases`` (a fixture) and ``load_torture_cases()`` give every entry of ``torture/manifest.toml`` (see its
header for the keys), in manifest order, as a dict with three more keys: ``name`` (the RFC's name for the
message), ``path`` (absolute) and ``data`` (the datagram, bytes). A test function that takes a ``torture_case``
argument is run once per message (ids are the names).
"""
import os
import tomllib

import pytest

TORTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")
_CACHE = []


def load_torture_cases():
    """Every torture case, as fresh dicts (callers may modify them)."""
    if not _CACHE:
        with open(os.path.join(TORTURE_DIR, "manifest.toml"), "rb") as f:
            manifest = tomllib.load(f)
        for name, entry in manifest.items():
            path = os.path.join(TORTURE_DIR, entry["file"])
            with open(path, "rb") as f:
                data = f.read()
            _CACHE.append(dict(entry, name=name, path=path, data=data))
    return [dict(case) for case in _CACHE]


@pytest.fixture(scope="session")
def torture_cases():
    return load_torture_cases()


def pytest_generate_tests(metafunc):
    if "torture_case" in metafunc.fixturenames:
        cases = load_torture_cases()
        metafunc.parametrize("torture_case", cases, ids=[case["name"] for case in cases])
