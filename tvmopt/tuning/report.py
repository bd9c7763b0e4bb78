"""A tune's state as it goes and as it ends: per task trials and best latency, the model estimate,
where the time went; the progress line users see."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..formatting import duration, seconds
from ..tasks import Task

log = logging.getLogger("tvmopt.tuning")


@dataclass
class TaskProgress:
    task: Task
    prior_trials: int = 0  # found in the database when this run started
    trials: int = 0  # measured by this run
    best_sec: float | None = None
    stale_rounds: int = 0
    rounds: int = 0  # search rounds run by this run
    finished: str | None = None  # why the task stopped, once it has
    tensor_core: bool = False
    baseline_sec: float | None = None  # its default schedule (or plain loop nest), as measured
    library_sec: float | None = None  # the kernel library's best measured tactic for it
    library_tactic: str | None = None

    @property
    def model_sec(self) -> float | None:
        """What the build will run: the faster of the best TIR record and the library's tactic."""
        measured = [s for s in (self.best_sec, self.library_sec) if s is not None]
        return min(measured) if measured else None

    @property
    def total_trials(self) -> int:
        return self.prior_trials + self.trials

    @property
    def gflops(self) -> float | None:
        if not self.best_sec or not self.task.flops:
            return None
        return self.task.flops / self.best_sec / 1e9

    def as_dict(self) -> dict:
        return {
            **self.task.as_dict(),
            "trials": self.total_trials, "trials_this_run": self.trials,
            "best_sec": self.best_sec, "baseline_sec": self.baseline_sec, "gflops": self.gflops,
            "tensor_core": self.tensor_core, "finished": self.finished,
            "library_sec": self.library_sec, "library_tactic": self.library_tactic,
        }


@dataclass
class TuneReport:
    target_key: str
    tasks: list[TaskProgress]
    budget: int
    run_uid: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: {
        "search": 0.0, "build": 0.0, "measure": 0.0, "database": 0.0, "tactics": 0.0})
    elapsed_s: float = 0.0
    eta_s: float | None = None
    stop_reason: str = ""
    interrupted: bool = False
    stop_signal: str | None = None  # SIGINT or SIGTERM when interrupted
    tactics_measured: int = 0  # kernel-library tactics timed by this run

    @property
    def trials_this_run(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def trials_total(self) -> int:
        return sum(t.total_trials for t in self.tasks)

    @property
    def tasks_done(self) -> int:
        return sum(1 for t in self.tasks if t.finished)

    def estimated_latency(self) -> float | None:
        """Sum over tasks of weight x the latency the build will run, once every task has a
        measurement."""
        if any(t.model_sec is None for t in self.tasks):
            return None
        return sum(t.task.weight * t.model_sec for t in self.tasks)

    def trials_per_minute(self) -> float:
        return 60.0 * self.trials_this_run / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict:
        return {
            "target": self.target_key, "run_uid": self.run_uid, "budget": self.budget,
            "trials_total": self.trials_total, "trials_this_run": self.trials_this_run,
            "elapsed_s": self.elapsed_s, "trials_per_minute": self.trials_per_minute(),
            "seconds": self.seconds, "estimated_latency_sec": self.estimated_latency(),
            "stop_reason": self.stop_reason, "interrupted": self.interrupted,
            "stop_signal": self.stop_signal, "tactics_measured": self.tactics_measured,
            "tasks": [t.as_dict() for t in self.tasks],
        }


ProgressCallback = Callable[[TuneReport, "TaskProgress | None"], None]


def log_progress(report: TuneReport, current: TaskProgress | None) -> None:
    log.info(format_progress(report, current))


def format_progress(report: TuneReport, current: TaskProgress | None = None) -> str:
    est = report.estimated_latency()
    return (f"tasks {report.tasks_done}/{len(report.tasks)}  trials {report.trials_total}/"
            f"{report.budget}  est. latency {seconds(est) if est else '?'}  elapsed "
            f"{duration(report.elapsed_s)}  ETA "
            f"{duration(report.eta_s) if report.eta_s is not None else '?'}"
            + (f"  [{current.task.name}]" if current else ""))
