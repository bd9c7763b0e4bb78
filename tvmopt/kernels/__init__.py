"""Kernel providers: where each kernel of a prepared model gets its implementation at build time.

The build asks the providers in order; each takes the kernels still open, schedules those it
covers, and leaves the rest to the next. A new source of kernels (a kernel library, CPU default
schedules) is a new module here and one line in `PROVIDERS`. The manifest records which provider
each kernel came from, and `inspect`/`profile` show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..tasks import Task
from .defaults import DefaultSchedules
from .library import ExternKernel, KernelLibrary
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
    library_layers: dict = field(default_factory=dict)  # {kernel name: library.Layer}
    best_records: dict = field(default_factory=dict)  # {task name: (record, is baseline) | None}


class Provider(Protocol):
    name: str  # recorded in the manifest for each kernel it provides

    def provide(self, kernels: list[Kernel], ctx: BuildContext) -> dict[str, object]:
        """{kernel name: scheduled PrimFunc, or an ExternKernel to call instead} for the kernels
        this provider covers."""


# The library first: it takes a layer only where it is the fastest measured choice, or where
# nothing was measured (its own rule, `library._choose`); the layers it leaves get their tuned
# records, then default schedules.
PROVIDERS: tuple[Provider, ...] = (KernelLibrary(), TunedRecords(), DefaultSchedules())


@dataclass
class Provided:
    mod: object  # the module with every provided kernel in place
    providers: dict[str, str]  # {kernel name: provider name}
    externs: dict[str, ExternKernel]  # the kernels that call linked code instead
    link_objects: list[Path]  # that code, to link into the artifact


def apply_providers(mod, kernels: list[Kernel], ctx: BuildContext,
                    providers: tuple[Provider, ...] = PROVIDERS) -> Provided:
    chosen: dict[str, str] = {}
    open_kernels = list(kernels)
    updates, externs = {}, {}
    for provider in providers:
        provided = provider.provide(open_kernels, ctx)
        for name, impl in provided.items():
            (externs if isinstance(impl, ExternKernel) else updates)[name] = impl
            chosen[name] = provider.name
        open_kernels = [k for k in open_kernels if k.name not in provided]
    chosen.update((k.name, UNSCHEDULED) for k in open_kernels)
    if updates or externs:
        mod = mod.clone()  # the prepared module stays as it was
        for name, func in updates.items():
            mod.update_func(mod.get_global_var(name), func)
        if externs:
            mod = _call_externs(mod, externs)
    objects = sorted({e.object_file for e in externs.values()})
    return Provided(mod, chosen, externs, objects)


def _call_externs(mod, externs: dict[str, ExternKernel]):
    """Each call of a kernel in `externs` becomes a call of its linked symbol, in destination-
    passing style with a scratch workspace; the kernels themselves leave the module."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class CallExterns(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != call_tir or call.args[0].name_hint not in externs:
                return call
            extern = externs[call.args[0].name_hint]
            args = call.args[1].fields
            workspace = self.builder_.emit(relax.op.builtin.alloc_tensor(
                relax.ShapeExpr([extern.workspace]), "uint8", 0))
            params = [relax.prim_value(tvm.tirx.FloatImm("float64", v) if isinstance(v, float)
                                       else tvm.tirx.IntImm("int64", v)) for v in extern.params]
            return relax.call_dps_packed(relax.ExternFunc(extern.symbol),
                                         [*(args[i] for i in extern.args), *params, workspace],
                                         call.ty_args[0])

    gv = mod.get_global_var("main")
    mod.update_func(gv, CallExterns(mod).visit_expr(mod[gv]))
    for name in externs:
        del mod[mod.get_global_var(name)]
    return mod
