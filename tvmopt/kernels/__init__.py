"""Kernel providers: where each kernel of a prepared model gets its implementation at build time.

The build asks the providers in order; each takes the kernels still open, schedules those it
covers, and leaves the rest to the next. A new source of kernels (a kernel library, CPU default
schedules) is a new module here and one line in `PROVIDERS`. The manifest records which provider
each kernel came from, and `inspect`/`profile` show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..tasks import Task
from .defaults import DefaultSchedules
from .tuned import TunedRecords

# Kernels no provider scheduled: TVM compiles their plain loop nests (CPU kernels without a record).
UNSCHEDULED = "unscheduled"


@dataclass
class Kernel:
    name: str  # the function's name in the module and in the built library
    func: object  # its TIR PrimFunc, as prepared
    task: Task | None  # the tuning task it belongs to


@dataclass
class BuildContext:
    target: object  # tvm.target.Target
    store: object  # the tuning database (read-only)


class Provider(Protocol):
    name: str  # recorded in the manifest for each kernel it provides

    def provide(self, kernels: list[Kernel], ctx: BuildContext) -> dict[str, object]:
        """{kernel name: scheduled PrimFunc} for the kernels this provider covers."""


PROVIDERS: tuple[Provider, ...] = (TunedRecords(), DefaultSchedules())


def apply_providers(mod, kernels: list[Kernel], ctx: BuildContext,
                    providers: tuple[Provider, ...] = PROVIDERS):
    """(the module with every provided kernel replaced, {kernel name: provider name})."""
    chosen: dict[str, str] = {}
    open_kernels = list(kernels)
    updates = {}
    for provider in providers:
        provided = provider.provide(open_kernels, ctx)
        for name, func in provided.items():
            updates[name] = func
            chosen[name] = provider.name
        open_kernels = [k for k in open_kernels if k.name not in provided]
    chosen.update((k.name, UNSCHEDULED) for k in open_kernels)
    if updates:
        mod = mod.clone()  # the prepared module stays as it was
        for name, func in updates.items():
            mod.update_func(mod.get_global_var(name), func)
    return mod, chosen
