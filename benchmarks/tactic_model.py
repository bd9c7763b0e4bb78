"""How well untuned kernel-library layers' tactics are predicted: leave-one-out over a database.

Each measured layer of the database is held out in turn; its tactic is predicted from the other
layers' records (`tvmopt/kernels/library/tactic_model.py`) and compared, on the held-out layer's
own measurements, with the fastest tactic and with the op's fixed default tactic. Regret is the
chosen tactic's time over the fastest's, minus one. CPU only: it reads the records, measures
nothing.

    python -m benchmarks tactic-model [--db tuning_logs/h100-sm90a.db] [--target cuda-sm90a]
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import re
import statistics
from pathlib import Path

from . import record

SUITE = "tactic-model"
# What is measured is the library's tactic model itself, on layers rebuilt from tactic records'
# layer keys: neither is reachable through the public API.
INTERNAL_API = ("tvmopt.kernels.library", "tvmopt.database")
SHIPPED_DB = record.ROOT / "tuning_logs" / "h100-sm90a.db"

_GEMM = re.compile(r"gemm_f16_(row|col)_(\w+?)_(\d+)x(\d+)x(\d+)x(\d+)")
_CONV = re.compile(r"conv2d_f16_(\w+?)_(\d+)x(\d+)x(\d+)x(\d+)_k(\d+)r(\d+)s(\d+)"
                   r"_p(\d+)x(\d+)x(\d+)x(\d+)_s(\d+)x(\d+)_d(\d+)x(\d+)")
_ATTENTION = re.compile(r"attention_f16_(\d+)x(\d+)x(\d+)x(\d+)x(\d+)_mask_(\w+?)_(none|[\dx]+)"
                        r"(?:_kvheads(\d+))?(?:_causal(\d+))?(?:_layout([bhs]+))?"
                        r"(?:_packed([\dx]+))?")
_MASK_DTYPES = {"nomask": None, "f16mask": "float16", "f32mask": "float32"}


def _epilogue(name: str):
    from tvmopt.kernels.library.cutlass import ACTIVATIONS, Epilogue

    parts = name.split("_")
    return Epilogue(bias="bias" in parts, residual="residual" in parts,
                    activation=next((p for p in parts if p in ACTIVATIONS), "none"))


def layer_of_key(key: str):
    """The Layer a tactic record's layer key was made from (without kernel arguments), or None
    for a key of another op or format."""
    from tvmopt.kernels.library import attention, conv2d, gemm
    from tvmopt.kernels.library.op import Layer

    if found := _GEMM.fullmatch(key):
        m, n, k, batch = map(int, found.groups()[2:])
        layer = Layer(gemm.OP, gemm.GemmGeometry(m, n, k, batch, found[1], _epilogue(found[2])),
                      {})
    elif found := _CONV.fullmatch(key):
        n, h, w, c, filters, r, s, *windows = map(int, found.groups()[1:])
        layer = Layer(conv2d.OP, conv2d.ConvGeometry(
            n, h, w, c, filters, r, s, tuple(windows[:4]), tuple(windows[4:6]),
            tuple(windows[6:]), _epilogue(found[1])), {})
    elif found := _ATTENTION.fullmatch(key):
        batch, heads, seq_q, seq_k, head_dim = map(int, found.groups()[:5])
        mask = None if found[7] == "none" else tuple(map(int, found[7].split("x")))
        kv_heads, causal, layouts, packed = found.groups()[7:]
        layer = Layer(attention.OP, attention.AttentionGeometry(
            batch=batch, heads=heads, seq_q=seq_q, seq_k=seq_k, head_dim=head_dim,
            scale=head_dim ** -0.5, mask_shape=mask, mask_dtype=_MASK_DTYPES[found[6]],
            kv_heads=int(kv_heads or 0), causal=None if causal is None else int(causal),
            layouts=tuple(layouts[i:i + 3] for i in range(0, len(layouts), 3)) if layouts
            else attention.PROJECTED,
            packed=tuple(map(int, packed.split("x"))) if packed else ()), {})
    else:
        return None
    return layer if layer.key == key else None


def leave_one_out(times: dict[str, dict[str, float | None]]) -> list[dict]:
    """Per held-out layer with measured tactics: its chosen tactic's source and nearest
    neighbour, and the regret of the predicted (else default) tactic and of the default."""
    from tvmopt.kernels.library.tactic_model import TacticModel

    rows = []
    for key, own in sorted(times.items()):
        ran = {tactic: sec for tactic, sec in own.items() if sec is not None}
        layer = layer_of_key(key)
        if not ran or layer is None:
            continue
        choice = TacticModel({k: v for k, v in times.items() if k != key}).choose(layer)
        best = min(ran.values())
        default = layer.default_tactic().name

        def regret(tactic: str) -> float | None:
            return ran[tactic] / best - 1 if tactic in ran else None

        rows.append({"layer": key, "source": choice.source, "neighbour": choice.neighbour,
                     "tactic": choice.tactic.name, "regret": regret(choice.tactic.name),
                     "default": default, "default_regret": regret(default)})
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean and worst regret, and the share of layers given their fastest tactic, of the model's
    choices and of the defaults, over the layers where both were measured."""
    both = [r for r in rows if r["regret"] is not None and r["default_regret"] is not None]
    out = {"layers": len(rows), "compared": len(both),
           "predicted": sum(r["source"] == "predicted" for r in rows)}
    for name, column in (("model", "regret"), ("default", "default_regret")):
        regrets = [r[column] for r in both]
        out[name] = {"mean_regret": statistics.fmean(regrets) if regrets else None,
                     "worst_regret": max(regrets, default=None),
                     "exact": sum(v == 0 for v in regrets) / len(regrets) if regrets else None}
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--db", type=Path, default=SHIPPED_DB,
                   help="tuning database [default: %(default)s]")
    p.add_argument("--target", default="cuda-sm90a", help="whose records [default: %(default)s]")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/tactic_model_DATE.json]")
    args = p.parse_args(argv)

    from tvmopt import targets
    from tvmopt.database import open_database, target_identity
    from tvmopt.kernels.library import KernelLibrary

    tsha = target_identity(targets.resolve(args.target).tvm_target())[0]
    with open_database(args.db, readonly=True) as store:
        times = store.tactic_times(tsha, KernelLibrary.name)
    rows = leave_one_out(times)
    if not rows:
        raise SystemExit(f"{args.db}: no measured kernel-library layers for {args.target}")
    s = summary(rows)
    lines = [[name, _pct(s[name]["mean_regret"]), _pct(s[name]["worst_regret"]),
              _pct(s[name]["exact"])] for name in ("model", "default")]
    notes = (f"{s['layers']} layers of {args.db.name} held out one at a time; the model "
             f"predicted {s['predicted']} of them from a neighbour, the rest got the default. "
             "Regret: the chosen tactic's measured time over the layer's fastest, minus one.")
    print(notes)
    for name, mean, worst, exact in lines:
        print(f"{name:8s} mean regret {mean:>6s}  worst {worst:>6s}  fastest on {exact} of layers")
    doc = record.new(SUITE, argv, device="cpu",
                     title=f"Predicted tactics, leave-one-out over {args.db.name}")
    doc["results"] = {"summary": s, "layers": rows}
    doc["sections"] = [
        {"notes": notes, "table": record.table(
            ["tactics", "mean regret", "worst regret", "fastest tactic"], lines)},
        {"heading": "Per layer", "table": record.table(
            ["layer", "source", "neighbour", "regret", "default regret"],
            [[r["layer"], r["source"], r["neighbour"] or "-", _pct(r["regret"]),
              _pct(r["default_regret"])] for r in rows])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
