#!/usr/bin/env bash
# The GPU host's measurements for benchmarks/results/ (ResNet-50 and BERT-base, fp16, batch 1),
# in calls that each fit the host's 10-minute limit (the host keeps /root/work while warm):
#
#   bash benchmarks/gpu_session.sh untuned "$OUT"   # export; default-schedule A/B; compare both
#   bash benchmarks/gpu_session.sh tune "$OUT"      # 7 more minutes of ResNet-50 tuning (resumes
#                                                   # from tuning_logs/h100-sm90a.db)
#   bash benchmarks/gpu_session.sh tune-bert "$OUT" # the same for BERT-base
#   bash benchmarks/gpu_session.sh tuned "$OUT"     # compare with the database; profile; the db
#
# Run from the repository root with tvmopt importable (PYTHONPATH=/root/site:$PWD on the host).
set -uo pipefail
phase=${1:?usage: gpu_session.sh untuned|tune|tune-bert|tuned OUT}
out=${2:?usage: gpu_session.sh PHASE OUT}
work=/root/work
db=$work/gpu.db
resnet=$work/resnet50.onnx
bert=$work/bert_base.onnx
mkdir -p "$work" "$out"
[ -f "$db" ] || cp tuning_logs/h100-sm90a.db "$db"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv"
fp16=(--target cuda --precision fp16)
peer=benchmarks/peer_models.py
case "$phase" in
  untuned)
    python3 benchmarks/compare.py --torch $peer:resnet50 --export "$resnet" > "$out/export.txt" 2>&1
    python3 benchmarks/compare.py --torch $peer:bert_base --export "$bert" >> "$out/export.txt" 2>&1
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
  tune)
    python3 -m tvmopt tune "$resnet" "${fp16[@]}" --layout NHWC --db "$db" --trials 5000 \
      --time-budget 8m --json > "$out/tune_$(date +%s).json" 2> "$out/tune.log"
    ;;
  tune-bert)
    python3 -m tvmopt tune "$bert" "${fp16[@]}" --db "$db" --trials 5000 \
      --time-budget 7m --json > "$out/tune_bert_$(date +%s).json" 2> "$out/tune_bert.log"
    ;;
  tuned)
    python3 benchmarks/compare.py "$resnet" --torch $peer:resnet50 --device cuda --precision fp16 \
      --layout NHWC --iterations 100 --db "$db" -o "$out/compare_resnet50_tuned.json" \
      > "$out/compare_resnet50_tuned.txt" 2>&1
    python3 benchmarks/compare.py "$bert" --torch $peer:bert_base --device cuda --precision fp16 \
      --iterations 100 --db "$db" -o "$out/compare_bert_tuned.json" \
      > "$out/compare_bert_tuned.txt" 2>&1
    python3 -m tvmopt build "$resnet" "${fp16[@]}" --layout NHWC --db "$db" -o "$work/tuned.so" \
      --no-cuda-graph 2> "$out/build.log"
    python3 -m tvmopt profile "$work/tuned.so" > "$out/profile.txt" 2>&1
    python3 -m tvmopt build "$bert" "${fp16[@]}" --db "$db" -o "$work/tuned_bert.so" \
      --no-cuda-graph 2>> "$out/build.log"
    python3 -m tvmopt profile "$work/tuned_bert.so" > "$out/profile_bert.txt" 2>&1
    cp "$db" "$out/gpu.db"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
ls -la "$out"
