"""How many threads TVM's CPU kernels run on: one per physical core this process may use.

TVM's runtime starts one worker per *half* of the logical CPUs on x86, assuming every core is
hyper-threaded (`threading::MaxConcurrency`). Where the logical CPUs are cores (cloud VMs with
one thread per core, such as the 2-core CI machine) that leaves half the machine idle: every CPU
kernel ran on one core of two, while ONNX Runtime used both. The count here is ONNX Runtime's:
distinct physical cores among the CPUs this process is allowed on. TVM reads it from
TVM_NUM_THREADS when its thread pool starts, so it must be set before the first kernel runs; a
value the user set wins.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def physical_cores() -> int:
    """Distinct (package, core) pairs among this process's CPUs; the CPU count if unknown."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        topology = SYSFS_CPU / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus) or os.cpu_count() or 1


def use_physical_cores() -> None:
    """Set TVM_NUM_THREADS for TVM's thread pool, unless the user set it."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())
