"""What every benchmark records about its run - git revision, machine, interpreter - in one place for perf/.

Each ``bench_*.py`` builds its JSON header from these (plus what it alone knows, e.g. which twin it measured); the
capacity harness (``perf/harness/report.py``) uses the same helpers.
"""
import datetime
import os
import platform
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args):
    """``git args...`` in the repository; its stdout stripped, or None when git is missing or fails."""
    try:
        out = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision(paths=("ftsip",)):
    """The short revision, with ``+dirty`` when tracked files under ``paths`` have uncommitted changes."""
    rev = git("rev-parse", "--short", "HEAD")
    if not rev:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return rev + ("+dirty" if dirty else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def interpreter():
    """This interpreter: version, executable, whether it is a free-threaded build and whether the GIL is on now."""
    return {"python": sys.version.split()[0], "version": sys.version,
            "implementation": platform.python_implementation(), "executable": sys.executable,
            "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
            "gil_enabled": getattr(sys, "_is_gil_enabled", lambda: True)()}


def machine():
    return {"node": platform.node(), "machine": platform.machine(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "platform": platform.platform()}


def environment(paths=("ftsip",), **extra):
    """One flat dict: interpreter, machine, git revision, load average, date (UTC), then ``extra``."""
    env = interpreter()
    env.update(machine())
    env.update(git_revision=git_revision(paths), loadavg=os.getloadavg(),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    env.update(extra)
    return env
