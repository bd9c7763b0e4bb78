#!/usr/bin/env bash
# The GPU host's measurements for benchmarks/results/ (ResNet-50 and BERT-base, fp16, batch 1),
# in calls that each fit the host's 10-minute limit (the host keeps /root/work while warm):
#
#   bash benchmarks/gpu_session.sh untuned "$OUT"   # export; default-schedule A/B; compare both
#   bash benchmarks/gpu_session.sh start-tune "$OUT" resnet50 30m  # a tune in the background
#   bash benchmarks/gpu_session.sh wait-tune "$OUT" 540   # wait up to 540 s; db + log to $OUT
#   bash benchmarks/gpu_session.sh warm-kernels "$OUT"  # compile every CUTLASS instance the
#                                                   # models' layers can use (CPU only)
#   bash benchmarks/gpu_session.sh tactics "$OUT" 90s  # tune each model (batch 1 and large):
#                                                   # library tactics, then TIR for the rest
#   bash benchmarks/gpu_session.sh batch "$OUT" resnet50_b64  # compare at a large batch
#   bash benchmarks/gpu_session.sh tuned "$OUT" resnet50   # compare with the database, with and
#                                                   # without the kernel library; a profile; the db
#   bash benchmarks/gpu_session.sh gpu-tests "$OUT" # the gpu-marked tests
#
# A tune outlives the 10-minute call (setsid) and is followed by wait-tune calls back to back (the
# host goes back ~30 s after a call). It starts from an empty database unless .gpu/db/gpu.db was
# carried (a database brought back from an earlier host, to resume).
# Run from the repository root with tvmopt importable (PYTHONPATH=/root/site:$PWD on the host).
set -uo pipefail
phase=${1:?usage: gpu_session.sh untuned|start-tune|wait-tune|warm-kernels|tactics|tuned|batch|gpu-tests OUT}
out=${2:?usage: gpu_session.sh PHASE OUT}
work=/root/work
db=$work/gpu.db
resnet=$work/resnet50.onnx
bert=$work/bert_base.onnx
MODELS=(resnet50 bert_base resnet50_b64 bert_base_b32)
mkdir -p "$work" "$out"
[ -f "$db" ] || [ ! -f .gpu/db/gpu.db ] || cp .gpu/db/gpu.db "$db"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv"
fp16=(--target cuda --precision fp16)
peer=benchmarks/peer_models.py
export_models() {
  [ -f "$resnet" ] || python3 benchmarks/compare.py --torch $peer:resnet50 --export "$resnet"
  [ -f "$bert" ] || python3 benchmarks/compare.py --torch $peer:bert_base --export "$bert"
  [ -f "$work/resnet50_b64.onnx" ] || python3 benchmarks/compare.py --torch $peer:resnet50 \
    --batch 64 --export "$work/resnet50_b64.onnx"
  [ -f "$work/bert_base_b32.onnx" ] || python3 benchmarks/compare.py --torch $peer:bert_base \
    --batch 32 --export "$work/bert_base_b32.onnx"
}
layout_of() { case "$1" in resnet50*) echo --layout NHWC ;; esac; }
case "$phase" in
  untuned)
    export_models > "$out/export.txt" 2>&1
    # DLight tiles every tensor-core GEMM 128x128 and leaves those with a dimension <= 64 on CUDA
    # cores; tvmopt's default tiles each GEMM to fill the GPU. Both untuned, timed back to back:
    python3 - "$resnet" "$bert" "$work" > "$out/default_ab.txt" 2>&1 <<'PY'
import sys
from tvmopt import bench, build, targets
from tvmopt.database import open_database
from tvmopt.kernels.tensorcore_gemm import TensorCoreGemm
from tvmopt.prepare import ModelOptions
resnet, bert, work = sys.argv[1:]
open_database(f"{work}/ab.db").close()
keep = TensorCoreGemm.apply
for model, layout in ((resnet, "NHWC"), (bert, "NCHW")):
    for label, rule in (("DLight", lambda *a: None), ("tvmopt", keep)):
        TensorCoreGemm.apply = rule
        lib = build.build(model, targets.resolve("cuda"), f"{work}/ab_{label}_{layout}.so",
                          db_path=f"{work}/ab.db", cuda_graph=False,
                          options=ModelOptions(precision="fp16", layout=layout))
        r = bench.bench(lib.path, bench.BenchOptions(warmup=20, iterations=200))
        print(f"{model}: {label} default schedules, no CUDA graph: p50 {r.latency_ms.p50:.3f} ms")
PY
    python3 benchmarks/compare.py "$resnet" --torch $peer:resnet50 --device cuda --precision fp16 \
      --layout NHWC --iterations 100 -o "$out/compare_resnet50.json" > "$out/compare_resnet50.txt" 2>&1
    python3 benchmarks/compare.py "$bert" --torch $peer:bert_base --device cuda --precision fp16 \
      --iterations 100 -o "$out/compare_bert.json" > "$out/compare_bert.txt" 2>&1
    ;;
  start-tune)
    model=${3:?usage: gpu_session.sh start-tune OUT resnet50|bert_base BUDGET}
    budget=${4:?usage: gpu_session.sh start-tune OUT MODEL BUDGET}
    export_models > "$out/export.txt" 2>&1
    layout=(); [ "$model" = resnet50 ] && layout=(--layout NHWC)
    setsid nohup python3 -m tvmopt tune "$work/$model.onnx" "${fp16[@]}" "${layout[@]}" \
      --db "$db" --trials 100000 --time-budget "$budget" --json \
      > "$work/tune_$model.json" 2> "$work/tune_$model.log" < /dev/null &
    echo $! > "$work/tune.pid"
    sleep 5; head -5 "$work/tune_$model.log"
    ;;
  wait-tune)
    deadline=$((SECONDS + ${3:?usage: gpu_session.sh wait-tune OUT SECONDS}))
    while kill -0 "$(cat "$work/tune.pid")" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 5; done
    kill -0 "$(cat "$work/tune.pid")" 2>/dev/null && echo "tune still running" || echo "tune done"
    # TVM's C++ warnings about rejected candidates drown the progress lines; keep them countable.
    for log in "$work"/tune_*.log; do
      grep -v "Trace replay failed" "$log" > "$out/$(basename "$log")"
      echo "$(basename "$log"): $(grep -c "Trace replay failed" "$log") trace-replay warnings"
      tail -3 "$out/$(basename "$log")"
    done
    cp "$work"/tune_*.json "$out/" 2>/dev/null
    # a consistent copy while the tuner writes, compressed (files come back at 16 MiB at most)
    python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
      "$db" "$work/backup.db" && gzip -c "$work/backup.db" > "$out/gpu.db.gz"
    ;;
  warm-kernels)
    # Every catalogue instance the models' library layers can run, compiled 16 at a time into
    # the kernel cache (no GPU needed), so that the tactic tunes below only measure.
    export_models > "$out/export.txt" 2>&1
    python3 - "$work" "${MODELS[@]}" > "$out/warm_kernels.txt" 2>&1 <<'PY'
import logging, sys
from tvmopt import prepare, targets
from tvmopt.kernels import library
from tvmopt.kernels.library import nvcc
from tvmopt.kernels.library.sources import TIMER_SOURCE, TIMER_SYMBOL, GemmSpec, gemm_source
from tvmopt.kernels.library.tactics import CATALOGUE
logging.basicConfig(level=logging.INFO)
work, models = sys.argv[1], sys.argv[2:]
kinds = set()
for m in models:
    options = prepare.ModelOptions(precision="fp16", layout="NHWC" if "resnet" in m else "NCHW")
    mod = prepare.prepare(f"{work}/{m}.onnx", targets.resolve("cuda"), options).mod
    kinds |= {(l.b_layout, l.epilogue) for l in library.layers(mod).values()}
print("layer kinds:", sorted((b, e.name) for b, e in kinds))
specs = [GemmSpec(b, e, t) for b, e in kinds for t in CATALOGUE]
nvcc.compile_all({**{s.symbol: gemm_source(s) for s in specs}, TIMER_SYMBOL: TIMER_SOURCE},
                 "sm_90a")
PY
    tail -3 "$out/warm_kernels.txt"
    ;;
  tactics)
    budget=${3:?usage: gpu_session.sh tactics OUT BUDGET}
    for m in "${MODELS[@]}"; do
      python3 -m tvmopt tune "$work/$m.onnx" "${fp16[@]}" $(layout_of $m) --db "$db" \
        --trials 100000 --time-budget "$budget" --json > "$out/tune_$m.json" 2> "$work/tune_$m.log"
      grep -v "Trace replay failed" "$work/tune_$m.log" | grep -E "tactics|stopped|budget" \
        > "$out/tune_$m.log"
      tail -2 "$out/tune_$m.log"
    done
    gzip -c "$db" > "$out/gpu.db.gz"
    ;;
  batch)
    m=${3:?usage: gpu_session.sh batch OUT resnet50_b64|bert_base_b32}
    python3 benchmarks/compare.py "$work/$m.onnx" --torch "$peer:${m%_b*}" --batch "${m##*_b}" \
      --device cuda --precision fp16 $(layout_of $m) --kernels tvm all --iterations 30 \
      --warmup 5 --db "$db" --torch-compile-modes reduce-overhead max-autotune-no-cudagraphs \
      -o "$out/compare_$m.json" > "$out/compare_$m.txt" 2>&1
    tail -10 "$out/compare_$m.txt"
    ;;
  tuned)
    m=${3:?usage: gpu_session.sh tuned OUT resnet50|bert_base}
    layout=(); [ "$m" = resnet50 ] && layout=(--layout NHWC)
    python3 benchmarks/compare.py "$work/$m.onnx" --torch "$peer:$m" --device cuda \
      --precision fp16 "${layout[@]}" --kernels tvm all --iterations 100 --db "$db" \
      -o "$out/compare_${m}_tuned.json" > "$out/compare_${m}_tuned.txt" 2>&1
    tail -12 "$out/compare_${m}_tuned.txt"
    python3 -m tvmopt build "$work/$m.onnx" "${fp16[@]}" "${layout[@]}" --db "$db" \
      -o "$work/profiled.so" --no-cuda-graph 2>> "$out/build.log"
    python3 -m tvmopt profile "$work/profiled.so" > "$out/profile_${m}.txt" 2>&1
    gzip -c "$db" > "$out/gpu.db.gz"
    ;;
  gpu-tests)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py > "$out/gpu_tests.txt" 2>&1
    tail -15 "$out/gpu_tests.txt"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
ls -la "$out"
