"""ftsip: a SIP proxy-registrar for free-threaded CPython."""

__version__ = "0.1.0"
