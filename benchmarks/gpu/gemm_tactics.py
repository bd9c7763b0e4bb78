"""Every GEMM tactic at the throughput rows' GEMM layers (layer_tactics.py).

    python -m benchmarks gemm-tactics [--shapes bert_b32_qkv] [--tactics NAME,...] [--db FILE]
"""

from __future__ import annotations

from . import layer_tactics

SUITE = "gemm-tactics"
INTERNAL_API = layer_tactics.INTERNAL_API


def main(argv: list[str]) -> dict:
    return layer_tactics.run_suite(argv, SUITE)
