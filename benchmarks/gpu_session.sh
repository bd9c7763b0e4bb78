#!/usr/bin/env bash
# The GPU host's measurements for benchmarks/results/ (ResNet-50 and BERT-base, fp16, batch 1),
# in calls that each fit the host's 10-minute limit (the host keeps /root/work while warm):
#
#   bash benchmarks/gpu_session.sh untuned "$OUT"   # export; default-schedule A/B; compare both
#   bash benchmarks/gpu_session.sh start-tune "$OUT" resnet50 30m  # a tune in the background
#   bash benchmarks/gpu_session.sh wait-tune "$OUT" 540   # wait up to 540 s; db + log to $OUT
#   bash benchmarks/gpu_session.sh warm-kernels "$OUT"  # compile every CUTLASS instance the
#                                                   # models' layers can use (CPU only)
#   bash benchmarks/gpu_session.sh tactics "$OUT" [MODEL...]  # measure each model's library
#                                                   # tactics (batch 1 and large) into the db
#   bash benchmarks/gpu_session.sh compare "$OUT" resnet50_b64 [all tvm]  # against torch.compile
#   bash benchmarks/gpu_session.sh profile "$OUT" resnet50  # per-kernel times and tactics
#   bash benchmarks/gpu_session.sh gpu-tests "$OUT" [-k EXPR]  # the gpu-marked tests
#
# A tune outlives the 10-minute call (setsid) and is followed by wait-tune calls back to back (the
# host goes back ~30 s after a call). It starts from an empty database unless .gpu/db/gpu.db was
# carried (a database brought back from an earlier host, to resume, or tuning_logs/h100-sm90a.db).
# Run from the repository root with tvmopt importable (PYTHONPATH=/root/site:$PWD on the host).
set -uo pipefail
phase=${1:?usage: gpu_session.sh untuned|start-tune|wait-tune|warm-kernels|tactics|compare|profile|gpu-tests OUT}
out=${2:?usage: gpu_session.sh PHASE OUT}
work=/root/work
db=$work/gpu.db
resnet=$work/resnet50.onnx
bert=$work/bert_base.onnx
MODELS=(resnet50 bert_base resnet50_b64 bert_base_b32)
mkdir -p "$work" "$out"
[ -f "$db" ] || [ ! -f .gpu/db/gpu.db ] || cp .gpu/db/gpu.db "$db"
# Kernel instances compiled elsewhere (the cache key holds no paths): .gpu/kcache.tar.gz, made with
# `tar czf .gpu/kcache.tar.gz -C "$TVMOPT_CACHE" kernels` on a machine with the same versions.
cache=${TVMOPT_CACHE:-$HOME/.cache/tvmopt}
[ ! -f .gpu/kcache.tar.gz ] || { mkdir -p "$cache" && tar xzf .gpu/kcache.tar.gz -C "$cache" --skip-old-files; }
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
from tvmopt.kernels.library.sources import TIMER_SOURCE, TIMER_SYMBOL
logging.basicConfig(level=logging.INFO)
work, models = sys.argv[1], sys.argv[2:]
specs = set()
for m in models:
    options = prepare.ModelOptions(precision="fp16", layout="NHWC" if "resnet" in m else "NCHW")
    mod = prepare.prepare(f"{work}/{m}.onnx", targets.resolve("cuda"), options).mod
    specs |= {l.instance(t, "sm_90a") for l in library.layers(mod).values() for t in l.tactics}
print("instances:", len(specs))
nvcc.compile_all({**{s.symbol: s.source() for s in specs}, TIMER_SYMBOL: TIMER_SOURCE},
                 "sm_90a", failed=(failed := {}))
print("nvcc rejected:", failed or "none")
PY
    tail -3 "$out/warm_kernels.txt"
    ;;
  tactics)
    # Each model's library tactics only (`--trials 0`); TIR records come from the database.
    shift 2
    for m in "${@:-${MODELS[@]}}"; do
      python3 -m tvmopt tune "$work/$m.onnx" "${fp16[@]}" $(layout_of $m) --db "$db" \
        --trials 0 --json > "$out/tune_$m.json" 2> "$work/tune_$m.log"
      grep -v "Trace replay failed" "$work/tune_$m.log" | grep -E "tactics|CUTLASS|stopped|budget" \
        > "$out/tune_$m.log"
      tail -2 "$out/tune_$m.log"
    done
    gzip -c "$db" > "$out/gpu.db.gz"
    ;;
  compare)
    # tvmopt untuned and with the database (tactics and TIR records), next to torch.compile:
    # reduce-overhead at batch 1, and max-autotune as well at a large batch.
    m=${3:?usage: gpu_session.sh compare OUT MODEL [all|tvm ...]}
    shift 3
    batch=1 modes=(reduce-overhead) iterations=100
    case "$m" in *_b[0-9]*) batch=${m##*_b} modes+=(max-autotune-no-cudagraphs) iterations=30 ;; esac
    # max-autotune spends over 6 minutes on ResNet-50 at batch 64: TORCH_MODES chooses others
    [ -z "${TORCH_MODES:-}" ] || read -ra modes <<< "$TORCH_MODES"
    python3 benchmarks/compare.py "$work/$m.onnx" --torch "$peer:${m%_b[0-9]*}" --batch "$batch" \
      --device cuda --precision fp16 $(layout_of $m) --kernels "${@:-all}" \
      --iterations $iterations --db "$db" --torch-compile-modes "${modes[@]}" \
      -o "$out/compare_$m.json" > "$out/compare_$m.txt" 2>&1
    tail -8 "$out/compare_$m.txt"
    ;;
  profile)
    m=${3:?usage: gpu_session.sh profile OUT MODEL}
    python3 -m tvmopt build "$work/$m.onnx" "${fp16[@]}" $(layout_of $m) --db "$db" \
      -o "$work/profiled.so" --no-cuda-graph 2>> "$out/build.log"
    python3 -m tvmopt profile "$work/profiled.so" > "$out/profile_$m.txt" 2>&1
    python3 -m tvmopt inspect "$work/profiled.so" > "$out/inspect_$m.txt" 2>&1
    head -25 "$out/profile_$m.txt"
    ;;
  gpu-tests)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests "${@:3}" \
      > "$out/gpu_tests.txt" 2>&1
    tail -15 "$out/gpu_tests.txt"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
ls -la "$out"
