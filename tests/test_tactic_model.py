"""Tactics for untuned kernel-library layers, predicted from the tactic records of measured layers
(tvmopt/kernels/library/tactic_model.py), and the shortlist of instances a tune compiles and
measures (tvmopt/tuning/library_tactics.py). CPU only: records are written through the store's
API or read from the team database, and nothing is compiled."""

import logging
import re
import sys
from pathlib import Path

import pytest

from tvmopt import targets
from tvmopt.database import open_database, target_identity
from tvmopt.kernels.library import KernelLibrary, attention, conv2d, gemm
from tvmopt.kernels.library.cutlass import CutlassTactic, Epilogue
from tvmopt.kernels.library.instance import TIMER_SYMBOL
from tvmopt.kernels.library.op import Layer
from tvmopt.kernels.library.tactic_model import Choice, TacticModel
from tvmopt.tuning import library_tactics
from tvmopt.tuning.options import TuneOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import tactic_model as benchmark  # noqa: E402

A100 = {"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024}
BIAS, GELU = Epilogue(bias=True), Epilogue(bias=True, activation="gelu")
BIG, SMALL, STREAMK = gemm.CATALOGUE[1], gemm.CATALOGUE[4], gemm.CATALOGUE[6]
NOT_IN_CATALOGUE = CutlassTactic(256, 256)


def _hopper():
    return targets.resolve("cuda-sm90a").tvm_target()


def _gemm(m: int, epilogue=BIAS) -> Layer:
    return Layer(gemm.OP, gemm.GemmGeometry(m, 768, 768, 1, "row", epilogue), {})


def _attention(batch: int, mask_dtype: str) -> Layer:
    return Layer(attention.OP, attention.AttentionGeometry(
        batch=batch, heads=12, seq_q=128, seq_k=128, head_dim=64, scale=0.125,
        mask_shape=(batch, 1, 128, 128), mask_dtype=mask_dtype), {})


def _conv(n: int) -> Layer:
    return Layer(conv2d.OP, conv2d.ConvGeometry(n, 56, 56, 64, 64, 3, 3, (1, 1, 1, 1), (1, 1),
                                                (1, 1), Epilogue(bias=True, activation="relu")),
                 {})


def _record(store, layer: Layer, times: dict, target=None) -> None:
    """`times` {tactic: seconds, or None for a failure} of `layer`."""
    import tvm

    for tactic, sec in times.items():
        assert store.add_tactic_record(
            layer.key, KernelLibrary.name, tactic.name,
            tvm.target.Target(target) if target else _hopper(), None if sec is None else [sec],
            error=None if sec else "cannot run it") == "added"


def _model(store) -> TacticModel:
    return TacticModel.load(store, target_identity(_hopper())[0], KernelLibrary.name)


@pytest.fixture
def store(tmp_path):
    """GEMMs measured at M = 128 (nearest to M = 256), 1024 (farther) and 4096 (too far), one
    at M = 256 with another epilogue, one on another GPU: SMALL is the fastest tactic at 128
    after one outside the catalogue."""
    with open_database(tmp_path / "t.db") as store:
        _record(store, _gemm(128), {NOT_IN_CATALOGUE: 3e-6, SMALL: 4e-6, BIG: 6e-6})
        _record(store, _gemm(1024), {BIG: 5e-6, STREAMK: 7e-6})
        _record(store, _gemm(4096), {STREAMK: 9e-6})
        _record(store, _gemm(256, GELU), {STREAMK: 1e-6})
        _record(store, _gemm(256), {STREAMK: 1e-6}, target=A100)
        yield store


def test_the_default_features_are_the_keys_sizes_and_the_rest_its_kind():
    assert gemm.OP.features(_gemm(128).key) == ("gemm_f16_row_bias_#x#x#x#", (128, 768, 768, 1))
    kind, sizes = conv2d.OP.features(_conv(1).key)
    assert kind == "conv2d_f16_bias_relu_#x#x#x#_k#r#s#_p#x#x#x#_s#x#_d#x#"
    assert sizes == (1, 56, 56, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    kinds = {attention.OP.features(_attention(1, dtype).key)[0] for dtype in ("float16", "float32")}
    assert len(kinds) == 2 and all("f16" in k for k in kinds)  # dtype and mask kind: the kind


def test_an_unmeasured_layer_runs_the_fastest_tactic_of_the_nearest_measured_layer(store):
    model = _model(store)
    layer = _gemm(256)
    assert model.choose(layer) == Choice(SMALL, "predicted", neighbour=_gemm(128).key)
    assert model.choose(layer).describe() == f"predicted from {_gemm(128).key}"
    ranked = model.ranked(layer)
    assert ranked[:3] == [(SMALL, _gemm(128).key), (BIG, _gemm(128).key),
                          (STREAMK, _gemm(1024).key)]
    assert sorted(t.name for t, _ in ranked) == sorted(t.name for t in gemm.CATALOGUE)
    assert all(key is None for _, key in ranked[3:])
    assert [key for _, key in model.neighbours(layer)] == [_gemm(128).key, _gemm(1024).key]


def test_a_layer_far_from_every_measured_one_runs_the_default(store):
    layer = _gemm(8)
    assert _model(store).choose(layer) == Choice(layer.default_tactic(), "default")
    assert _model(store).choose(_gemm(256, Epilogue())).source == "default"  # no plain GEMM ran


def test_a_layers_own_records_come_first_failures_included(store):
    layer = _gemm(256)
    _record(store, layer, {SMALL: None})
    assert _model(store).choose(layer) == Choice(BIG, "predicted", neighbour=_gemm(128).key)
    assert SMALL not in [t for t, _ in _model(store).ranked(layer)]
    _record(store, layer, {STREAMK: 2e-6})
    assert _model(store).choose(layer) == Choice(STREAMK, "measured", 2e-6)


def test_records_of_a_tactic_the_catalogue_dropped_neither_choose_nor_finish_a_layer(store):
    """A layer measured only with tactics the library has since dropped (or renamed) runs a
    tactic of today's catalogue, and a tune measures it again."""
    layer = _gemm(128)
    assert _model(store).choose(layer) == Choice(SMALL, "measured", 4e-6)
    dropped = _gemm(512)
    _record(store, dropped, {NOT_IN_CATALOGUE: 1e-6})
    assert _model(store).choose(dropped).source != "measured"
    assert library_tactics.pending(dropped, _hopper(), store)
    _record(store, dropped, {SMALL: 2e-6})
    assert not library_tactics.pending(dropped, _hopper(), store)


def test_attention_is_predicted_from_its_own_mask_kind(tmp_path):
    """Attention's tactics through the Op's default features."""
    rows_32, rows_64 = attention.CATALOGUE[1], attention.CATALOGUE[0]
    with open_database(tmp_path / "t.db") as store:
        _record(store, _attention(1, "float16"), {rows_32: 10e-6, rows_64: 12e-6})
        _record(store, _attention(2, "float32"), {rows_64: 5e-6, rows_32: 15e-6})
        model = _model(store)
    assert model.choose(_attention(2, "float16")) == Choice(
        rows_32, "predicted", neighbour=_attention(1, "float16").key)


def _shipped_times() -> dict:
    with open_database(benchmark.SHIPPED_DB, readonly=True) as store:
        return store.tactic_times(target_identity(_hopper())[0], KernelLibrary.name)


def _shipped_layers() -> list[Layer]:
    return [layer for key in _shipped_times() if (layer := benchmark.layer_of_key(key))]


def test_every_layer_key_of_the_team_database_is_read_back_into_its_layer():
    """The benchmark scores a layer it can rebuild from its key: every key the team measured
    (GEMMs, convolutions, attention with grouped heads, causal offsets and packed projections)."""
    keys = _shipped_times()
    assert len(keys) >= 70
    assert [key for key in keys if benchmark.layer_of_key(key) is None] == []


def test_held_out_layers_of_the_team_database_run_faster_tactics_than_the_defaults():
    """Leave-one-layer-out over tuning_logs/h100-sm90a.db: the predicted (or, far from every
    other layer, default) tactic's measured time against the layer's fastest."""
    times = _shipped_times()
    rows = benchmark.leave_one_out(times)
    s = benchmark.summary(rows)
    print(f"\n{s['compared']} layers, {s['predicted']} predicted: mean regret "
          f"{s['model']['mean_regret']:.1%} (default {s['default']['mean_regret']:.1%}), "
          f"fastest tactic on {s['model']['exact']:.0%} (default {s['default']['exact']:.0%})")
    assert s["compared"] >= 0.9 * len(times) >= 0.9 * 60
    assert s["predicted"] >= s["compared"] // 2
    assert s["model"]["mean_regret"] < s["default"]["mean_regret"]
    assert s["model"]["exact"] >= s["default"]["exact"]


def _plans(layers: list[Layer]) -> list:
    return [library_tactics.LayerTactics(layer, 1, list(layer.tactics)) for layer in layers]


def test_the_shortlist_holds_every_predicted_tactic_when_they_fit(store):
    model = _model(store)
    layers = [_gemm(256), _gemm(2048), _conv(1)]
    chosen = library_tactics.shortlist(_plans(layers), model, "sm_90a")
    assert len(chosen) == library_tactics.MAX_INSTANCES
    assert all(symbol == instance.symbol for symbol, instance in chosen.items())
    predicted = {layer.instance(model.choose(layer).tactic, "sm_90a").symbol for layer in layers}
    assert model.choose(_gemm(2048)).source == "predicted" and len(predicted) == 3
    assert predicted <= set(chosen)


def test_the_shortlist_of_a_large_model_takes_the_heaviest_layers_predictions_first():
    """Every layer of the team database, measured from scratch: far more candidate instances
    than the limit."""
    model = TacticModel(_shipped_times())
    layers = sorted(_shipped_layers(), key=lambda layer: -layer.work)
    chosen = library_tactics.shortlist(_plans(layers), model, "sm_90a")
    first = list(dict.fromkeys(layer.instance(model.ranked(layer)[0][0], "sm_90a").symbol
                               for layer in layers))
    assert len(first) > library_tactics.MAX_INSTANCES
    assert list(chosen) == first[:library_tactics.MAX_INSTANCES]


def test_a_tune_compiles_no_more_than_the_shortlist_for_the_layers_not_yet_measured(
        tmp_path, monkeypatch, caplog):
    compiled = {}

    class Compiled(Exception):
        pass

    def compile_all(sources, arch, failed):
        compiled.update(sources)
        raise Compiled

    monkeypatch.setattr(library_tactics.nvcc, "compile_all", compile_all)
    layers = _shipped_layers()
    measured, failed = layers[:2]
    with open_database(tmp_path / "t.db") as store:
        _record(store, measured, {measured.default_tactic(): 1e-6})
        _record(store, failed, {failed.default_tactic(): None})
        assert not library_tactics.pending(measured, _hopper(), store)
        assert library_tactics.pending(failed, _hopper(), store)
        with pytest.raises(Compiled), caplog.at_level(logging.INFO):
            library_tactics.measure_tactics({layer.key: (layer, 1) for layer in layers},
                                            _hopper(), store, TuneOptions(trials=0),
                                            device="test", run_uid="run")
    instances = set(compiled) - {TIMER_SYMBOL}
    assert TIMER_SYMBOL in compiled and len(instances) == library_tactics.MAX_INSTANCES
    found = re.search(r"of (\d+) instance\(s\) \(at most 8\) on (\d+) layer\(s\); (\d+) layer",
                      caplog.text)
    assert found and int(found[1]) == len(instances), caplog.text
    assert int(found[2]) + int(found[3]) == len(layers) - 1  # all but the measured layer


TEAM_DATABASE = Path(__file__).resolve().parents[1] / "tuning_logs" / "h100-sm90a.db"


def _shipped_priors() -> dict:
    from tvmopt.kernels.library.tactic_model import priors_of

    with open_database(TEAM_DATABASE, readonly=True) as team:
        return priors_of(team)


def test_the_shipped_priors_are_the_team_databases_tactic_records():
    """What an empty database predicts from is the team database's records; after the team
    database changes: python tests/test_tactic_model.py --write."""
    import json

    from tvmopt.kernels.library.tactic_model import PRIORS

    assert json.loads(PRIORS.read_text()) == _shipped_priors()


def test_with_an_empty_database_a_layer_the_team_measured_runs_its_fastest_tactic(tmp_path):
    """BERT-base's FFN output GEMM (128x768x3072, bias + residual), measured by tvmopt's team on
    an H100: an empty database on a Hopper GPU runs the team's fastest tactic for it, said to be
    predicted from tvmopt's records, and nothing on another architecture."""
    from tvmopt.kernels.library.tactic_model import SHIPPED

    layer = Layer(gemm.OP, gemm.GemmGeometry(128, 768, 3072, 1, "row",
                                             Epilogue(bias=True, residual=True)), {})
    team = _shipped_priors()["cutlass"]["sm_90a"][layer.key]
    with open_database(tmp_path / "empty.db") as store:
        tsha = target_identity(_hopper())[0]
        choice = TacticModel.load(store, tsha, KernelLibrary.name, "sm_90a").choose(layer)
        assert choice.source == "predicted" and choice.neighbour == layer.key + SHIPPED
        assert choice.tactic.name == min(team, key=team.get)
        elsewhere = TacticModel.load(store, tsha, KernelLibrary.name, "sm_80").choose(layer)
        assert elsewhere.source == "default"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import json

    from tvmopt.kernels.library.tactic_model import PRIORS

    PRIORS.write_text(json.dumps(_shipped_priors(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PRIORS}")


def test_attention_read_from_a_packed_projection_is_predicted_from_one_read_from_three():
    """GPT-2's attention reading Q, K and V from the packed projection is the same work as the
    one the team measured reading three tensors: its fastest tactic runs."""
    import dataclasses

    from tvmopt.kernels.library.tactic_model import SHIPPED

    measured = attention.AttentionGeometry(1, 12, 128, 128, 64, 0.125, (1, 1, 128, 128),
                                           "float16")
    packed = dataclasses.replace(measured, packed=(2304, 0, 2304, 768, 2304, 1536))
    layer = Layer(attention.OP, packed, {})
    team = _shipped_priors()["cutlass"]["sm_90a"][attention.OP.key(measured)]
    model = TacticModel({}, _shipped_priors()["cutlass"]["sm_90a"])
    choice = model.choose(layer)
    assert choice.neighbour == attention.OP.key(measured) + SHIPPED
    assert choice.tactic.name == min(team, key=team.get)
