#!/usr/bin/env bash
# The GPU host's measurements for benchmarks/results/, in two calls that each fit the host's
# 10-minute limit (the host keeps /root/work between calls while it stays warm):
#
#   bash benchmarks/gpu_session.sh tests-and-tune "$OUT"   # gpu-marked tests, export, 4-min tune
#   bash benchmarks/gpu_session.sh tune "$OUT"             # 8 more minutes of tuning (resumes)
#   bash benchmarks/gpu_session.sh compare "$OUT"          # compare.py, bench, profile, the db
#
# Run from the repository root with tvmopt importable (PYTHONPATH=/root/site:$PWD on the host).
set -uo pipefail
phase=${1:?usage: gpu_session.sh tests-and-tune|tune|compare OUT}
out=${2:?usage: gpu_session.sh PHASE OUT}
work=/root/work
model=$work/resnet18.onnx
db=$work/gpu.db
mkdir -p "$work" "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv"
tuned=(--target cuda --precision fp16 --layout NHWC)
resnet=(--torch torchvision.models:resnet18 --input-shape 1x3x224x224)  # seeded: same weights
case "$phase" in
  tests-and-tune)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -30 > "$out/gpu_tests.txt"
    python3 benchmarks/compare.py "${resnet[@]}" --export "$model" > "$out/export.txt" 2>&1
    python3 -m tvmopt tune "$model" "${tuned[@]}" --db "$db" --trials 3000 --time-budget 4m \
      --json > "$out/tune.json" 2> "$out/tune.log"
    ;;
  tune)
    python3 -m tvmopt tune "$model" "${tuned[@]}" --db "$db" --trials 3000 --time-budget 8m \
      --json > "$out/tune2.json" 2> "$out/tune2.log"
    ;;
  compare)
    python3 benchmarks/compare.py "$model" "${resnet[@]}" --device cuda --precision fp16 --layout NHWC --db "$db" -o "$out/compare.json" \
      > "$out/compare.txt" 2> "$out/compare.log"
    python3 -m tvmopt build "$model" "${tuned[@]}" --db "$db" -o "$work/tuned.so" 2> "$out/build.log"
    python3 -m tvmopt build "$model" "${tuned[@]}" --db "$db" -o "$work/tuned_graph.so" \
      --cuda-graph 2>> "$out/build.log"
    python3 -m tvmopt bench "$work/tuned.so" --duration 10 --json > "$out/bench.json" 2>&1
    python3 -m tvmopt bench "$work/tuned_graph.so" --duration 10 --json > "$out/bench_graph.json" 2>&1
    python3 -m tvmopt bench "$work/tuned.so" --iterations 5 --warmup 0 > "$out/bench_tiny.txt" 2>&1
    python3 -m tvmopt profile "$work/tuned.so" > "$out/profile.txt" 2>&1
    cp "$db" "$work/gpu.db.copy"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
# The host returns few files: pack everything into one archive.
tar -czf "$work/$phase.tgz" -C "$out" . $( [ "$phase" = compare ] && echo -C "$work" gpu.db.copy )
rm -rf "${out:?}"/* && mv "$work/$phase.tgz" "$out/"
ls -la "$out"
