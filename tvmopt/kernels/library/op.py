"""The protocol every kernel-library op implements, and the Layer: one matched layer of a model.

An op is one module of this package (`gemm.py`, `conv2d.py`, `attention.py`, ...) holding an
instance of a subclass of `Op`, registered in `registry.OPS`. Everything outside the op asks it:
the partition pass for its Relax patterns and for the Layer of a match, the build for the
instance that runs a layer with a tactic, tactic measurement for random operands and a NumPy
reference, `inspect` for a description. Nothing else branches on which op a layer is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from .instance import Instance

# A size token of a layer key: numbers joined by "x", each maybe tagged by one letter (128x768x1,
# k256r3s3, p1x1x1x1). A single tagged number (f16) is a dtype: part of the kind.
_SIZES = re.compile(r"[a-z]?\d+(?:x?[a-z]?\d+)*")
_DTYPE = re.compile(r"[a-z]\d+")


@dataclass(frozen=True)
class Pattern:
    """One Relax pattern of an op. Patterns are tried in registry order, then the most specific
    (`parts`: the ops it fuses) first, since FuseOpsByPattern takes the first that matches."""
    name: str  # the Composite function's name after "tvmopt_library."
    pattern: Any  # a tvm.relax.dpl pattern
    annotations: dict  # {role: sub-pattern}, for `check` and for `Op.layer`
    check: Callable  # (tvm.relax.transform.PatternCheckContext) -> bool
    parts: int
    variant: Any = None  # what else the op needs to describe a match (the CUTLASS ops' epilogue)


@dataclass(frozen=True)
class Match:
    """A matched and outlined function, as the partition pass hands it to `Op.layer`."""
    pattern: Pattern
    params: dict  # {parameter Var: its index}: the kernel's arguments
    bindings: dict  # {Var: bound value} inside the function, plus lifted constants by parameter

    def calls(self, op_name: str) -> list:
        """The function's calls of the Relax op `op_name`, in order."""
        import tvm

        return [v for v in self.bindings.values()
                if isinstance(v, tvm.relax.Call) and isinstance(v.op, tvm.ir.Op)
                and v.op.name == op_name]


class Op:
    """A kind of layer the library runs. Subclasses set the class attributes and implement the
    methods; `geometry` arguments are instances of the op's own frozen dataclass, which holds
    every size the instance and its measurement need (no field means two things)."""

    name: ClassVar[str]  # the op in layer keys and saved layers: "gemm", "conv2d", ...
    roles: ClassVar[tuple[str, ...]]  # the instance's tensor arguments, in its order
    geometry_type: ClassVar[type]

    # -- matching: the graph pass

    def canonicalize(self, mod):
        """`mod` with this op's layers written the way its patterns match them (exporters write
        one computation in many ways), before any op's patterns are tried; by default as is."""
        return mod

    def patterns(self) -> list[Pattern]:
        """The Relax patterns (after mixed precision, before legalisation) this op runs."""
        raise NotImplementedError

    def layer(self, match: Match) -> "Layer":
        """The Layer of a function one of this op's patterns matched (and its check accepted)."""
        raise NotImplementedError

    # -- tactics and instances: the build

    def key(self, geometry) -> str:
        """What a tactic's time depends on: the tactic records' layer_key."""
        raise NotImplementedError

    def catalogue(self, geometry) -> tuple:
        """The tactics a layer can run with (each a compiled instance)."""
        raise NotImplementedError

    def default_tactic(self, geometry):
        """An unmeasured layer's tactic."""
        raise NotImplementedError

    def parse_tactic(self, name: str):
        """The tactic of a tactic record's name."""
        raise NotImplementedError

    def features(self, key: str) -> tuple[str, tuple[int, ...]]:
        """(kind, sizes) of a layer key, all a tactic record says of its layer: an unmeasured
        layer takes its tactic from the nearest measured layer of its kind (`tactic_model`). By
        default the key's size tokens (GEMM sizes, conv dims, padding, attention's batch, heads,
        sequences and head size) are the sizes, and the rest of it (the op, dtype, layout,
        epilogue, mask kind, the number of dims) the kind."""
        kind, sizes = [], []
        for token in key.split("_"):
            if _SIZES.fullmatch(token) and not _DTYPE.fullmatch(token):
                kind.append(re.sub(r"\d+", "#", token))
                sizes += [int(v) for v in re.findall(r"\d+", token)]
            else:
                kind.append(token)
        return "_".join(kind), tuple(sizes)

    def instance(self, geometry, tactic, arch: str) -> Instance:
        """The instance that runs this layer with `tactic`: its symbol and its instantiation of
        the op's `csrc/` source."""
        raise NotImplementedError

    def params(self, geometry) -> tuple[int | float, ...]:
        """Scalar arguments the instance takes after its tensors."""
        return ()

    def workspace_bytes(self, tactic) -> int:
        """Scratch memory the instance may ask for (a few bytes keep the argument a tensor)."""
        return 256

    def work(self, geometry) -> int:
        """Multiply-adds of the layer: which layers to measure first."""
        raise NotImplementedError

    def describe(self, geometry) -> str:
        """What the layer computes, for people (`inspect`, logs)."""
        raise NotImplementedError

    # -- measuring a tactic: random operands and the NumPy reference

    def inputs(self, geometry, args: dict[str, int], rng) -> dict[str, np.ndarray]:
        """Random operands by role; `args` tells which roles are the same kernel argument."""
        raise NotImplementedError

    def output_shape(self, geometry) -> tuple[int, ...]:
        raise NotImplementedError

    def reference(self, geometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The layer's output in fp32."""
        raise NotImplementedError

    # -- saving a Layer in the module's attributes

    def geometry_from_dict(self, d: dict):
        return self.geometry_type(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in d.items()})


@dataclass(frozen=True)
class Layer:
    """A layer the library can run: its op, its geometry, and which of the kernel's arguments
    play which role."""
    op: Op
    geometry: Any
    args: dict  # {role: index of the kernel argument}

    @property
    def key(self) -> str:
        return self.op.key(self.geometry)

    @property
    def tactics(self) -> tuple:
        return self.op.catalogue(self.geometry)

    def default_tactic(self):
        return self.op.default_tactic(self.geometry)

    def instance(self, tactic, arch: str) -> Instance:
        return self.op.instance(self.geometry, tactic, arch)

    @property
    def params(self) -> tuple[int | float, ...]:
        return self.op.params(self.geometry)

    @property
    def arg_order(self) -> tuple[int, ...]:
        """Which of the kernel's arguments the instance takes, in its order."""
        return tuple(self.args[role] for role in self.op.roles if role in self.args)

    @property
    def work(self) -> int:
        return self.op.work(self.geometry)

    def describe(self) -> str:
        return self.op.describe(self.geometry)

    def to_json(self) -> str:
        return json.dumps({"op": self.op.name, "geometry": asdict(self.geometry),
                           "args": self.args}, sort_keys=True)
