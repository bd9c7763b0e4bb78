"""Stage 1b, the graph: the imported Relax module in, the fused Relax module (with TIR kernels)
that tuning and the build both start from out.

- `pipeline`: the table of named passes, their order and options, and `run_pipeline`;
- the pass bodies tvmopt writes itself, in the order the pipeline first runs them:
  `arithmetic` (variadic-as-binary, integer-powers, fast-math), `layouts` (layout-nhwc,
  layout-nchwc, legalize), `mixed_precision` (fp16-range-constants, fp16-activations),
  `weight_transforms` (pack-matmul-weights, winograd); the other passes are TVM's own;
- `relax_helpers`: helpers for writing and inspecting Relax passes, shared with the kernel
  library.

This file imports nothing: the kernel library imports `relax_helpers`, which runs this file
first, and the pipeline imports the kernel library back (inside a function, so that neither needs
the other loaded first); re-exporting the pipeline here would load it on every such import. The
graph stage knows nothing of the stages after it (tests/test_architecture.py checks).
"""
