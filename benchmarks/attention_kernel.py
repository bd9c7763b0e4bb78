"""The fused attention kernel alone, on this GPU, at BERT-base's batch-32 shape, for Nsight
Compute: `ncu --kernel-name regex:Attention --launch-skip 2 --launch-count 1 --section
SpeedOfLight python3 benchmarks/attention_kernel.py [TACTIC INDEX]`. Prints its error against
the NumPy reference that `tune` checks tactics with.
"""
import sys
import tempfile
from pathlib import Path
import numpy as np, tvm
from tvmopt.kernels.library import nvcc
from tvmopt.kernels.library.attention import AttentionGeometry, ATTENTION_CATALOGUE
from tvmopt.kernels.library.partition import Layer
from tvmopt.kernels.library.sources import Epilogue
from tvmopt.tuning import tactics
g = AttentionGeometry(32, 12, 128, 128, 64, 0.125, (32, 1, 128, 128), "float16")
layer = Layer("row", Epilogue(), {}, 128, 64, 128, 384, attention=g)
spec = layer.instance(ATTENTION_CATALOGUE[int(sys.argv[1]) if len(sys.argv) > 1 else 0], "sm_90a")
objs = nvcc.compile_all({spec.symbol: spec.source()}, "sm_90a")
lib = tvm.runtime.load_module(str(nvcc.link_shared(list(objs.values()),
                                                   Path(tempfile.mkdtemp()) / "attention.so")))
arrays = tactics._inputs(layer, np.random.default_rng(0))
dev = tvm.cuda(0)
args = [tvm.runtime.tensor(arrays[r], dev) for r in ("q", "k", "v", "mask")]
ws = tvm.runtime.tensor(np.zeros(256, np.uint8), dev)
out = tvm.runtime.tensor(np.zeros(arrays["q"].shape, np.float16), dev)
f = lib[spec.symbol]
for _ in range(3):
    f(*args, *layer.params, ws, out)
dev.sync()
print("rel err", tactics._rel_err(out.numpy(), tactics._reference(layer, arrays)))
