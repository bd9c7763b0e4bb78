"""Stage 3: tuning. `tuner` is the round loop, `measure` the builders and runners (local or RPC),
`space` what MetaSchedule searches, `report` the progress and results, `options` the user's budget."""

from .options import TuneOptions, parse_duration
from .report import TaskProgress, TuneReport, format_progress
from .tuner import Tuner, tune

__all__ = ["TaskProgress", "TuneOptions", "TuneReport", "Tuner", "format_progress",
           "parse_duration", "tune"]
