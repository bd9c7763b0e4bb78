"""Tactics for layers nobody measured, predicted from the layers somebody did.

A layer with tactic records of its own on the target runs its fastest measured tactic. One
without takes the ranking of the nearest measured layer of its kind (same op, dtype, layout,
epilogue, mask kind: `Op.features`) on the same target, by distance between their sizes in log
space, no farther than MAX_DISTANCE: that layer's fastest tactic the new layer's catalogue holds
(and the layer itself has not failed) is the prediction, its slower ones (then farther
neighbours') are what `tune` measures next (`tuning.library_tactics`). Where no measured layer
is that close, the op's `default_tactic` runs. `python -m benchmarks tactic-model` checks the
predictions against the team database, one layer held out at a time.

tvmopt ships the tactic records of its own team database (`tuning_logs/`) as `tactic_priors.json`,
by GPU architecture: with an empty database a layer is still predicted from the layers measured
on its architecture (its own key among them: measured by tvmopt's team, not on this machine).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .op import Layer, Op

# In log2 of the sizes: one size 8x off, or three sizes each 3x off. Held out of the team
# database, the layers farther than this from every other ran slower, on the whole, with their
# nearest layer's tactic than with the default (batch 1 against batch 64, M=128 against 4096).
MAX_DISTANCE = 3.0

MEASURED, PREDICTED, DEFAULT = "measured", "predicted", "default"
PRIORS = Path(__file__).with_name("tactic_priors.json")
SHIPPED = " (tvmopt's records)"  # marks a neighbour from PRIORS in a Choice


def shipped_priors(provider: str, arch: str) -> dict[str, dict[str, float | None]]:
    """{layer_key: {tactic: seconds}} tvmopt ships for a provider on a GPU architecture."""
    return json.loads(PRIORS.read_text()).get(provider, {}).get(arch, {})


def priors_of(store) -> dict:
    """{provider: {arch: {layer_key: {tactic: seconds}}}} of a database's successful tactic
    records: what `tactic_priors.json` holds of the team database."""
    found: dict = {}
    for provider, target_json, key, tactic, sec in store.conn.execute(
            "SELECT provider, target_json, layer_key, tactic, min(mean_sec) FROM tactic_records "
            "WHERE mean_sec IS NOT NULL GROUP BY provider, target_sha256, layer_key, tactic "
            "ORDER BY 1, 2, 3, 4"):
        arch = json.loads(target_json).get("arch", "")
        found.setdefault(provider, {}).setdefault(arch, {}).setdefault(key, {})[tactic] = sec
    return found


@dataclass(frozen=True)
class Choice:
    """A layer's tactic and where it came from."""
    tactic: Any
    source: str  # MEASURED, PREDICTED or DEFAULT
    measured_sec: float | None = None  # the tactic's time on this very layer
    neighbour: str | None = None  # the measured layer a PREDICTED tactic is the fastest of

    def describe(self) -> str:
        return f"predicted from {self.neighbour}" if self.source == PREDICTED else self.source


class TacticModel:
    """The tactic records of one target and provider, by layer."""

    def __init__(self, times: dict[str, dict[str, float | None]],
                 priors: dict[str, dict[str, float | None]] | None = None):
        self.times = times  # {layer_key: {tactic: mean seconds, None where it failed}}
        # Shipped records of layers this database has not measured.
        self.priors = {k: v for k, v in (priors or {}).items() if k not in times}
        self._features: dict[tuple[str, str], tuple[str, tuple[float, ...]]] = {}

    @classmethod
    def load(cls, store, target_sha256: str, provider: str, arch: str | None = None
             ) -> "TacticModel":
        """The database's records of the target, and tvmopt's own for its GPU architecture."""
        return cls(store.tactic_times(target_sha256, provider),
                   shipped_priors(provider, arch) if arch else None)

    def _records(self, key: str) -> dict[str, float | None]:
        return self.times[key] if key in self.times else self.priors[key]

    def _log_features(self, op: Op, key: str) -> tuple[str, tuple[float, ...]]:
        if (op.name, key) not in self._features:
            kind, sizes = op.features(key)
            self._features[op.name, key] = kind, tuple(math.log2(1 + s) for s in sizes)
        return self._features[op.name, key]

    def neighbours(self, layer: Layer) -> list[tuple[float, str]]:
        """(distance, layer key) of the other measured layers of the layer's kind within
        MAX_DISTANCE, nearest first."""
        kind, sizes = self._log_features(layer.op, layer.key)
        found = []
        for key in [*self.times, *self.priors]:
            if (key == layer.key and key in self.times) or not key.startswith(f"{layer.op.name}_"):
                continue
            other_kind, other_sizes = self._log_features(layer.op, key)
            if other_kind == kind and (d := math.dist(sizes, other_sizes)) <= MAX_DISTANCE:
                found.append((d, key))
        return sorted(found)

    def ranked(self, layer: Layer) -> list[tuple[Any, str | None]]:
        """(tactic, the measured layer it is ranked by) for each tactic of the layer's catalogue
        it has not failed, best first: the nearest neighbour's fastest first, then tactics only
        farther neighbours ran, then (None) the default and the rest in catalogue order."""
        failed = {name for name, sec in self.times.get(layer.key, {}).items() if sec is None}
        valid = {t.name: t for t in (layer.default_tactic(), *layer.tactics)
                 if t.name not in failed}
        ranked: dict[str, tuple[Any, str | None]] = {}
        for _, key in self.neighbours(layer):
            ran = sorted((sec, name) for name, sec in self._records(key).items()
                         if sec is not None and name in valid)
            for _, name in ran:
                ranked.setdefault(name, (valid[name], key + (SHIPPED if key in self.priors
                                                             else "")))
        for name, tactic in valid.items():
            ranked.setdefault(name, (tactic, None))
        return list(ranked.values())

    def choose(self, layer: Layer) -> Choice:
        """The layer's fastest measured tactic, else the predicted one, else the default."""
        catalogue = {t.name for t in layer.tactics}  # records of dropped tactics do not count
        own = {name: sec for name, sec in self.times.get(layer.key, {}).items()
               if sec is not None and name in catalogue}
        if own:
            name = min(own, key=lambda n: (own[n], n))
            return Choice(layer.op.parse_tactic(name), MEASURED, own[name])
        ranked = self.ranked(layer)
        if ranked and ranked[0][1] is not None:
            return Choice(ranked[0][0], PREDICTED, neighbour=ranked[0][1])
        return Choice(layer.default_tactic(), DEFAULT)
