"""Which parser twin is in use: the Cython one when it is built (unless FTSIP_PURE=1), else the pure one."""
from ftsip import _fast
from ftsip.sip import pyparse

PURE = pyparse
FAST = _fast.load("sipparse")
DEFAULT = FAST if FAST is not None else PURE
NAME = "cython" if DEFAULT is FAST else "python"
