#!/usr/bin/env bash
# The CPU figures for benchmarks/results/ (issue 15): each model against ONNX Runtime on the same
# cores, untuned, and tuned from a database tuned for at most TIME per model.
#
#   bash benchmarks/cpu_session.sh models WORK          # write the four models into WORK
#   bash benchmarks/cpu_session.sh tune WORK MODEL 12m  # tune one of them into WORK/MODEL.db
#   bash benchmarks/cpu_session.sh compare WORK OUT     # compare.py rows for all four, JSON to OUT
#
# Models: the onnx package's light_resnet50 (its weights are constant: a speed model only), the
# small ResNet of benchmarks/torch_models.py at 1x3x64x64, the coverage zoo's BERT-style encoder
# at 1x128 (tests/zoo.py), and the README's digits MLP at batch 450 (examples/digits/run.py
# trains and measures it itself: run it for that row). Run from the repository root.
set -euo pipefail
phase=${1:?usage: cpu_session.sh models|tune|compare WORK ...}
work=${2:?usage: cpu_session.sh PHASE WORK}
mkdir -p "$work"
shapes() {
  case $1 in
    bert_encoder) echo "--input-shape input_ids=1x128 --input-shape attention_mask=1x128" ;;
    *) echo "" ;;
  esac
}
case $phase in
  models)
    cp "$(python -c 'import onnx, pathlib; print(pathlib.Path(onnx.__file__).parent)')/backend/test/data/light/light_resnet50.onnx" "$work/"
    python benchmarks/compare.py --torch benchmarks/torch_models.py:small_resnet \
      --input-shape 1x3x64x64 --export "$work/small_resnet.onnx"
    PYTHONPATH=tests python -c "import sys, zoo; zoo.build_all(sys.argv[1], ['bert_encoder'])" "$work"
    ;;
  tune)
    model=${3:?model}; budget=${4:-12m}
    # shellcheck disable=SC2046
    python -m tvmopt tune "$work/$model.onnx" --target host --db "$work/$model.db" --trials 3000 \
      --time-budget "$budget" $(shapes "$model")
    ;;
  compare)
    out=${3:?usage: cpu_session.sh compare WORK OUT}
    mkdir -p "$out"
    for model in light_resnet50 small_resnet bert_encoder; do
      db=(); [ -f "$work/$model.db" ] && db=(--db "$work/$model.db")
      iterations=300; [ "$model" = light_resnet50 ] && iterations=30
      # shellcheck disable=SC2046
      python benchmarks/compare.py "$work/$model.onnx" --device cpu --iterations $iterations \
        --warmup 10 "${db[@]}" $(shapes "$model" | sed 's/--input-shape/--shape/g') \
        -o "$out/compare_${model}_cpu.json"
    done
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
