"""What a user asks of a tune: the trial and time budgets, batch size, patience and where to measure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TvmoptError

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "30m", "1h30m"."""
    m = _DURATION_RE.match(text)
    if not text.strip() or not m or not any(m.groups()):
        raise TvmoptError(f"--time-budget {text!r}: expected a duration such as 90s, 30m or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise TvmoptError("--time-budget must be positive")
    return total


@dataclass(frozen=True)
class TuneOptions:
    trials: int = 1000  # total over all tasks, counting trials already in the database; 0:
    # only the kernel library's tactics (no TIR baselines or search)
    trials_per_task: int | None = None
    time_budget_s: float | None = None
    batch_size: int = 64  # candidates built and measured per round
    patience: int = 3  # rounds without a 1% gain before a task stops
    rpc_tracker: str | None = None  # HOST:PORT
    rpc_key: str | None = None
    seed: int = 0
    workers: int | None = None  # parallel builds; default: all cores

    def validate(self) -> None:
        if self.trials < 0:
            raise TvmoptError("--trials must be 0 (kernel-library tactics only) or more")
        if self.trials_per_task is not None and self.trials_per_task < 1:
            raise TvmoptError("--trials-per-task must be at least 1")
        if self.batch_size < 1:
            raise TvmoptError("--batch-size must be at least 1")
        if bool(self.rpc_tracker) != bool(self.rpc_key):
            raise TvmoptError("--rpc-tracker and --rpc-key go together; give both or neither")
