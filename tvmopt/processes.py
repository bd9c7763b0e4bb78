"""Child processes that end with tvmopt: TVM's worker pools.

A tune or build killed with SIGKILL (or ended by a test) runs no cleanup of its own, and TVM's
popen workers only notice a dead parent between tasks: a worker inside a task, or waiting on a
sibling, stayed alive for hours with parent PID 1. Linux's PR_SET_PDEATHSIG makes the kernel kill
the child when the thread that started it ends, whatever way it ends.

The request is made by util-linux's `setpriv --pdeathsig KILL`, which sets it and then execs the
worker, not by a Python `preexec_fn`: in a process with threads, Python code between fork and
exec deadlocks (Python's at-fork handlers reseed `random`, which can run the garbage collector,
which finalised a SQLite statement whose mutex another thread held at the fork: a tune hung
forever). Without `setpriv` (not Linux, or no util-linux) workers start as TVM starts them.
"""

from __future__ import annotations

import shutil

_SETPRIV = shutil.which("setpriv")


class _DyingSubprocess:
    """The `subprocess` module as TVM's popen pool sees it: every Popen dies with its parent."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def Popen(self, args, *rest, **kwargs):  # noqa: N802 - the name TVM calls
        if _SETPRIV is not None and isinstance(args, (list, tuple)):
            args = [_SETPRIV, "--pdeathsig", "KILL", "--", *args]
        return self._real.Popen(args, *rest, **kwargs)


def bind_tvm_workers() -> None:
    """TVM's popen workers (MetaSchedule builders and runners) die with this process."""
    from tvm.support import popen_pool

    if not isinstance(popen_pool.subprocess, _DyingSubprocess):
        popen_pool.subprocess = _DyingSubprocess(popen_pool.subprocess)
