"""ftsip's capacity harness: SIPp-driven step tests against ftsip, Kamailio or any SIP server (issue 7).

Modules: ``sut`` (start/stop/measure systems under test), ``users`` (user populations), ``sipp`` (SIPp runs and their
statistics), ``workloads`` (what is sent: REGISTER now, calls later), ``step`` (the step test), ``report`` (tables,
JSON, plots), ``cli`` (``python -m perf.harness``).
"""
