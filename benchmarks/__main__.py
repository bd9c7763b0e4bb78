"""`python -m benchmarks SUITE [options]`: one entry point for every benchmark.

`--help` lists the suites from `benchmarks.suites` without importing any of them (so it needs
neither TVM nor PyTorch); `python -m benchmarks SUITE --help` shows that suite's own options.
"""

from __future__ import annotations

import os
import sys

from . import render
from .suites import BY_NAME, SUITES

USAGE = "usage: python -m benchmarks SUITE [options]   (SUITE --help for its options)\n" \
        "       python -m benchmarks render RESULT.json ... | --all"


def listing() -> str:
    width = max(len(s.name) for s in SUITES)
    lines = [USAGE, "", "Run from the repository root. Each suite writes JSON (device, versions, "
             "date, command)", "and its rendered Markdown to benchmarks/results/.", "",
             "suites:"]
    for s in SUITES:
        lines.append(f"  {s.name:<{width}}  [{s.device}] {s.description}")
        if s.defaults:
            lines.append(f"  {'':<{width}}  (with no options: {' '.join(s.defaults)})")
    lines += ["", "  render" + " " * (width - 6) + "  Markdown from result JSON (render --help)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(listing())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "render":
        render.main(rest)
        return 0
    suite = BY_NAME.get(name)
    if suite is None:
        print(f"{USAGE}\nno suite {name!r}; one of: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    suite.load().main(rest if rest else list(suite.defaults))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `| head` stopped reading: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
