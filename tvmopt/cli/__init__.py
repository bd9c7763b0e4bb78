"""The `tvmopt` command: argument parsing and printing only; the work is in the stage modules.

`app` holds the group and the shared option bundles; each other module adds its commands to it.
"""

from . import db, measure, model  # noqa: F401 - each registers its commands on the group
from .app import cli, main

__all__ = ["cli", "main"]
