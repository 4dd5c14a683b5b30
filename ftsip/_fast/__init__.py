"""Cython twins of ftsip's hot paths.

Every module here has a pure-Python twin with the same API and behaviour; the twin is chosen at import time by the
package that owns it (the compiled one when it is built, unless FTSIP_PURE=1). Every .pyx file declares
``# cython: freethreading_compatible=True`` so importing it leaves the GIL disabled.
"""
import os

PURE = os.environ.get("FTSIP_PURE", "") not in ("", "0")


def load(name):
    """Import ``ftsip._fast.<name>`` or return None (not built, or FTSIP_PURE=1)."""
    if PURE:
        return None
    import importlib
    try:
        return importlib.import_module("ftsip._fast." + name)
    except ImportError:
        return None
