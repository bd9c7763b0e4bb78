"""The fused attention kernel alone, on this GPU, at BERT-base's batch-32 shape, for Nsight
Compute, which needs one kernel launched without a model around it:

    ncu --kernel-name regex:Attention --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        python -m benchmarks attention-kernel [--tactic INDEX]

Reports the kernel's error against the attention op's NumPy reference, which `tune` checks
tactics with.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .. import record

SUITE = "attention-kernel"
INTERNAL_API = ("tvmopt.kernels.library",)  # an op's instance, inputs and reference


def run(tactic: int) -> float:
    """Compile the tactic's instance, launch it three times, return its relative error."""
    import numpy as np
    import tvm

    from tvmopt.kernels.library import attention, nvcc

    op = attention.OP
    g = attention.AttentionGeometry(32, 12, 128, 128, 64, 0.125, (32, 1, 128, 128), "float16")
    instance = op.instance(g, attention.CATALOGUE[tactic], "sm_90a")
    objs = nvcc.compile_all({instance.symbol: instance.source}, "sm_90a")
    lib = tvm.runtime.load_module(str(nvcc.link_shared(list(objs.values()),
                                                       Path(tempfile.mkdtemp()) / "attention.so")))
    arrays = op.inputs(g, {}, np.random.default_rng(0))
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(arrays[r], dev) for r in op.roles]
    ws = tvm.runtime.tensor(np.zeros(256, np.uint8), dev)
    out = tvm.runtime.tensor(np.zeros(op.output_shape(g), np.float16), dev)
    f = lib[instance.symbol]
    for _ in range(3):
        f(*args, *op.params(g), ws, out)
    dev.sync()
    reference = op.reference(g, arrays)
    err = float(np.abs(out.numpy().astype(np.float32) - reference).max()
                / np.abs(reference).max())
    print("rel err", err)
    return err


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--tactic", type=int, default=0,
                   help="index into the attention tactic catalogue [default: %(default)s]")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/attention_kernel_DATE.json]")
    args = p.parse_args(argv)
    err = run(args.tactic)
    doc = record.new(SUITE, argv, device="gpu",
                     title="Fused attention kernel alone, BERT-base batch-32 shape")
    doc["results"] = {"tactic": args.tactic, "max_rel_err": err}
    doc["sections"] = [{"table": record.table(["tactic", "max rel err vs NumPy"],
                                              [[args.tactic, f"{err:.2e}"]])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
