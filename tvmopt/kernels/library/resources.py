"""How many nvcc jobs this machine can run at once: the job slot count.

nvcc needs ~3.5 GB per CUTLASS instance, so N = min(cores, usable memory / 3.5 GB), at least one.
Usable memory is the least of MemAvailable and the headroom of every memory cgroup (v1 or v2)
above this process, so a container's limit counts; cores are this process's CPU affinity, capped
by any cgroup CPU quota. nvcc.py takes that many of the cache's slot files (kernel_cache.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# One CUTLASS sm90 instance needs ~3.4 GB of memory in nvcc (measured on the 2-core VM).
_MEMORY_PER_JOB = 3.5e9


def slot_count() -> int:
    """How many nvcc jobs this machine (this container) can run at once: one per core, and one
    per 3.5 GB of memory this process may really use; at least one."""
    return max(1, min(_cores(), int(_usable_memory() // _MEMORY_PER_JOB)))


def _usable_memory() -> float:
    """Bytes this process may still allocate: the least of MemAvailable and every enclosing
    cgroup's headroom (limit minus usage, reclaimable page cache not counted as usage)."""
    return min([_mem_available(), *_cgroup_headroom()])


def _mem_available() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return psutil.virtual_memory().available


def _cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    for quota in _cgroup_cpu_quota():
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_dirs(controller: str) -> list[tuple[int, list[Path]]]:
    """[(cgroup version, [this process's cgroup directory, its parents up to the mount])] for
    the hierarchies that carry `controller` (v1), and the unified one (v2)."""
    try:
        own = [line.rstrip("\n").split(":", 2) for line in open("/proc/self/cgroup")]
        mounts = [line.split() for line in open("/proc/self/mountinfo")]
    except OSError:
        return []
    found = []
    for fields in mounts:
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        fstype = fields[sep + 1]
        superopts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        mount_root, mount_point = fields[3], Path(fields[4])
        if fstype == "cgroup2":
            version, paths = 2, [p for hid, ctl, p in own if hid == "0" and ctl == ""]
        elif fstype == "cgroup" and controller in superopts:
            version, paths = 1, [p for _, ctl, p in own if controller in ctl.split(",")]
        else:
            continue
        for path in paths:
            rel = os.path.relpath(path, mount_root)
            if rel.startswith(".."):
                continue  # this process's cgroup is outside what this mount shows
            leaf = (mount_point / rel).resolve()
            chain = [leaf, *(p for p in leaf.parents if p.is_relative_to(mount_point))]
            found.append((version, chain))
    return found


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom() -> list[float]:
    """Limit minus usage of each memory cgroup level above this process that has a limit."""
    room = []
    for version, chain in _cgroup_dirs("memory"):
        for d in chain:
            if version == 2:
                limits = [_read_number(d / "memory.max"), _read_number(d / "memory.high")]
                usage, inactive = _read_number(d / "memory.current"), _stat_value(
                    d / "memory.stat", "inactive_file")
            else:
                limits = [_read_number(d / "memory.limit_in_bytes")]
                usage, inactive = _read_number(d / "memory.usage_in_bytes"), _stat_value(
                    d / "memory.stat", "total_inactive_file")
            limits = [x for x in limits if x is not None and x < 1 << 60]  # v1: "no limit" is huge
            if limits and usage is not None:
                room.append(max(0, min(limits) - max(0, usage - inactive)))
    return room


def _cgroup_cpu_quota() -> list[float]:
    quotas = []
    for version, chain in _cgroup_dirs("cpu"):
        for d in chain:
            if version == 2:
                try:
                    quota, period = (d / "cpu.max").read_text().split()
                except (OSError, ValueError):
                    continue
                if quota != "max" and int(period) > 0:
                    quotas.append(int(quota) / int(period))
            else:
                try:
                    quota = int((d / "cpu.cfs_quota_us").read_text())
                    period = int((d / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
    return quotas
