"""Charts of the tuning database: best latency against trials, per task and for the whole model.

matplotlib is an optional extra (`pip install 'tvmopt[plot]'`); the curves themselves are plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .database import TuningStore
from .errors import TvmoptError


FORMATS = ("png", "svg", "pdf")
# Written into every chart's metadata: how `db plot -o` knows a file it may replace.
_CREATOR = "tvmopt db plot"


def is_plot(path: Path) -> bool:
    """A chart `db plot` wrote (its metadata names tvmopt), which it may replace."""
    with open(path, "rb") as f:
        return _CREATOR.encode() in f.read(1 << 20)


@dataclass
class Curve:
    label: str
    trials: list[int]  # x: trials measured so far (for a task: its own; for the model: all)
    best_ms: list[float]  # y: best latency found by then


def tuning_curves(store: TuningStore, target_key: str) -> tuple[list[Curve], Curve | None]:
    """Per-task curves and the model curve for the target's latest tuned model: the sum of
    weight x task best, where a task not yet reached counts at its first measured latency."""
    history = store.tuning_history(target_key)
    workloads, trials = history.workloads, history.trials
    if not trials:
        raise TvmoptError(f"no tuning records for {target_key} in {store.path}")
    info = {w["ir_sha256"]: w for w in workloads}
    per_task = {sha: Curve(f"{w['name']} (x{w['weight'] or 1})", [], []) for sha, w in info.items()}
    best: dict[str, float] = {}
    counts = dict.fromkeys(info, 0)
    first: dict[str, float] = {}
    for sha, sec in trials:
        if sec is not None:
            first.setdefault(sha, sec)
    model = Curve("model: sum of weight x task best", [], [])
    for i, (sha, sec) in enumerate(trials, start=1):
        counts[sha] += 1
        if sec is not None and sec < best.get(sha, float("inf")):
            best[sha] = sec
        if sha in best:
            per_task[sha].trials.append(counts[sha])
            per_task[sha].best_ms.append(best[sha] * 1e3)
        model.trials.append(i)
        model.best_ms.append(sum((info[s]["weight"] or 1) * best.get(s, start)
                                 for s, start in first.items()) * 1e3)
    return list(per_task.values()), (model if first else None)


def choose_target(store: TuningStore, wanted: str | None) -> str:
    keys = [s["target_key"] for s in store.stats()]
    if not keys:
        raise TvmoptError(f"{store.path} holds no tuning records yet; run `tvmopt tune` first")
    if wanted is None:
        if len(keys) > 1:
            raise TvmoptError(f"{store.path} holds records for {len(keys)} targets; pick one with "
                              f"--target ({', '.join(keys)})")
        return keys[0]
    if wanted in keys:
        return wanted
    from . import targets

    key = targets.resolve(wanted).key
    if key not in keys:
        raise TvmoptError(f"no records for {wanted} ({key}) in {store.path}; it has: {', '.join(keys)}")
    return key


def plot_tuning(store: TuningStore, target_key: str, out: Path) -> int:
    """Write the chart to `out` (format from its suffix); returns how many task curves it holds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TvmoptError("db plot needs matplotlib: pip install 'tvmopt[plot]'") from None
    tasks, model = tuning_curves(store, target_key)
    fig, (ax_model, ax_tasks) = plt.subplots(1, 2, figsize=(13, 5))
    if model is not None:
        ax_model.plot(model.trials, model.best_ms, drawstyle="steps-post")
    ax_model.set(title=f"model estimate, {target_key}", xlabel="trials (all tasks)",
                 ylabel="sum of weight x best kernel latency (ms)")
    ax_model.annotate("tasks not searched yet count at their first measurement",
                      (0.01, 0.01), xycoords="axes fraction", fontsize="x-small", alpha=0.7)
    for curve in tasks:
        ax_tasks.plot(curve.trials, curve.best_ms, drawstyle="steps-post", label=curve.label)
    ax_tasks.set(title="best latency per task", xlabel="trials of that task", ylabel="ms",
                 yscale="log")
    ax_tasks.legend(fontsize="x-small", loc="upper right")
    for ax in (ax_model, ax_tasks):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fmt = Path(out).suffix.lower().lstrip(".")
    try:
        fig.savefig(out, format=fmt,
                    metadata={"png": {"Software": _CREATOR}}.get(fmt, {"Creator": _CREATOR}))
    finally:
        plt.close(fig)
    return len(tasks)
