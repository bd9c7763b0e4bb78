"""tvmopt's benchmark harness: `python -m benchmarks SUITE [options]`, run from the repository root.

The suites are listed in `benchmarks.suites` (and by `python -m benchmarks --help`); each writes
one JSON result in the format of `benchmarks.record` to benchmarks/results/, with the Markdown
rendered beside it by `benchmarks.render`. Model builders shared by the suites are in
`benchmarks.models`; suites that need a GPU are in `benchmarks.gpu`, and the plumbing of one
particular GPU host (time-limited calls, carried files) in `benchmarks.gpu_host`.
"""
