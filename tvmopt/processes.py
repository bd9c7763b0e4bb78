"""Child processes that end with tvmopt: TVM's worker pools, nvcc, compilers.

A tune or build killed with SIGKILL (or ended by a test) runs no cleanup of its own, and TVM's
popen workers only notice a dead parent between tasks: a worker inside a task, or waiting on a
sibling, stayed alive for hours with parent PID 1. Linux's PR_SET_PDEATHSIG makes the kernel kill
the child when the thread that started it ends, whatever way it ends.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
try:  # looked up in the parent: the child, between fork and exec, must not load libraries
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> None:
    """`preexec_fn` for subprocess.Popen: SIGKILL the child when this process (more exactly: the
    thread that starts the child) ends."""
    if _prctl is None:
        return
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)


class _DyingSubprocess:
    """The `subprocess` module as TVM's popen pool sees it: every Popen dies with its parent."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def Popen(self, *args, **kwargs):  # noqa: N802 - the name TVM calls
        kwargs.setdefault("preexec_fn", die_with_parent)
        return self._real.Popen(*args, **kwargs)


def bind_tvm_workers() -> None:
    """TVM's popen workers (MetaSchedule builders and runners) die with this process."""
    from tvm.support import popen_pool

    if not isinstance(popen_pool.subprocess, _DyingSubprocess):
        popen_pool.subprocess = _DyingSubprocess(popen_pool.subprocess)
