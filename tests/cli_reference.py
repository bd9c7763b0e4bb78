"""docs/cli.md, the command reference, generated from the CLI's own --help so it cannot drift.

    python tests/cli_reference.py          # exit 1 if docs/cli.md differs from the CLI
    python tests/cli_reference.py --write  # rewrite docs/cli.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
CLI_MD = REPO / "docs" / "cli.md"
REGENERATE = "python tests/cli_reference.py --write"
HEADER = (f"<!-- Generated from `tvmopt --help` by tests/cli_reference.py: do not edit. "
          f"Regenerate with `{REGENERATE}`. -->")


def _commands(group: click.Group, prefix: list[str]):
    yield prefix
    for name in sorted(group.commands):
        command = group.commands[name]
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + [name])
        else:
            yield prefix + [name]


def reference() -> str:
    from tvmopt.cli import cli

    runner = CliRunner()
    parts = []
    for args in _commands(cli, []):
        result = runner.invoke(cli, [*args, "--help"], prog_name="tvmopt", terminal_width=100)
        assert result.exit_code == 0, result.output
        name = " ".join(["tvmopt", *args])
        parts.append(f"## `{name}`\n\n```text\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


def document() -> str:
    """The whole of docs/cli.md as the CLI describes itself today."""
    return (f"{HEADER}\n\n"
            "# Command reference\n\n"
            "Every command's `--help`, generated from the CLI itself (a test fails when this page "
            "and the CLI disagree). The manual is in [index.md](index.md).\n\n"
            f"{reference()}")


def main() -> int:
    wanted = document()
    if "--write" in sys.argv[1:]:
        CLI_MD.parent.mkdir(exist_ok=True)
        CLI_MD.write_text(wanted)
        return 0
    current = CLI_MD.read_text() if CLI_MD.is_file() else ""
    if current != wanted:
        print(f"{CLI_MD}: out of date with `tvmopt --help`; run {REGENERATE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
