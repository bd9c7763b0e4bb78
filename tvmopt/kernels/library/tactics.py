"""Kernel-library tactics: the CUTLASS configurations a layer can run with, and the default one.

A tactic is one compiled kernel instance: the thread-block tile, the cluster, the kernel schedule
(Hopper's warp-specialized "cooperative" or "pingpong" kernels) and the tile scheduler
("persistent", or "streamk", which splits K across SMs: the cure for batch-1 GEMMs whose output
has fewer tiles than the GPU has SMs). Shapes are runtime arguments, so one instance serves every
layer with the same operation, epilogue and tactic; the catalogue is kept small on purpose, since
each instance costs ~76 s and 3.4 GB of nvcc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMS = 132  # H100 SXM: to judge how well a tile fills the GPU, and stream-K's scratch size


@dataclass(frozen=True)
class Tactic:
    tile_m: int
    tile_n: int
    tile_k: int = 64
    cluster_m: int = 1
    cluster_n: int = 1
    schedule: str = "cooperative"  # or "pingpong"; "warpspecialized" for convolutions
    scheduler: str = "persistent"  # or "streamk"; "tiles" (a CTA per output tile) for convolutions

    @property
    def name(self) -> str:
        return (f"{self.tile_m}x{self.tile_n}x{self.tile_k}_c{self.cluster_m}x{self.cluster_n}_"
                f"{self.schedule}_{self.scheduler}")

    @classmethod
    def parse(cls, name: str) -> "Tactic":
        tile, cluster, schedule, scheduler = name.split("_")
        m, n, k = (int(v) for v in tile.split("x"))
        cm, cn = (int(v) for v in cluster[1:].split("x"))
        return cls(m, n, k, cm, cn, schedule, scheduler)


# Cooperative kernels split a tile between two consumer warp groups: tile_m >= 128. Ping-pong
# kernels give each warp group its own 64-row tile. Stream-K runs on the cooperative kernel.
CATALOGUE: tuple[Tactic, ...] = (
    Tactic(128, 128),
    Tactic(128, 256),
    Tactic(128, 64),
    Tactic(64, 128, schedule="pingpong"),
    Tactic(64, 64, schedule="pingpong"),
    Tactic(128, 128, cluster_m=2),
    Tactic(128, 64, scheduler="streamk"),
    Tactic(128, 128, scheduler="streamk"),
)


# Implicit-GEMM convolutions on Hopper have one kernel: warp-specialized, not persistent (CUTLASS
# has no cooperative, ping-pong or stream-K conv kernels for sm90), one output tile per CTA.
def _conv(tile_m: int, tile_n: int, cluster_m: int = 1, cluster_n: int = 1) -> Tactic:
    return Tactic(tile_m, tile_n, 64, cluster_m, cluster_n, "warpspecialized", "tiles")


CONV_CATALOGUE: tuple[Tactic, ...] = (
    _conv(128, 128),
    _conv(128, 64),
    _conv(64, 128),
    _conv(64, 64),
    _conv(128, 128, cluster_m=2),
    _conv(64, 128, cluster_n=2),
)


def catalogue(op: str) -> tuple[Tactic, ...]:
    """The tactics a layer of this kind ("gemm" or "conv2d") can run with."""
    return CONV_CATALOGUE if op == "conv2d" else CATALOGUE


def default_tactic(m: int, n: int, k: int, op: str = "gemm") -> Tactic:
    """An untuned layer's tactic: the largest tile that still gives most SMs a tile; for GEMMs,
    stream-K when even small tiles leave most SMs idle and K is deep enough to split."""
    if op == "conv2d":
        for tactic in (_conv(128, 128), _conv(128, 64)):
            if _tiles(m, n, tactic) >= SMS * 3 // 4:
                return tactic
        return _conv(64, 64)
    for tactic in (Tactic(128, 128), Tactic(128, 64), Tactic(64, 64, schedule="pingpong")):
        if _tiles(m, n, tactic) >= SMS * 3 // 4:
            return tactic
    if k >= 1024:
        return Tactic(128, 64, scheduler="streamk")
    return Tactic(64, 64, schedule="pingpong")


def _tiles(m: int, n: int, tactic: Tactic) -> int:
    return math.ceil(m / tactic.tile_m) * math.ceil(n / tactic.tile_n)
