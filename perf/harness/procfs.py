"""Reading CPU time and memory of process trees and of the whole machine from /proc (Linux only).

CPU time of a process (``utime + stime`` in /proc/<pid>/stat) already covers all its threads, so a free-threaded
ftsip is one read; Kamailio is a main process with forked children, so the tree is summed. Memory: RSS counts shared
memory once per process that maps it (Kamailio's shared memory segment would be counted children+5 times), so the
tree's PSS (proportional set size, from smaps_rollup) is the number to compare; RSS is kept beside it.
"""
from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rp = data.rfind(b")")
    return data[rp + 2:].split()


def proc_cpu_seconds(pid):
    """utime + stime of one process (all its threads), in seconds; None if it is gone."""
    f = _stat_fields(pid)
    if f is None:
        return None
    # after ")": state(0) ppid(1) ... utime(11) stime(12)
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_ppid(pid):
    f = _stat_fields(pid)
    return None if f is None else int(f[1])


def descendants(pid):
    """All live descendants of ``pid`` (children, grandchildren, ...)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(name)
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, ()):
            out.append(c)
            todo.append(c)
    return out


def tree(pid, include_children=True):
    return [pid] + (descendants(pid) if include_children else [])


def tree_cpu_seconds(pids):
    """Summed CPU seconds of the given processes (those that are gone count 0)."""
    total = 0.0
    for p in pids:
        c = proc_cpu_seconds(p)
        if c is not None:
            total += c
    return total


def proc_memory_kb(pid):
    """(rss_kb, pss_kb) of one process; pss is None when smaps_rollup is unreadable."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE_KB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None, None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


def tree_memory_kb(pids):
    """{'rss_kb': sum of RSS (over-counts shared memory), 'pss_kb': sum of PSS (or None)}."""
    rss_total, pss_total, pss_ok = 0, 0, True
    for p in pids:
        rss, pss = proc_memory_kb(p)
        if rss is None:
            continue
        rss_total += rss
        if pss is None:
            pss_ok = False
        else:
            pss_total += pss
    return {"rss_kb": rss_total, "pss_kb": pss_total if pss_ok else None}


def machine_cpu():
    """(busy_seconds, total_seconds) summed over all CPUs since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    vals = [int(v) for v in parts[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)   # idle + iowait
    total = sum(vals[:8])                                  # guest time is already inside user/nice
    return (total - idle) / CLK_TCK, total / CLK_TCK


def ncpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuMark:
    """A point in time with the CPU counters the harness compares between two points."""

    __slots__ = ("t", "server", "generators", "machine_busy", "machine_total")

    def __init__(self, server, generators):
        self.t = time.monotonic()
        self.server = server
        self.generators = generators
        self.machine_busy, self.machine_total = machine_cpu()
