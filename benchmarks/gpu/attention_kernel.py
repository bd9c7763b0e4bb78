"""Every attention tactic at the transformer models' attention shapes (layer_tactics.py).

    python -m benchmarks attention-kernel [--shapes bert_b1,gpt2] [--tactics NAME,...] [--db FILE]
"""

from __future__ import annotations

from . import layer_tactics

SUITE = "attention-kernel"
INTERNAL_API = layer_tactics.INTERNAL_API


def main(argv: list[str]) -> dict:
    return layer_tactics.run_suite(argv, SUITE)
